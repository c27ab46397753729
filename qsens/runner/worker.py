"""Compute one checkpoint's cells: quantize settings while their models may stay resident, score each resident
group against one full-precision pass per eval, and hand every row to the caller as it starts and ends.

A failing cell becomes a 'failed' row with its error, and the others go on. `CheckpointWorker` is this, as the
worker an executor runs per job (see `qsens.executors`).
"""

from __future__ import annotations

import gc
import time
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch

from qsens import blas
from qsens.errors import error_text
from qsens.executors import Job, Report
from qsens.families.checkpoint import Checkpoint
from qsens.families.loading import resolve_device
from qsens.metrics.compare import encode_window_sums
from qsens.metrics.llamacpp_stats import ReverseKL, llamacpp_statistics
from qsens.metrics.paired import sensitivity_metrics, window_sums
from qsens.metrics.resources import measured
from qsens.metrics.scoring import score_together
from qsens.provenance import provenance as provenance_of
from qsens.provenance import utc_now
from qsens.quantizers.base import QuantResult, QuantSettings
from qsens.runner.checkpoint import LoadedCheckpoint
from qsens.runner.plan import Cell, identity_row
from qsens.suites.load import EvalText, Suite


def _score_group(state: LoadedCheckpoint, group: list["_Quantized"], ev: EvalText) -> tuple[dict, float]:
    """Score every model of `group` on eval `ev` in one sweep; per settings its metrics row or exception."""
    tokens = state.eval_tokens(ev)
    t0 = time.perf_counter()
    wanted = state.suite.spec.metrics
    reverse = ReverseKL(tokens.n_targets) if "llamacpp" in wanted else None
    ref, scores = score_together(state.model, {g.settings: g.result.model for g in group}, tokens, state.device,
                                 ev.protocol.batch_size, kl="kl" in wanted or reverse is not None, on_logits=reverse)
    sweep_seconds = time.perf_counter() - t0
    if not np.isfinite(ref.nll).all():
        raise FloatingPointError("the full-precision model gives non-finite losses on this eval text")
    boot, out = state.suite.spec.bootstrap, {}
    for settings, q in scores.items():
        if isinstance(q, BaseException):
            out[settings] = q
        elif not np.isfinite(q.nll).all():
            out[settings] = FloatingPointError(f"{(~np.isfinite(q.nll)).sum()} non-finite quantized losses")
        else:
            metrics = sensitivity_metrics(tokens, ref, q, bootstrap_samples=boot.samples, confidence=boot.confidence,
                                          seed=state.suite.spec.seed)
            out[settings] = {**metrics, "tokens_digest": tokens.digest,
                             "window_sums": encode_window_sums(window_sums(tokens, ref, q))}
            if reverse is not None:
                out[settings]["stats_json"] = llamacpp_statistics(ref.nll, q.nll, q.kl, reverse.values.get(settings),
                                                                  q.agree)
    ref.close()
    return out, sweep_seconds


@dataclass
class _Quantized:
    settings: QuantSettings
    cells: list[Cell]
    result: QuantResult
    started_at: str
    outcome: dict


def set_threads(threads: int) -> None:
    """torch's intra-op threads to `threads`, and its inter-op threads too where torch still allows it (once per
    process, before any inter-op work; a Ray worker process that already ran a task keeps its first setting)."""
    torch.set_num_threads(threads)
    if torch.get_num_interop_threads() != threads:
        try:
            torch.set_num_interop_threads(threads)
        except RuntimeError:  # "cannot set number of interop threads after parallel work has started"
            pass


@dataclass(frozen=True)
class CheckpointWorker:
    """The runner's worker: `worker(job, started, finished)` computes one job (one checkpoint's cells, `Cell`s) on
    the suite's device of the machine it runs on, with that machine's provenance. Picklable: Ray ships it.

    threads: torch threads for the job (`qsens run --threads`, default 1: one core per checkpoint; a loaded machine
    ran the all-cores default 9-12x slower, issue 24), restored after it; None leaves torch's setting alone."""

    suite: Suite
    threads: int | None = 1

    def __call__(self, job: Job, started: Report, finished: Report) -> None:
        saved = torch.get_num_threads()
        if self.threads is not None:
            set_threads(self.threads)
        try:
            device = resolve_device(self.suite.spec.device)
            cells = list(job.cells)
            # read here, in the process that computes the cells (a Ray worker reads its own): the matmul route
            # (whether MKL's Intel path is loaded, qsens.blas) and the torch threads, beside the versions and device
            provenance = {**provenance_of(device), "blas_route": blas.route(), "threads": torch.get_num_threads()}
            run_checkpoint(self.suite, cells[0].checkpoint, cells, device, started, finished, provenance)
        finally:
            torch.set_num_threads(saved)


def run_checkpoint(suite: Suite, ckpt: Checkpoint, cells: list[Cell], device: torch.device,
                   started: Report, finished: Report, provenance: dict) -> None:
    """Compute `cells` (all of checkpoint `ckpt`); `started(row)` as each starts (identity, provenance,
    started_at), `finished(row)` with its final row, 'ok' or 'failed', as each ends.

    Quantized models stay resident while memory allows (`LoadedCheckpoint.room_for_another`); each such group is
    scored against one full-precision pass per eval (`score_together`), so no fp logits are stored. A group's
    cells are written when the group is scored, so a crash loses the group in flight (recomputed next run).
    """
    base = {**provenance, "seed": suite.spec.seed}

    def finish(cell: Cell, since: float, **fields) -> None:
        finished({**identity_row(cell, suite.name), **base, **fields, "seconds": time.perf_counter() - since,
                  "finished_at": utc_now()})

    t0 = time.perf_counter()
    try:
        state = LoadedCheckpoint(suite, ckpt, device)
    except Exception as exc:  # noqa: BLE001 - any load failure fails this checkpoint's cells, not the run
        for cell in cells:
            finish(cell, t0, status="failed", error=f"loading checkpoint failed: {error_text(exc)}", started_at=utc_now())
        return
    pending: dict[QuantSettings, list[Cell]] = defaultdict(list)
    for cell in cells:
        pending[cell.settings].append(cell)
    queue = list(pending.items())
    try:
        while queue:
            with measured(device) as usage:
                group = _quantize_group(state, queue, finish, started, suite.name, base)
                scored = _score_all(state, group, suite)
            for g in group:
                for cell in g.cells:
                    row, seconds = scored[(g.settings, cell.eval.name)]
                    fields = {**g.outcome, **usage.as_row(), "started_at": g.started_at}
                    # seconds = its quantization + its share of the group's sweep (the sweeps run after all quantizing)
                    as_if_started = time.perf_counter() - g.result.seconds - seconds
                    if isinstance(row, BaseException):
                        finish(cell, as_if_started, status="failed", error=error_text(row), **fields)
                    else:
                        finish(cell, as_if_started, status="ok", error=None, **fields, **row)
            # the loop variable too: it would keep the group's last quantized model alive while the next group is
            # quantized (one model more than the memory check allows for; its offload folder kept on disk)
            group = scored = g = None
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
    finally:
        state.close()


def _quantize_group(state: LoadedCheckpoint, queue: list, finish, started: Report, suite_name: str,
                    base: dict) -> list[_Quantized]:
    """Quantize settings off the front of `queue` while their models may stay resident; failures finish here."""
    group: list[_Quantized] = []
    while queue and state.room_for_another(len(group)):
        settings, cells = queue.pop(0)
        started_at, t_q = utc_now(), time.perf_counter()
        for cell in cells:
            started({**identity_row(cell, suite_name), **base, "started_at": started_at})
        try:
            result = state.quantize(settings)
        except Exception as exc:  # noqa: BLE001
            for cell in cells:
                finish(cell, t_q, status="failed", error=f"quantization failed: {error_text(exc)}",
                       started_at=started_at)
            continue
        outcome = {"quant_seconds": result.seconds, "effective_bits": result.effective_bits,
                   "layers_quantized": len(result.layers_quantized), "backend": result.backend,
                   "peak_memory_bytes": result.peak_memory_bytes,
                   "details_json": {**result.details, "layers": result.layers_quantized, "resident_group": 0}}
        group.append(_Quantized(settings, cells, result, started_at, outcome))
    for g in group:
        g.outcome["details_json"]["resident_group"] = len(group)
    return group


def _score_all(state: LoadedCheckpoint, group: list[_Quantized], suite: Suite) -> dict:
    """(settings, eval name) -> (metrics row or exception, this cell's share of the sweep seconds)."""
    out: dict = {}
    for ev in suite.evals:
        members = [g for g in group if any(c.eval.name == ev.name for c in g.cells)]
        if not members:
            continue
        try:
            rows, seconds = _score_group(state, members, ev)
        except Exception as exc:  # noqa: BLE001 - the fp pass failed: every cell of this eval fails
            rows, seconds = {g.settings: exc for g in members}, 0.0
        for settings, row in rows.items():
            out[(settings, ev.name)] = (row, seconds / len(members))
    return out
