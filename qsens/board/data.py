"""Read what the board shows: cells, fits, run records and resolved suites of one or more results folders.

A results folder holds `qsens.sqlite` and `suite.resolved.json`; `--results` may name one such folder or a parent
of several (`results/<suite>/`). Every table is read through its one reader in qsens.store (read-only, so the board
works on a read-only results folder): cells with every column, fits as qsens.fit.pipeline wrote them (see
qsens.board.fits for what the board derives from them), run records as `qsens nightly` appended them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from qsens.store.cells import read_cells
from qsens.store.fits import read_fits
from qsens.store.runs import read_runs
from qsens.store.sqlite import DB_NAME


@dataclass
class BoardData:
    """Everything read from the results: cells (all columns), stored fit records, run records, resolved suites."""

    cells: list[dict] = field(default_factory=list)
    fits: list[dict] = field(default_factory=list)
    suites: dict[str, dict] = field(default_factory=dict)
    runs: list[dict] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)


def result_dirs(path: str | Path) -> list[Path]:
    """`path` itself if it holds a results database, else its immediate subfolders that do (sorted)."""
    root = Path(path)
    if (root / DB_NAME).is_file():
        return [root]
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if (p / DB_NAME).is_file())


def _cell_order(cell: dict) -> tuple:
    # The board's display order: None sorts last within its column (SQL puts it first), and numbers and strings
    # are never compared with each other.
    def part(k):
        v = cell.get(k)
        return (v is None, v if isinstance(v, (int, float)) else 0, "" if v is None else str(v))
    return tuple(part(k) for k in ("family", "n_params", "tokens", "checkpoint", "eval", "method", "bits",
                                   "quantizer"))


def _unique_runs(runs: list[dict]) -> list[dict]:
    # One nightly run is recorded in every results folder it touched: show it once, newest first.
    seen = {}
    for r in runs:
        seen.setdefault((r.get("kind"), r.get("started_at"), r.get("suite")), r)
    return sorted(seen.values(), key=lambda r: str(r.get("started_at") or ""), reverse=True)


def read_suite(folder: Path) -> dict | None:
    path = folder / "suite.resolved.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def load(results: str | Path) -> BoardData:
    """Read every results folder under `results`; raise FileNotFoundError if there is none."""
    dirs = result_dirs(results)
    if not dirs:
        raise FileNotFoundError(f"no {DB_NAME} in {results} or its subfolders")
    data = BoardData(sources=[str(d) for d in dirs])
    for d in dirs:
        data.cells += sorted(read_cells(d), key=_cell_order)
        data.fits += read_fits(d)[0]  # the schedule comparisons are not shown
        data.runs += read_runs(d)
        suite = read_suite(d)
        if suite:
            data.suites[suite.get("spec", {}).get("name") or d.name] = suite
    data.runs = _unique_runs(data.runs)
    return data
