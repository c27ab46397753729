"""The interface every quantization method implements.

A method is one module in `qsens/quantizers/` with a typed settings class (pydantic, unknown keys are errors)
and a `quantize(ctx, settings) -> QuantResult` function, registered by name in `qsens.quantizers.REGISTRY`.
Heavy libraries (gptqmodel, bitsandbytes) are imported inside `quantize`, never at module import, so
validating a suite never needs them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import torch
from pydantic import BaseModel, ConfigDict


class QuantSettings(BaseModel):
    """Base class of a method's settings. `method` is the registry name; `bits` is always present."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: str
    bits: int
    # Which modules are quantized: every nn.Linear whose qualified name matches none of `skip` (fnmatch).
    skip: tuple[str, ...] = ("lm_head",)

    group_size_field: ClassVar[str | None] = "group_size"
    # Methods that need calibration text (GPTQ) say so, so a suite without it fails validation, not a cell.
    needs_calibration: ClassVar[bool] = False
    # Distributions whose installed version is part of the cell key (runner.plan): a library upgrade is new cells.
    libraries: ClassVar[tuple[str, ...]] = ()

    def label(self) -> str:
        """Short human label, e.g. 'rtn-w4-g32-asym'."""
        return f"{self.method}-w{self.bits}"

    def bind(self, suite_dir) -> "QuantSettings":
        """These settings with any file they name resolved against the suite's folder (and fingerprinted, so the
        cell key changes with the file); raises ValueError naming what is wrong. Most methods name no file."""
        return self

    def pairs_with(self, family: str, checkpoint: str) -> bool:
        """Whether this setting is scored on checkpoint `family/checkpoint` (an artifact only on its parent)."""
        return True

    def group_size_value(self) -> int | None:
        """The group size for the exported `group_size` column (-1 = per channel, None = not applicable)."""
        return getattr(self, self.group_size_field, None) if self.group_size_field else None


@dataclass
class QuantContext:
    """What a method may use to produce a quantized model. It must not modify `fp_model`.

    fp_model: the full-precision model, already on `device`, in eval mode.
    checkpoint_dir: the checkpoint's local folder (methods that load their own copy, GPTQ), None for a hub one.
    calibration: returns `n` token-id sequences of `length` tokens drawn from the family's training text,
        seeded; an int64 tensor of shape [n, length]. None when the suite declares no calibration text.
    """

    fp_model: torch.nn.Module
    tokenizer: Any
    device: torch.device
    seed: int
    calibration: Callable[[int, int], torch.Tensor] | None = None
    checkpoint_dir: str | None = None


@dataclass
class QuantResult:
    """A quantized model ready for evaluation, and what the method actually did.

    effective_bits: average storage bits per quantized weight, scales and zeros included.
    """

    model: torch.nn.Module
    effective_bits: float
    layers_quantized: list[str]
    seconds: float
    peak_memory_bytes: int
    backend: str
    details: dict = field(default_factory=dict)
