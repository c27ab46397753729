"""Issue 16's data-loss cases for the board and the fit: `--out` never deletes what is not a qsens site, and a
rerun on unchanged input changes no byte (database rows, HTML, SVG, JSON, CSV)."""

from __future__ import annotations

import hashlib
import json
import os
from datetime import datetime, timedelta, timezone

import pytest
from board_synthetic import all_cells, make_results

from qsens.board.build import MARKER, OutputError, build_board
from qsens.cli import main as cli_main
from qsens.store import ResultStore


def _tree(folder) -> dict[str, tuple[str, int]]:
    """Every file under `folder`: (sha256, mtime in ns)."""
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def no_plots(monkeypatch):
    """What these tests check does not depend on the plots, the slow part of a build."""
    monkeypatch.setattr("qsens.board.build.family_plots", lambda *args: [])


def test_an_unrelated_folder_is_refused_and_kept(small_results, tmp_path, capsys, no_plots):
    mine = tmp_path / "thesis"
    (mine / "sub").mkdir(parents=True)
    (mine / "thesis.tex").write_text("\\chapter{One}")
    (mine / "sub" / "data.csv").write_text("a,b\n1,2\n")
    before = _tree(mine)
    assert cli_main(["board", "--results", str(small_results), "--out", str(mine)]) == 2
    err = capsys.readouterr().err
    assert "not a qsens site" in err and "sub, thesis.tex" in err and "--force" in err, err
    assert _tree(mine) == before
    assert cli_main(["board", "--results", str(small_results), "--out", str(mine), "--force"]) == 0
    assert (mine / MARKER).is_file() and not (mine / "thesis.tex").exists()


def test_an_existing_file_is_refused_and_kept(small_results, tmp_path, capsys, no_plots):
    target = tmp_path / "notes.txt"
    target.write_text("my notes")
    assert cli_main(["board", "--results", str(small_results), "--out", str(target)]) == 2
    assert "existing file" in capsys.readouterr().err and target.read_text() == "my notes"
    assert cli_main(["board", "--results", str(small_results), "--out", str(target), "--force"]) == 0
    assert (target / "index.html").is_file()


def test_a_folder_holding_the_results_is_refused_even_with_force(small_results):
    with pytest.raises(OutputError, match="holds the results"):
        build_board(small_results, small_results.parent, force=True)
    assert (small_results / "qsens.sqlite").is_file()


def test_empty_folders_and_own_sites_are_replaced(small_results, tmp_path, no_plots):
    empty = tmp_path / "empty"
    empty.mkdir()
    build_board(small_results, empty)
    (empty / "index.html").write_text("old")
    build_board(small_results, empty)  # its own site: the marker says so
    assert (empty / "index.html").read_text() != "old"
    legacy = tmp_path / "legacy"  # a site built before the marker existed
    legacy.mkdir()
    (legacy / "build.json").write_text("{}")
    (legacy / "index.html").write_text("old")
    build_board(small_results, legacy)
    assert (legacy / MARKER).is_file()


def test_fit_and_board_reruns_change_no_byte(tmp_path):
    cells = [c for c in all_cells() if c["family"] == "novels-probe" and c["eval"] == "vathek"
             and c["schedule"] == "cosine" and c["bits"] in (2, 4)]  # few plots: a fast build
    results = make_results(tmp_path / "results", fits=False, cells=cells)
    fit = ["fit", "--results", str(results), "--bootstrap", "10", "--law", "ouyang"]
    assert cli_main(fit) == 0
    db_after_first = _tree(results)
    assert cli_main(fit) == 0
    assert _tree(results) == db_after_first  # not one byte of the database rewritten

    site = tmp_path / "site"
    build_board(results, site)
    first = _tree(site)
    build_board(results, site)
    assert _tree(site) == first  # same bytes, and the site was not even swapped (mtimes kept)

    cell = cells[0]
    # a month ahead of the clock: the build time below can only be the data's, never the wall clock's
    ahead = (datetime.now(timezone.utc) + timedelta(days=30)).replace(microsecond=0)
    ResultStore(results).save({**cell, "delta_loss": cell["delta_loss"] * 1.5,
                               "finished_at": ahead.isoformat()}, overwrite=True)
    assert cli_main(fit) == 0
    assert _tree(results) != db_after_first  # a real change is written
    build_board(results, site)
    changed = _tree(site)
    assert changed != first
    built_at = datetime.fromisoformat(json.loads((site / "build.json").read_text())["built_at"])
    assert built_at == ahead  # the data's newest time, though the refit stamped its fits at the clock's


def test_a_site_renamed_away_by_a_killed_build_is_restored(small_results, tmp_path, no_plots):
    """The fallback swap renames the old site away, then the new one in: a kill between the two leaves only
    `<site>.old-*`, which the next build puts back first (so its history carries over)."""
    site = tmp_path / "site"
    build_board(small_results, site)
    os.rename(site, tmp_path / "site.old-killed")
    again = build_board(small_results, site)
    assert not again.new_snapshot and again.snapshots == 1  # the old history came back; the data did not change
    assert not (tmp_path / "site.old-killed").exists() and (site / MARKER).is_file()


def test_a_results_folder_under_the_parent_is_refused_even_with_force(tmp_path, capsys):
    """Issue 25: `--results results --out results/a --force` deleted results/a/qsens.sqlite."""
    for name in ("a", "b"):
        make_results(tmp_path / "results" / name, fits=False, cells=all_cells()[:2])
    before = _tree(tmp_path / "results")
    for out in (tmp_path / "results" / "a", tmp_path / "results"):
        code = cli_main(["board", "--results", str(tmp_path / "results"), "--out", str(out), "--force"])
        err = capsys.readouterr().err
        assert code == 2 and ("results database" in err or "holds the results" in err), err
        assert "not even with --force" in err or "holds the results" in err, err
    assert _tree(tmp_path / "results") == before


@pytest.mark.parametrize("target", ["qsens.sqlite", "copy.db"])
def test_the_database_file_itself_is_refused_even_with_force(small_results, tmp_path, capsys, target):
    """Issue 25: `--out results/qsens.sqlite --force` replaced the database by a site; a copy under another name
    is recognised by its SQLite header."""
    database = small_results / "qsens.sqlite"
    if target != "qsens.sqlite":
        database = tmp_path / target
        database.write_bytes((small_results / "qsens.sqlite").read_bytes())
    before = database.read_bytes()
    code = cli_main(["board", "--results", str(small_results), "--out", str(database), "--force"])
    err = capsys.readouterr().err
    assert code == 2 and f"--out {database} is a results database" in err and "not even with --force" in err, err
    assert database.read_bytes() == before and ResultStore(small_results).integrity_ok()


def test_a_folder_holding_a_database_one_level_down_is_refused_even_with_force(small_results, tmp_path, capsys):
    """Results read from elsewhere: `--out` still never deletes a folder with a results database in it."""
    other = make_results(tmp_path / "keep" / "old-results", fits=False, cells=all_cells()[:1])
    code = cli_main(["board", "--results", str(small_results), "--out", str(tmp_path / "keep"), "--force"])
    err = capsys.readouterr().err
    assert code == 2 and f"holds a results database ({other / 'qsens.sqlite'})" in err, err
    assert (other / "qsens.sqlite").is_file()
