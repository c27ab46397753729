"""Run jobs as Ray tasks, one task per job (one checkpoint's cells), on a local or an existing Ray cluster.

One task per checkpoint, so its full-precision pass is shared by all of its cells (one per cell would
recompute it for every quantizer). Rows stream back to the launching process through a small Ray actor as each
cell starts and ends, and are handed to the callbacks there. A worker that dies mid-cell (killed, out of memory,
node lost) loses only the cell in flight: the job's cells that have no final row yet are resubmitted, up to
`retries` times, then handed to `callbacks.lost` with the reason.

Ray is an optional extra: `pip install qsens[ray]`.
"""

from __future__ import annotations

import contextlib
import os
import time

from tqdm.auto import tqdm

from qsens.errors import terminal_safe
from qsens.executors import Callbacks, Job, Worker

_POLL_SECONDS = 0.2


def _import_ray():
    try:
        import ray
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError("the ray executor needs Ray: pip install 'qsens[ray]'") from exc
    return ray


class _Inbox:
    """(kind, row) pairs sent by the tasks, kind 'started' or 'finished', kept in the order each task sent them
    (a synchronous actor runs one caller's calls in order), until the driver takes them."""

    def __init__(self):
        self.rows: list[tuple[str, dict]] = []

    def put(self, kind: str, row: dict) -> None:
        self.rows.append((kind, row))

    def take(self) -> list[tuple[str, dict]]:
        rows, self.rows = self.rows, []
        return rows


def _run_job(worker: Worker, job: Job, inbox, threads: int) -> int:
    """Task body (runs on a Ray worker): `worker(job, ...)`, sending each row to `inbox` as it is made.

    Rows are sent without waiting (a task blocked in `ray.get` lends its CPUs to other tasks, which would start
    more checkpoints than the node has slots); the task waits for them all only before it returns, so the
    driver finds every row in the inbox once the task is done.
    """
    import ray
    import torch

    torch.set_num_threads(max(1, threads))  # the task's CPU share, not the whole node
    sent = []
    worker(job, lambda row: sent.append(inbox.put.remote("started", row)),
           lambda row: sent.append(inbox.put.remote("finished", row)))
    ray.get(sent)
    return os.getpid()


WORKER_NICENESS_ENV = "RAY_worker_niceness"


@contextlib.contextmanager
def workers_at_callers_priority():
    """While a local Ray instance starts, its workers' niceness increment is 0 unless the user chose one.

    Ray starts workers at nice +15 by default. On a machine busy with the user's own jobs (the normal case), a
    niced worker gets almost no CPU: a checkpoint task sat importing scipy at 2% CPU for 13 minutes beside four
    normal-priority burners (issue 25). The raylet reads the setting from its environment when `ray.init` starts
    it, so the variable is set only around that call.
    """
    if WORKER_NICENESS_ENV in os.environ:
        yield
        return
    os.environ[WORKER_NICENESS_ENV] = "0"
    try:
        yield
    finally:
        os.environ.pop(WORKER_NICENESS_ENV, None)


def connect(address: str | None, temp_dir: str | None = None, num_cpus: int | None = None):
    """Join the cluster at `address`, or start a local instance; returns the ray module."""
    ray = _import_ray()
    if not ray.is_initialized():
        kwargs: dict = {"address": address, "log_to_driver": False}
        if address is None:  # a local instance: these options apply only when we start it
            kwargs |= {"include_dashboard": False, "num_cpus": num_cpus}
            if temp_dir:
                kwargs["_temp_dir"] = str(temp_dir)
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        if address is None:
            _start_local(ray, kwargs)
        else:
            ray.init(**kwargs)
    return ray


LOCAL_START_ATTEMPTS = 3


def _start_local(ray, kwargs: dict, attempts: int = LOCAL_START_ATTEMPTS) -> None:
    """`ray.init` of a local instance, tried again when Ray gives up on its own startup.

    Ray waits a fixed 30 s (not configurable) for its raylet to register with the GCS; on a machine at load ~17 on
    2 cores that wait ran out ("The current node timed out during startup"), while the same start succeeds once
    the processes' imports are warm. A failed start is shut down before the next; after `attempts` the error says
    what to do instead.
    """
    for attempt in range(1, attempts + 1):
        try:
            with workers_at_callers_priority():
                ray.init(**kwargs)
            return
        except Exception as exc:  # Ray raises a bare Exception for this
            if "timed out during startup" not in str(exc):
                raise
            ray.shutdown()
            if attempt == attempts:
                load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
                raise RuntimeError(
                    f"the local Ray instance did not start: Ray timed out during its own startup {attempts} times "
                    f"(load average {load} on {os.cpu_count()} CPUs). Retry on a less busy machine, use "
                    "--executor local, or start Ray yourself (`ray start --head`) and pass --address") from exc


def _gpus_per_task(ray, requested: float | None) -> float:
    if requested is not None:
        return requested
    return 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0


class _Driver:
    """Submit one task per job, hand streamed rows to the callbacks, resubmit what a dead worker left unfinished."""

    def __init__(self, ray, worker: Worker, callbacks: Callbacks, bar, options: dict):
        self.ray, self.worker, self.callbacks, self.bar = ray, worker, callbacks, bar
        self.retries = options["retries"]
        self.inbox = ray.remote(num_cpus=0)(_Inbox).remote()  # holds no CPU a checkpoint task could use
        runtime_env = {"env_vars": options["env_vars"]} if options["env_vars"] else None
        self.remote = ray.remote(_run_job).options(
            num_cpus=options["num_cpus_per_task"], num_gpus=options["num_gpus_per_task"], max_retries=0,
            runtime_env=runtime_env)
        self.threads = max(1, int(options["num_cpus_per_task"]))
        self.finished: set[str] = set()
        self.labels: dict[str, str] = {}
        self.pending: dict = {}  # object ref -> (job, attempt)

    def submit(self, job: Job, attempt: int) -> None:
        self.labels.update((c.key, c.label) for c in job.cells)
        ref = self.remote.remote(self.worker, job, self.inbox, self.threads)
        self.pending[ref] = (job, attempt)

    def drain(self) -> None:
        for kind, row in self.ray.get(self.inbox.take.remote()):
            self.take(kind, row)

    def take(self, kind: str, row: dict) -> None:
        if row["key"] in self.finished:  # a late duplicate from a task that was written off
            return
        if kind == "started":
            self.callbacks.started(row)
            return
        self.callbacks.finished(row)
        self.done(row["key"], row["status"])

    def done(self, key: str, status: str) -> None:
        self.finished.add(key)
        self.bar.set_postfix_str(terminal_safe(f"{self.labels[key]}: {status}"))
        self.bar.update(1)

    def settle(self, ref) -> None:
        """A task ended: the rows it sent are in the inbox; resubmit or give up what it left unfinished."""
        job, attempt = self.pending.pop(ref)
        self.drain()
        try:
            self.ray.get(ref)
            return
        except Exception as exc:  # noqa: BLE001 - worker death, node loss, OOM kill: all handled alike
            error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        left = job.only(k for k in job.keys if k not in self.finished)
        if not left:
            return
        if attempt <= self.retries:
            self.submit(left, attempt + 1)
            return
        self.callbacks.lost(left, f"worker lost after {attempt} attempt(s): {error}")
        for key in left.keys:
            self.done(key, "failed")

    def run(self) -> None:
        while self.pending:
            self.drain()
            ready, _ = self.ray.wait(list(self.pending), num_returns=1, timeout=_POLL_SECONDS)
            for ref in ready:
                self.settle(ref)
        self.drain()


def launch(jobs: list[Job], worker: Worker, callbacks: Callbacks, progress: bool = True, title: str = "qsens",
           address: str | None = None, num_gpus_per_task: float | None = None, num_cpus_per_task: float = 1,
           retries: int = 1, temp_dir: str | None = None, num_cpus: int | None = None,
           env_vars: dict[str, str] | None = None) -> None:
    """Run `jobs` as Ray tasks, all claimed up front (the cluster gets its work at once).

    num_gpus_per_task: default 1 when the cluster has GPUs, else 0 (CPU only).
    env_vars: set in each task's worker process as it starts (Ray's runtime_env), e.g. the caller's LD_PRELOAD
        (`qsens.blas.worker_env()`): the raylet starts workers with its own environment, not the caller's.
    retries: how many times the unfinished cells of a job whose worker died are resubmitted.
    temp_dir, num_cpus: only for a local instance started here (tests keep Ray's files in a temporary dir).
    """
    jobs = [job for job in map(callbacks.claim, jobs) if job]
    if not jobs:
        return
    ray = connect(address, temp_dir=temp_dir, num_cpus=num_cpus)
    options = {"retries": retries, "num_cpus_per_task": num_cpus_per_task, "env_vars": env_vars,
               "num_gpus_per_task": _gpus_per_task(ray, num_gpus_per_task)}
    total = sum(len(job) for job in jobs)
    with tqdm(total=total, desc=f"{title} (ray)", unit="cell", disable=not progress) as bar:
        driver = _Driver(ray, worker, callbacks, bar, options)
        for job in jobs:
            driver.submit(job, attempt=1)
        started = time.perf_counter()
        driver.run()
        bar.set_postfix_str(f"done in {time.perf_counter() - started:.0f}s")
