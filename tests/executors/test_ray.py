"""The Ray executor: the same numbers as the local one, and a worker killed mid-cell loses only that cell (a
worker dying right after its first stored row gets back only the rest of its job, or those are failed with why).

Runs a local Ray instance on 2 CPUs with its files in a temporary dir (RAY_AUTH_MODE=disabled).
"""

import dataclasses
import json
import os
import signal
import sqlite3
import sys
import time
from pathlib import Path

import pytest
import torch

from qsens import blas
from qsens.runner.loop import run_suite
from qsens.store import ResultStore
from qsens.store.cells import METRIC_COLUMNS
from qsens.suites.load import load_suite

pytest.importorskip("ray")


def _by_key(results) -> dict:
    return {c["key"]: c for c in ResultStore(results).cells()}


def test_ray_gives_the_local_numbers(tiny_suite, tmp_path, ray_env):
    suite = load_suite(tiny_suite)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a Ray task gets 1 CPU and sets 1 thread: the same reduction order as here
    try:
        local = run_suite(suite, tmp_path / "local", progress=False)
    finally:
        torch.set_num_threads(threads)
    distributed = run_suite(suite, tmp_path / "ray", executor="ray", progress=False, **ray_env)
    assert local.computed == distributed.computed == 6 and distributed.failed == 0
    a, b = _by_key(tmp_path / "local"), _by_key(tmp_path / "ray")
    assert a.keys() == b.keys()
    for key in a:
        for m in METRIC_COLUMNS + ["fp_loss", "q_loss", "effective_bits", "layers_quantized"]:
            x, y = a[key].get(m), b[key].get(m)
            assert (x is None and y is None) or x == pytest.approx(y, rel=1e-9, abs=1e-12), (m, x, y)
        assert b[key]["status"] == "ok" and b[key]["attempts"] == 1
        assert b[key]["threads"] == a[key]["threads"] == 1  # read in the worker as it computed the cell
    # incremental: a second ray run finds nothing to do
    again = run_suite(suite, tmp_path / "ray", executor="ray", progress=False, **ray_env)
    assert again.skipped == 6 and again.computed == 0


@pytest.mark.skipif(not blas.torch_uses_mkl() or not sys.platform.startswith("linux"),
                    reason="the shim applies to torch builds with MKL on Linux")
def test_ray_workers_take_the_route_passed_to_them_and_record_their_own(tiny_suite, tmp_path, ray_env,
                                                                         monkeypatch):
    """The raylet starts workers with its own environment: `env_vars` (what `run_suite` passes from
    `blas.worker_env()` when the driver runs with the shim) reach the worker process as it starts, so LD_PRELOAD
    applies; each cell's blas_route is read in its worker (the driver's route() is patched to a value no worker
    can return). On an AMD CPU the driver runs the default route, so the workers' Intel path shows the preload
    arrived; on an Intel CPU MKL takes that path without the shim, and only the first part is shown there."""
    lib = blas.shim_library(tmp_path / "blas")
    assert lib is not None, "gcc is part of the test environment"
    driver_route = blas.route()
    monkeypatch.setattr(blas, "route", lambda: "read-in-the-driver")
    suite = dataclasses.replace(load_suite(tiny_suite), checkpoints=load_suite(tiny_suite).checkpoints[:1])
    summary = run_suite(suite, tmp_path / "res", executor="ray", progress=False, env_vars={"LD_PRELOAD": str(lib)},
                        **ray_env)
    cells = ResultStore(tmp_path / "res").cells()
    assert summary.computed == 3 and {c["blas_route"] for c in cells} == {blas.INTEL_PATH}
    if not blas.native_intel_path():
        assert driver_route == blas.DEFAULT


def _parent(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def _is_task(pid: int) -> bool:
    return Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::_run_job")


def _task_pids() -> list[int]:
    """Workers of the Ray instance this test started (descendants of this process) now running a qsens
    checkpoint task: Ray titles them `ray::_run_job` while they run it. A child the worker forks carries the
    same title until it execs, so only the outermost such process counts."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if not _is_task(int(entry.name)) or _is_task(_parent(int(entry.name))):
                continue
            pid = int(entry.name)
            while pid > 1 and pid != os.getpid():
                pid = _parent(pid)
        except OSError:
            continue
        if pid == os.getpid():
            pids.append(int(entry.name))
    return pids


def test_a_worker_killed_mid_cell_loses_only_that_cell(suite_writer, tmp_path, ray_env, monkeypatch):
    """SIGKILL the worker as soon as its first cell is stored: its unfinished cells are recomputed by the retry,
    nothing finished is recomputed, every other cell is kept. (A worker scores its resident group together, so the
    kill may land after all its rows were sent; the next test kills a worker that has sent exactly one row, with and
    without a retry.)"""
    import qsens.runner.loop as loop

    # a longer eval text (about a second per cell) so that the kill, sent when the driver sees the first row,
    # lands while the worker is computing the next cell
    suite = load_suite(suite_writer(name="long", eval_words=12000))
    killed, log = [], []
    real_store = loop.ResultStore

    class KillingStore(real_store):
        def save(self, row):
            super().save(row)
            log.append((row["checkpoint"], row["quantizer"], row["status"]))
            if not killed and row["checkpoint"] == "a" and row["status"] == "ok":
                pids = _task_pids()
                for pid in pids:
                    os.kill(pid, signal.SIGKILL)
                killed.extend(pids or [None])

    monkeypatch.setattr(loop, "ResultStore", KillingStore)
    # 2 CPUs per task on a 2-CPU instance: one checkpoint at a time, so the only task running is a's
    summary = run_suite(suite, tmp_path / "res", executor="ray", progress=False, retries=1,
                        num_cpus_per_task=2, **ray_env)
    assert len(killed) == 1 and killed[0] is not None, f"expected one worker to kill, found {killed}"
    cells = ResultStore(tmp_path / "res").cells()
    assert len(cells) == 6 and ResultStore(tmp_path / "res").integrity_ok()
    done_before = {(c, q) for c, q, s in log[: next(i for i, e in enumerate(log) if e[0] == "a" and e[2] == "ok") + 1]
                   if s == "ok"}
    by = {(c["checkpoint"], c["quantizer"]): c for c in cells}
    for ck_q in done_before:  # finished before the kill: kept as they were, never recomputed
        assert by[ck_q]["status"] == "ok" and by[ck_q]["attempts"] == 1
    lost = [c for c in cells if c["status"] != "ok"]
    assert summary.failed == 0 and not lost
    assert sorted(log) == sorted(set(log)), "a finished cell was computed twice"
    assert all(c["status"] == "ok" for c in cells if c["checkpoint"] == "b")
    print(f"\nray worker kill (retries=1): {len(done_before)} ok before, {summary.computed} computed in all, "
          f"{len(lost)} lost (failed), {sum(c['attempts'] > 1 for c in cells)} re-run")


@pytest.mark.parametrize("retries", [0, 1])
def test_a_worker_dead_after_its_first_row_is_resubmitted_with_only_the_rest(tiny_suite, tmp_path, ray_env, retries,
                                                                               monkeypatch):
    """Checkpoint a's worker dies (os._exit) once its first final row is in the store: the job comes back with only
    the cells that have no final row (retries=1), or those are written as failed with the reason (retries=0)."""
    import qsens.runner.loop as loop
    from qsens.runner.worker import CheckpointWorker

    results, calls = tmp_path / "res", tmp_path / "calls.jsonl"

    @dataclasses.dataclass(frozen=True)
    class DiesOnce(CheckpointWorker):  # defined here, so Ray ships it by value
        results: str = ""
        calls: str = ""

        def __call__(self, job, started, finished):
            first = job.label == "a" and not Path(self.calls).exists()
            with open(self.calls, "a") as f:
                f.write(json.dumps([job.label, list(job.keys)]) + "\n")
            if not first:
                return super().__call__(job, started, finished)

            def finished_then_die(row):
                finished(row)
                for _ in range(600):  # until the driver has stored it
                    con = sqlite3.connect(f"file:{self.results}/qsens.sqlite?mode=ro", uri=True, timeout=30)
                    stored = con.execute("SELECT status FROM cells WHERE key = ?", (row["key"],)).fetchone()
                    con.close()
                    if stored and stored[0] == "ok":
                        break
                    time.sleep(0.1)
                os._exit(1)

            super().__call__(job, started, finished_then_die)

    monkeypatch.setattr(loop, "CheckpointWorker",
                        lambda suite, threads=1: DiesOnce(suite, threads, str(results), str(calls)))
    summary = run_suite(load_suite(tiny_suite), results, executor="ray", progress=False, retries=retries, **ray_env)
    cells = {c["key"]: c for c in ResultStore(results).cells()}
    a_calls = [keys for label, keys in map(json.loads, calls.read_text().splitlines()) if label == "a"]
    first_ok = next(k for k in a_calls[0] if cells[k]["status"] == "ok" and cells[k]["attempts"] == 1)
    rest = [k for k in a_calls[0] if k != first_ok]
    assert len(a_calls[0]) == 3 and len(rest) == 2
    assert all(c["status"] == "ok" for c in cells.values() if c["checkpoint"] == "b")
    if retries:
        assert a_calls[1:] == [rest]  # resubmitted once, without the finished cell
        assert summary.computed == 6 and summary.failed == 0
        assert all(cells[k]["status"] == "ok" and cells[k]["attempts"] == 2 for k in rest)
    else:
        assert a_calls[1:] == []
        assert summary.computed == 4 and summary.failed == 2
        for k in rest:  # started before the death: the failed row keeps that start
            assert cells[k]["status"] == "failed" and cells[k]["started_at"] is not None
            assert cells[k]["error"].startswith("worker lost after 1 attempt(s): ")


def _own_niceness() -> int:
    return os.getpriority(os.PRIO_PROCESS, 0)


def test_local_ray_workers_run_at_the_callers_priority(ray_env, monkeypatch):
    """Ray's default worker niceness (+15) starves qsens' tasks beside the user's own jobs (issue 25)."""
    from qsens.executors.ray import WORKER_NICENESS_ENV, connect

    monkeypatch.delenv(WORKER_NICENESS_ENV, raising=False)
    ray = connect(None, temp_dir=ray_env["temp_dir"], num_cpus=1)
    # a lambda travels by value (the test module is not importable on a worker)
    worker_niceness = ray.get(ray.remote(num_cpus=1)(lambda: os.getpriority(os.PRIO_PROCESS, 0)).remote())
    assert worker_niceness == _own_niceness()
    assert WORKER_NICENESS_ENV not in os.environ  # set only while the instance started


def test_a_users_worker_niceness_is_kept(monkeypatch):
    from qsens.executors.ray import WORKER_NICENESS_ENV, workers_at_callers_priority

    monkeypatch.setenv(WORKER_NICENESS_ENV, "7")
    with workers_at_callers_priority():
        assert os.environ[WORKER_NICENESS_ENV] == "7"
    assert os.environ[WORKER_NICENESS_ENV] == "7"


class _SlowStartingRay:
    """A stand-in for the ray module whose first `fails` inits time out as Ray's own startup wait does."""

    def __init__(self, fails: int):
        self.fails, self.inits, self.shutdowns = fails, 0, 0

    def init(self, **kwargs):
        self.inits += 1
        if self.inits <= self.fails:
            raise Exception("The current node timed out during startup. This could happen because some of the "
                            "raylet failed to startup or the GCS has become overloaded.")

    def shutdown(self):
        self.shutdowns += 1


def test_a_local_start_that_ray_gives_up_on_is_tried_again():
    from qsens.executors.ray import _start_local

    ray = _SlowStartingRay(fails=2)
    _start_local(ray, {})
    assert (ray.inits, ray.shutdowns) == (3, 2)


def test_a_local_start_that_keeps_timing_out_says_what_to_do():
    from qsens.executors.ray import _start_local

    ray = _SlowStartingRay(fails=3)
    with pytest.raises(RuntimeError, match=r"timed out during its own startup 3 times .*--executor local"):
        _start_local(ray, {})
    assert ray.shutdowns == 3
