"""Executors decide where checkpoints run; the driver alone writes to the store.

`run_suite` is the whole loop: plan cells, skip the finished ones, claim the rest checkpoint by checkpoint (cells
another live run has claimed are left to it: two runs on one results folder share the work), run, summarise.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from qsens.runner.plan import Cell, identity_row, plan_cells
from qsens.store import ResultStore
from qsens.suites.load import Suite

EXECUTORS = ("local", "ray")


@dataclass
class RunSummary:
    planned: int
    skipped: int
    statuses: Counter = field(default_factory=Counter)
    # cells left to another live run (key -> its owner), and cells finished by another run meanwhile
    elsewhere: dict = field(default_factory=dict)
    done_elsewhere: int = 0

    @property
    def failed(self) -> int:
        return self.statuses["failed"]

    @property
    def computed(self) -> int:
        return self.statuses["ok"]


def group_by_checkpoint(cells: list[Cell]) -> list[list[Cell]]:
    groups: dict = defaultdict(list)
    for cell in cells:
        groups[cell.checkpoint].append(cell)
    return list(groups.values())


def write_resolved_suite(suite: Suite, results_dir: Path) -> None:
    """The suite as it will run, saved before the run, so results always travel with their configuration."""
    resolved = {
        "suite_file": str(suite.path),
        "spec": suite.spec.model_dump(mode="json"),
        "checkpoints": [vars(c) for c in suite.checkpoints],
        "quantizers": [q.model_dump(mode="json") | {"label": q.label()} for q in suite.quantizers],
        "evals": [{"name": e.name, "path": str(e.path), "text_hash": e.text_hash,
                   "protocol": e.protocol.model_dump(mode="json"), "protocol_hash": e.protocol.hash()}
                  for e in suite.evals],
    }
    tmp = results_dir / "suite.resolved.json.tmp"
    tmp.write_text(json.dumps(resolved, indent=2) + "\n")
    tmp.replace(results_dir / "suite.resolved.json")


def run_suite(suite: Suite, results_dir: str | Path, executor: str = "local", progress: bool = True,
              **executor_options) -> RunSummary:
    store = ResultStore(results_dir)
    write_resolved_suite(suite, store.dir)
    cells = plan_cells(suite)
    done = store.done_keys()
    store.set_fit_groups({c.key: c.checkpoint.fit_group for c in cells if c.key in done})
    todo = [c for c in cells if c.key not in done]
    summary = RunSummary(planned=len(cells), skipped=len(cells) - len(todo))
    if executor == "local":
        from qsens.executors.local import run_local as run
    elif executor == "ray":
        from qsens.executors.ray import run_ray as run
    else:
        raise ValueError(f"unknown executor {executor!r}; known: {', '.join(EXECUTORS)}")

    def record(row: dict) -> None:
        if row["status"] == "running":
            store.mark_running(row)
        elif store.save(row):
            summary.statuses[row["status"]] += 1

    def claim(group: list[Cell]) -> list[Cell]:
        claimed, elsewhere = store.claim([identity_row(c, suite.name) for c in group])
        summary.elsewhere.update(elsewhere)
        summary.done_elsewhere += len(group) - len(claimed) - len(elsewhere)
        return [c for c in group if c.key in set(claimed)]

    groups = group_by_checkpoint(todo)
    if executor == "local":
        run(suite, groups, record, progress=progress, claim=claim, **executor_options)
    else:  # a distributed executor gets its work up front: claim it all now
        run(suite, [g for g in map(claim, groups) if g], record, progress=progress, **executor_options)
    return summary
