"""`qsens bench suite`: a whole suite's cost beside one full-precision pass per checkpoint, in the same run.

The suite runs through the library (`run_suite`, local executor, in this process) into a fresh results folder
each time, so nothing is skipped as already done. The baseline is each checkpoint's fp model scoring each eval
text of the suite once, with no quantizer and no KL (`score_reference(..., keep_logits=False)`, the fp pass of
`qsens bench score`), on the very tokens the suite scored. Both run in interleaved rounds (`qsens.bench.timing`:
suite then baseline, then baseline then suite, ...), after one untimed baseline that pays what a process pays
once (imports, tokenizers, building the eval tokens, which the suite then reuses). A timed baseline step also
loads each checkpoint, as the suite does once per checkpoint (on micro checkpoints ~0.06 of its 1.75 s). The
first suite run also compiles the compare kernels (`qsens.metrics.fused`): its round is the dearest (micro, one
checkpoint: 9.4 fp passes against 5.3 and 5.8 in the next two), so `qsens bench suite` takes the median of 3.

Figures (ratios per round, median beside them; CPU time of this process, wall time beside it):
    fp_passes         suite seconds / baseline seconds: the suite's cost in fp passes per checkpoint (all evals)
    ideal_fp_passes   1 + k, k = quantizer settings of the suite: one fp pass and one pass per quantized model
    goal_fp_passes    1.1 (1 + k) (issue 24); the suite also loads, quantizes, bootstraps intervals, writes rows
    cells_per_s       cells stored (ok or failed) / suite wall seconds (median round)
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
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch

from qsens import blas
from qsens.bench import passes as pass_counter
from qsens.bench.timing import interleave, load_average
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
    return {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "blas_route": blas.route(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "platform": platform.platform(),
            "torch": torch.__version__}


def run(suite: Suite | str | Path = DEFAULT_SUITE, *, threads: int | None = 1, rounds: int = 1,
        limit_checkpoints: int | None = None, results_dir: str | Path | None = None) -> dict:
    """`rounds` interleaved rounds of the suite (the first into `results_dir`, which must be empty or absent;
    default and later rounds: temporary folders, removed after) and the fp baseline; every figure of the module
    docstring (the CLI's default is 3 rounds: see there). `threads` sets torch's thread count for the run only (None: torch's; default 1, as `qsens run`)."""
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    saved = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _run(suite, limit_checkpoints, results_dir, rounds)
    finally:
        torch.set_num_threads(saved)


def _suite_step(suite: Suite, results_dir: str | Path | None, runs: list) -> None:
    """One suite run into a fresh folder (`results_dir` for the first); appends (summary, stored rows, passes)."""
    with tempfile.TemporaryDirectory(prefix="qsens-bench-suite-") as tmp:
        folder = Path(results_dir) if results_dir is not None and not runs else Path(tmp)
        with pass_counter.counting() as log:
            summary = run_suite(suite, folder, progress=False, threads=None)  # run() set the bench's threads
        runs.append((summary, ResultStore(folder).cells(), log.summary()))


def _run(suite: Suite | str | Path, limit_checkpoints: int | None, results_dir: str | Path | None,
         rounds: int) -> dict:
    suite = limited(suite if isinstance(suite, Suite) else load_suite(suite), limit_checkpoints)
    device = resolve_device(suite.spec.device)
    if results_dir is not None and Path(results_dir).exists() and any(Path(results_dir).iterdir()):
        raise ValueError(f"results_dir {results_dir} is not empty: the benchmark needs a fresh results folder")
    runs: list = []
    baselines: list = [fp_baseline(suite, device)]  # untimed: what a process pays once (see the docstring)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else None
    r = interleave({"suite": lambda: _suite_step(suite, results_dir, runs),
                    "fp": lambda: baselines.append(fp_baseline(suite, device))}, rounds, sync, warmup=False)
    summary, stored, passes = runs[-1]
    baseline = baselines[-1]
    statuses = Counter(c["status"] for c in stored)
    k = len(suite.quantizers)
    suite_seconds = statistics.median(r.wall["suite"])
    fp_passes = r.figure(lambda x: x["suite"] / x["fp"])
    return {
        "suite": str(suite.path), "suite_name": suite.name, "device": str(device), "machine": machine(),
        "threads": torch.get_num_threads(), "checkpoints": len(suite.checkpoints),
        "limit_checkpoints": limit_checkpoints, "k": k, "evals": [ev.name for ev in suite.evals],
        "planned": summary.planned, "cells": len(stored), "statuses": dict(statuses), "rounds": rounds,
        "timing": r.as_dict(), "load_after": load_average(),
        "suite_seconds": suite_seconds, "cells_per_s": len(stored) / suite_seconds,
        "baseline": baseline, "baseline_seconds": statistics.median(r.wall["fp"]),
        "tokenize_seconds": sum(b["tokenize_seconds"] for b in baselines[0]),
        "fp_passes": fp_passes["cpu"]["median"], "fp_passes_rounds": fp_passes,
        "ideal_fp_passes": 1 + k, "goal_fp_passes": 1.1 * (1 + k),
        "passes": _pass_figures(passes, suite, k),
    }


def _pass_figures(passes: dict, suite: Suite, k: int) -> dict:
    per = passes["per_checkpoint"].values()
    n_ev = len(suite.evals)
    return passes | {
        "layer_sets": sorted({q.layers or "all" for q in suite.quantizers}),
        "fp_passes_per_checkpoint_eval": [min(p["fp_passes"] for p in per) / n_ev,
                                          max(p["fp_passes"] for p in per) / n_ev] if per else None,
        "quantized_passes_per_setting_eval": [min(p["q_passes"] for p in per) / (k * n_ev),
                                              max(p["q_passes"] for p in per) / (k * n_ev)] if per else None,
        "quantized_over_fp_pass_seconds": (passes["quantized_pass_seconds"] / passes["fp_pass_seconds"]
                                           if passes["fp_pass_seconds"] and passes["quantized_pass_seconds"]
                                           else None),
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
                  f"| forwards' share of the suite wall (last round) | "
                  f"{p['forward_seconds'] / r['timing']['wall']['suite'][-1]:.2f} |"]
    return lines


def _rounds(fig: dict) -> str:
    c, w = fig["cpu"], fig["wall"]
    return f"{c['median']:.2f} ({', '.join(f'{v:.2f}' for v in c['rounds'])}; wall {w['median']:.2f})"


def to_markdown(r: dict, command: str) -> str:
    m = r["machine"]
    status = ", ".join(f"{n} {s}" for s, n in sorted(r["statuses"].items()))
    loads = ", ".join(f"{ld[0]:.1f}" for ld in r["timing"]["load"] if ld)
    lines = [
        f"Suite cost (`{command}`), {r['suite_name']} ({r['suite']}): a fresh results folder each round, local "
        "executor, beside one fp pass per checkpoint over the suite's eval texts, in interleaved rounds (order "
        "reversed every other round) in the same process; ratios in CPU time per round, wall time beside them.", "",
        "| figure | value |", "|---|---|",
        f"| checkpoints | {r['checkpoints']}" + (f" (first {r['limit_checkpoints']})" if r["limit_checkpoints"] else "")
        + " |",
        f"| quantizer settings k | {r['k']} |",
        f"| evals | {', '.join(r['evals'])} |",
        f"| cells | {r['cells']} of {r['planned']} planned ({status}) |",
        f"| suite wall time (median round) | {r['suite_seconds']:.1f} s |",
        f"| cells/s | {r['cells_per_s']:.3f} |",
        f"| fp baseline, all checkpoints, loading included (median round) | {r['baseline_seconds']:.1f} s |",
        f"| suite cost, fp passes per checkpoint | {_rounds(r['fp_passes_rounds'])} (ideal 1 + k = "
        f"{r['ideal_fp_passes']}, goal ≤ 1.1·(1 + k) = {r['goal_fp_passes']:.1f}) |",
        f"| building eval tokens, once per process | {r['tokenize_seconds']:.1f} s (not in the rounds) |",
        *_pass_lines(r),
        f"| device, threads used | {r['device']}, {r['threads']} |",
        f"| load (1 min) per round | {loads} |",
        f"| machine | {m['cpu_count']} CPUs, torch threads {m['torch_threads']}, BLAS route "
        f"{m.get('blas_route', '?')}, OMP_NUM_THREADS "
        f"{m['omp_num_threads'] or 'unset'}, torch {m['torch']}, {m['platform']} |",
        "", "The suite also loads, quantizes, bootstraps intervals and writes rows besides scoring.", "",
        "| checkpoint | scored tokens | fp pass s | building eval tokens s |", "|---|---|---|---|",
    ]
    lines += [f"| {b['checkpoint']} | {b['scored_tokens']:,} | {b['seconds']:.2f} | {b['tokenize_seconds']:.2f} |"
              for b in r["baseline"]]
    return "\n".join(lines) + "\n"
