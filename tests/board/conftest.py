"""Fixtures for the board tests: synthetic results folders (see board_synthetic.py) and one built site."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # the helper modules beside this file

from board_synthetic import T0, make_results, small_cells  # noqa: E402


@pytest.fixture(scope="session")
def built(tmp_path_factory) -> tuple[Path, Path]:
    """(results folder, site folder): the full synthetic results with fits, built once per session."""
    from qsens.board.build import build_board

    root = tmp_path_factory.mktemp("board")
    results = make_results(root / "results")
    build_board(results, root / "site", now=T0)
    return results, root / "site"


@pytest.fixture
def small_results(tmp_path) -> Path:
    """A small results folder of its own (tests may change it)."""
    return make_results(tmp_path / "results", cells=small_cells())
