"""Run records: one row per nightly (or other scheduled) run, in a `runs` table beside the cells.

A record says when a run started and ended, how many cells it computed, skipped and failed, which code and
libraries ran it, on what device, and whether it succeeded. The full record is kept as JSON too, so a field
added later is never lost by an older reader.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from qsens.store.db import DB_NAME

RUN_COLUMNS = [
    ("id", "INTEGER PRIMARY KEY AUTOINCREMENT"), ("kind", "TEXT NOT NULL"), ("suite", "TEXT"),
    ("started_at", "TEXT NOT NULL"), ("finished_at", "TEXT"), ("ok", "INTEGER NOT NULL"),
    ("cells_planned", "INTEGER"), ("cells_computed", "INTEGER"), ("cells_skipped", "INTEGER"),
    ("cells_failed", "INTEGER"), ("executor", "TEXT"), ("device", "TEXT"), ("git_commit", "TEXT"),
    ("qsens_version", "TEXT"), ("torch_version", "TEXT"), ("transformers_version", "TEXT"),
    ("hostname", "TEXT"), ("record_json", "TEXT NOT NULL"),
]
_NAMES = [n for n, _ in RUN_COLUMNS if n != "id"]


def _connect(results_dir: str | Path) -> sqlite3.Connection:
    path = Path(results_dir) / DB_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(path, timeout=60)
    con.row_factory = sqlite3.Row
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=FULL")
    con.execute(f"CREATE TABLE IF NOT EXISTS runs ({', '.join(f'{n} {t}' for n, t in RUN_COLUMNS)})")
    return con


def append_run(results_dir: str | Path, record: dict) -> int:
    """Store `record` (its top-level keys that are run columns, plus the whole of it as JSON); returns its id."""
    row = {n: record.get(n) for n in _NAMES if n != "record_json"}
    row["ok"] = int(bool(record.get("ok")))
    row["record_json"] = json.dumps(record, sort_keys=True, default=str)
    con = _connect(results_dir)
    try:
        with con:
            cur = con.execute(f"INSERT INTO runs ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                              list(row.values()))
        return int(cur.lastrowid)
    finally:
        con.close()


def read_runs(results_dir: str | Path) -> list[dict]:
    """Every run record of a results folder, oldest first ([] when none was stored)."""
    if not (Path(results_dir) / DB_NAME).is_file():
        return []
    con = _connect(results_dir)
    try:
        return [dict(r) for r in con.execute("SELECT * FROM runs ORDER BY id")]
    finally:
        con.close()
