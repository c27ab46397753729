"""bitsandbytes 4-bit weights (NF4 or FP4; Dettmers et al. 2023, QLoRA, arXiv 2305.14314) on CPU (bitsandbytes
0.50 has CPU kernels) or CUDA.

Built with bitsandbytes' own modules (`bnb.nn.Linear4bit` + `bnb.nn.Params4bit`), which is what transformers'
`BitsAndBytesConfig` loading does internally, because `BitsAndBytesConfig` has no blocksize (always 64) and
defaults to FP4 with float32 compute: here every setting that changes the numbers is explicit, and what each
layer actually holds (quant type, blocksize, nesting, compute dtype) is read back, checked and recorded.

The model is the one bitsandbytes runs: `Linear4bit` layers that dequantize blockwise (absmax per `blocksize`
consecutive weights of the row-major flattened matrix, 16-entry NF4/FP4 code book) and multiply in
`compute_dtype`. Layers: every Linear not matched by `skip` (default: the head); embeddings are never quantized.
"""

from __future__ import annotations

import time
from typing import ClassVar, Literal

import torch

from qsens.quantizers.base import QuantContext, QuantResult, QuantSettings
from qsens.quantizers.layers import peak_memory_bytes, working_copy

BLOCKSIZES = (32, 64, 128, 256, 512, 1024, 2048, 4096)


class Settings(QuantSettings):
    libraries: ClassVar[tuple[str, ...]] = ("bitsandbytes",)
    method: Literal["bnb"] = "bnb"
    bits: Literal[4] = 4  # NF4 and FP4 are 4-bit formats
    quant_type: Literal["nf4", "fp4"] = "nf4"
    blocksize: Literal[BLOCKSIZES] = 64
    double_quant: bool = False  # quantize the absmax statistics again (8-bit, blocks of 256)
    compute_dtype: Literal["float32", "float16", "bfloat16"] = "float32"

    group_size_field = "blocksize"

    def label(self) -> str:
        dq = "-dq" if self.double_quant else ""
        return f"bnb-{self.quant_type}-b{self.blocksize}{dq}-{self.compute_dtype}"


def stored_bits(weight) -> tuple[float, int]:
    """(bits stored for one quantized weight, its number of weights): packed codes + absmax statistics
    (+ the second-level absmax and offset under double quantization). The code books (16 NF4/FP4 values, the
    256-entry 8-bit map) are format constants, not data, and are not counted."""
    qs = weight.quant_state
    n = int(torch.Size(qs.shape).numel())
    bits = weight.data.numel() * weight.data.element_size() * 8
    bits += qs.absmax.numel() * qs.absmax.element_size() * 8
    if qs.nested:
        bits += qs.state2.absmax.numel() * qs.state2.absmax.element_size() * 8 + 32  # + float32 offset
    return bits, n


def to_linear4bit(linear: torch.nn.Linear, settings: Settings, device: torch.device):
    """A bitsandbytes `Linear4bit` holding `linear`'s weight quantized as `settings` say (quantized on `device`)."""
    import bitsandbytes as bnb

    new = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=linear.bias is not None,
                            compute_dtype=getattr(torch, settings.compute_dtype), compress_statistics=settings.double_quant,
                            quant_type=settings.quant_type, quant_storage=torch.uint8, device="meta")
    new.weight = bnb.nn.Params4bit(linear.weight.data.detach().clone(), requires_grad=False,
                                   blocksize=settings.blocksize, compress_statistics=settings.double_quant,
                                   quant_type=settings.quant_type, quant_storage=torch.uint8, module=new).to(device)
    # On CPUs with AVX512-BF16, Linear4bit repacks its weight at the first forward with the absmax statistics
    # rounded to bfloat16 (bitsandbytes 0.50 `_convert_weight_packed_for_cpu`), which changes the numbers and
    # fails for blocksize > in_features. Keep the portable path: dequantize_4bit + matmul, as on CUDA.
    new.support_avx512bf16_for_cpu = False
    if linear.bias is not None:
        new.bias = torch.nn.Parameter(linear.bias.data.detach().clone().to(device), requires_grad=False)
    return new


def quantize(ctx: QuantContext, settings: Settings) -> QuantResult:
    from qsens.quantizers.isolation import preserved_rng, restored_environ

    start = time.perf_counter()
    model, layers = working_copy(ctx.fp_model, settings.skip)
    with preserved_rng(), restored_environ():
        import bitsandbytes

        for name, linear in layers:
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, to_linear4bit(linear, settings, ctx.device))
    ran, bits, n_weights = set(), 0, 0
    for name, _ in layers:
        module = model.get_submodule(name)
        qs = module.weight.quant_state
        ran.add((qs.quant_type, qs.blocksize, bool(qs.nested), str(module.compute_dtype).removeprefix("torch.")))
        b, n = stored_bits(module.weight)
        bits, n_weights = bits + b, n_weights + n
    expected = {(settings.quant_type, settings.blocksize, settings.double_quant, settings.compute_dtype)}
    if ran != expected:
        raise RuntimeError(f"bitsandbytes ran {sorted(ran)}, not the requested {sorted(expected)}")
    return QuantResult(
        model=model.eval(),
        effective_bits=bits / n_weights,
        layers_quantized=[name for name, _ in layers],
        seconds=time.perf_counter() - start,
        peak_memory_bytes=peak_memory_bytes(ctx.device),
        backend=f"bitsandbytes-{bitsandbytes.__version__}:{ctx.device.type}",
        details={"library": {"bitsandbytes": bitsandbytes.__version__},
                 "ran": [dict(zip(("quant_type", "blocksize", "double_quant", "compute_dtype"), r)) for r in sorted(ran)]},
    )
