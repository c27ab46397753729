"""GGUF / llama.cpp weight types (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, MXFP4) through the `gguf` package's own numpy
quantize and dequantize (`gguf.quants`, written to be bit-exact with ggml's reference `quantize_row_*_ref`).

Layout as llama.cpp stores a Linear weight W [out, in]: each row (ne0 = in) is cut into blocks of 32 consecutive
weights; a block stores its codes and a float16 scale (Q*_0: x = d q; Q*_1: x = d q + m; Q8_0: 8-bit codes;
MXFP4: e2m1 codes and an e8m0 power-of-two scale). The weights that are scored are the gguf package's
dequantization of the bytes its quantizer produced, so the model is what llama.cpp would hold (its matmuls differ:
ggml also quantizes the activations to Q8_0 blocks; see tests/fixtures/llamacpp/README.md).

K-quants (Q2_K ... Q6_K, blocks of 256) are refused: gguf 0.19 implements their dequantization only
(`gguf.quants.Q4_K` has no `quantize_blocks`), and a quantizer of our own would not be llama.cpp's (its
`make_qkx2_quants` search). Quantize with `llama-quantize` and score the GGUF file as a pre-quantized artifact
(`method: prequantized`), which dequantizes every type the gguf package reads.

Rows that are not a multiple of the block size: `incompatible: refuse` (default) fails the cell up front, naming
every such tensor; `incompatible: f16` stores them as float16, as `llama-quantize` falls back (its
`tensor_type_fallback` turns a 32-block type that does not fit into F16). `bits` is the type's nominal code width;
`effective_bits` counts every stored byte (codes, scales, and F16 fallbacks) per quantized weight.
"""

from __future__ import annotations

import time
from typing import ClassVar, Literal

import numpy as np
import torch
from pydantic import field_validator, model_validator

from qsens.quantizers.base import QuantContext, QuantResult, QuantSettings
from qsens.quantizers.layers import peak_memory_bytes, working_copy

# type -> nominal bits of a code (the `bits` column); block sizes come from gguf.GGML_QUANT_SIZES.
TYPE_BITS = {"Q4_0": 4, "Q4_1": 4, "Q5_0": 5, "Q5_1": 5, "Q8_0": 8, "MXFP4": 4}
K_QUANTS = ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")
BLOCK = 32  # every type of TYPE_BITS


class Settings(QuantSettings):
    method: Literal["gguf"] = "gguf"
    type: str  # one of TYPE_BITS (checked below, so that a K-quant gets its own message)
    bits: int = 0  # filled from `type`; a given value must agree with it
    incompatible: Literal["refuse", "f16"] = "refuse"

    group_size_field = None
    # The gguf package quantizes: its version is part of the cell key (runner.plan.quantizer_inputs).
    libraries: ClassVar[tuple[str, ...]] = ("gguf",)

    @field_validator("type")
    @classmethod
    def _known_type(cls, qtype: str) -> str:
        if qtype in K_QUANTS:
            raise ValueError(f"type {qtype}: the gguf package (0.19) implements K-quant dequantization only, not "
                             "quantization; quantize with llama-quantize and score the file with method "
                             f"'prequantized' (allowed types here: {', '.join(TYPE_BITS)})")
        if qtype not in TYPE_BITS:
            raise ValueError(f"type {qtype!r} is not a GGUF type this method quantizes (allowed: {', '.join(TYPE_BITS)})")
        return qtype

    # An after-validator, not a before one: a before-validator turns the suite loader's strict JSON validation
    # into strict Python validation, which refuses a JSON list for the `skip` tuple.
    @model_validator(mode="after")
    def _bits_from_type(self) -> "Settings":
        nominal = TYPE_BITS[self.type]
        if self.bits not in (0, nominal):
            raise ValueError(f"bits {self.bits!r} contradicts type {self.type} ({nominal} bits); omit bits")
        object.__setattr__(self, "bits", nominal)  # frozen model; bits is derived from type, never free
        return self

    def label(self) -> str:
        tail = "-f16fb" if self.incompatible == "f16" else ""
        return f"gguf-{self.type.lower()}{tail}"

    def group_size_value(self) -> int:
        return BLOCK


def quantize_tensor(weight: np.ndarray, qtype_name: str) -> tuple[np.ndarray, np.ndarray]:
    """(bytes uint8 [out, in / 32 * type_size], dequantized float32 [out, in]) of a float32 weight [out, in]
    through the gguf package."""
    import gguf

    qtype = gguf.GGMLQuantizationType[qtype_name]
    raw = gguf.quants.quantize(np.ascontiguousarray(weight, dtype=np.float32), qtype)
    return raw, gguf.quants.dequantize(raw, qtype)


def incompatible_rows(layers: list[tuple[str, torch.nn.Linear]]) -> list[str]:
    """'name (row length n)' of every layer whose rows are not whole blocks."""
    return [f"{name} (row length {lin.in_features})" for name, lin in layers if lin.in_features % BLOCK]


def quantize(ctx: QuantContext, settings: Settings) -> QuantResult:
    start = time.perf_counter()
    model, layers = working_copy(ctx.fp_model, settings.skip)
    bad = incompatible_rows(layers)
    if bad and settings.incompatible == "refuse":
        raise ValueError(f"GGUF {settings.type} needs rows that are multiples of {BLOCK} weights; not: "
                         f"{', '.join(bad)} (set incompatible: f16 to store them as llama-quantize does, or skip them)")
    from importlib.metadata import version

    stored_bits, n_weights, fallback = 0, 0, []
    with torch.no_grad():
        for name, linear in layers:
            w = linear.weight.detach().float().cpu().numpy()
            if linear.in_features % BLOCK:
                deq, nbytes = w.astype(np.float16).astype(np.float32), w.size * 2
                fallback.append(name)
            else:
                raw, deq = quantize_tensor(w, settings.type)
                nbytes = raw.nbytes
            stored_bits, n_weights = stored_bits + 8 * nbytes, n_weights + w.size
            linear.weight.copy_(torch.from_numpy(deq).to(linear.weight.dtype))
    return QuantResult(
        model=model.eval(),
        effective_bits=stored_bits / n_weights,
        layers_quantized=[name for name, _ in layers],
        seconds=time.perf_counter() - start,
        peak_memory_bytes=peak_memory_bytes(ctx.device),
        backend=f"gguf-{version('gguf')}:numpy",
        details={"library": {"gguf": version("gguf")}, "implementation": "gguf.quants (numpy)",
                 "type": settings.type, "f16_fallback": fallback},
    )
