"""Gaussian weight-noise probe: sensitivity without a quantizer.

Springer et al. 2025 ("Overtrained Language Models Are Harder to Fine-Tune", arXiv 2503.19206) show that the
loss increase caused by a fixed Gaussian perturbation of the weights grows with pretraining tokens
("progressive sensitivity"), the same trend quantization shows. What is assumed of their perturbation: only
the paper's abstract was available when this module was written, and its Sec. 3 has not been read, so the
form theta + gamma * eps, with eps drawn from the model's initialization distribution, is a reading of the
paper, not a quotation. `reference: init_std` implements that reading: the noise std is magnitude times the
checkpoint's `config.initializer_range` (the std HF Llama/GPT-NeoX initialize Linears with). It is not claimed
to reproduce the paper's numbers. The default, `reference: tensor_std`, depends on no such reading: it scales
the noise to each weight matrix's own std, which needs no knowledge of how the model was initialized and keeps
the perturbation relative as weights grow during training:

    W' = W + magnitude * std(W) * Z,   Z ~ N(0, I) independent per element

applied to every selected Linear weight (default: all but the head). Biases, norms and embeddings are untouched.

Seeds: the runner scores one model per cell, so each seed is its own cell: sweep `seed_index: [0, 1, 2]` in the
suite and average over `seed_index` when reporting (the spread across seeds is itself a result). The noise of
tensor `name` comes from a local generator seeded by sha256(suite seed, seed_index, name): reproducible, the
same on CPU and CUDA (drawn on CPU), independent across tensors, and the global RNG is never touched.

`bits` is fixed at 16, a sentinel meaning "weights stay in floating point" (W16, the usual unquantized
reference of quantization papers); nothing is stored in fewer bits, so `effective_bits` reports the storage
bits of the model's dtype. Compare noise with quantizers through the recorded relative weight error
||W' - W|| / ||W|| (details.rel_weight_error), not through `bits`.
"""

from __future__ import annotations

import hashlib
import time
from typing import Literal

import torch
from pydantic import Field

from qsens.quantizers.base import QuantContext, QuantResult, QuantSettings
from qsens.quantizers.layers import peak_memory_bytes, working_copy


class Settings(QuantSettings):
    method: Literal["noise"] = "noise"
    bits: Literal[16] = 16
    magnitude: float = Field(gt=0, allow_inf_nan=False)  # noise std relative to the reference std
    reference: Literal["tensor_std", "init_std"] = "tensor_std"
    seed_index: int = Field(0, ge=0)

    group_size_field = None

    def label(self) -> str:
        ref = "" if self.reference == "tensor_std" else "-init"
        return f"noise-m{self.magnitude:g}{ref}-s{self.seed_index}"


def tensor_seed(suite_seed: int, seed_index: int, name: str) -> int:
    digest = hashlib.sha256(f"qsens-noise:{suite_seed}:{seed_index}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def add_noise_(weight: torch.Tensor, std: float, seed: int) -> None:
    """weight += std * Z in place, Z ~ N(0, I) from a CPU generator seeded with `seed` (float32 draw)."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    z = torch.randn(weight.shape, generator=gen, dtype=torch.float32)
    weight.add_((std * z).to(device=weight.device, dtype=weight.dtype))


def reference_std(settings: Settings, weight: torch.Tensor, model: torch.nn.Module) -> float:
    if settings.reference == "tensor_std":
        return float(weight.detach().float().std())
    init = getattr(getattr(model, "config", None), "initializer_range", None)
    if init is None:
        raise ValueError("reference 'init_std' needs config.initializer_range, which this model does not have")
    return float(init)


def quantize(ctx: QuantContext, settings: Settings) -> QuantResult:
    start = time.perf_counter()
    model, layers = working_copy(ctx.fp_model, settings.skip, verb="perturb")
    sq_err = sq_norm = 0.0
    n_weights = 0
    with torch.no_grad():
        for name, module in layers:
            w = module.weight
            before = w.detach().float().clone()
            add_noise_(w, settings.magnitude * reference_std(settings, w, model), tensor_seed(ctx.seed, settings.seed_index, name))
            sq_err += float((w.float() - before).pow(2).sum())
            sq_norm += float(before.pow(2).sum())
            n_weights += w.numel()
    dtype = next(model.parameters()).dtype
    return QuantResult(
        model=model,
        effective_bits=float(torch.finfo(dtype).bits),
        layers_quantized=[name for name, _ in layers],
        seconds=time.perf_counter() - start,
        peak_memory_bytes=peak_memory_bytes(ctx.device),
        backend="torch",
        details={"rel_weight_error": (sq_err / sq_norm) ** 0.5, "reference": settings.reference,
                 "magnitude": settings.magnitude, "seed_index": settings.seed_index, "n_weights": n_weights},
    )
