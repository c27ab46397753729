"""Results store: one SQLite database per results folder, one row per cell, written one cell per transaction.

A cell's `key` hashes its full configuration (see `qsens.store.keys`), so a changed protocol, eval text,
checkpoint or quantizer setting is a new cell, never a reused number. The database runs in WAL mode with
synchronous=FULL: a crash (even `kill -9`) loses at most the cell in flight, which stays 'running' and is
recomputed on the next run, like a failed one.
"""

from __future__ import annotations

import json
import sqlite3
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from qsens.metrics.paired import CI_METRICS

DB_NAME = "qsens.sqlite"

IDENTITY = [
    ("key", "TEXT PRIMARY KEY"), ("suite", "TEXT"), ("family", "TEXT"), ("checkpoint", "TEXT"), ("schedule", "TEXT"),
    ("size", "TEXT"), ("n_params", "INTEGER"), ("tokens", "INTEGER"), ("location", "TEXT"), ("revision", "TEXT"),
    ("stage", "TEXT"), ("train_seed", "INTEGER"),
    ("eval", "TEXT"), ("eval_hash", "TEXT"), ("protocol_hash", "TEXT"), ("protocol_json", "TEXT"),
    ("tokens_digest", "TEXT"), ("method", "TEXT"), ("bits", "INTEGER"), ("group_size", "INTEGER"),
    ("quantizer", "TEXT"), ("settings_json", "TEXT"),
]
OUTCOME = [
    ("status", "TEXT NOT NULL"), ("error", "TEXT"), ("seconds", "REAL"), ("quant_seconds", "REAL"),
    ("effective_bits", "REAL"), ("layers_quantized", "INTEGER"), ("backend", "TEXT"),
    ("peak_memory_bytes", "INTEGER"), ("details_json", "TEXT"), ("attempts", "INTEGER DEFAULT 0"),
]
EXTRA_METRICS = [
    "delta_loss_se_iid", "fp_ppl", "q_ppl", "fp_bits_per_byte", "kl_p50", "kl_p90", "kl_p95", "kl_p99", "kl_max",
    "fp_word_perplexity", "q_word_perplexity", "n_tokens", "n_windows", "n_bytes",
]
METRIC_COLUMNS = [c for m in CI_METRICS for c in (m, f"{m}_ci_low", f"{m}_ci_high")] + EXTRA_METRICS
PROVENANCE = [
    ("qsens_version", "TEXT"), ("git_commit", "TEXT"), ("torch_version", "TEXT"), ("transformers_version", "TEXT"),
    ("python_version", "TEXT"), ("device", "TEXT"), ("hostname", "TEXT"), ("seed", "INTEGER"),
    ("started_at", "TEXT"), ("finished_at", "TEXT"),
]
COLUMNS = IDENTITY + OUTCOME + [(m, "REAL") for m in METRIC_COLUMNS] + PROVENANCE
COLUMN_NAMES = [name for name, _ in COLUMNS]


class ResultStore:
    """The cells of one results folder. Safe to open from several processes (SQLite locking)."""

    def __init__(self, results_dir: str | Path):
        self.dir = Path(results_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / DB_NAME
        with self.connect() as con:
            con.execute("PRAGMA journal_mode=WAL")
            cols = ", ".join(f"{n} {t}" for n, t in COLUMNS)
            con.execute(f"CREATE TABLE IF NOT EXISTS cells ({cols})")
            have = {row[1] for row in con.execute("PRAGMA table_info(cells)")}
            for name, decl in COLUMNS:  # an older database gains newer columns
                if name not in have:
                    con.execute(f"ALTER TABLE cells ADD COLUMN {name} {decl.replace('PRIMARY KEY', '')}")

    @contextmanager
    def connect(self) -> Iterator[sqlite3.Connection]:
        """A connection in one transaction: committed on success, rolled back on error, always closed."""
        con = sqlite3.connect(self.path, timeout=60)
        con.row_factory = sqlite3.Row
        con.execute("PRAGMA synchronous=FULL")
        try:
            with con:
                yield con
        finally:
            con.close()

    def statuses(self) -> dict[str, str]:
        with self.connect() as con:
            return {r["key"]: r["status"] for r in con.execute("SELECT key, status FROM cells")}

    def done_keys(self) -> set[str]:
        return {k for k, s in self.statuses().items() if s == "ok"}

    def mark_running(self, row: dict) -> None:
        """Record that a cell started (attempts + 1), keeping nothing of an earlier failed attempt's metrics."""
        with self.connect() as con:
            prev = con.execute("SELECT attempts FROM cells WHERE key = ?", (row["key"],)).fetchone()
            attempts = (prev["attempts"] or 0) + 1 if prev else 1
            self._upsert(con, {**row, "status": "running", "error": None, "attempts": attempts})

    def save(self, row: dict) -> None:
        """Insert or replace a whole cell (status 'ok' or 'failed'), keeping its attempt count."""
        with self.connect() as con:
            prev = con.execute("SELECT attempts FROM cells WHERE key = ?", (row["key"],)).fetchone()
            attempts = max(prev["attempts"] or 0, 1) if prev else 1
            self._upsert(con, {"attempts": attempts, **row})

    @staticmethod
    def _upsert(con: sqlite3.Connection, row: dict) -> None:
        unknown = set(row) - set(COLUMN_NAMES)
        if unknown:
            raise KeyError(f"not cell columns: {sorted(unknown)}")
        names = list(row)
        values = [json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v for v in row.values()]
        con.execute(
            f"INSERT OR REPLACE INTO cells ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})", values
        )

    def cells(self, status: str | None = None) -> list[dict]:
        """Every cell as a dict of all columns, in a stable order."""
        query = "SELECT * FROM cells" + (" WHERE status = ?" if status else "")
        order = " ORDER BY family, n_params, tokens, checkpoint, eval, method, bits, quantizer"
        with self.connect() as con:
            return [dict(r) for r in con.execute(query + order, (status,) if status else ())]

    def integrity_ok(self) -> bool:
        with self.connect() as con:
            return con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
