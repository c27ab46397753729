"""Claiming cells (issue 16): atomic, never over an 'ok' row, never a cell a live process holds; a dead owner's
claim is taken over. Liveness is checked against real processes, not mocks."""

from __future__ import annotations

import socket
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pytest

from qsens.store import ResultStore
from qsens.store.cells import _start_time, owner_alive


def row(key, **kw):
    return {"key": key, "family": "f", "checkpoint": "c", "n_params": 10, "tokens": 100, "method": "rtn", "bits": 4,
            "quantizer": "rtn-w4", "eval": "e", **kw}


@pytest.fixture
def live_pid():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc.pid
    proc.kill()
    proc.wait()


def _owner(pid: int) -> str:
    return f"{socket.gethostname()}:{pid}:{_start_time(pid) or '-'}"


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _set(store, key, **fields):
    with store.connect() as con:
        con.execute(f"UPDATE cells SET {', '.join(f'{k} = ?' for k in fields)} WHERE key = ?", [*fields.values(), key])


def test_an_ok_row_is_never_claimed_nor_overwritten(tmp_path):
    store = ResultStore(tmp_path)
    store.claim([row("k")])
    store.mark_running(row("k", started_at="t0"))
    assert store.save(row("k", status="ok", delta_loss=0.25))
    assert store.claim([row("k")]) == ([], {})
    assert not store.save(row("k", status="failed", error="late duplicate"))
    (cell,) = store.cells()
    assert (cell["status"], cell["delta_loss"], cell["attempts"], cell["error"]) == ("ok", 0.25, 1, None)


def test_a_live_owner_keeps_its_cells_a_dead_one_loses_them(tmp_path, live_pid):
    store = ResultStore(tmp_path)
    store.claim([row("live"), row("dead"), row("reused")])
    _set(store, "live", owner=_owner(live_pid))
    _set(store, "dead", owner=_owner(_dead_pid()))
    _set(store, "reused", owner=f"{socket.gethostname()}:{live_pid}:1")  # the pid lives on, in another process
    claimed, elsewhere = store.claim([row("live"), row("dead"), row("reused"), row("new")])
    assert sorted(claimed) == ["dead", "new", "reused"] and elsewhere == {"live": _owner(live_pid)}
    assert not store.save(row("live", status="ok"))  # the live owner's cell is not written over either
    assert owner_alive(_owner(live_pid), None) and not owner_alive(None, None)


def test_another_hosts_claim_is_respected_for_a_day(tmp_path):
    store = ResultStore(tmp_path)
    store.claim([row("fresh"), row("old")])
    now = datetime.now(timezone.utc)
    _set(store, "fresh", owner="elsewhere.example:1:1", claimed_at=now.isoformat())
    _set(store, "old", owner="elsewhere.example:1:1", claimed_at=(now - timedelta(hours=25)).isoformat())
    claimed, elsewhere = store.claim([row("fresh"), row("old")])
    assert claimed == ["old"] and list(elsewhere) == ["fresh"]


def test_a_claim_starts_no_attempt_and_keeps_no_old_numbers(tmp_path):
    store = ResultStore(tmp_path)
    store.claim([row("k")])
    store.mark_running(row("k", started_at="t0"))
    store.save(row("k", status="failed", error="boom", delta_loss=9.0))
    store.claim([row("k")])
    (cell,) = store.cells()
    assert (cell["status"], cell["attempts"], cell["delta_loss"], cell["started_at"]) == ("running", 1, None, None)
