"""The `cells` table: one row per cell, written one cell per transaction (qsens.store.sqlite opens the file).

A cell's `key` hashes its full configuration (see `qsens.runner.plan`), so a changed protocol, eval text,
checkpoint or quantizer setting is a new cell, never a reused number. The database runs in WAL mode with
synchronous=FULL: a crash (even `kill -9`) loses only work in flight (see `claim`); finished cells are never lost.

Several processes may run on one results folder: a run *claims* a checkpoint's pending cells in one
`BEGIN IMMEDIATE` transaction before computing them, recording itself as their `owner` ("host:pid:start time").
A claimed cell is 'running' with no `started_at` until its quantizer setting starts (`mark_running`), so after a
crash the cells with a `started_at` are the ones that were in flight.
A claim takes a cell that has no row, a failed row, or a 'running' row whose owner is dead (same host, process
gone) or unknown; it never takes an 'ok' row or a cell a live process is computing. So two runs share the work,
and a claimed cell left 'running' by a killed run is recomputed by the next one. A claim from another host is
respected for `FOREIGN_CLAIM_HOURS` (its liveness cannot be checked). A finished row never replaces an 'ok' one.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterator

from qsens.metrics.paired import CI_METRICS
from qsens.provenance import utc_now
from qsens.store.sqlite import DB_NAME, StoreError, connect, migrate, read_rows

IDENTITY = [
    ("key", "TEXT PRIMARY KEY"), ("suite", "TEXT"), ("family", "TEXT"), ("checkpoint", "TEXT"), ("schedule", "TEXT"),
    ("size", "TEXT"), ("n_params", "INTEGER"), ("tokens", "INTEGER"), ("location", "TEXT"), ("revision", "TEXT"),
    ("stage", "TEXT"), ("train_seed", "INTEGER"), ("fit_group", "TEXT"),
    ("eval", "TEXT"), ("eval_hash", "TEXT"), ("protocol_hash", "TEXT"), ("protocol_json", "TEXT"),
    ("tokens_digest", "TEXT"), ("method", "TEXT"), ("bits", "INTEGER"), ("group_size", "INTEGER"),
    ("quantizer", "TEXT"), ("settings_json", "TEXT"),
]
OUTCOME = [
    ("status", "TEXT NOT NULL"), ("error", "TEXT"), ("seconds", "REAL"), ("quant_seconds", "REAL"),
    ("effective_bits", "REAL"), ("layers_quantized", "INTEGER"), ("backend", "TEXT"),
    ("peak_memory_bytes", "INTEGER"), ("details_json", "TEXT"), ("attempts", "INTEGER DEFAULT 0"),
    ("window_sums", "TEXT"),  # per-window sums for paired comparisons (qsens.metrics.compare)
    ("stats_json", "TEXT"),  # llama.cpp's statistics (qsens.metrics.llamacpp_stats) when the suite asks for them
    # peaks over the cell's resident group (quantization + scoring): host RSS, CUDA memory, temp-folder bytes
    ("peak_rss_bytes", "INTEGER"), ("peak_gpu_bytes", "INTEGER"), ("temp_disk_bytes", "INTEGER"),
    ("owner", "TEXT"), ("claimed_at", "TEXT"),  # who claimed the cell, "host:pid:start time", and when
]
EXTRA_METRICS = [
    "delta_loss_se_iid", "fp_ppl", "q_ppl", "fp_bits_per_byte", "kl_p50", "kl_p90", "kl_p95", "kl_p99", "kl_max",
    "fp_word_perplexity", "q_word_perplexity", "n_tokens", "n_windows", "n_bytes",
    "bootstrap_block_windows", "bootstrap_block_tokens",
]
METRIC_COLUMNS = [c for m in CI_METRICS for c in (m, f"{m}_ci_low", f"{m}_ci_high")] + EXTRA_METRICS
PROVENANCE = [
    ("qsens_version", "TEXT"), ("git_commit", "TEXT"), ("torch_version", "TEXT"), ("transformers_version", "TEXT"),
    ("python_version", "TEXT"), ("device", "TEXT"), ("hostname", "TEXT"), ("seed", "INTEGER"),
    ("started_at", "TEXT"), ("finished_at", "TEXT"),
    # the computing process's matmul route (qsens.blas.route(): 'mkl-intel-path' or 'default') and torch threads
    ("blas_route", "TEXT"), ("threads", "INTEGER"),
]
COLUMNS = IDENTITY + OUTCOME + [(m, "REAL") for m in METRIC_COLUMNS] + PROVENANCE
COLUMN_NAMES = [name for name, _ in COLUMNS]
FOREIGN_CLAIM_HOURS = 24
CELL_ORDER = ["family", "n_params", "tokens", "checkpoint", "eval", "method", "bits", "quantizer"]


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), so a reused pid is not mistaken for it."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return None


def process_id() -> str:
    """This process as a claim owner: 'host:pid:start time'."""
    return f"{socket.gethostname()}:{os.getpid()}:{_start_time(os.getpid()) or '-'}"


def owner_alive(owner: str | None, claimed_at: str | None) -> bool:
    """Whether the process that claimed a cell may still be computing it."""
    if not owner:
        return False
    host, _, rest = owner.partition(":")
    pid, _, start = rest.partition(":")
    if host != socket.gethostname():
        try:
            age = datetime.now(timezone.utc) - datetime.fromisoformat(claimed_at or "")
        except ValueError:
            return False
        return age < timedelta(hours=FOREIGN_CLAIM_HOURS)
    if not pid.isdigit():
        return False
    now = _start_time(int(pid))
    if now is not None or start != "-":
        return now is not None and now == start
    try:  # no /proc: fall back to "a process with that pid exists"
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ResultStore:
    """The cells of one results folder. Safe to open from several processes (SQLite locking)."""

    def __init__(self, results_dir: str | Path, readonly: bool = False):
        """`readonly`: only read (report, export), which also works in a read-only folder; no migration."""
        self.dir = Path(results_dir)
        self.path = self.dir / DB_NAME
        self.owner = process_id()
        self.readonly = readonly
        if readonly:
            if not self.path.is_file():
                raise StoreError(f"no {DB_NAME} in {self.dir}")
            return
        if self.dir.exists() and not self.dir.is_dir():
            raise StoreError(f"results folder {self.dir} is a file, not a folder")
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create results folder {self.dir}: {exc.strerror or exc}") from None
        with self.connect() as con:
            migrate(con, "cells", COLUMNS)  # an older database gains newer columns

    @contextmanager
    def connect(self) -> Iterator[sqlite3.Connection]:
        """A connection in one transaction: committed on success, rolled back on error, always closed."""
        con = connect(self.path, readonly=self.readonly)
        try:
            with con:
                yield con
        except sqlite3.Error as exc:  # read-only folder, disk full, not a database: the transaction rolled back
            raise StoreError(f"cannot use {self.path}: {exc}") from None
        finally:
            con.close()

    def statuses(self) -> dict[str, str]:
        with self.connect() as con:
            return {r["key"]: r["status"] for r in con.execute("SELECT key, status FROM cells")}

    def done_keys(self) -> set[str]:
        return {k for k, s in self.statuses().items() if s == "ok"}

    def set_fit_groups(self, groups: dict[str, str | None]) -> None:
        """{cell key: fit group}: the suite's grouping of already computed cells (a label, not a measurement, so a
        suite that declares or changes `fit_group` regroups its cells without recomputing them)."""
        with self.connect() as con:
            con.executemany("UPDATE cells SET fit_group = ? WHERE key = ?", [(g, k) for k, g in groups.items()])

    def claim(self, rows: list[dict]) -> tuple[list[str], dict[str, str]]:
        """Claim cells for this process, atomically (see the module docstring); `rows` are identity rows.

        Returns (keys claimed, {key: owner} of the cells a live process holds). Cells already 'ok' are neither.
        Each claimed cell becomes 'running' with no started_at, keeping nothing of an earlier attempt's metrics.
        """
        now = utc_now()
        claimed, elsewhere = [], {}
        with self.connect() as con:
            con.execute("BEGIN IMMEDIATE")  # the write lock before reading: no other claim interleaves
            for row in rows:
                prev = con.execute("SELECT status, owner, claimed_at, attempts FROM cells WHERE key = ?",
                                   (row["key"],)).fetchone()
                if prev is not None and prev["status"] == "ok":
                    continue
                if (prev is not None and prev["status"] == "running" and prev["owner"] != self.owner
                        and owner_alive(prev["owner"], prev["claimed_at"])):
                    elsewhere[row["key"]] = prev["owner"]
                    continue
                self._upsert(con, {**row, "status": "running", "error": None, "attempts": prev["attempts"] if prev
                                   else 0, "owner": self.owner, "claimed_at": now, "started_at": None})
                claimed.append(row["key"])
        return claimed, elsewhere

    def mark_running(self, row: dict) -> None:
        """A claimed cell's computation starts now: its started_at and attempts + 1 (an unclaimed cell is untouched)."""
        with self.connect() as con:
            con.execute("UPDATE cells SET started_at = ?, attempts = COALESCE(attempts, 0) + 1 "
                        "WHERE key = ? AND status = 'running' AND owner = ?",
                        (row.get("started_at"), row["key"], self.owner))

    def save(self, row: dict, overwrite: bool = False) -> bool:
        """Write a finished cell (status 'ok' or 'failed'), keeping its attempt count. Never replaces an 'ok' row
        (unless `overwrite`, for tools that deliberately replace a number), nor a cell another live process has
        claimed since; returns whether the row was written."""
        with self.connect() as con:
            con.execute("BEGIN IMMEDIATE")
            prev = con.execute("SELECT status, owner, claimed_at, attempts FROM cells WHERE key = ?",
                               (row["key"],)).fetchone()
            if prev is not None and not overwrite and (prev["status"] == "ok" or (
                    prev["status"] == "running" and prev["owner"] not in (None, self.owner)
                    and owner_alive(prev["owner"], prev["claimed_at"]))):
                return False
            attempts = max(prev["attempts"] or 0, 1) if prev else 1
            self._upsert(con, {"attempts": attempts, **row, "owner": self.owner})
            return True

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
        """Every cell (or those with `status`) as a dict of every column, in a stable order; a column an older
        database lacks reads as None."""
        with self.connect() as con:
            return read_rows(con, "cells", COLUMN_NAMES, "status = ?" if status else "", (status,) if status else (),
                             CELL_ORDER)

    def integrity_ok(self) -> bool:
        with self.connect() as con:
            return con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def read_cells(results_dir: str | Path, status: str | None = None) -> list[dict]:
    """The cells of a results folder, read-only (works in a read-only folder; never creates or migrates)."""
    return ResultStore(results_dir, readonly=True).cells(status)
