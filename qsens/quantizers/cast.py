"""The noise floor of a checkpoint: its weights cast to float16 or bfloat16 and back, nothing else.

A model served in half precision differs from the float32 reference by this much before any quantizer acts, so
a quantizer's Δ or KL at or below this row's is not resolved from the dtype's own rounding. Every floating
parameter is cast (Linear weights and biases, embeddings, norms; `scope: linears` casts only the selected Linear
weights); the forward still runs in float32, so only the weights' rounding is measured. With `scope: linears` it
is issue 21's resolution floor (`qsens.analysis.resolution`): a cell within the floor's noise is not resolved.

bits is 16 (the dtype's width); effective_bits the same.
"""

from __future__ import annotations

import copy
import time
from typing import Literal

import torch

from qsens.quantizers.base import QuantContext, QuantResult, QuantSettings
from qsens.quantizers.layers import peak_memory_bytes, working_copy


class Settings(QuantSettings):
    method: Literal["cast"] = "cast"
    bits: Literal[16] = 16
    dtype: Literal["float16", "bfloat16"] = "float16"
    scope: Literal["all", "linears"] = "all"

    group_size_field = None

    def label(self) -> str:
        return f"cast-{self.dtype}" + ("-linears" if self.scope == "linears" else "")


def round_trip_(tensor: torch.Tensor, dtype: torch.dtype) -> None:
    """tensor <- float32(dtype(tensor)) in place (round to nearest even, as torch's .to does)."""
    tensor.copy_(tensor.to(dtype).to(tensor.dtype))


def quantize(ctx: QuantContext, settings: Settings) -> QuantResult:
    start = time.perf_counter()
    dtype = getattr(torch, settings.dtype)
    with torch.no_grad():
        if settings.scope == "linears":
            model, layers = working_copy(ctx.fp_model, settings.skip, verb="cast")
            params = [(f"{name}.weight", lin.weight) for name, lin in layers]
        else:
            model = copy.deepcopy(ctx.fp_model)
            params = [(n, p) for n, p in model.named_parameters() if p.is_floating_point()]
        for _, p in params:
            round_trip_(p.data, dtype)
    return QuantResult(
        model=model.eval(),
        effective_bits=16.0,
        layers_quantized=[n for n, _ in params],
        seconds=time.perf_counter() - start,
        peak_memory_bytes=peak_memory_bytes(ctx.device),
        backend=f"torch-{torch.__version__}:{ctx.device.type}",
        details={"dtype": settings.dtype, "scope": settings.scope},
    )
