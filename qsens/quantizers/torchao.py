"""torchao weight-only integer quantization through `torchao.quantization.quantize_`, on CPU or CUDA.

    scheme int8: Int8WeightOnlyConfig, symmetric int8 per output row (group_size -1) or per group;
    scheme intx: IntxWeightOnlyConfig(weight_dtype=torch.int<bits>), per group of `group_size` input weights
                 (or per row, -1), symmetric or asymmetric; int4 per group is the usual deployment.

The scored model is torchao's own: every selected Linear holds torchao's quantized weight tensor subclass
(`Int8Tensor`, `IntxUnpackedToInt8Tensor`) and computes with torchao's linear implementation for it (CPU:
dequantize + matmul in the model's dtype). `quantize_` is applied with a filter naming exactly the selected
layers; what each layer holds afterwards is read back and checked.

effective_bits: the format's storage per weight: `bits` per code (int8: 8) plus the scale (in `scale_dtype`)
and, when asymmetric, the int8 zero point per group, read from the tensors. In memory torchao's intx tensor keeps
every code in one int8 byte (packing is a deployment step), which `details.memory_bits_per_weight` records.
"""

from __future__ import annotations

import time
from typing import ClassVar, Literal

import torch
from pydantic import Field, field_validator, model_validator

from qsens.quantizers.base import QuantContext, QuantResult, QuantSettings
from qsens.quantizers.layers import peak_memory_bytes, working_copy

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


class Settings(QuantSettings):
    libraries: ClassVar[tuple[str, ...]] = ("torchao",)
    method: Literal["torchao"] = "torchao"
    scheme: Literal["int8", "intx"] = "intx"
    bits: int = Field(ge=1, le=8)
    group_size: int = 32  # -1: one scale per output row
    symmetric: bool = False  # int8 weight-only is symmetric only
    # dtype of the stored scales; None keeps the weight's dtype (torchao's default; int8 always uses float32)
    scale_dtype: Literal["float16", "bfloat16", "float32"] | None = "float16"

    @field_validator("group_size")
    @classmethod
    def _group_size(cls, v: int) -> int:
        if v != -1 and v < 1:
            raise ValueError("group_size must be a positive integer or -1 (per output row)")
        return v

    @model_validator(mode="after")
    def _scheme(self) -> "Settings":
        if self.scheme == "int8":
            if self.bits != 8:
                raise ValueError("scheme int8 stores 8-bit codes: bits must be 8 (use scheme intx for fewer)")
            if not self.symmetric:
                raise ValueError("scheme int8 (Int8WeightOnlyConfig) is symmetric only: set symmetric: true")
            if self.scale_dtype not in (None, "float32"):
                raise ValueError("scheme int8 stores float32 scales (torchao chooses them): scale_dtype must be "
                                 "float32 or null")
        return self

    def label(self) -> str:
        g = "gch" if self.group_size == -1 else f"g{self.group_size}"
        sym = "sym" if self.symmetric else "asym"
        sd = f"-s{self.scale_dtype}" if self.scale_dtype else ""
        return f"torchao-{self.scheme}-w{self.bits}-{g}-{sym}{sd}"


def ao_config(settings: Settings):
    """The torchao config object `settings` describe."""
    from torchao.quantization import Int8WeightOnlyConfig, IntxWeightOnlyConfig, MappingType, PerAxis, PerGroup, PerRow

    if settings.scheme == "int8":
        granularity = PerRow() if settings.group_size == -1 else PerGroup(settings.group_size)
        return Int8WeightOnlyConfig(granularity=granularity, set_inductor_config=False)
    granularity = PerAxis(0) if settings.group_size == -1 else PerGroup(settings.group_size)
    return IntxWeightOnlyConfig(
        weight_dtype=getattr(torch, f"int{settings.bits}"), granularity=granularity,
        mapping_type=MappingType.SYMMETRIC if settings.symmetric else MappingType.ASYMMETRIC,
        scale_dtype=DTYPES[settings.scale_dtype] if settings.scale_dtype else None)


def check_widths(layers: list[tuple[str, torch.nn.Linear]], group_size: int) -> None:
    """torchao's groups tile each row exactly: `group_size` must divide every selected input width."""
    bad = [(name, m.in_features) for name, m in layers if group_size != -1 and m.in_features % group_size]
    if bad:
        shown = ", ".join(f"{n} (in_features {w})" for n, w in bad[:5])
        raise ValueError(f"torchao group_size {group_size} does not divide the input width of {len(bad)} "
                         f"layer(s): {shown}; choose a group_size that divides them, or -1 (per row)")


def stored_bits(weight, settings: Settings) -> tuple[float, float, int]:
    """(format bits, in-memory bits, number of weights) of one torchao quantized weight tensor."""
    n = weight.qdata.numel()
    meta = 0
    for name in ("scale", "zero_point"):
        t = getattr(weight, name, None)
        if t is not None and not (name == "zero_point" and settings.symmetric):
            meta += t.numel() * t.element_size() * 8
    return settings.bits * n + meta, weight.qdata.element_size() * 8 * n + meta, n


def quantize(ctx: QuantContext, settings: Settings) -> QuantResult:
    from qsens.quantizers.isolation import preserved_rng, restored_environ

    start = time.perf_counter()
    model, layers = working_copy(ctx.fp_model, settings.skip)
    check_widths(layers, settings.group_size)
    selected = {id(m) for _, m in layers}
    with preserved_rng(), restored_environ():
        import torchao
        from torchao.quantization import quantize_

        quantize_(model, ao_config(settings), filter_fn=lambda module, _fqn: id(module) in selected)
    bits = memory_bits = n_weights = 0
    kinds = set()
    for name, _ in layers:
        weight = model.get_submodule(name).weight
        if not hasattr(weight, "qdata"):
            raise RuntimeError(f"torchao left layer {name} unquantized ({type(weight).__name__})")
        kinds.add(type(weight).__name__)
        b, m, n = stored_bits(weight, settings)
        bits, memory_bits, n_weights = bits + b, memory_bits + m, n_weights + n
    return QuantResult(
        model=model.eval(),
        effective_bits=bits / n_weights,
        layers_quantized=[name for name, _ in layers],
        seconds=time.perf_counter() - start,
        peak_memory_bytes=peak_memory_bytes(ctx.device),
        backend=f"torchao-{torchao.__version__}:{ctx.device.type}:{'+'.join(sorted(kinds))}",
        details={"library": {"torchao": torchao.__version__}, "config": repr(ao_config(settings)),
                 "memory_bits_per_weight": memory_bits / n_weights, "tensor_types": sorted(kinds)},
    )
