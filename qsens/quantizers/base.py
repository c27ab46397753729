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
from pydantic import BaseModel, ConfigDict, field_validator, model_serializer

from qsens.quantizers.layer_sets import check_canonical, short_label


class QuantSettings(BaseModel):
    """Base class of a method's settings. `method` is the registry name; `bits` is always present."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: str
    bits: int
    # Which modules are quantized: every nn.Linear whose qualified name matches none of `skip` (fnmatch).
    skip: tuple[str, ...] = ("lm_head",)
    # Quantize only this layer set of the selected modules (qsens.quantizers.layer_sets): 'block:3',
    # 'kind:mlp.down_proj', 'names:a,b'. None = all of them. Applied once for every method by
    # selected.quantize_selected; absent from the dump when None, so whole-model cell keys are unchanged.
    layers: str | None = None

    group_size_field: ClassVar[str | None] = "group_size"
    # Methods that need calibration text (GPTQ) say so, so a suite without it fails validation, not a cell.
    needs_calibration: ClassVar[bool] = False
    # Whether `layers` (a layer set) can be honoured: the method quantizes exactly what `skip` leaves selected.
    supports_layer_sets: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs):
        """A method's own `label()` gets the layer set appended ('rtn-w3-g8-asym@block1'), so two sets of one
        method never share a label (the suite's duplicate check and every table key on it)."""
        super().__init_subclass__(**kwargs)
        if "label" in cls.__dict__:
            cls.label = _with_layer_set(cls.__dict__["label"])

    @field_validator("layers")
    @classmethod
    def _layer_set(cls, v: str | None) -> str | None:
        if v is None:
            return v
        return check_canonical(v)

    @model_serializer(mode="wrap")
    def _dump(self, handler):
        out = handler(self)
        if isinstance(out, dict) and out.get("layers", 0) is None:
            del out["layers"]
        return out
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


def _with_layer_set(label: Callable[[QuantSettings], str]) -> Callable[[QuantSettings], str]:
    def labelled(self: QuantSettings) -> str:
        if self.layers is None:
            return label(self)
        return f"{label(self)}@{short_label(self.layers)}"

    labelled.__doc__ = label.__doc__
    return labelled


QuantSettings.label = _with_layer_set(QuantSettings.label)  # methods that keep the base label


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
