"""Throughput of the RTN kernel against the ceiling (a device-to-device copy of the same bytes, measured in
the same run), the torch reference on the same device, the in-place blocked torch path that `rtn.quantize` runs
where the kernel does not (`rtn_inplace`, the reference's bits), and bitsandbytes' NF4 `quantize_4bit` (blocksize 64).

GB/s counts bytes read + bytes written, 1 GB = 1e9 bytes:
    copy, fake-quant (kernel, reference or in place):  2 * numel * itemsize      (read w, write w_hat)
    kernel quantize (packed):  numel * itemsize + numel * bits / 8 + 8 * n_groups   (codes, scale, zero)
    bnb quantize_4bit:         numel * itemsize + numel / 2 + 4 * numel / 64        (codes, absmax)
Goal on H100/H200 (issue 5): fake-quant at 4 bits >= 80 % of copy and >= 10x the reference.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch

DEFAULT_SIZES_CUDA = ((4096, 4096), (8192, 8192), (8192, 28672), (16384, 53248))
DEFAULT_SIZES_CPU = ((256, 1024), (1024, 4096))


@dataclass
class SizeResult:
    """GB/s of each implementation for one [rows, cols] weight; None with a note when it could not run."""

    rows: int
    cols: int
    copy_gbps: float
    reference_gbps: float
    inplace_gbps: float | None = None
    kernel_fake_gbps: float | None = None
    kernel_quant_gbps: float | None = None
    bnb_nf4_gbps: float | None = None
    notes: dict[str, str] = field(default_factory=dict)


def time_op(fn: Callable[[], object], device: torch.device, iters: int, warmup: int = 2) -> float:
    """Median seconds of fn() over `iters` runs (CUDA events on a GPU, wall clock on the CPU)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _bnb_quantize_4bit():
    """bitsandbytes.functional.quantize_4bit, or (None, why) when it cannot be imported."""
    try:
        from bitsandbytes.functional import quantize_4bit
    except ImportError as exc:  # optional dependency (`pip install qsens[bnb]`)
        return None, f"bitsandbytes not installed ({exc})"
    return quantize_4bit, ""


def bench_size(rows: int, cols: int, bits: int, group_size: int, dtype: torch.dtype, device: torch.device,
               iters: int) -> SizeResult:
    from qsens.quantizers import rtn_kernel
    from qsens.quantizers.rtn_inplace import rtn_fake_quantize_
    from qsens.quantizers.rtn_reference import rtn_fake_quantize

    w = (torch.randn(rows, cols, device=device, dtype=torch.float32) * 0.02).to(dtype)
    numel, item = w.numel(), w.element_size()
    gs = cols if group_size == -1 else group_size
    n_groups = rows * -(-cols // gs)
    fake_bytes = 2 * numel * item
    dst = torch.empty_like(w)
    copy_s = time_op(lambda: dst.copy_(w), device, iters)
    del dst
    # The reference allocates ~10 float32 copies of w; a few runs are enough to time it.
    ref_s = time_op(lambda: rtn_fake_quantize(w, bits, group_size, False), device, max(1, min(iters, 3)), warmup=1)
    result = SizeResult(rows, cols, fake_bytes / copy_s / 1e9, fake_bytes / ref_s / 1e9)
    scratch = w.clone()  # quantized over and over: the same operations every run (RTN of RTN is RTN's grid)
    result.inplace_gbps = fake_bytes / time_op(lambda: rtn_fake_quantize_(scratch, bits, group_size, False),
                                               device, iters) / 1e9
    del scratch
    _release(device)

    ok, reason = rtn_kernel.kernel_status()
    if ok and device.type == "cuda":
        module, _ = rtn_kernel._load()
        t = time_op(lambda: module.fake_quantize(w, bits, group_size, False), device, iters)
        result.kernel_fake_gbps = fake_bytes / t / 1e9
        t = time_op(lambda: module.quantize(w, bits, group_size, False), device, iters)
        result.kernel_quant_gbps = (numel * item + numel * bits / 8 + 8 * n_groups) / t / 1e9
    else:
        result.notes["kernel"] = "n/a (no CUDA)" if device.type != "cuda" else f"n/a ({reason})"

    quantize_4bit, why = _bnb_quantize_4bit()
    if quantize_4bit is None:
        result.notes["bnb"] = f"n/a ({why})"
    else:
        try:
            t = time_op(lambda: quantize_4bit(w, blocksize=64, quant_type="nf4"), device, iters)
            result.bnb_nf4_gbps = (numel * item + numel / 2 + 4 * numel / 64) / t / 1e9
        except (RuntimeError, NotImplementedError, ValueError) as exc:
            result.notes["bnb"] = f"n/a ({type(exc).__name__}: {str(exc)[:80]})"
    _release(device)
    return result


def _release(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def run(sizes, bits: int, group_size: int, dtype: torch.dtype, device: torch.device, iters: int) -> dict:
    """The benchmark as data: settings, provenance and one SizeResult per size."""
    from qsens.provenance import provenance

    info = {"bits": bits, "group_size": group_size, "symmetric": False, "dtype": str(dtype).replace("torch.", ""),
            "iters": iters, "provenance": provenance(device), "torch_cuda": torch.version.cuda}
    try:
        import bitsandbytes

        info["bitsandbytes_version"] = bitsandbytes.__version__
    except ImportError:
        info["bitsandbytes_version"] = None
    info["results"] = [asdict(bench_size(r, c, bits, group_size, dtype, device, iters)) for r, c in sizes]
    return info


def _fmt(x: float | None, note: str = "") -> str:
    if x is None:
        return note or "n/a"
    return f"{x:,.1f}" if x >= 10 else f"{x:.3g}"  # CPU runs of the reference are far below 1 GB/s


def _ratio(a: float | None, b: float | None) -> str:
    return "n/a" if a is None or b is None or b == 0 else f"{a / b:.2f}"


def to_markdown(data: dict, command: str) -> str:
    """The table for cuda/BENCHMARKS.md, rendered from `run`'s data only."""
    p = data["provenance"]
    lines = [
        "# RTN kernel benchmark",
        "",
        f"Device: **{p['device']}** | torch {p['torch_version']} (CUDA {data['torch_cuda']}) | "
        f"bitsandbytes {data['bitsandbytes_version']} | qsens {p['git_commit']}",
        f"Settings: {data['bits']} bits, group size {data['group_size']}, asymmetric, {data['dtype']} weights, "
        f"median of {data['iters']} runs. Command: `{command}`",
        "",
        "GB/s = (bytes read + bytes written) / time; copy = device-to-device copy of the same bytes (the ceiling).",
        "",
        "| size | copy GB/s | kernel fake-quant GB/s | kernel / copy | kernel / reference | reference GB/s "
        "| in place GB/s | in place / reference | kernel quantize GB/s | bnb NF4 GB/s | kernel quantize / bnb |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in data["results"]:
        kn, bn = r["notes"].get("kernel", ""), r["notes"].get("bnb", "")
        lines.append(
            f"| {r['rows']}x{r['cols']} | {_fmt(r['copy_gbps'])} | {_fmt(r['kernel_fake_gbps'], kn)} "
            f"| {_ratio(r['kernel_fake_gbps'], r['copy_gbps'])} | {_ratio(r['kernel_fake_gbps'], r['reference_gbps'])} "
            f"| {_fmt(r['reference_gbps'])} | {_fmt(r.get('inplace_gbps'))} "
            f"| {_ratio(r.get('inplace_gbps'), r['reference_gbps'])} | {_fmt(r['kernel_quant_gbps'], kn)} | {_fmt(r['bnb_nf4_gbps'], bn)} "
            f"| {_ratio(r['kernel_quant_gbps'], r['bnb_nf4_gbps'])} |"
        )
    lines += ["", "Goal (issue 5, H100/H200): kernel / copy >= 0.80 and kernel / reference >= 10 at 4 bits.", ""]
    return "\n".join(lines)
