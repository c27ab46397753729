"""Interleaved timing for the benches: rounds of every step, the order reversed every other round.

On a loaded machine (the normal case: qsens runs beside other work) throughput drifts by 2x within minutes, so
separate medians of long steps taken in a fixed order compare different machines. Here each round runs every
step once (A, B, C, then C, B, A, ...), a ratio is formed within each round, and what is reported is the list of
per-round ratios with their median, in CPU time (what the step itself consumed: a busy neighbour steals
wall time, not CPU time) beside wall time, with the load average at the start of each round.
"""

from __future__ import annotations

import os
import resource
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable


def cpu_seconds() -> float:
    """CPU seconds of this process (all its threads) and of its children that have ended and been waited for
    (a step that runs a worker pool and joins it is counted whole)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def load_average() -> list[float]:
    """1/5/15-minute load averages ([] where the platform has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return []


@dataclass
class Rounds:
    """Seconds of every step in every round. wall/cpu: step -> [seconds per round]; orders: the order each round
    ran in; load: the load average at the start of each round; results: each step's return value (last round)."""

    wall: dict[str, list[float]] = field(default_factory=dict)
    cpu: dict[str, list[float]] = field(default_factory=dict)
    orders: list[list[str]] = field(default_factory=list)
    load: list[list[float]] = field(default_factory=list)
    results: dict[str, object] = field(default_factory=dict)

    def per_round(self, fn: Callable[[dict[str, float]], float], clock: str = "cpu") -> list[float]:
        """fn applied to each round's {step: seconds} on one clock ('cpu' or 'wall')."""
        secs = self.cpu if clock == "cpu" else self.wall
        n = len(self.orders)
        return [fn({name: v[r] for name, v in secs.items()}) for r in range(n)]

    def figure(self, fn: Callable[[dict[str, float]], float]) -> dict:
        """A per-round figure on both clocks: {'cpu': {'median', 'rounds'}, 'wall': {...}}."""
        out = {}
        for clock in ("cpu", "wall"):
            vals = self.per_round(fn, clock)
            out[clock] = {"median": statistics.median(vals), "rounds": [round(v, 4) for v in vals]}
        return out

    def as_dict(self) -> dict:
        return {"wall": self.wall, "cpu": self.cpu, "orders": self.orders, "load": self.load}


def interleave(steps: dict[str, Callable[[], object]], rounds: int, sync: Callable[[], None] | None = None,
               warmup: bool = True) -> Rounds:
    """Run every step once per round, in the given order in even rounds and reversed in odd ones; with warmup,
    every step once first, untimed (first calls pay for lazy imports, allocator growth, kernel selection).

    sync (e.g. torch.cuda.synchronize) runs before each clock is read, so queued GPU work is counted.
    CPU time is the whole process's and its joined children's (`cpu_seconds`): with one torch thread it is the
    step's own work.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    out = Rounds(wall={n: [] for n in steps}, cpu={n: [] for n in steps})
    names = list(steps)
    for name in names if warmup else ():
        steps[name]()
    for r in range(rounds):
        order = names if r % 2 == 0 else names[::-1]
        out.orders.append(list(order))
        out.load.append(load_average())
        for name in order:
            if sync:
                sync()
            w0, c0 = time.perf_counter(), cpu_seconds()
            out.results[name] = steps[name]()
            if sync:
                sync()
            out.cpu[name].append(cpu_seconds() - c0)
            out.wall[name].append(time.perf_counter() - w0)
    return out
