"""Count and time the forward passes a suite run makes, fp and quantized apart (`qsens bench suite`).

A *pass* is one model over every window of one eval text: as many forwards as `score_together` makes batches for
those tokens. While `counting()` is active, every sweep of the runner (`qsens.runner.worker.score_together`) and
every forward of the scoring loop (`qsens.metrics.scoring._scored_logits`) is recorded: which checkpoint's job it
belongs to (`qsens.runner.worker.run_checkpoint`), whether the model is that sweep's fp model or one of its
quantized models, and the forward's seconds (CUDA synchronized, so a forward's time is its own). The counts are
measured from the forwards themselves, not from the sweep's arguments, so a second fp pass or a set scored twice
shows. Only the local executor runs jobs in this process; other executors are not counted.
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from dataclasses import dataclass, field

import torch

import qsens.metrics.scoring as scoring
import qsens.runner.worker as worker


@dataclass
class Sweep:
    """One `score_together` call: its checkpoint, the batches one pass takes, and what each model did.

    fp_forwards, q_forwards: forwards per model (id of the model object -> count); seconds likewise."""

    checkpoint: str | None
    batches: int
    fp_forwards: int = 0
    fp_seconds: float = 0.0
    q_forwards: dict = field(default_factory=lambda: defaultdict(int))
    q_seconds: dict = field(default_factory=lambda: defaultdict(float))


@dataclass
class PassLog:
    sweeps: list[Sweep] = field(default_factory=list)

    def summary(self) -> dict:
        """Totals and per-checkpoint figures: passes = forwards / batches of a pass (both measured)."""
        per_ckpt: dict = defaultdict(lambda: {"fp_passes": 0.0, "q_passes": 0.0, "q_models": 0})
        fp_passes = q_passes = fp_s = q_s = 0.0
        for s in self.sweeps:
            if s.batches == 0:
                continue
            f = s.fp_forwards / s.batches
            q = sum(s.q_forwards.values()) / s.batches
            row = per_ckpt[s.checkpoint]
            row["fp_passes"] += f
            row["q_passes"] += q
            row["q_models"] += len(s.q_forwards)
            fp_passes, q_passes = fp_passes + f, q_passes + q
            fp_s, q_s = fp_s + s.fp_seconds, q_s + sum(s.q_seconds.values())
        return {
            "sweeps": len(self.sweeps), "fp_passes": fp_passes, "quantized_passes": q_passes,
            "fp_pass_seconds": fp_s / fp_passes if fp_passes else None,
            "quantized_pass_seconds": q_s / q_passes if q_passes else None,
            "forward_seconds": fp_s + q_s,
            "per_checkpoint": {k: dict(v) for k, v in per_ckpt.items()},
        }


def _n_batches(tokens, batch_size: int) -> int:
    return sum(1 for _ in scoring._batches(tokens, batch_size))


@contextlib.contextmanager
def counting():
    """Record the passes of everything the runner scores in this process while active; yields a `PassLog`."""
    log = PassLog()
    current: dict = {"checkpoint": None, "sweep": None, "fp": None}
    orig_forward, orig_sweep, orig_ckpt = scoring._scored_logits, worker.score_together, worker.run_checkpoint

    def forward(model, ids, rows, cols):
        sweep = current["sweep"]
        if sweep is None:  # a forward outside a runner sweep (e.g. a quantizer's calibration): not a scoring pass
            return orig_forward(model, ids, rows, cols)
        sync = ids.device.type == "cuda"
        if sync:
            torch.cuda.synchronize(ids.device)
        t0 = time.perf_counter()
        z = orig_forward(model, ids, rows, cols)
        if sync:
            torch.cuda.synchronize(ids.device)
        dt = time.perf_counter() - t0
        if model is current["fp"]:
            sweep.fp_forwards += 1
            sweep.fp_seconds += dt
        else:
            sweep.q_forwards[id(model)] += 1
            sweep.q_seconds[id(model)] += dt
        return z

    def sweep(fp_model, q_models, tokens, device, batch_size=8, kl=True, **options):
        s = Sweep(current["checkpoint"], _n_batches(tokens, batch_size))
        log.sweeps.append(s)
        current["sweep"], current["fp"] = s, fp_model
        try:
            return orig_sweep(fp_model, q_models, tokens, device, batch_size, kl, **options)
        finally:
            current["sweep"] = current["fp"] = None

    def run_checkpoint(suite, ckpt, *args, **kwargs):
        current["checkpoint"] = ckpt.name
        try:
            return orig_ckpt(suite, ckpt, *args, **kwargs)
        finally:
            current["checkpoint"] = None

    scoring._scored_logits, worker.score_together, worker.run_checkpoint = forward, sweep, run_checkpoint
    try:
        yield log
    finally:
        scoring._scored_logits, worker.score_together, worker.run_checkpoint = orig_forward, orig_sweep, orig_ckpt
