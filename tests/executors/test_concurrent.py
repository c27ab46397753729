"""Two `qsens run` processes on one results folder (issue 16): they share the work and compute no cell twice.

(A killed run's claims being taken over is test_faults.py's kill test; the claim rules are tests/store/test_claims.py.)"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from qsens.store import ResultStore


def _cells(results: Path) -> dict[str, dict]:
    db = results / "qsens.sqlite"
    if not db.is_file():
        return {}
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    con.row_factory = sqlite3.Row
    try:
        return {r["key"]: dict(r) for r in con.execute("SELECT key, status, owner, attempts, started_at FROM cells")}
    except sqlite3.OperationalError:
        return {}
    finally:
        con.close()


def _four_checkpoint_suite(suite_writer, tiny_checkpoints, name: str) -> Path:
    extra = "".join(f"      - {{path: {tiny_checkpoints[c]}, name: {c}2, n_params: 8192, tokens: {t}}}\n"
                    for c, t in (("a", 3000), ("b", 4000)))
    return suite_writer(extra=extra, name=name, eval_words=4000)


def _run(suite: Path, results: Path, cwd: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "qsens", "run", str(suite), "--results", str(results), "--no-progress"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd, text=True)


# Hang guards only: nothing here waits for a time to pass, so a loaded machine (issue 25: load average 15-30 on two
# cores) makes the test slower, never wrong.
WAIT_LIMIT = 1800


def _wait_for(results: Path, predicate, proc: subprocess.Popen, seconds: float = WAIT_LIMIT) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and proc.poll() is None:
        if predicate(_cells(results)):
            return
        time.sleep(0.05)
    raise AssertionError(f"condition not reached; run exited {proc.poll()}: {proc.stderr.read()[-2000:] if proc.poll() is not None else ''}")


def _stop_outside_a_write(proc: subprocess.Popen, results: Path) -> None:
    """SIGSTOP `proc` at a moment it holds no write transaction on the database (else the other run would wait
    on a lock held by a stopped process): stop, probe the write lock without waiting, let it go on if held."""
    deadline = time.monotonic() + WAIT_LIMIT
    while time.monotonic() < deadline:
        os.kill(proc.pid, signal.SIGSTOP)
        con = sqlite3.connect(results / "qsens.sqlite", timeout=0)
        try:
            con.execute("BEGIN IMMEDIATE")
            con.rollback()
            return
        except sqlite3.OperationalError:  # locked by `proc`: let it finish its transaction
            os.kill(proc.pid, signal.SIGCONT)
            time.sleep(0.05)
        finally:
            con.close()
    raise AssertionError("the run held the write lock at every probe")


def test_two_runs_share_the_work_and_compute_no_cell_twice(suite_writer, tiny_checkpoints, tmp_path):
    """The second run starts while the first is computing its first checkpoint; to make that so on a machine of
    any speed, the first is paused (SIGSTOP) until the second has claimed cells of its own, then resumed, so both
    run side by side from there on and neither can finish everything before the other starts."""
    suite = _four_checkpoint_suite(suite_writer, tiny_checkpoints, "share")
    results = tmp_path / "res"
    first = _run(suite, results, tmp_path)
    second = None
    try:
        _wait_for(results, lambda cells: any(c["status"] == "running" and c["started_at"] for c in cells.values()),
                  first)
        _stop_outside_a_write(first, results)
        second = _run(suite, results, tmp_path)
        _wait_for(results, lambda cells: any(f":{second.pid}:" in (c["owner"] or "") for c in cells.values()), second)
        os.kill(first.pid, signal.SIGCONT)
        out = [p.communicate(timeout=WAIT_LIMIT) for p in (first, second)]
    finally:
        for p in (first, second):
            if p is not None and p.poll() is None:
                os.kill(p.pid, signal.SIGCONT)
                p.kill()
                p.wait()
    assert (first.returncode, second.returncode) == (0, 0), out
    cells = _cells(results)
    assert len(cells) == 12 and all(c["status"] == "ok" for c in cells.values())
    assert all(c["attempts"] == 1 for c in cells.values()), "a cell was computed twice"
    owners = {c["owner"].split(":")[1] for c in cells.values()}
    assert owners == {str(first.pid), str(second.pid)}, owners  # both did some of the work
    assert ResultStore(results).integrity_ok()
    shared = [o for o, _ in out if "left to another live run" in o or "finished by another run" in o]
    assert shared, out  # at least one of them says so in its summary
    print(f"\nshared run: {sum(c['owner'].split(':')[1] == str(first.pid) for c in cells.values())} cells by the "
          f"first, {sum(c['owner'].split(':')[1] == str(second.pid) for c in cells.values())} by the second")
