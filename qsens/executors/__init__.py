"""Executors decide where and when jobs run, never what they compute (the runner plans, claims and records).

The contract between the runner (`qsens.runner.loop.run_suite`) and an executor's `launch(jobs, worker, callbacks,
progress=True, title="qsens", **options)`:

- a `Job` is one checkpoint's pending cells, computed together by one worker call (they share the checkpoint's
  model and full-precision pass). Its cells are the runner's; an executor reads only each cell's `key` and `label`.
- the worker is a picklable callable, `worker(job, started, finished)`: it computes every cell of `job` where it is
  called, calls `started(row)` as a cell's computation begins and `finished(row)` once per cell with its final row
  ('ok' or 'failed': a failing cell is a row, not an exception). An exception out of it means the job died.
  Rows are dicts; an executor reads only `row["key"]` and `row["status"]`.
- the callbacks (`Callbacks`) run in the launching process alone, which alone writes the store.

An executor must not import the runner, suites, families or provenance: all it knows of the work is this module.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Iterable

EXECUTORS = ("local", "ray")

Report = Callable[[dict], None]


@dataclass(frozen=True)
class Job:
    """One checkpoint's pending cells. `label` names the job (the checkpoint); each cell has `key` (unique in the
    run) and `label` (what a progress bar shows for it)."""

    label: str
    cells: tuple

    def __len__(self) -> int:
        return len(self.cells)

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(c.key for c in self.cells)

    def only(self, keys: Iterable[str]) -> Job:
        """The same job narrowed to the cells whose key is in `keys` (their order kept)."""
        wanted = set(keys)
        return replace(self, cells=tuple(c for c in self.cells if c.key in wanted))


@dataclass(frozen=True)
class Callbacks:
    """What an executor calls, in the launching process only.

    claim(job) -> the part of `job` this run may compute (None: none of it), asked once per job before it is
        handed to a worker; the other cells are finished or held by another live run.
    started(row): a cell's computation begins (the runner marks it running).
    finished(row): a cell's final row, 'ok' or 'failed' (the runner saves it and counts it in the summary).
    lost(job, reason): the cells of `job` will not be computed, e.g. their worker died and the retries are spent
        (the runner writes them as failed rows with `reason`).
    """

    claim: Callable[[Job], Job | None]
    started: Report
    finished: Report
    lost: Callable[[Job, str], None]


Worker = Callable[[Job, Report, Report], None]


def launcher(executor: str) -> Callable[..., None]:
    """The `launch` function of the executor named `executor` (one of EXECUTORS)."""
    if executor == "local":
        from qsens.executors.local import launch
    elif executor == "ray":
        from qsens.executors.ray import launch
    else:
        raise ValueError(f"unknown executor {executor!r}; known: {', '.join(EXECUTORS)}")
    return launch
