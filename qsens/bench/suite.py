"""`qsens bench suite`: a whole suite's wall time beside one full-precision pass per checkpoint, in the same run.

The suite runs through the library (`run_suite`, local executor) into a fresh temporary results folder, so nothing
is skipped as already done. Then, as the baseline, each checkpoint's fp model scores each eval text of the suite
once, with no quantizer and no KL (`score_reference(..., keep_logits=False)`, the fp pass of `qsens bench score`),
on the very tokens the suite scored. The baseline runs after the suite, on warm file caches, so it errs low and the
ratio errs high.

Figures:
    cells_per_s       cells stored (ok or failed) / suite seconds
    fp_passes         suite seconds / baseline seconds: the suite's cost in fp passes per checkpoint (all evals)
    goal_fp_passes    1 + 1.1 k, k = quantizer settings of the suite (issue 14's target for scoring; the suite's
                      wall also holds loading, quantizing, bootstrap intervals and store writes)
    passes            the forwards the suite's scoring made, counted while it ran (`qsens.bench.passes`): fp and
                      quantized passes (a pass = one model over one eval's windows), per checkpoint, and the
                      seconds per fp pass and per quantized pass; with a layer sweep (`layers:`) each set is one
                      quantized setting, so a checkpoint's sweep should cost one quantized pass per set and eval
                      and one fp pass per eval per resident group (`QSENS_MAX_RESIDENT` models share one fp pass)
"""

from __future__ import annotations

import dataclasses
import os
import platform
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch

from qsens.bench import passes as pass_counter
from qsens.runner.loop import run_suite
from qsens.families.loading import resolve_device
from qsens.metrics.scoring import score_reference
from qsens.runner.checkpoint import LoadedCheckpoint
from qsens.store import ResultStore
from qsens.suites.load import Suite, load_suite

DEFAULT_SUITE = Path("suites/micro.yaml")


def limited(suite: Suite, limit_checkpoints: int | None) -> Suite:
    """The suite on its first `limit_checkpoints` checkpoints (all when None)."""
    if limit_checkpoints is None:
        return suite
    if limit_checkpoints < 1:
        raise ValueError(f"limit_checkpoints must be >= 1, got {limit_checkpoints}")
    return dataclasses.replace(suite, checkpoints=suite.checkpoints[:limit_checkpoints])


def fp_baseline(suite: Suite, device: torch.device) -> list[dict]:
    """Per checkpoint: seconds of one fp pass over every eval text, and apart, of building its eval tokens (which
    the suite also pays once per checkpoint); loading is not timed."""
    out = []
    for ckpt in suite.checkpoints:
        state = LoadedCheckpoint(suite, ckpt, device)
        try:
            per_eval, fp_loss, tokens, tokenize = {}, {}, 0, 0.0
            for ev in suite.evals:
                t0 = time.perf_counter()
                toks = state.eval_tokens(ev)
                tokenize += time.perf_counter() - t0
                t0 = time.perf_counter()
                ref = score_reference(state.model, toks, device, ev.protocol.batch_size, keep_logits=False)
                per_eval[ev.name] = time.perf_counter() - t0
                fp_loss[ev.name] = float(ref.nll.mean())  # equals the suite's fp_loss: the same work was timed
                tokens += toks.n_targets
        finally:
            state.close()
        out.append({"checkpoint": ckpt.name, "seconds": sum(per_eval.values()), "per_eval": per_eval,
                    "fp_loss": fp_loss, "scored_tokens": tokens, "tokenize_seconds": tokenize})
    return out


def machine() -> dict:
    return {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "platform": platform.platform(),
            "torch": torch.__version__}


def run(suite: Suite | str | Path = DEFAULT_SUITE, *, threads: int | None = None,
        limit_checkpoints: int | None = None, results_dir: str | Path | None = None) -> dict:
    """Run the suite in a fresh results folder (`results_dir`, which must be empty or absent; default a temporary
    one, removed after), then the fp baseline; every figure of the module docstring. `threads` sets torch's
    thread count for the run only."""
    saved = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _run(suite, limit_checkpoints, results_dir)
    finally:
        torch.set_num_threads(saved)


def _run(suite: Suite | str | Path, limit_checkpoints: int | None, results_dir: str | Path | None) -> dict:
    suite = limited(suite if isinstance(suite, Suite) else load_suite(suite), limit_checkpoints)
    device = resolve_device(suite.spec.device)
    if results_dir is not None and Path(results_dir).exists() and any(Path(results_dir).iterdir()):
        raise ValueError(f"results_dir {results_dir} is not empty: the benchmark needs a fresh results folder")
    with tempfile.TemporaryDirectory(prefix="qsens-bench-suite-") as tmp:
        folder = Path(results_dir or tmp)
        with pass_counter.counting() as log:
            t0 = time.perf_counter()
            summary = run_suite(suite, folder, progress=False)
            suite_seconds = time.perf_counter() - t0
        stored = ResultStore(folder).cells()
    statuses = Counter(c["status"] for c in stored)
    baseline = fp_baseline(suite, device)
    base_seconds = sum(b["seconds"] for b in baseline)
    k = len(suite.quantizers)
    passes = log.summary()
    per = passes["per_checkpoint"].values()
    n_ev = len(suite.evals)
    passes.update({
        "layer_sets": sorted({q.layers or "all" for q in suite.quantizers}),
        "fp_passes_per_checkpoint_eval": [min(p["fp_passes"] for p in per) / n_ev,
                                          max(p["fp_passes"] for p in per) / n_ev] if per else None,
        "quantized_passes_per_setting_eval": [min(p["q_passes"] for p in per) / (k * n_ev),
                                              max(p["q_passes"] for p in per) / (k * n_ev)] if per else None,
        "quantized_over_fp_pass_seconds": (passes["quantized_pass_seconds"] / passes["fp_pass_seconds"]
                                           if passes["fp_pass_seconds"] and passes["quantized_pass_seconds"]
                                           else None),
    })
    return {
        "suite": str(suite.path), "suite_name": suite.name, "device": str(device), "machine": machine(),
        "threads": torch.get_num_threads(), "checkpoints": len(suite.checkpoints),
        "limit_checkpoints": limit_checkpoints, "k": k, "evals": [ev.name for ev in suite.evals],
        "planned": summary.planned, "cells": len(stored), "statuses": dict(statuses),
        "suite_seconds": suite_seconds, "cells_per_s": len(stored) / suite_seconds,
        "baseline": baseline, "baseline_seconds": base_seconds,
        "fp_passes": suite_seconds / base_seconds, "goal_fp_passes": 1 + 1.1 * k,
        "passes": passes,
    }


def _span(pair: list[float] | None) -> str:
    if pair is None:
        return "-"
    lo, hi = pair
    return f"{lo:g}" if lo == hi else f"{lo:g} to {hi:g}"


def _pass_lines(r: dict) -> list[str]:
    """The counted passes (`qsens.bench.passes`) as table rows."""
    p = r["passes"]
    sets = p["layer_sets"]
    lines = [
        f"| layer sets | {len(sets)} ({', '.join(sets) if len(sets) <= 12 else ', '.join(sets[:12]) + ', ...'}) |",
        f"| scoring sweeps | {p['sweeps']} |",
        f"| fp passes counted | {p['fp_passes']:g} ({_span(p['fp_passes_per_checkpoint_eval'])} per checkpoint "
        "and eval) |",
        f"| quantized passes counted | {p['quantized_passes']:g} ({_span(p['quantized_passes_per_setting_eval'])} "
        "per setting, checkpoint and eval) |",
    ]
    if p["fp_pass_seconds"] is not None and p["quantized_pass_seconds"] is not None:
        lines += [f"| seconds per pass, fp / quantized | {p['fp_pass_seconds']:.3f} / {p['quantized_pass_seconds']:.3f}"
                  f" (quantized = {p['quantized_over_fp_pass_seconds']:.2f} fp; forwards only) |",
                  f"| forwards' share of the suite wall | {p['forward_seconds'] / r['suite_seconds']:.2f} |"]
    return lines


def to_markdown(r: dict, command: str) -> str:
    m = r["machine"]
    status = ", ".join(f"{n} {s}" for s, n in sorted(r["statuses"].items()))
    lines = [
        f"Suite wall time (`{command}`), {r['suite_name']} ({r['suite']}): a fresh results folder, local executor, "
        "beside one fp pass per checkpoint over the suite's eval texts measured after it in the same process.", "",
        "| figure | value |", "|---|---|",
        f"| checkpoints | {r['checkpoints']}" + (f" (first {r['limit_checkpoints']})" if r["limit_checkpoints"] else "")
        + " |",
        f"| quantizer settings k | {r['k']} |",
        f"| evals | {', '.join(r['evals'])} |",
        f"| cells | {r['cells']} of {r['planned']} planned ({status}) |",
        f"| suite wall time | {r['suite_seconds']:.1f} s |",
        f"| cells/s | {r['cells_per_s']:.3f} |",
        f"| fp pass, all checkpoints | {r['baseline_seconds']:.1f} s |",
        f"| suite cost, fp passes per checkpoint | {r['fp_passes']:.2f} "
        f"(goal ≤ 1 + 1.1·k = {r['goal_fp_passes']:.1f}) |",
        *_pass_lines(r),
        f"| device, threads used | {r['device']}, {r['threads']} |",
        f"| machine | {m['cpu_count']} CPUs, torch threads {m['torch_threads']}, OMP_NUM_THREADS "
        f"{m['omp_num_threads'] or 'unset'}, torch {m['torch']}, {m['platform']} |",
        "", "The suite's wall holds loading, quantizing, bootstrap intervals and store writes besides scoring.", "",
        "| checkpoint | scored tokens | fp pass s | building eval tokens s |", "|---|---|---|---|",
    ]
    lines += [f"| {b['checkpoint']} | {b['scored_tokens']:,} | {b['seconds']:.2f} | {b['tokenize_seconds']:.2f} |"
              for b in r["baseline"]]
    return "\n".join(lines) + "\n"
