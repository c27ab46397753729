"""Where a model's layers go when it does not fit one device: accelerate's `device_map`, through transformers.

A suite (or one family) says

    placement: {device_map: auto, max_memory: {"0": 70GiB, "1": 70GiB, cpu: 200GiB}}
    placement: {device_map: {model.embed_tokens: 0, model.layers.0: 0, ..., lm_head: 1}}
    placement: {device_map: auto, max_memory: {cpu: 2GiB}, offload_folder: /scratch/offload}   # CPU + disk

and the checkpoint loads with `from_pretrained(device_map=..., max_memory=..., offload_folder=...)`: accelerate
puts each layer on its device and moves activations between them (layers on 'disk' are read back per forward).
Scoring takes the ids to the model's first device and the logits back to the fp model's (`metrics.scoring`), so
every number is the single-device one (tests/families/test_placement.py). A quantized model is a copy of the
placed fp model (same placement); how many are resident at once is the runner's memory check. Placement does not
change any number, so it is not part of a cell's key.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_DEVICE = re.compile(r"^(cpu|disk|mps|cuda(:\d+)?|\d+)$")
_MEMORY = re.compile(r"^\d+(\.\d+)?\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)$")


class Placement(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    device_map: Literal["auto", "balanced", "balanced_low_0", "sequential"] | dict[str, int | str] = Field(
        description="accelerate's strategy, or module name -> device (a GPU index, 'cpu' or 'disk')")
    max_memory: dict[str, str] | None = Field(
        None, description="device ('0', '1', 'cpu') -> the most memory the model's weights may take there, "
        "e.g. '70GiB'; room for activations and the quantized copies is what is left")
    offload_folder: str | None = Field(None, description="where layers placed on 'disk' are written")

    @field_validator("device_map")
    @classmethod
    def _devices(cls, v):
        if isinstance(v, dict):
            if not v:
                raise ValueError("an explicit device_map needs at least one module")
            bad = {k: d for k, d in v.items() if not _DEVICE.match(str(d))}
            if bad:
                raise ValueError(f"unknown device(s) {bad}: use a GPU index, 'cuda:N', 'cpu', 'mps' or 'disk'")
        return v

    @field_validator("max_memory")
    @classmethod
    def _memory(cls, v):
        for device, amount in (v or {}).items():
            if not _DEVICE.match(device) or device == "disk":
                raise ValueError(f"max_memory: unknown device {device!r} (a GPU index such as '0', or 'cpu')")
            if not _MEMORY.match(str(amount)):
                raise ValueError(f"max_memory[{device!r}]: {amount!r} is not an amount such as '70GiB' or '500MB'")
        return v

    @model_validator(mode="after")
    def _disk_needs_a_folder(self) -> "Placement":
        on_disk = isinstance(self.device_map, dict) and "disk" in map(str, self.device_map.values())
        if on_disk and self.offload_folder is None:
            raise ValueError("a device_map with 'disk' needs offload_folder")
        return self

    def from_pretrained_kwargs(self) -> dict:
        """Keyword arguments of `from_pretrained` (GPU indices as ints, as accelerate wants them)."""
        def dev(d):
            return int(d) if isinstance(d, str) and d.isdigit() else d

        out: dict = {"device_map": self.device_map if isinstance(self.device_map, str)
                     else {k: dev(d) for k, d in self.device_map.items()}}
        if self.max_memory:
            out["max_memory"] = {dev(k): v for k, v in self.max_memory.items()}
        if self.offload_folder:
            out["offload_folder"] = self.offload_folder
        return out
