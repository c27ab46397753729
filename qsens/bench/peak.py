"""The machine's matmul limit for a model's own linear shapes, and the model's forward FLOPs.

`matmul_peak` times y = x W^T + b for every distinct (in, out) shape of the model's linear layers at the
forward's row count M (windows x positions per batch), through every route the machine has, not only the one
torch takes by default:
    CPU float32   aten (F.linear: torch's default BLAS, MKL's sgemm in the x86 wheels),
                  mkl_packed (MKL's packed sgemm on a pre-packed weight: inductor's CPU freezing path),
                  onednn (oneDNN's inner product on a pre-reordered weight: `mkldnn._linear_pointwise`, the
                  other kernel inductor's freezing emits)
    CUDA          float32 (TF32 off), tf32, bfloat16, float16: cuBLAS through F.linear
Rates are FLOP per CPU-second on the CPU (process CPU time: on a shared machine the step's own work) and FLOP
per second on CUDA. The model's limit at a route is its linear FLOPs over the time that route needs for them
(each shape weighted by its FLOPs per forward); the best limit takes the fastest route per shape.

`forward_flops` counts one forward with torch's FlopCounterMode (aten-level: matmuls, attention; elementwise ops
are not FLOPs there), independent of any route.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Callable

import torch


def linear_shapes(model: torch.nn.Module) -> Counter:
    """(in_features, out_features) -> number of layers with that shape (nn.Linear; GPT-2's Conv1D too)."""
    shapes: Counter = Counter()
    for m in model.modules():
        if isinstance(m, torch.nn.Linear):
            shapes[(m.in_features, m.out_features)] += 1
        elif type(m).__name__ == "Conv1D" and getattr(m, "weight", None) is not None:
            shapes[tuple(m.weight.shape)] += 1  # Conv1D stores [in, out]
    return shapes


def forward_flops(model: torch.nn.Module, ids: torch.Tensor) -> dict:
    """FLOPs of model(input_ids=ids): {'total', 'by_op'} (aten op name -> FLOPs)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(input_ids=ids)
    by_op = {str(op).split(".")[-1] if "." in str(op) else str(op): int(n)
             for op, n in counter.get_flop_counts().get("Global", {}).items()}
    return {"total": int(counter.get_total_flops()), "by_op": by_op}


def _cpu_routes(dtype: torch.dtype) -> dict[str, Callable]:
    """route -> prepare(w [N, K], b [N], M) -> fn(x [M, K]) -> y [M, N]; only routes this torch build has."""
    routes: dict[str, Callable] = {"aten": lambda w, b, M: (lambda x: torch.nn.functional.linear(x, w, b))}
    if dtype != torch.float32:
        return routes
    mkl = getattr(torch.ops, "mkl", None)
    if torch.backends.mkl.is_available() and mkl is not None and hasattr(mkl, "_mkl_linear"):
        def mkl_packed(w, b, M):
            packed = torch.ops.mkl._mkl_reorder_linear_weight(w, M)
            return lambda x: torch.ops.mkl._mkl_linear(x, packed, w, b, M)
        routes["mkl_packed"] = mkl_packed
    if torch.backends.mkldnn.is_available():
        def onednn(w, b, M):
            packed = torch.ops.mkldnn._reorder_linear_weight(w, M)
            return lambda x: torch.ops.mkldnn._linear_pointwise(x, packed, b, "none", [], "")
        routes["onednn"] = onednn
    return routes


def _cuda_routes(dtype: torch.dtype) -> dict[str, Callable]:
    plain = {"aten": lambda w, b, M: (lambda x: torch.nn.functional.linear(x, w, b))}
    if dtype != torch.float32:
        return plain

    def tf32(w, b, M):
        def fn(x):
            saved = torch.backends.cuda.matmul.allow_tf32
            torch.backends.cuda.matmul.allow_tf32 = True
            try:
                return torch.nn.functional.linear(x, w, b)
            finally:
                torch.backends.cuda.matmul.allow_tf32 = saved
        return fn
    return {**plain, "tf32": tf32}


def routes_for(device: torch.device, dtype: torch.dtype) -> dict[str, Callable]:
    return _cuda_routes(dtype) if device.type == "cuda" else _cpu_routes(dtype)


def _time(fn: Callable, x: torch.Tensor, device: torch.device, repeats: int) -> float:
    """Best seconds of fn(x) over `repeats` calls after one warm-up: CPU seconds on CPU, wall on CUDA."""
    fn(x)
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            fn(x)
            torch.cuda.synchronize(device)
            best = min(best, time.perf_counter() - t0)
        else:
            c0 = time.process_time()
            fn(x)
            best = min(best, time.process_time() - c0)
    return max(best, 1e-9)


def matmul_peak(shapes: Counter, rows: int, device: torch.device, dtype: torch.dtype = torch.float32,
                repeats: int = 2, seed: int = 0) -> dict:
    """FLOP rates of every route on every shape, and the model's limit (see the module docstring).

    Returns {'rows', 'dtype', 'per_shape': [{'in', 'out', 'layers', 'rates': {route: FLOP/s}}],
    'rate_by_route': {route: FLOP/s over the model's linear FLOPs}, 'best_rate', 'best_route_by_shape'}.
    """
    gen = torch.Generator().manual_seed(seed)
    routes = routes_for(device, dtype)
    saved_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # "float32" means float32 arithmetic
    per_shape, need = [], {r: 0.0 for r in routes}
    best_need, total = 0.0, 0.0
    try:
        with torch.inference_mode():
            for (k, n), layers in sorted(shapes.items()):
                w = (torch.randn(n, k, generator=gen) * k ** -0.5).to(device, dtype)
                b = torch.zeros(n, device=device, dtype=dtype)
                x = torch.randn(rows, k, generator=gen).to(device, dtype)
                flops = 2.0 * rows * k * n
                rates = {}
                for name, prepare in routes.items():
                    try:
                        rates[name] = flops / _time(prepare(w, b, rows), x, device, repeats)
                    except (RuntimeError, NotImplementedError):  # a route this build lists but cannot run
                        continue
                per_shape.append({"in": k, "out": n, "layers": layers, "rates": rates})
                total += flops * layers
                for name in routes:
                    need[name] += flops * layers / rates[name] if name in rates else float("inf")
                best_need += flops * layers / max(rates.values())
                del w, b, x
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved_tf32
    return {"rows": rows, "dtype": str(dtype).replace("torch.", ""), "per_shape": per_shape,
            "rate_by_route": {r: total / s for r, s in need.items() if s < float("inf")},
            "best_rate": total / best_need if best_need else 0.0,
            "best_route_by_shape": {f"{p['in']}x{p['out']}": max(p["rates"], key=p["rates"].get) for p in per_shape}}
