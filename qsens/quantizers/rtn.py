"""RTN: round-to-nearest weight-only fake quantization of every selected Linear layer.

The arithmetic is `rtn_reference.py`'s; the torch backend runs it in place and in cache-sized blocks
(`rtn_inplace.py`, the same bits ~10x faster on a CPU), and on CUDA the kernel in `cuda/` (via `rtn_kernel.py`)
computes the same bits faster still. The fallback policy lives here and only here: `backend: auto` runs the kernel on every layer
it can (CUDA device, kernel built, supported dtype) and the reference on the others; `backend: cuda` refuses to
run unless the kernel can take every layer. The result records what actually ran: `cuda`, `torch`, or
`cuda+torch (k of n layers on torch: why)`.
"""

from __future__ import annotations

import time
from typing import Literal

import torch
from pydantic import Field, field_validator

from qsens.quantizers.base import QuantContext, QuantResult, QuantSettings
from qsens.quantizers.layers import peak_memory_bytes, working_copy
from qsens.quantizers.rtn_inplace import rtn_fake_quantize_


class Settings(QuantSettings):
    method: Literal["rtn"] = "rtn"
    bits: int = Field(ge=2, le=8)
    group_size: int = 128
    symmetric: bool = False
    backend: Literal["auto", "torch", "cuda"] = "auto"

    @field_validator("group_size")
    @classmethod
    def _group_size(cls, v: int) -> int:
        if v != -1 and v < 1:
            raise ValueError("group_size must be a positive integer or -1 (per channel)")
        return v

    def label(self) -> str:
        g = "gch" if self.group_size == -1 else f"g{self.group_size}"
        return f"rtn-w{self.bits}-{g}-{'sym' if self.symmetric else 'asym'}"

    def effective_bits(self, cols: int) -> float:
        """Storage bits per weight: the code, plus a float16 scale (and a `bits`-wide zero if asymmetric) per group."""
        gs = cols if self.group_size == -1 else self.group_size
        return self.bits + (16 + (0 if self.symmetric else self.bits)) / gs


def resolve_backend(requested: str, device: torch.device) -> str:
    """'torch' or 'cuda'. Forcing 'cuda' where it cannot run is an error, never a silent fallback."""
    if requested == "torch":
        return "torch"
    if device.type != "cuda":
        if requested == "cuda":
            raise RuntimeError("RTN backend 'cuda' was forced but the model is not on a CUDA device")
        return "torch"
    from qsens.quantizers import rtn_kernel

    ok, reason = rtn_kernel.kernel_status()
    if ok:
        return "cuda"
    if requested == "cuda":
        raise RuntimeError(f"RTN backend 'cuda' was forced but the kernel is unavailable: {reason}")
    return "torch"


def layer_backends(backend: str, requested: str, layers: list) -> list[tuple[str, str | None]]:
    """Per layer: ('cuda', None) or ('torch', why the kernel cannot take it). Forced 'cuda' admits no 'torch'."""
    if backend != "cuda":
        return [("torch", None)] * len(layers)
    from qsens.quantizers.rtn_kernel import kernel_unavailable_reason

    plan = []
    for name, module in layers:
        reason = kernel_unavailable_reason(module.weight)
        if reason is not None and requested == "cuda":
            raise RuntimeError(f"RTN backend 'cuda' was forced but the kernel cannot take layer {name}: {reason}")
        plan.append(("cuda", None) if reason is None else ("torch", reason))
    return plan


def describe_backends(plan: list[tuple[str, str | None]]) -> str:
    """What ran, for the cell's `backend` column: 'cuda', 'torch' or 'cuda+torch (k of n layers on torch: why)'."""
    on_torch = [reason for b, reason in plan if b == "torch"]
    if not on_torch:
        return "cuda"
    if len(on_torch) == len(plan):
        return "torch"
    reasons = "; ".join(sorted({r for r in on_torch if r}))
    return f"cuda+torch ({len(on_torch)} of {len(plan)} layers on torch: {reasons})"


def quantize(ctx: QuantContext, settings: Settings) -> QuantResult:
    start = time.perf_counter()
    model, layers = working_copy(ctx.fp_model, settings.skip)
    plan = layer_backends(resolve_backend(settings.backend, ctx.device), settings.backend, layers)
    if any(b == "cuda" for b, _ in plan):
        from qsens.quantizers.rtn_kernel import rtn_fake_quantize_kernel
    weight_bits = 0.0
    n_weights = 0
    with torch.no_grad():
        for (name, module), (backend, _) in zip(layers, plan):
            w = module.weight
            if backend == "cuda":
                w.data.copy_(rtn_fake_quantize_kernel(w.data, settings.bits, settings.group_size, settings.symmetric))
            else:
                rtn_fake_quantize_(w.data, settings.bits, settings.group_size, settings.symmetric)
            if not (torch.isfinite(w.data.amin()) and torch.isfinite(w.data.amax())):  # NaN propagates: 2 reductions
                raise FloatingPointError(f"RTN produced non-finite weights in {name} (non-finite input weights?)")
            weight_bits += settings.effective_bits(w.shape[1]) * w.numel()
            n_weights += w.numel()
    return QuantResult(
        model=model,
        effective_bits=weight_bits / n_weights,
        layers_quantized=[name for name, _ in layers],
        seconds=time.perf_counter() - start,
        peak_memory_bytes=peak_memory_bytes(ctx.device),
        backend=describe_backends(plan),
    )
