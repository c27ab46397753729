"""The one way qsens opens, migrates and reads a results database (`<results>/qsens.sqlite`).

Every table (cells, runs, fits, fit_comparisons) lives in that one file and goes through this module:
`connect(path)` for writing (WAL, synchronous=FULL, created if missing), `connect(path, readonly=True)` for
reading (never creates, migrates or locks for writing, and also works in a read-only folder), `migrate` to create
a table or add the columns a newer qsens defines, and `read_rows` to read a table that may not exist yet.
Writers migrate when they write; readers never do, so a reader of an older database sees newer columns as None.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

DB_NAME = "qsens.sqlite"
BUSY_TIMEOUT_SECONDS = 60  # several runs may share one results folder: wait for their transactions, not fail


class StoreError(RuntimeError):
    """The results database cannot be opened or written (read-only folder, a file in the way, disk full...)."""


def database(results_dir: str | Path) -> Path:
    """The database file of a results folder."""
    return Path(results_dir) / DB_NAME


def connect(path: str | Path, readonly: bool = False) -> sqlite3.Connection:
    """A connection with rows as `sqlite3.Row`. Raises StoreError.

    Writing: the file is created if missing, in WAL mode with synchronous=FULL (a crash, even `kill -9`, loses no
    committed row). Reading: where the folder is writable it is a plain read-write connection that never creates
    the file (it removes the WAL's -shm/-wal files when it closes; a `mode=ro` one would leave them behind); where
    SQLite cannot even create the -shm file the database is opened as immutable (nobody can write there either).
    """
    if readonly:
        return _connect_readonly(Path(path))
    try:
        con = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_SECONDS)
        con.row_factory = sqlite3.Row
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=FULL")
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open {path}: {exc}") from None
    return con


def _connect_readonly(path: Path) -> sqlite3.Connection:
    uri = path.resolve().as_uri()
    error: Exception | None = None
    for mode in ("mode=rw", "mode=ro", "mode=ro&immutable=1"):
        try:
            con = sqlite3.connect(f"{uri}?{mode}", uri=True, timeout=BUSY_TIMEOUT_SECONDS)
            con.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.Error as exc:
            error = exc
            continue
        con.row_factory = sqlite3.Row
        return con
    raise StoreError(f"cannot read {path}: {error}")


def has_table(con: sqlite3.Connection, name: str) -> bool:
    return con.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone() is not None


def migrate(con: sqlite3.Connection, table: str, columns: list[tuple[str, str]], suffix: str = "") -> None:
    """Create `table` with `columns` ([(name, declaration)]) if missing, else add the columns it lacks (an older
    qsens wrote it). `suffix`: table constraints after the columns (e.g. a composite primary key). SQLite cannot
    add a column with PRIMARY KEY or NOT NULL (no default), so an added column gets the bare type."""
    body = ", ".join(f"{n} {t}" for n, t in columns) + (f", {suffix}" if suffix else "")
    con.execute(f"CREATE TABLE IF NOT EXISTS {table} ({body})")
    have = {row[1] for row in con.execute(f"PRAGMA table_info({table})")}
    for name, decl in columns:
        if name not in have:
            bare = decl.replace("PRIMARY KEY", "").replace("AUTOINCREMENT", "").replace("NOT NULL", "").strip()
            con.execute(f"ALTER TABLE {table} ADD COLUMN {name} {bare}")


def read_rows(con: sqlite3.Connection, table: str, columns: list[str] | None = None, where: str = "",
              params: tuple = (), order: list[str] | None = None) -> list[dict]:
    """Rows of `table` as dicts ([] when the table does not exist yet). `columns`: every row gets these keys
    (None for a column an older database lacks) besides the ones it has. `order`: columns to sort by, those the
    table lacks skipped (rowid order without any)."""
    if not has_table(con, table):
        return []
    have = {row[1] for row in con.execute(f"PRAGMA table_info({table})")}
    order_by = ", ".join(c for c in order or [] if c in have) or "rowid"
    query = f"SELECT * FROM {table}" + (f" WHERE {where}" if where else "") + f" ORDER BY {order_by}"
    blank = dict.fromkeys(columns or [])
    return [{**blank, **dict(r)} for r in con.execute(query, params)]
