"""AWQ: activation-aware weight quantization (Lin et al. 2023, arXiv 2306.00978) through gptqmodel's AWQ, on CPU
or CUDA. Checked here for Llama (the micro and gutenberg families) and GPT-NeoX (Pythia stand-ins).

    GPTQModel.load(fp_dir, AWQConfig(...)) -> .quantize(calibration, backend=AWQ_TORCH) -> .save -> .load

AWQ searches per-input-channel scales s on the calibration activations, multiplies the weights of each scaling
group by s and divides the op before them by s (a norm, or the previous Linear), then clips and quantizes with
min/max per group. So AWQ changes more than the quantized Linears: the scored model must carry the rescaled
norms and biases too. GPT-NeoX: `attention.dense` has no op before it whose output matches, so gptqmodel
quantizes it without a scale (the library's choice, not ours).

Why float16: gptqmodel 7.6 packs AWQ on CPU only with its `AwqTorchLinear`, which takes float16/bfloat16 models
(float32 is refused: "AwqTorchLinear only supports [torch.float16, torch.bfloat16] dtype"; its float32-capable
CPU kernels `TorchFusedAwqLinear` and `TorchInt8AwqLinear` "cannot pack quantized weights for format GEMM"). So
the model is loaded, searched and quantized in `dtype` (float16 default), which on a CPU without AVX512-FP16 is
~50x slower per matmul than float32: budget real-shape AWQ accordingly.

`eval_path`:
  dequantized (default): a copy of the full-precision model holding gptqmodel's dequantization of its packed
      codes (`dequantize_gemm`, float16) in every quantized Linear, and the library's value of every other
      parameter AWQ changed (rescaled norms, biases; listed in details.rescaled); everything else keeps its
      full-precision value. Runs in the model's own dtype: Δloss is the weight change alone.
  kernel: the reloaded gptqmodel model as it is (`dtype` activations, gptqmodel's kernel).

effective_bits: read from the packed layers: qweight + qzeros (int32-packed `bits`-wide) + float16 scales.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import ClassVar, Literal

import torch
from pydantic import Field

from qsens.quantizers.base import QuantContext, QuantResult, QuantSettings
from qsens.quantizers.gptq import _source_dir, check_layers, gptqmodel_environment
from qsens.quantizers.layers import peak_memory_bytes

GROUP_SIZES = (-1, 16, 32, 64, 128)  # AwqTorchLinear.SUPPORTS_GROUP_SIZE in gptqmodel 7.6


class Settings(QuantSettings):
    needs_calibration: ClassVar[bool] = True
    libraries: ClassVar[tuple[str, ...]] = ("gptqmodel",)
    supports_layer_sets: ClassVar[bool] = False  # gptqmodel quantizes every Linear of every decoder block
    method: Literal["awq"] = "awq"
    bits: Literal[2, 3, 4, 5, 6, 7, 8] = 4  # AwqTorchLinear.SUPPORTS_BITS
    group_size: Literal[GROUP_SIZES] = 128
    symmetric: bool = False  # AWQ's usual form: asymmetric with an integer zero point
    dtype: Literal["float16", "bfloat16"] = "float16"
    calibration_samples: int = Field(128, ge=1)
    calibration_length: int = Field(128, ge=1)
    batch_size: int = Field(8, ge=1)
    eval_path: Literal["dequantized", "kernel"] = "dequantized"

    def label(self) -> str:
        g = "gch" if self.group_size == -1 else f"g{self.group_size}"
        path = "-kernel" if self.eval_path == "kernel" else ""
        return (f"awq-w{self.bits}-{g}-{'sym' if self.symmetric else 'asym'}-{self.dtype}"
                f"-n{self.calibration_samples}x{self.calibration_length}{path}")


def stored_bits(qlinear) -> int:
    """Bits one packed AWQ layer stores for its weight: packed codes, packed zeros and scales."""
    return sum(t.numel() * t.element_size() * 8 for t in (qlinear.qweight, qlinear.qzeros, qlinear.scales))


def dequantized_weight(qlinear) -> torch.Tensor:
    """gptqmodel's dequantization of one packed AWQ layer: [out, in] in the scales' dtype."""
    from gptqmodel.quantization.awq.utils.packing_utils import dequantize_gemm

    return dequantize_gemm(qlinear.qweight, qlinear.qzeros, qlinear.scales, qlinear.bits, qlinear.group_size).T


def awq_copy(fp_model: torch.nn.Module, loaded: torch.nn.Module, qlinears: dict) -> tuple[torch.nn.Module, list[str]]:
    """A copy of `fp_model` with the library's dequantized weights in `qlinears` and, from `loaded`, every other
    parameter AWQ rescaled (one that differs from the full-precision value rounded to the loaded dtype).
    Returns the copy and the names of the rescaled parameters."""
    model = copy.deepcopy(fp_model)
    state = {**dict(loaded.named_parameters()), **dict(loaded.named_buffers())}
    rescaled = []
    with torch.no_grad():
        for name, qlin in qlinears.items():
            target = model.get_submodule(name).weight
            w = dequantized_weight(qlin)
            if w.shape != target.shape:
                raise RuntimeError(f"{name}: dequantized weight {tuple(w.shape)} != {tuple(target.shape)}")
            target.copy_(w.to(device=target.device, dtype=target.dtype))
        for name, p in model.named_parameters():
            owner = name.rpartition(".")[0]
            if owner in qlinears and name.endswith(".weight"):
                continue
            src = state.get(name)
            if src is None:
                raise RuntimeError(f"the AWQ model has no {name}: cannot tell whether AWQ rescaled it")
            if not torch.equal(src.detach().cpu(), p.detach().cpu().to(src.dtype)):
                p.copy_(src.detach().to(device=p.device, dtype=p.dtype))
                rescaled.append(name)
    return model, rescaled


def _quantize_and_reload(ctx: QuantContext, settings: Settings, calib: torch.Tensor, scratch: Path):
    """gptqmodel: load the fp checkpoint in `dtype`, AWQ-quantize, save, reload (CPU, AwqTorchLinear, unless the
    kernel path asks for the device). Returns (reloaded model wrapper, quant logs)."""
    from gptqmodel import BACKEND, GPTQModel
    from gptqmodel.quantization.config import AWQConfig

    device = "cpu" if ctx.device.type == "cpu" else f"{ctx.device.type}:{ctx.device.index or 0}"
    dtype = getattr(torch, settings.dtype)
    config = AWQConfig(bits=settings.bits, group_size=settings.group_size, sym=settings.symmetric,
                       desc_act=False, true_sequential=True, fallback=None, offload_to_disk=False, device=device)
    qmodel = GPTQModel.load(_source_dir(ctx, scratch), config, dtype=dtype)
    rows = [{"input_ids": r.tolist(), "attention_mask": [1] * len(r)} for r in calib]
    logs = qmodel.quantize(rows, batch_size=settings.batch_size, calibration_sort=None,
                           backend=BACKEND.AWQ_TORCH if device == "cpu" else BACKEND.AUTO)
    qmodel.save(str(scratch / "quantized"))
    del qmodel
    kernel = settings.eval_path == "kernel"
    loaded = GPTQModel.load(str(scratch / "quantized"), device=device if kernel else "cpu", dtype=dtype,
                            backend=BACKEND.AUTO if kernel else BACKEND.AWQ_TORCH)
    return loaded, logs


def quantize(ctx: QuantContext, settings: Settings) -> QuantResult:
    if ctx.calibration is None:
        raise ValueError("AWQ needs calibration text: declare `calibration` (training text) in the suite")
    start = time.perf_counter()
    calib = ctx.calibration(settings.calibration_samples, settings.calibration_length)
    with gptqmodel_environment() as scratch:
        from gptqmodel import __version__
        from gptqmodel.nn_modules.qlinear import AWQuantLinear

        loaded, logs = _quantize_and_reload(ctx, settings, calib, scratch)
        qlinears = {n: m for n, m in loaded.model.named_modules() if isinstance(m, AWQuantLinear)}
        check_layers(sorted(qlinears), ctx.fp_model, settings.skip)
        kernels = sorted({type(m).__name__ for m in qlinears.values()})
        bits = sum(stored_bits(q) for q in qlinears.values())
        n_weights = sum(q.in_features * q.out_features for q in qlinears.values())
        rescaled = None
        if settings.eval_path == "kernel":
            model = loaded.model.eval()
        else:
            model, rescaled = awq_copy(ctx.fp_model, loaded.model, qlinears)
    layer_log = [{k: e.get(k) for k in ("layer", "module", "loss", "samples")} for e in logs.get("awq", [])]
    return QuantResult(
        model=model,
        effective_bits=bits / n_weights,
        layers_quantized=sorted(qlinears),
        seconds=time.perf_counter() - start,
        peak_memory_bytes=peak_memory_bytes(ctx.device),
        backend=f"gptqmodel-{__version__}:awq:{settings.eval_path}:{'+'.join(kernels)}",
        details={"library": {"gptqmodel": __version__},
                 "awq_config": {"bits": settings.bits, "group_size": settings.group_size, "sym": settings.symmetric,
                                "format": "gemm", "dtype": settings.dtype},
                 "calibration_shape": list(calib.shape), "rescaled": rescaled, "layer_log": layer_log,
                 "kernels": kernels},
    )
