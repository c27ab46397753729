"""Run checkpoints as Ray tasks, one task per checkpoint, on a local or an existing Ray cluster.

One task per checkpoint, so its full-precision pass is shared by all of its cells (one per cell would
recompute it for every quantizer). Rows stream back to the driver through a small Ray actor as each cell starts
and ends, and the driver alone writes them to the store. A worker that dies mid-cell (killed, out of memory,
node lost) loses only the cell in flight: the driver resubmits the checkpoint's cells that have no final
row yet, up to `retries` times, then marks them failed with the reason.

Ray is an optional extra: `pip install qsens[ray]`.
"""

from __future__ import annotations

import os
import time
from typing import Callable

from tqdm.auto import tqdm

from qsens.runner.plan import Cell, identity_row
from qsens.suites.load import Suite

_POLL_SECONDS = 0.2


def _import_ray():
    try:
        import ray
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError("the ray executor needs Ray: pip install 'qsens[ray]'") from exc
    return ray


class _Inbox:
    """Rows sent by the tasks, kept in the order each task sent them (a synchronous actor runs one caller's
    calls in order), until the driver takes them."""

    def __init__(self):
        self.rows: list[dict] = []

    def put(self, row: dict) -> None:
        self.rows.append(row)

    def take(self) -> list[dict]:
        rows, self.rows = self.rows, []
        return rows


def _run_group(suite: Suite, cells: list[Cell], inbox, threads: int) -> int:
    """Task body (runs on a worker): compute one checkpoint's cells, sending each row to `inbox` as it is made.

    Rows are sent without waiting (a task blocked in `ray.get` lends its CPUs to other tasks, which would start
    more checkpoints than the node has slots); the task waits for them all only before it returns, so the
    driver finds every row in the inbox once the task is done.
    """
    import ray
    import torch

    from qsens.families.loading import resolve_device
    from qsens.provenance import provenance
    from qsens.runner.worker import run_checkpoint

    torch.set_num_threads(max(1, threads))  # the task's CPU share, not the whole node
    device = resolve_device(suite.spec.device)
    sent = []
    run_checkpoint(suite, cells[0].checkpoint, cells, device, lambda row: sent.append(inbox.put.remote(row)),
                   provenance(device))
    ray.get(sent)
    return os.getpid()


def connect(address: str | None, temp_dir: str | None = None, num_cpus: int | None = None):
    """Join the cluster at `address`, or start a local instance; returns the ray module."""
    ray = _import_ray()
    if not ray.is_initialized():
        kwargs: dict = {"address": address, "log_to_driver": False}
        if address is None:  # a local instance: these options apply only when we start it
            kwargs |= {"include_dashboard": False, "num_cpus": num_cpus}
            if temp_dir:
                kwargs["_temp_dir"] = str(temp_dir)
        ray.init(**{k: v for k, v in kwargs.items() if v is not None})
    return ray


def _gpus_per_task(ray, requested: float | None) -> float:
    if requested is not None:
        return requested
    return 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0


class _Driver:
    """Submit one task per checkpoint, record streamed rows, resubmit what a dead worker left unfinished."""

    def __init__(self, ray, suite: Suite, record: Callable[[dict], None], bar, options: dict):
        self.ray, self.suite, self.record, self.bar = ray, suite, record, bar
        self.retries = options["retries"]
        self.inbox = ray.remote(num_cpus=0)(_Inbox).remote()  # holds no CPU a checkpoint task could use
        self.remote = ray.remote(_run_group).options(
            num_cpus=options["num_cpus_per_task"], num_gpus=options["num_gpus_per_task"], max_retries=0)
        self.threads = max(1, int(options["num_cpus_per_task"]))
        self.finished: set[str] = set()
        self.running_rows: dict[str, dict] = {}
        self.pending: dict = {}  # object ref -> (cells, attempt)

    def submit(self, cells: list[Cell], attempt: int) -> None:
        ref = self.remote.remote(self.suite, cells, self.inbox, self.threads)
        self.pending[ref] = (cells, attempt)

    def drain(self) -> None:
        for row in self.ray.get(self.inbox.take.remote()):
            self.take(row)

    def take(self, row: dict) -> None:
        if row["key"] in self.finished:  # a late duplicate from a task that was written off
            return
        self.record(row)
        if row["status"] == "running":
            self.running_rows[row["key"]] = row
            return
        self.finished.add(row["key"])
        self.bar.set_postfix_str(f"{row['checkpoint']} {row['quantizer']} {row['eval']}: {row['status']}")
        self.bar.update(1)

    def settle(self, ref) -> None:
        """A task ended: the rows it sent are in the inbox; resubmit or fail what it left unfinished."""
        cells, attempt = self.pending.pop(ref)
        self.drain()
        try:
            self.ray.get(ref)
            return
        except Exception as exc:  # noqa: BLE001 - worker death, node loss, OOM kill: all handled alike
            error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        left = [c for c in cells if c.key not in self.finished]
        if not left:
            return
        if attempt <= self.retries:
            self.submit(left, attempt + 1)
            return
        for cell in left:
            base = self.running_rows.get(cell.key) or {**identity_row(cell, self.suite.name), "seed": self.suite.spec.seed}
            self.take({**base, "status": "failed", "finished_at": None,
                       "error": f"worker lost after {attempt} attempt(s): {error}"[:4000]})

    def run(self) -> None:
        while self.pending:
            self.drain()
            ready, _ = self.ray.wait(list(self.pending), num_returns=1, timeout=_POLL_SECONDS)
            for ref in ready:
                self.settle(ref)
        self.drain()


def run_ray(suite: Suite, groups: list[list[Cell]], record: Callable[[dict], None], progress: bool = True,
            address: str | None = None, num_gpus_per_task: float | None = None, num_cpus_per_task: float = 1,
            retries: int = 1, temp_dir: str | None = None, num_cpus: int | None = None) -> None:
    """Compute `groups` (one list of cells per checkpoint) as Ray tasks; `record` each row in the driver.

    num_gpus_per_task: default 1 when the cluster has GPUs, else 0 (CPU only).
    retries: how many times the unfinished cells of a checkpoint whose worker died are resubmitted.
    temp_dir, num_cpus: only for a local instance started here (tests keep Ray's files in a temporary dir).
    """
    if not groups:
        return
    ray = connect(address, temp_dir=temp_dir, num_cpus=num_cpus)
    options = {"retries": retries, "num_cpus_per_task": num_cpus_per_task,
               "num_gpus_per_task": _gpus_per_task(ray, num_gpus_per_task)}
    total = sum(len(g) for g in groups)
    with tqdm(total=total, desc=f"qsens {suite.name} (ray)", unit="cell", disable=not progress) as bar:
        driver = _Driver(ray, suite, record, bar, options)
        for group in groups:
            driver.submit(group, attempt=1)
        started = time.perf_counter()
        driver.run()
        bar.set_postfix_str(f"done in {time.perf_counter() - started:.0f}s")
