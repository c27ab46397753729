"""`qsens bench train`: training tokens per CPU-second of the fast trainer and the HF trainer, and the share of the
machine's fp32 matmul rate the fast one reaches, in one process.

Per size of a ladder spec: both trainers start from the same weights (one seed) and train on the same random
batches of the spec's vocabulary through the real `train_steps`. Rounds alternate the two (HF first in even
rounds, the fast trainer first in odd ones, `qsens.bench.timing`) and each block of `steps` steps is timed in
CPU seconds of this process beside wall time, with the load, so a loaded machine slows both alike; rates use
the median block, the speedup is also given per round (CPU and wall).

FLOPs of a step (Kaplan et al. 2020, PaLM's MFU counting, non-causal attention):
    6 T (N_linear + V H) + 12 L B S^2 H,   T = B S tokens, N_linear = every q/k/v/o/gate/up/down weight
The matmul rate "for the same shapes" is the CPU-time rate of `torch.mm` on exactly the GEMMs of those linears
(forward [T, K] x [K, N], input gradient [T, N] x [N, K], weight gradient [N, T] x [T, K], head included),
timed in this process on its BLAS route; the 1024^3 sgemm rate is reported beside it. With `blas_routes`, the
same GEMM rate is measured in fresh processes on each BLAS route (qsens.blas), interleaved.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from qsens import blas
from qsens.bench.timing import interleave


def linear_shapes(hidden: int, mlp: int, layers: int, vocab: int) -> list[tuple[int, int]]:
    """(in, out) of every linear of a step, head last."""
    per_layer = [(hidden, 3 * hidden), (hidden, hidden), (hidden, 2 * mlp), (mlp, hidden)]
    return per_layer * layers + [(hidden, vocab)]


def step_flops(hidden: int, mlp: int, layers: int, vocab: int, batch: int, seq: int) -> int:
    tokens = batch * seq
    linear = sum(k * n for k, n in linear_shapes(hidden, mlp, layers, vocab))
    return 6 * tokens * linear + 12 * layers * batch * seq * seq * hidden


def gemms(hidden: int, mlp: int, layers: int, vocab: int, tokens: int) -> list[tuple[int, int, int]]:
    """(m, k, n) of every GEMM of a training step's linears: forward, input gradient, weight gradient."""
    out = []
    for k, n in linear_shapes(hidden, mlp, layers, vocab):
        out += [(tokens, k, n), (tokens, n, k), (n, tokens, k)]
    return out


def gemm_rate(shapes: list[tuple[int, int, int]], min_seconds: float = 0.5) -> float:
    """fp32 FLOP/s of `torch.mm` over `shapes` (each once per repetition), in CPU seconds of this process."""
    mats = [(torch.randn(m, k), torch.randn(k, n)) for m, k, n in shapes]
    flops = sum(2 * m * k * n for m, k, n in shapes)
    for a, b in mats:
        torch.mm(a, b)
    reps, spent = 0, 0.0
    t0 = time.process_time()
    while spent < min_seconds or reps < 3:
        for a, b in mats:
            torch.mm(a, b)
        reps += 1
        spent = time.process_time() - t0
    return flops * reps / spent


def _models(size, spec, seed: int):
    from qsens.testbed.trainer import build_training_model, make_optimizer

    out = {}
    for trainer in ("hf", "fast"):
        s = spec.model_copy(update={"trainer": trainer})
        model = build_training_model(size, s, spec.vocab_size, 0, seed=seed)
        out[trainer] = (model, make_optimizer(model, s))
    return out


def run_size(size, spec, steps: int, rounds: int, seed: int = 0) -> dict:
    """Tokens per CPU-second of both trainers on one size, FLOP/s and the matmul rate of the same shapes."""
    from qsens.testbed.trainer import DataOrder, train_steps

    data = DataOrder(np.random.default_rng(seed).integers(1, spec.vocab_size, 3_000_000), spec, seed=seed)
    models = _models(size, spec, seed)
    quiet, lr = (lambda m: None), (lambda s: 1e-3)
    done = {"hf": 1, "fast": 1}  # steps each trainer has taken (one untimed step each: allocations, first calls)

    def block(trainer: str) -> None:
        model, opt = models[trainer]
        first = done[trainer]
        train_steps(model, opt, data, range(first, first + steps), lr, None, quiet, 1.0, save_every_s=1e12)
        done[trainer] += steps

    for trainer, (model, opt) in models.items():
        train_steps(model, opt, data, range(0, 1), lr, None, quiet, 1.0, save_every_s=1e12)
    timed = interleave({"hf": lambda: block("hf"), "fast": lambda: block("fast")}, rounds, warmup=False)
    cpu = timed.cpu
    tps = spec.tokens_per_step
    rate = {t: steps * tps / statistics.median(v) for t, v in cpu.items()}
    flops = step_flops(size.hidden, size.mlp, size.layers, spec.vocab_size, spec.batch_size, spec.sequence_length)
    shapes = gemms(size.hidden, size.mlp, size.layers, spec.vocab_size, tps)
    peak = gemm_rate(shapes)
    fast_flops = rate["fast"] / tps * flops
    return {"size": size.name, "hidden": size.hidden, "tokens_per_cpu_s_hf": round(rate["hf"]),
            "tokens_per_cpu_s_fast": round(rate["fast"]), "speedup": round(rate["fast"] / rate["hf"], 3),
            "step_gflop": round(flops / 1e9, 3), "fast_gflop_per_s": round(fast_flops / 1e9, 2),
            "hf_gflop_per_s": round(rate["hf"] / tps * flops / 1e9, 2),
            "matmul_gflop_per_s_same_shapes": round(peak / 1e9, 2), "share_of_matmul_rate": round(fast_flops / peak, 3),
            "cpu_seconds": {k: [round(x, 3) for x in v] for k, v in cpu.items()}, "steps_per_block": steps,
            "speedup_rounds": timed.figure(lambda x: x["hf"] / x["fast"]), "timing": timed.as_dict(),
            "rounds": rounds}


GEMM_CHILD = ("import json, sys, torch; from qsens import blas; from qsens.bench.train import gemm_rate; "
              "torch.set_num_threads(1); shapes = json.loads(sys.argv[1]); "
              "print(json.dumps({'route': blas.route(), 'rate': gemm_rate([tuple(s) for s in shapes])}))")


def blas_routes(shapes: list[tuple[int, int, int]], rounds: int = 3) -> dict:
    """GEMM rate of `shapes` in fresh single-thread processes on each BLAS route, interleaved (order reversed
    every other round); {route: [FLOP/s, ...]}. Only the default route where the shim cannot be built."""
    env_shim = blas.shim_env()
    envs = {"default": blas.plain_env()}
    if env_shim is not None and blas.torch_uses_mkl():
        envs[blas.INTEL_PATH] = env_shim | {"QSENS_BLAS": "shim"}
    out: dict[str, list[float]] = {k: [] for k in envs}
    root = str(Path(__file__).resolve().parents[2])
    for r in range(rounds):
        for name in (list(envs) if r % 2 == 0 else list(envs)[::-1]):
            env = envs[name] | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                                "PYTHONPATH": os.pathsep.join([root, envs[name].get("PYTHONPATH", "")])}
            done = subprocess.run([sys.executable, "-c", GEMM_CHILD, json.dumps(shapes)], env=env, capture_output=True,
                                  text=True, timeout=600, check=True)
            got = json.loads(done.stdout.strip().splitlines()[-1])
            if got["route"] != name:
                raise RuntimeError(f"asked for BLAS route {name}, the process ran on {got['route']}")
            out[name].append(got["rate"])
    return out


def run(spec_path: str | Path, sizes: list[str] | None = None, steps: int = 4, rounds: int = 4,
        compare_blas: bool = False) -> dict:
    from qsens.testbed.spec import load_ladder_spec

    spec = load_ladder_spec(spec_path)
    chosen = [s for s in spec.sizes if not sizes or s.name in sizes]
    if not chosen:
        raise ValueError(f"{spec_path}: no size among {sizes} (allowed: {', '.join(s.name for s in spec.sizes)})")
    result = {"spec": str(spec_path), "threads": torch.get_num_threads(), "blas_route": blas.route(),
              "cpu": " ".join(sorted(blas.cpu_features()[1] & {"avx2", "avx512f", "amx_tile"})) or "unknown",
              "vendor": blas.cpu_features()[0], "sgemm_1024_gflop_per_s": round(gemm_rate([(1024,) * 3]) / 1e9, 2),
              "sizes": [run_size(s, spec, steps, rounds) for s in chosen]}
    if compare_blas:
        big = chosen[-1]
        shapes = gemms(big.hidden, big.mlp, big.layers, spec.vocab_size, spec.tokens_per_step)
        routes = blas_routes(shapes)
        result["blas_routes_gflop_per_s"] = {k: [round(x / 1e9, 2) for x in v] for k, v in routes.items()}
        result["blas_routes_size"] = big.name
    return result


def to_markdown(data: dict, command: str) -> str:
    lines = [f"# Training throughput: fast vs HF trainer (`{command}`)", "",
             f"1 thread ({data['threads']}), BLAS route `{data['blas_route']}`, CPU {data['vendor']} ({data['cpu']}); "
             f"sgemm 1024^3: {data['sgemm_1024_gflop_per_s']} GFLOP/s (CPU time). Tokens per CPU-second, "
             f"median of interleaved blocks; only ratios are results on a shared machine.", "",
             "| size | HF tok/CPU-s | fast tok/CPU-s | speedup (per round) | fast GFLOP/s | matmul GFLOP/s, same "
             "shapes | share | load (1 min) per round |",
             "|---|---|---|---|---|---|---|---|"]
    for s in data["sizes"]:
        per = s["speedup_rounds"]
        rounds = ", ".join(f"{v:.2f}" for v in per["cpu"]["rounds"])
        lines.append(f"| {s['size']} | {s['tokens_per_cpu_s_hf']:,} | {s['tokens_per_cpu_s_fast']:,} | "
                     f"{s['speedup']:.2f}x ({rounds}; wall {per['wall']['median']:.2f}x) | {s['fast_gflop_per_s']} | "
                     f"{s['matmul_gflop_per_s_same_shapes']} | {s['share_of_matmul_rate']:.0%} | "
                     f"{', '.join(f'{ld[0]:.1f}' for ld in s['timing']['load'] if ld)} |")
    if "blas_routes_gflop_per_s" in data:
        med = {k: statistics.median(v) for k, v in data["blas_routes_gflop_per_s"].items()}
        lines += ["", f"BLAS routes, GEMMs of {data['blas_routes_size']} (GFLOP/s per round, fresh processes): "
                  + "; ".join(f"`{k}` {v}" for k, v in data["blas_routes_gflop_per_s"].items())
                  + (f"; gain {med[blas.INTEL_PATH] / med['default']:.2f}x" if blas.INTEL_PATH in med else "")]
    return "\n".join(lines) + "\n"
