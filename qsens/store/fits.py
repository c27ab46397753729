"""The `fits` and `fit_comparisons` tables, beside the cells: one row per (law, group, metric) of qsens.fit.

Each row's `key` hashes the fit's inputs (law, grouping, metric, sorted cell keys and their values), so
re-running `qsens fit` on the same cells replaces the row. A fit whose inputs changed (new or re-measured cells)
gets a new key and *supersedes* the older row of the same (law, metric, group): that row is deleted, so the
table holds the current fit of each group and never two. A group is identified by its fit group (`fit_group`,
`family` lists the member families) and bits axis; rows an older qsens stored without them are dropped on the next
save. `diagnostics` (JSON) and `verdict` ("fits", "does not fit", "degenerate", "unchecked", "insufficient") say
whether the law fits (qsens.fit.diagnostics); `fp_verdict` is the verdict of the fp-loss fit beside a D* table.
Structured columns are JSON. `fit_comparisons` holds the schedule comparisons of the last run, keyed by the two
fits' keys (comparisons of superseded fits are dropped).

Re-running `qsens fit` on unchanged cells changes no byte of the database: a row equal to the stored one (floats
to 1e-9 relative, NaN equal to NaN, `created_at` aside) is left as it is, so its `created_at` says when the fit
last changed rather than when it was last recomputed.
"""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path

from qsens.fit.groups import GROUP_FIELDS
from qsens.provenance import utc_now
from qsens.store.sqlite import StoreError, connect, database, migrate, read_rows

FIT_COLUMNS = [
    ("key", "TEXT PRIMARY KEY"), ("law", "TEXT NOT NULL"), ("formula", "TEXT"), ("metric", "TEXT NOT NULL"),
    ("family", "TEXT"), ("schedule", "TEXT"), ("eval", "TEXT"), ("method", "TEXT"), ("group_size", "INTEGER"),
    ("settings", "TEXT"), ("bits", "INTEGER"), ("pooled", "INTEGER"), ("quantizer", "TEXT"),
    ("status", "TEXT NOT NULL"), ("message", "TEXT"), ("params", "TEXT"), ("r2", "REAL"), ("residuals", "TEXT"),
    ("loo", "TEXT"), ("n_points", "INTEGER"), ("n_excluded", "INTEGER"), ("excluded", "TEXT"),
    ("d_star", "TEXT"), ("fp_fit_key", "TEXT"), ("n_boot", "INTEGER"), ("n_boot_failed", "INTEGER"),
    ("seed", "INTEGER"), ("draws", "TEXT"), ("inputs", "TEXT"), ("created_at", "TEXT"),
    ("fit_group", "TEXT"), ("bits_axis", "TEXT"), ("diagnostics", "TEXT"), ("verdict", "TEXT"), ("fp_verdict", "TEXT"),
]
FIT_COLUMN_NAMES = [n for n, _ in FIT_COLUMNS]
JSON_COLUMNS = {"params", "residuals", "loo", "excluded", "d_star", "draws", "inputs", "diagnostics"}
IDENTITY = ("law", "metric") + GROUP_FIELDS


COMPARISON_COLUMNS = [("fit_a", "TEXT"), ("fit_b", "TEXT"), ("exponent", "TEXT"), ("body", "TEXT"),
                      ("created_at", "TEXT")]


def ensure_tables(con: sqlite3.Connection) -> None:
    """Create `fits` and `fit_comparisons` if missing; add columns a newer qsens defines."""
    migrate(con, "fits", FIT_COLUMNS)
    migrate(con, "fit_comparisons", COMPARISON_COLUMNS, suffix="PRIMARY KEY (fit_a, fit_b, exponent)")


def _row(record: dict, created_at: str) -> dict:
    row = {n: record.get(n) for n in FIT_COLUMN_NAMES}
    row["pooled"] = int(record.get("bits") is None)
    row["created_at"] = created_at
    for name in JSON_COLUMNS:
        if row[name] is not None:
            row[name] = json.dumps(row[name], sort_keys=True, allow_nan=True)
    return row


def _same(a, b) -> bool:
    """Equal as stored data, floats to 1e-9 relative (a refit may differ in the last digit), NaN equal to NaN."""
    if isinstance(a, str) and isinstance(b, str) and a[:1] in "[{" and b[:1] in "[{":
        try:
            return _same(json.loads(a), json.loads(b))
        except ValueError:
            return a == b
    if isinstance(a, float) or isinstance(b, float):
        if not isinstance(a, (int, float)) or not isinstance(b, (int, float)):
            return False
        return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-300)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _unchanged(con: sqlite3.Connection, table: str, where: dict, row: dict) -> bool:
    clause = " AND ".join(f"{k} IS ?" for k in where)
    old = con.execute(f"SELECT * FROM {table} WHERE {clause}", list(where.values())).fetchone()
    return old is not None and all(_same(old[k], v) for k, v in row.items() if k != "created_at")


def save_fits(con: sqlite3.Connection, records: list[dict], comparisons: list[dict] = ()) -> int:
    """Insert or replace fits (and drop superseded rows of the same identity), in one transaction; rows equal to
    the stored ones are not rewritten (see the module docstring)."""
    created_at = utc_now()
    with con:
        ensure_tables(con)
        con.execute("DELETE FROM fits WHERE fit_group IS NULL")  # stored by an older qsens: not supersedable
        for record in records:
            row = _row(record, created_at)
            where = " AND ".join(f"{k} IS ?" for k in IDENTITY)
            con.execute(f"DELETE FROM fits WHERE key != ? AND {where}", [row["key"], *(row[k] for k in IDENTITY)])
            if _unchanged(con, "fits", {"key": row["key"]}, row):
                continue
            con.execute(f"INSERT OR REPLACE INTO fits ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                        list(row.values()))
        for c in comparisons:
            row = {"fit_a": c["fit_keys"][0], "fit_b": c["fit_keys"][1], "exponent": c["exponent"],
                   "body": json.dumps(c, sort_keys=True), "created_at": created_at}
            if _unchanged(con, "fit_comparisons", {k: row[k] for k in ("fit_a", "fit_b", "exponent")}, row):
                continue
            con.execute("INSERT OR REPLACE INTO fit_comparisons VALUES (?, ?, ?, ?, ?)", list(row.values()))
        # comparisons of fits that were superseded compare nothing stored any more
        con.execute("DELETE FROM fit_comparisons WHERE fit_a NOT IN (SELECT key FROM fits) "
                    "OR fit_b NOT IN (SELECT key FROM fits)")
    return len(records)


def load_fits(con: sqlite3.Connection) -> list[dict]:
    """Every stored fit, JSON columns decoded, ordered by law and group ([] before any fit was stored). Reads
    only, so it works on a read-only results folder; a column an older qsens did not write reads as None."""
    rows = read_rows(con, "fits", FIT_COLUMN_NAMES, order=["law", "family", "schedule", "eval", "method", "settings",
                                                          "bits"])
    return [{k: (json.loads(v) if k in JSON_COLUMNS and v is not None else v) for k, v in r.items()} for r in rows]


def load_comparisons(con: sqlite3.Connection) -> list[dict]:
    """The stored schedule comparisons (pipeline.compare_schedules records), in a stable order; reads only."""
    return [json.loads(r["body"]) for r in read_rows(con, "fit_comparisons", order=["fit_a", "fit_b", "exponent"])]


def read_fits(results_dir: str | Path) -> tuple[list[dict], list[dict]]:
    """(fits, schedule comparisons) of a results folder, read-only; ([], []) when it has no database or no fits."""
    path = database(results_dir)
    if not path.is_file():
        return [], []
    con = connect(path, readonly=True)
    try:
        return load_fits(con), load_comparisons(con)
    finally:
        con.close()


def write_fits(results_dir: str | Path, records: list[dict], comparisons: list[dict] = ()) -> None:
    """Store fits in a results folder (see `save_fits`); raises StoreError when it cannot be written."""
    con = connect(database(results_dir))
    try:
        save_fits(con, records, comparisons)
    except sqlite3.Error as exc:  # disk full, read-only: the transaction rolled back, the old fits are intact
        raise StoreError(f"cannot store the fits in {database(results_dir)}: {exc}") from None
    finally:
        con.close()
