"""Run records: one row per nightly (or other scheduled) run, in a `runs` table beside the cells.

A record says when a run started and ended, how many cells it computed, skipped and failed, which code and
libraries ran it, on what device, and whether it succeeded. The full record is kept as JSON too, so a field
added later is never lost by an older reader.
"""

from __future__ import annotations

import json
from pathlib import Path

from qsens.store.sqlite import connect, database, migrate, read_rows

RUN_COLUMNS = [
    ("id", "INTEGER PRIMARY KEY AUTOINCREMENT"), ("kind", "TEXT NOT NULL"), ("suite", "TEXT"),
    ("started_at", "TEXT NOT NULL"), ("finished_at", "TEXT"), ("ok", "INTEGER NOT NULL"),
    ("cells_planned", "INTEGER"), ("cells_computed", "INTEGER"), ("cells_skipped", "INTEGER"),
    ("cells_failed", "INTEGER"), ("executor", "TEXT"), ("device", "TEXT"), ("git_commit", "TEXT"),
    ("qsens_version", "TEXT"), ("torch_version", "TEXT"), ("transformers_version", "TEXT"),
    ("hostname", "TEXT"), ("record_json", "TEXT NOT NULL"),
]
_NAMES = [n for n, _ in RUN_COLUMNS if n != "id"]


def append_run(results_dir: str | Path, record: dict) -> int:
    """Store `record` (its top-level keys that are run columns, plus the whole of it as JSON); returns its id."""
    row = {n: record.get(n) for n in _NAMES if n != "record_json"}
    row["ok"] = int(bool(record.get("ok")))
    row["record_json"] = json.dumps(record, sort_keys=True, default=str)
    Path(results_dir).mkdir(parents=True, exist_ok=True)
    con = connect(database(results_dir))
    try:
        with con:
            migrate(con, "runs", RUN_COLUMNS)
            cur = con.execute(f"INSERT INTO runs ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                              list(row.values()))
        return int(cur.lastrowid)
    finally:
        con.close()


def read_runs(results_dir: str | Path) -> list[dict]:
    """Every run record of a results folder, oldest first ([] when none was stored); read-only."""
    path = database(results_dir)
    if not path.is_file():
        return []
    con = connect(path, readonly=True)
    try:
        return read_rows(con, "runs", [n for n, _ in RUN_COLUMNS], order=["id"])
    finally:
        con.close()
