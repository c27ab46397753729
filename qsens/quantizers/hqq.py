"""HQQ: half-quadratic quantization (Badri & Shaji 2023, "Half-Quadratic Quantization of Large Machine Learning
Models"), calibration-free, through the `hqq` package's own `HQQLinear` on CPU.

Per selected Linear: `HQQLinear(linear, hqq_base_quant_config(nbits, group_size, axis=1), compute_dtype,
device="cpu")` quantizes the weight (min/max initialisation, then hqq's proximal solver for the zero point:
`Quantizer.optimize_weights`, lp-norm 0.7, up to 20 iterations), and `HQQLinear.dequantize()` gives the weight
the layer computes with; that weight is written into a copy of the full-precision model, which then runs in its
own dtype: Δloss is the weight error alone (hqq's CPU forward is this same dequantize + matmul).

Always on CPU: hqq's solver runs in float16 on CUDA and float32 elsewhere, so quantizing on CPU gives the same
numbers on every machine (the dequantized weights are then moved to the model's device).

Groups: `group_size` consecutive weights along the input dimension (axis=1, the layout of hqq's fast backends),
asymmetric with a float zero point (rounded to an integer at 4 bits, as `hqq_base_quant_config` does);
`group_size` must divide every selected layer's input width (refused up front otherwise, naming the layer).
Scale and zero are stored in `compute_dtype` (hqq's default float16).

effective_bits: what the layer stores, read from it: the packed codes (hqq packs 3 bits as 10 codes per int32,
3.2 bits/weight; 5 and 6 bits as one byte each) plus the scale and zero tensors, over the layer's weights.
"""

from __future__ import annotations

import time
from typing import ClassVar, Literal

import torch
from pydantic import Field

from qsens.quantizers.base import QuantContext, QuantResult, QuantSettings
from qsens.quantizers.layers import peak_memory_bytes, working_copy

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


class Settings(QuantSettings):
    libraries: ClassVar[tuple[str, ...]] = ("hqq",)
    method: Literal["hqq"] = "hqq"
    bits: Literal[1, 2, 3, 4, 5, 6, 8]  # hqq's Quantizer.SUPPORTED_BITS (less 1.58)
    group_size: int = Field(64, ge=8, multiple_of=8)  # hqq_base_quant_config asserts a multiple of 8
    compute_dtype: Literal["float16", "bfloat16", "float32"] = "float16"

    def label(self) -> str:
        return f"hqq-w{self.bits}-g{self.group_size}-{self.compute_dtype}"


def stored_bits(layer) -> tuple[int, int]:
    """(bits `layer` (an HQQLinear) stores for its weight, number of weights): packed codes + scale + zero."""
    meta = layer.meta
    n = int(torch.Size(meta["shape"]).numel())
    bits = layer.W_q.numel() * layer.W_q.element_size() * 8
    for key in ("scale", "zero"):
        bits += meta[key].numel() * meta[key].element_size() * 8
    return bits, n


def check_widths(layers: list[tuple[str, torch.nn.Linear]], group_size: int) -> None:
    """Every group lies within one row: `group_size` must divide each input width (hqq would otherwise reshape
    groups across row ends, or assert on the total size)."""
    bad = [(name, m.in_features) for name, m in layers if m.in_features % group_size]
    if bad:
        shown = ", ".join(f"{n} (in_features {w})" for n, w in bad[:5])
        raise ValueError(f"hqq group_size {group_size} does not divide the input width of {len(bad)} layer(s): "
                         f"{shown}; choose a group_size that divides every selected layer's input width")


def hqq_layer(linear: torch.nn.Linear, settings: Settings):
    """hqq's HQQLinear holding `linear`'s weight quantized on CPU as `settings` say (`linear` is left intact)."""
    from hqq.core.quantize import HQQLinear, hqq_base_quant_config

    source = torch.nn.Linear(linear.in_features, linear.out_features, bias=False, device="meta")
    source.weight = torch.nn.Parameter(linear.weight.detach().to("cpu", copy=True), requires_grad=False)
    config = hqq_base_quant_config(nbits=settings.bits, group_size=settings.group_size, axis=1)
    return HQQLinear(source, config, compute_dtype=DTYPES[settings.compute_dtype], device="cpu", del_orig=True)


def quantize(ctx: QuantContext, settings: Settings) -> QuantResult:
    from qsens.quantizers.isolation import preserved_rng, restored_environ

    start = time.perf_counter()
    model, layers = working_copy(ctx.fp_model, settings.skip)
    check_widths(layers, settings.group_size)
    bits = n_weights = 0
    with preserved_rng(), restored_environ(), torch.no_grad():
        import hqq

        for name, linear in layers:
            layer = hqq_layer(linear, settings)
            w = layer.dequantize()
            if not torch.isfinite(w).all():
                raise FloatingPointError(f"hqq produced non-finite weights in {name} (non-finite input weights?)")
            linear.weight.copy_(w.to(device=linear.weight.device, dtype=linear.weight.dtype))
            b, n = stored_bits(layer)
            bits, n_weights = bits + b, n_weights + n
            del layer
    return QuantResult(
        model=model,
        effective_bits=bits / n_weights,
        layers_quantized=[name for name, _ in layers],
        seconds=time.perf_counter() - start,
        peak_memory_bytes=peak_memory_bytes(ctx.device),
        backend=f"hqq-{hqq.__version__}:cpu:dequantized",
        details={"library": {"hqq": hqq.__version__},
                 "quant_config": {"nbits": settings.bits, "group_size": settings.group_size, "axis": 1,
                                  "optimize": True, "round_zero": settings.bits == 4,
                                  "compute_dtype": settings.compute_dtype}},
    )
