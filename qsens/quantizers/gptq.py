"""GPTQ (Frantar et al. 2022, arXiv 2210.17323) through gptqmodel's own API, on CPU or CUDA.

    GPTQModel.load(fp_dir, QuantizeConfig(...)) -> .quantize(calibration) -> .save(dir) -> GPTQModel.load(dir)

Calibration: `calibration_samples` windows of `calibration_length` tokens from the family's training text
(`ctx.calibration`, seeded by the suite), fed in their drawn order (no length sort, no shuffle).

Why save and reload: in gptqmodel 7.6.0 on CPU the model left in memory by `.quantize()` evaluates with every
weight one quantization step off (measured: dequantized weight = the solver's output + one scale, in every
group; Δloss 2.7 nats instead of 0.01 at 4 bits on the test model), apparently a zero-point convention that
the save/load path converts and the in-memory path does not. The reloaded checkpoint is right (tests compare
GPTQ with RTN on it) and is what a deployment would load anyway.

`eval_path` picks what the suite scores:
  dequantized (default): the library's packed codes, dequantized by the library (`dequantize_weight` of its
      portable `gptq_torch` kernel, on CPU, float16 like the scales), written into a copy of the full-precision
      model, which then runs in its own dtype on its own device: Δloss is the weight error alone.
  kernel: the reloaded gptqmodel model (float16: its kernels accept float16/bfloat16 only) with the inference
      kernel gptqmodel selects (recorded in `backend`); float16 activations add their rounding to the weight error.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import time
from pathlib import Path
from typing import ClassVar, Iterator, Literal

import torch
from pydantic import Field, model_validator

from qsens.quantizers.base import QuantContext, QuantResult, QuantSettings
from qsens.quantizers.layers import peak_memory_bytes, quantizable_linears

GROUP_SIZES = (-1, 16, 32, 64, 128, 256, 512, 1024)  # what gptqmodel's packing accepts


class Settings(QuantSettings):
    needs_calibration: ClassVar[bool] = True
    supports_layer_sets: ClassVar[bool] = False  # gptqmodel quantizes every Linear of every decoder block
    libraries: ClassVar[tuple[str, ...]] = ("gptqmodel",)
    method: Literal["gptq"] = "gptq"
    bits: Literal[2, 3, 4, 8]  # gptqmodel's packed formats
    group_size: Literal[GROUP_SIZES] = 128
    desc_act: bool = False  # act-order: quantize columns by decreasing Hessian diagonal
    # gptqmodel's "group-aware reordering", on by default in gptqmodel 7.x; off here = the paper's GPTQ.
    act_group_aware: bool = False
    symmetric: bool = True
    damp_percent: float = Field(0.01, gt=0, lt=1)  # the paper's lambda: 1% of the mean Hessian diagonal (gptqmodel defaults to 5%)
    damp_auto_increment: float = Field(0.01, ge=0)  # added until the damped Hessian is positive definite; the used damp is recorded
    calibration_samples: int = Field(128, ge=1)
    calibration_length: int = Field(128, ge=1)
    batch_size: int = Field(8, ge=1)
    eval_path: Literal["dequantized", "kernel"] = "dequantized"

    @model_validator(mode="after")
    def _consistent(self) -> "Settings":
        if self.desc_act and self.act_group_aware:
            raise ValueError("desc_act and act_group_aware are two column orders; choose at most one")
        return self

    def label(self) -> str:
        g = "gch" if self.group_size == -1 else f"g{self.group_size}"
        order = "-act" if self.desc_act else ("-gar" if self.act_group_aware else "")
        sym = "sym" if self.symmetric else "asym"
        path = "-kernel" if self.eval_path == "kernel" else ""
        return (f"gptq-w{self.bits}-{g}-{sym}{order}-d{self.damp_percent:g}"
                f"-n{self.calibration_samples}x{self.calibration_length}{path}")


def effective_bits(bits: int, group_size: int, desc_act: bool, rows: int, cols: int) -> float:
    """Bits per weight of the GPTQ format: codes + float16 scale + `bits`-wide zero per group (+ int32 g_idx
    per input column under act-order; without it the group of column j is j // group_size)."""
    gs = cols if group_size == -1 else group_size
    per_weight = bits + (16 + bits) / gs
    return per_weight + (32 / rows if desc_act else 0.0)


def check_layers(quantized: list[str], fp_model: torch.nn.Module, skip: tuple[str, ...]) -> None:
    """gptqmodel decides which Linears it quantizes (those of the decoder layers, never the head); they must be
    exactly the ones `skip` selects, or the suite would record a setting that did not run."""
    wanted = sorted(name for name, _ in quantizable_linears(fp_model, skip))
    if quantized != wanted:
        extra, missing = sorted(set(quantized) - set(wanted)), sorted(set(wanted) - set(quantized))
        raise ValueError(f"gptqmodel quantizes the decoder layers' Linears, which skip={list(skip)} does not select: "
                         f"quantized but meant to be skipped {extra[:5]}, selected but not quantized {missing[:5]}; "
                         "set skip to the model's output head (lm_head, or embed_out for GPT-NeoX)")


# gptqmodel 7.6.0's thread pool gives its 'model_loader:cpu' pool 2 workers taken from the 'cpu' pool, and fails
# every quantization when the cpu pool has fewer ("Virtual pool 'model_loader:cpu' requests 2 workers but parent
# 'cpu' only has 1"): so 2 even on a 1-core machine (they are threads), and a smaller setting of the user's is an
# error named up front rather than that message in every GPTQ cell.
MIN_CPU_WORKERS = 2


def _check_cpu_workers(value: str | None) -> None:
    if value is None:
        return
    try:
        ok = int(value) >= MIN_CPU_WORKERS
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(f"GPTQMODEL_CPU_WORKERS={value!r}: gptqmodel needs an integer >= {MIN_CPU_WORKERS} (its "
                         f"model loader takes {MIN_CPU_WORKERS} workers from the CPU pool); unset it or set it to "
                         f"{MIN_CPU_WORKERS} or more")


@contextlib.contextmanager
def gptqmodel_environment() -> Iterator[Path]:
    """Where gptqmodel is imported and run: its environment variables set only inside, C++ helpers compiled
    into qsens' cache, `./logs` written into a scratch cwd, console output captured, RNG and environment restored.
    Yields the scratch folder (deleted afterwards)."""
    from qsens.quantizers.isolation import captured_output, contained, qsens_cache_dir, user_cache_root

    _check_cpu_workers(os.environ.get("GPTQMODEL_CPU_WORKERS"))
    env = {"GPTQMODEL_CPU_WORKERS": str(MIN_CPU_WORKERS),
           "GPTQMODEL_TORCH_EXTENSIONS_DIR": str(qsens_cache_dir("gptqmodel", "torch_extensions")),
           "LOGBAR_ANIMATION": "0",
           # gptqmodel's tokenizer helper (tokenicer) points an unset HF_HOME at /tmp/tokenicer_hf_home; give it
           # the location Hugging Face uses when HF_HOME is unset, so nothing moves (restored afterwards).
           "HF_HOME": str(user_cache_root() / "huggingface")}
    with contained(env) as scratch, captured_output(scratch / "gptqmodel.log"), _quiet_gptqmodel():
        yield scratch


@contextlib.contextmanager
def _quiet_gptqmodel():
    """gptqmodel logs every module's progress at INFO through its LogBar logger: keep warnings and errors only."""
    from logbar import LogBar

    log = LogBar.shared()
    level = log.level
    log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        log.setLevel(level)


def _device_str(device: torch.device) -> str:
    return "cpu" if device.type == "cpu" else f"{device.type}:{device.index or 0}"


def _source_dir(ctx: QuantContext, scratch) -> str:
    if ctx.checkpoint_dir is not None:
        return str(ctx.checkpoint_dir)
    src = scratch / "source"
    ctx.fp_model.save_pretrained(src)
    ctx.tokenizer.save_pretrained(src)
    return str(src)


def _quantize_and_reload(ctx: QuantContext, settings: Settings, calib: torch.Tensor, scratch: Path):
    """gptqmodel: load the fp checkpoint, quantize, save, reload. Returns (reloaded model wrapper, quant logs).

    The reload is on CPU with the portable `gptq_torch` kernel when the weights are only read back
    (eval_path dequantized: the same arithmetic on every machine), else on `ctx.device` with gptqmodel's choice.
    """
    from gptqmodel import BACKEND, GPTQModel, QuantizeConfig

    config = QuantizeConfig(
        bits=settings.bits, group_size=settings.group_size, desc_act=settings.desc_act,
        act_group_aware=settings.act_group_aware, sym=settings.symmetric, damp_percent=settings.damp_percent,
        damp_auto_increment=settings.damp_auto_increment, true_sequential=True, fallback=None,
        offload_to_disk=False, device=_device_str(ctx.device),
    )
    qmodel = GPTQModel.load(_source_dir(ctx, scratch), config, dtype=next(ctx.fp_model.parameters()).dtype)
    rows = [{"input_ids": r.tolist(), "attention_mask": [1] * len(r)} for r in calib]
    logs = qmodel.quantize(rows, batch_size=settings.batch_size, calibration_sort=None)
    qmodel.save(str(scratch / "quantized"))
    del qmodel
    kernel = settings.eval_path == "kernel"
    # gptqmodel's kernels take float16/bfloat16 only; float16 holds the float16 scales exactly.
    loaded = GPTQModel.load(str(scratch / "quantized"), device=_device_str(ctx.device) if kernel else "cpu",
                            dtype=torch.float16, backend=BACKEND.AUTO if kernel else BACKEND.GPTQ_TORCH)
    return loaded, logs


def dequantized_copy(fp_model: torch.nn.Module, qlinears: dict) -> torch.nn.Module:
    """A copy of `fp_model` whose selected weights are gptqmodel's own dequantization of its packed codes."""
    model = copy.deepcopy(fp_model)
    with torch.no_grad():
        for name, qlin in qlinears.items():
            target = model.get_submodule(name)
            w = qlin.dequantize_weight().T  # gptqmodel returns [in, out]
            if w.shape != target.weight.shape:
                raise RuntimeError(f"{name}: dequantized weight {tuple(w.shape)} != {tuple(target.weight.shape)}")
            target.weight.copy_(w.to(device=target.weight.device, dtype=target.weight.dtype))
    return model


def quantize(ctx: QuantContext, settings: Settings) -> QuantResult:
    if ctx.calibration is None:
        raise ValueError("GPTQ needs calibration text: declare `calibration` (training text) in the suite")
    start = time.perf_counter()
    calib = ctx.calibration(settings.calibration_samples, settings.calibration_length)
    with gptqmodel_environment() as scratch:
        from gptqmodel import __version__
        from gptqmodel.nn_modules.qlinear import BaseQuantLinear

        loaded, logs = _quantize_and_reload(ctx, settings, calib, scratch)
        qlinears = {n: m for n, m in loaded.model.named_modules() if isinstance(m, BaseQuantLinear)}
        check_layers(sorted(qlinears), ctx.fp_model, settings.skip)
        kernels = sorted({type(m).__name__ for m in qlinears.values()})
        model = loaded.model.eval() if settings.eval_path == "kernel" else dequantized_copy(ctx.fp_model, qlinears)
    shapes = [(q.out_features, q.in_features) for q in qlinears.values()]
    n_weights = sum(r * c for r, c in shapes)
    bits = sum(effective_bits(settings.bits, settings.group_size, settings.desc_act, r, c) * r * c for r, c in shapes)
    layer_log = [{k: entry.get(k) for k in ("layer", "module", "loss", "damp", "samples")} for entry in logs.get("gptq", [])]
    return QuantResult(
        model=model,
        effective_bits=bits / n_weights,
        layers_quantized=sorted(qlinears),
        seconds=time.perf_counter() - start,
        peak_memory_bytes=peak_memory_bytes(ctx.device),
        backend=f"gptqmodel-{__version__}:{settings.eval_path}:{'+'.join(kernels)}",
        details={
            "library": {"gptqmodel": __version__},
            "quantize_config": {"bits": settings.bits, "group_size": settings.group_size, "desc_act": settings.desc_act,
                                "act_group_aware": settings.act_group_aware, "sym": settings.symmetric,
                                "damp_percent": settings.damp_percent, "true_sequential": True},
            "calibration_shape": list(calib.shape),
            "damp_used_max": max((float(e["damp"]) for e in layer_log if e.get("damp") is not None), default=None),
            "layer_log": layer_log,
            "kernels": kernels,
        },
    )
