"""Fit the stored cells of a results folder and store the fits: what `qsens fit` and `qsens nightly` both run.

`fit_results(results_dir, FitOptions(...))` reads the ok cells, fits every law on every group (qsens.fit.pipeline),
compares schedules, and writes the fits beside the cells (qsens.store.fits) unless `store=False`. Bad input raises
`FitInputError` (what is wrong, in words); a results folder that cannot be written raises `StoreError` before any
fitting starts, so minutes of bootstrap are never thrown away at the end.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from qsens.fit.groups import BITS_AXES
from qsens.fit.laws import DELTA_LAWS, LAWS
from qsens.fit.pipeline import compare_schedules, fit_cells
from qsens.metrics.docinterval import cells_document_sums
from qsens.store.cells import read_cells
from qsens.store.fits import write_fits
from qsens.store.sqlite import StoreError, connect, database

DELTA_LAW_NAMES = tuple(law.name for law in DELTA_LAWS)


class FitInputError(ValueError):
    """The results folder or the options cannot be fitted (no database, no ok cells, unknown metric...)."""


class NoCellsToFit(FitInputError):
    """The results database holds no ok cell (nothing has been computed yet, or every cell failed)."""


@dataclass(frozen=True)
class FitOptions:
    metric: str = "delta_loss"  # the degradation column fitted (D* only for delta_loss)
    n_boot: int = 1000  # bootstrap refits per fit
    seed: int = 0
    laws: tuple[str, ...] = DELTA_LAW_NAMES  # degradation laws; the Chinchilla fp-loss fit always runs
    bits_axes: tuple[str, ...] = BITS_AXES  # P of the pooled laws: nominal and/or effective bits
    store: bool = True  # False: compute only, leave the fits table as it is
    # leave out cells whose Δ is within the resolution floor (qsens.analysis.resolution), counted in FitRun
    exclude_unresolved: bool = True


@dataclass
class FitRun:
    """What a fit run produced: the stored rows (qsens.store.fits) and the schedule comparisons."""

    results: Path
    records: list[dict] = field(default_factory=list)
    comparisons: list[dict] = field(default_factory=list)
    stored: bool = False
    resolution: dict = field(default_factory=dict)  # what exclude_unresolved left out (qsens.analysis.resolution)

    @property
    def ok(self) -> int:
        return sum(r["status"] == "ok" for r in self.records)


def _check(results: Path, options: FitOptions) -> list[dict]:
    db = database(results)
    if not db.is_file():
        raise FitInputError(f"no results database at {db} (run `qsens run` first)")
    if options.n_boot < 0:
        raise FitInputError(f"bootstrap refits must be ≥ 0 (got {options.n_boot})")
    unknown = [name for name in options.laws if name not in LAWS or LAWS[name].target != "delta"]
    if unknown:
        raise FitInputError(f"unknown degradation law(s) {unknown}; known: {', '.join(DELTA_LAW_NAMES)}")
    wrong_axes = [a for a in options.bits_axes if a not in BITS_AXES]
    if wrong_axes:
        raise FitInputError(f"unknown bits axis {wrong_axes}; known: {', '.join(BITS_AXES)}")
    cells = read_cells(results, status="ok")
    if not cells:
        raise NoCellsToFit(f"no ok cells in {db}")
    if options.metric not in cells[0]:
        raise FitInputError(f"unknown metric {options.metric!r}; cell columns include delta_loss, kl_mean, ppl_ratio")
    return cells


def _check_writable(db: Path) -> None:
    """Take the write lock once, before minutes of fitting, so a read-only results folder fails at once."""
    con = connect(db)
    try:
        con.execute("BEGIN IMMEDIATE")
        con.rollback()
    except sqlite3.Error as exc:
        raise StoreError(f"cannot write the fits to {db}: {exc}") from None
    finally:
        con.close()


def fit_results(results_dir: str | Path, options: FitOptions = FitOptions(), on_fit=None) -> FitRun:
    """Fit the ok cells of `results_dir` and (unless options.store is False) store the fits there.
    on_fit(record): called as each fit ends (qsens.fit.pipeline.fit_cells), e.g. for a progress bar."""
    results = Path(results_dir)
    cells = _check(results, options)
    if options.store:
        _check_writable(database(results))
    resolution = {}
    if options.exclude_unresolved:
        from qsens.analysis.resolution import for_fits

        # unresolved cells stay for the fp-loss fit; the degradation fits exclude them with a reason (groups.py)
        cells, resolution = for_fits(cells, seed=options.seed)
        if not any(c.get("unresolved") is False for c in cells):
            raise NoCellsToFit(f"every ok cell in {database(results)} is within its resolution floor")
    laws = tuple(LAWS[name] for name in options.laws)
    fitted = fit_cells(cells, metric=options.metric, n_boot=options.n_boot, seed=options.seed, laws=laws,
                       bits_axes=options.bits_axes, documents=cells_document_sums, on_fit=on_fit)
    run = FitRun(results, [f.record for f in fitted], compare_schedules(fitted), resolution=resolution)
    if options.store:
        write_fits(results, run.records, run.comparisons)
        run.stored = True
    return run
