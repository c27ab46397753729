"""Two `qsens run` processes on one results folder (issue 16): they share the work and compute no cell twice.

(A killed run's claims being taken over is test_faults.py's kill test; the claim rules are tests/store/test_claims.py.)"""

from __future__ import annotations

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


def _wait_for(results: Path, predicate, proc: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and proc.poll() is None:
        if predicate(_cells(results)):
            return
        time.sleep(0.05)
    raise AssertionError(f"condition not reached; run exited {proc.poll()}: {proc.stderr.read()[-2000:] if proc.poll() is not None else ''}")


def test_two_runs_share_the_work_and_compute_no_cell_twice(suite_writer, tiny_checkpoints, tmp_path):
    suite = _four_checkpoint_suite(suite_writer, tiny_checkpoints, "share")
    results = tmp_path / "res"
    first = _run(suite, results, tmp_path)
    _wait_for(results, lambda cells: any(c["status"] == "running" for c in cells.values()), first)
    second = _run(suite, results, tmp_path)
    out = [p.communicate(timeout=300) for p in (first, second)]
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
