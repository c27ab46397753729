"""Read what the board shows: cells, fits and resolved suites of one or more results folders, read-only.

A results folder holds `qsens.sqlite` (table `cells`, and `fits` once `qsens fit` has run) and
`suite.resolved.json`. `--results` may name one such folder or a parent of several (`results/<suite>/`).
Fits are read defensively: another tool owns that table, so a missing table means no fits, and columns are
taken by name with JSON decoded where it parses.
"""

from __future__ import annotations

import json
import math
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from qsens.store.sqlite import DB_NAME, connect

# Parameter names that are exponents of a scaling law; shown in the index (all parameters are on family pages).
EXPONENT_NAMES = {"alpha", "beta", "gamma", "delta", "exponent", "a", "b", "c", "k_exp", "p"}


@dataclass
class BoardData:
    """Everything read from the results: cells (all columns), normalized fits, resolved suites by name."""

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


def _connect_ro(db: Path) -> sqlite3.Connection:
    # Read-only: the board never creates, migrates or locks a results database for writing (and reads one in a
    # read-only folder).
    return connect(db, readonly=True)


def _table_rows(db: Path, table: str) -> list[dict]:
    con = _connect_ro(db)
    try:
        exists = con.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (table,)).fetchone()
        return [dict(r) for r in con.execute(f"SELECT * FROM {table}")] if exists else []
    finally:
        con.close()


def _cell_order(cell: dict) -> tuple:
    # None sorts last within its column; numbers and strings are never compared with each other.
    def part(k):
        v = cell.get(k)
        return (v is None, v if isinstance(v, (int, float)) else 0, "" if v is None else str(v))
    return tuple(part(k) for k in ("family", "n_params", "tokens", "checkpoint", "eval", "method", "bits",
                                   "quantizer"))


def read_cells(db: Path) -> list[dict]:
    """Every cell with every column, in the store's order (family, N, D, checkpoint, eval, method, bits)."""
    return sorted(_table_rows(db, "cells"), key=_cell_order)


def _maybe_json(value):
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _finite(x) -> float | None:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _params(raw) -> list[dict]:
    """Fit parameters as [{name, value, lo, hi}] from {name: v}, {name: [v, lo, hi]}, {name: {value, ci_low...}}
    or a list of such dicts; CIs may also come as a separate mapping (merged by `normalize_fit`)."""
    out = []
    items = raw.items() if isinstance(raw, dict) else ((p.get("name"), p) for p in raw if isinstance(p, dict)) \
        if isinstance(raw, list) else ()
    for name, v in items:
        if isinstance(v, dict):
            value = v.get("value", v.get("estimate"))
            lo, hi = v.get("ci_low", v.get("low", v.get("lo"))), v.get("ci_high", v.get("high", v.get("hi")))
        elif isinstance(v, (list, tuple)):
            value, lo, hi = (list(v) + [None, None, None])[:3]
        else:
            value, lo, hi = v, None, None
        out.append({"name": str(name), "value": _finite(value), "lo": _finite(lo), "hi": _finite(hi)})
    return out


def _first(row: dict, *names):
    for n in names:
        if row.get(n) is not None:
            return row[n]
    return None


def normalize_fit(row: dict) -> dict:
    """One `fits` row as the board's fit record. Unknown columns are kept under `raw` for the family page."""
    row = {k: _maybe_json(v) for k, v in row.items()}
    params = _params(_first(row, "params", "parameters", "params_json", "parameters_json") or {})
    ci = _first(row, "params_ci", "ci", "params_ci_json")
    if isinstance(ci, dict):  # CIs stored apart from the point estimates: {name: [lo, hi]}
        for p in params:
            bounds = ci.get(p["name"])
            if isinstance(bounds, (list, tuple)) and len(bounds) == 2:
                p["lo"], p["hi"] = _finite(bounds[0]), _finite(bounds[1])
    bits = row.get("bits")
    pooled = bits is None or str(bits).lower() in ("pooled", "all", "") or bool(row.get("pooled"))
    family = row.get("family")
    schedule = row.get("schedule")
    if isinstance(family, str) and "/" in family and schedule is None:  # "family/schedule" written as one key
        family, schedule = family.split("/", 1)
    return {
        "key": str(_first(row, "key", "fit_key", "id") or ""), "law": str(_first(row, "law", "law_name") or "?"),
        "family": family, "schedule": schedule, "eval": row.get("eval"), "method": row.get("method"),
        "bits": None if pooled else _int(bits), "pooled": pooled, "group_size": _int(row.get("group_size")),
        "quantizer": row.get("quantizer"), "params": params,
        "exponents": [p for p in params if p["name"].lower() in EXPONENT_NAMES] or params,
        "r2": _finite(_first(row, "r2", "r_squared", "R2")),
        "loo": _first(row, "loo", "loo_errors", "loo_rmse", "loo_json", "loo_errors_json"),
        "n_points": _int(_first(row, "n_points", "n", "points")),
        "d_star": _first(row, "d_star", "d_star_json", "dstar", "d_star_predictions"),
        "created_at": row.get("created_at"), "raw": row,
        # qsens.fit's verdict and diagnostics (None for fits stored without them); family may list several
        "families": [f for f in str(family or "").split(",") if f], "bits_axis": row.get("bits_axis"),
        "verdict": row.get("verdict"), "diagnostics": _diagnostics(row.get("diagnostics")),
    }


def _diagnostics(raw) -> dict | None:
    """The few diagnostics the board shows: residual SD, curvature p-value, LOO RMS (log units), reasons."""
    if not isinstance(raw, dict):
        return None
    curvature = raw.get("curvature") if isinstance(raw.get("curvature"), dict) else {}
    return {"residual_sd": _finite(raw.get("residual_sd")), "curvature_p": _finite(curvature.get("p_value")),
            "loo_rms": _finite(raw.get("loo_rms")), "reasons": [str(r) for r in raw.get("reasons") or []]}


def _int(x) -> int | None:
    try:
        return int(x) if x is not None and str(x) != "" else None
    except (TypeError, ValueError):
        return None


def read_fits(db: Path) -> list[dict]:
    """Normalized fits of one database; [] when no fit has been stored there (or the table is unreadable)."""
    try:
        rows = _table_rows(db, "fits")
    except sqlite3.Error:
        return []  # a fits table mid-migration by its owner must not take the board down
    return [normalize_fit(r) for r in rows]


RUN_FIELDS = ("kind", "suite", "started_at", "finished_at", "ok", "cells_planned", "cells_computed", "cells_skipped",
              "cells_failed", "executor", "device", "git_commit", "qsens_version")


def read_runs(db: Path) -> list[dict]:
    """Run records (`qsens nightly` writes a `runs` table), oldest first; [] when there are none."""
    try:
        rows = _table_rows(db, "runs")
    except sqlite3.Error:
        return []
    return [{k: r.get(k) for k in RUN_FIELDS} for r in rows]


def _unique_runs(runs: list[dict]) -> list[dict]:
    # One nightly run is recorded in every results folder it touched: show it once.
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
        data.cells += read_cells(d / DB_NAME)
        data.fits += read_fits(d / DB_NAME)
        data.runs += read_runs(d / DB_NAME)
        suite = read_suite(d)
        if suite:
            data.suites[suite.get("spec", {}).get("name") or d.name] = suite
    data.runs = _unique_runs(data.runs)
    return data
