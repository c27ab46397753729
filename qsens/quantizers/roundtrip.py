"""The resolution floor: the selected Linear weights rounded to a 16-bit float and back (no quantization).

A Δloss this small is what storing the weights in fp16 (or bf16) would change; a quantizer's Δ within the floor's
noise does not measure the quantizer (issue 21: recomputing an 8-bit cell in float64 instead of float32 moved Δ by
4-8%). Scored like any method, on the same tokens, so `qsens.analysis.resolution` can compare every cell of a
checkpoint and eval with its floor cell. `bits` is 16: the storage bits of the round-trip format.
"""

from __future__ import annotations

import time
from typing import Literal

import torch

from qsens.quantizers.base import QuantContext, QuantResult, QuantSettings
from qsens.quantizers.layers import peak_memory_bytes, working_copy


class Settings(QuantSettings):
    method: Literal["roundtrip"] = "roundtrip"
    bits: Literal[16] = 16
    format: Literal["float16", "bfloat16"] = "float16"

    group_size_field = None

    def label(self) -> str:
        return f"roundtrip-{self.format}"


def quantize(ctx: QuantContext, settings: Settings) -> QuantResult:
    start = time.perf_counter()
    model, layers = working_copy(ctx.fp_model, settings.skip, verb="round")
    fmt = getattr(torch, settings.format)
    changed = n_weights = 0
    with torch.no_grad():
        for _, module in layers:
            w = module.weight
            rounded = w.to(fmt).to(w.dtype)
            changed += int((rounded != w).sum())
            n_weights += w.numel()
            w.copy_(rounded)
    return QuantResult(model=model, effective_bits=16.0, layers_quantized=[name for name, _ in layers],
                       seconds=time.perf_counter() - start, peak_memory_bytes=peak_memory_bytes(ctx.device),
                       backend="torch", details={"format": settings.format, "weights_changed": changed,
                                                 "n_weights": n_weights})
