"""The run loop: plan a suite's cells, skip the finished ones, and hand the rest, one job per checkpoint, to an
executor with the worker that computes them and the callbacks that record them (the executor decides only where
and when each job runs; see `qsens.executors`).

Cells are claimed in the store before they are computed (`ResultStore.claim`): cells another live run holds are
left to it, so two runs on one results folder share the work. The launching process alone writes the store.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from qsens import blas
from qsens.errors import MAX_ERROR_CHARS
from qsens.executors import Callbacks, Job, launcher
from qsens.runner.plan import Cell, identity_row, plan_cells
from qsens.runner.worker import CheckpointWorker
from qsens.store import ResultStore
from qsens.suites.load import Suite


@dataclass
class RunSummary:
    """What one run did. `planned_keys`: every cell of the suite (so a summary reads the run's cells without
    planning again); `statuses`: final rows this run wrote, by status."""

    planned_keys: tuple[str, ...]
    skipped: int
    statuses: Counter = field(default_factory=Counter)
    # cells left to another live run (key -> its owner), and cells finished by another run meanwhile
    elsewhere: dict = field(default_factory=dict)
    done_elsewhere: int = 0

    @property
    def planned(self) -> int:
        return len(self.planned_keys)

    @property
    def failed(self) -> int:
        return self.statuses["failed"]

    @property
    def computed(self) -> int:
        return self.statuses["ok"]


def write_resolved_suite(suite: Suite, results_dir: Path) -> None:
    """The suite as it will run, saved before the run, so results always travel with their configuration."""
    resolved = {
        "suite_file": str(suite.path),
        "spec": suite.spec.model_dump(mode="json"),
        "checkpoints": [{**vars(c), "placement": c.placement and c.placement.model_dump(mode="json")}
                        for c in suite.checkpoints],
        "quantizers": [q.model_dump(mode="json") | {"label": q.label()} for q in suite.quantizers],
        "evals": [{"name": e.name, "path": str(e.path), "text_hash": e.text_hash,
                   "protocol": e.protocol.model_dump(mode="json"), "protocol_hash": e.protocol.hash()}
                  for e in suite.evals],
    }
    tmp = results_dir / "suite.resolved.json.tmp"
    tmp.write_text(json.dumps(resolved, indent=2) + "\n")
    tmp.replace(results_dir / "suite.resolved.json")


def jobs_by_checkpoint(cells: list[Cell]) -> list[Job]:
    """One job per checkpoint, holding its cells in plan order (they share its model and full-precision pass)."""
    groups: dict = defaultdict(list)
    for cell in cells:
        groups[cell.checkpoint].append(cell)
    return [Job(label=ckpt.name, cells=tuple(group)) for ckpt, group in groups.items()]


class _Recorder:
    """The callbacks of one run: claims and rows go to `store`, counts to `summary`."""

    def __init__(self, suite: Suite, store: ResultStore, summary: RunSummary):
        self.suite, self.store, self.summary = suite, store, summary
        self.running: dict[str, dict] = {}  # key -> its started row, the base of a failed row if it is lost

    def claim(self, job: Job) -> Job | None:
        claimed, elsewhere = self.store.claim([identity_row(c, self.suite.name) for c in job.cells])
        self.summary.elsewhere.update(elsewhere)
        self.summary.done_elsewhere += len(job) - len(claimed) - len(elsewhere)
        return job.only(claimed) if claimed else None

    def started(self, row: dict) -> None:
        self.store.mark_running(row)
        self.running[row["key"]] = row

    def finished(self, row: dict) -> None:
        self.running.pop(row["key"], None)
        if self.store.save(row):
            self.summary.statuses[row["status"]] += 1

    def lost(self, job: Job, reason: str) -> None:
        for cell in job.cells:
            base = self.running.get(cell.key) or {**identity_row(cell, self.suite.name), "seed": self.suite.spec.seed}
            self.finished({**base, "status": "failed", "finished_at": None, "error": reason[:MAX_ERROR_CHARS]})

    def callbacks(self) -> Callbacks:
        return Callbacks(claim=self.claim, started=self.started, finished=self.finished, lost=self.lost)


def run_suite(suite: Suite, results_dir: str | Path, executor: str = "local", progress: bool = True,
              threads: int | None = 1, **executor_options) -> RunSummary:
    """Compute every cell of `suite` not yet 'ok' in `results_dir`, on `executor` (one of `qsens.executors.EXECUTORS`,
    with its `executor_options`); each row is stored as it is made, so a run stopped anywhere resumes.

    threads: torch threads per checkpoint job (default 1; None: torch's own setting). With Ray each task also
    reserves that many CPUs (`num_cpus_per_task`), so the node runs cpus / threads checkpoints at once, and its
    worker gets this process's LD_PRELOAD (`qsens.blas.worker_env()`); each cell records the route and the thread
    count of the process that computed it (CheckpointWorker)."""
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    if executor == "ray":
        if threads is not None:
            executor_options.setdefault("num_cpus_per_task", threads)
        executor_options.setdefault("env_vars", blas.worker_env())  # workers take this process's matmul route
    launch = launcher(executor)
    store = ResultStore(results_dir)
    write_resolved_suite(suite, store.dir)
    cells = plan_cells(suite)
    done = store.done_keys()
    store.set_fit_groups({c.key: c.checkpoint.fit_group for c in cells if c.key in done})
    todo = [c for c in cells if c.key not in done]
    summary = RunSummary(planned_keys=tuple(c.key for c in cells), skipped=len(cells) - len(todo))
    worker = CheckpointWorker(suite, threads=threads)
    launch(jobs_by_checkpoint(todo), worker, _Recorder(suite, store, summary).callbacks(),
           progress=progress, title=f"qsens {suite.name}", **executor_options)
    return summary
