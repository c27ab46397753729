"""Where a model's layers go when it does not fit one device: accelerate's `device_map`, through transformers.

A suite, a family or one checkpoint says (the most specific one wins)

    placement: {device_map: auto, max_memory: {"0": 60GiB, "1": 60GiB, cpu: 200GiB}}  # two GPUs, then CPU offload
    placement: {device_map: balanced}                 # max_memory defaults to DEFAULT_SHARE of each device's free memory
    placement: {device_map: {gpt_neox.embed_in: 0, gpt_neox.layers.0: 0, ..., embed_out: 1}}     # explicit, per module
    placement: {device_map: auto, max_memory: {cpu: 2GiB}, offload_folder: /scratch/offload}      # CPU, then disk

(a suite's keys are strings: quote a GPU index used as a max_memory key), and the checkpoint loads with
`from_pretrained(device_map=..., max_memory=..., offload_folder=...)`: accelerate puts each module on its device
and moves activations between them. 'cpu' on a machine with a GPU, and 'disk', are offloaded: the weights stay in
host memory (or on disk) and are brought to the main device for each forward.

Quantized models (`qsens.families.placed`): every quantized copy is placed on the fp model's own map, so on each
device the fp model and a copy take the same bytes. Without an explicit max_memory the fp model may take
DEFAULT_SHARE of each device's free memory, so it and one quantized copy fit together; the runner keeps more
copies resident only while every device has room for two more (`LoadedCheckpoint.room_for_another`). Where the
devices cannot hold both, offloading is the "scored in turn" mode: per batch the fp model and then each quantized
model bring their weights to the main device, and the fp logits of that batch are dropped before the next
(`qsens.metrics.scoring.score_together` never keeps more than one batch of them).

Placement changes where the arithmetic runs, not what it is (each layer runs the same kernel on its execution
device; tests/families/test_placement.py: equal to the last bit on CPU), like the suite's `device` and a protocol's
`batch_size`, which are not in a cell's key either: so placement is not part of a cell's key, and a placed re-run
reuses the single-device cells. The row's details record the map the cell ran under.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# Methods tested under a two-device map (tests/families/test_placement.py). They only rewrite weights where they
# lie; the others run forwards with their own device handling (gptq, awq) or build modules on the suite's one
# device (bnb, torchao, hqq's and gguf's modules are untested there), so a suite pairing them with a placement
# is refused rather than run on a path nobody has checked.
PLACED_METHODS = ("rtn", "noise", "cast")
# Share of each device's free memory the fp model may take when max_memory is not given: it and one quantized
# copy (the same bytes on the same map) fit, with a tenth left for a batch's activations and logits.
DEFAULT_SHARE = 0.45

_DEVICE = re.compile(r"^(cpu|disk|mps|cuda:\d+|\d+)$")
_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
_AMOUNT = re.compile(r"^(\d+(?:\.\d+)?)\s*([A-Za-z]+)$")


def device_key(device: str | int) -> int | str:
    """accelerate's name of a device: a GPU index as an int ('0', 'cuda:0', 0 -> 0), else 'cpu', 'mps', 'disk'."""
    d = str(device)
    if d.isdigit():
        return int(d)
    if d.startswith("cuda:"):
        return int(d[5:])
    return d


def amount_bytes(amount: str | int) -> int:
    """'70GiB', '500MB', '1.5 GiB' or an int (bytes) -> bytes; ValueError naming the accepted units."""
    if isinstance(amount, int) and not isinstance(amount, bool):
        if amount < 1:
            raise ValueError(f"{amount} bytes: an amount must be positive")
        return amount
    m = _AMOUNT.match(str(amount).strip())
    if m is None or m.group(2).upper() not in _UNITS:
        raise ValueError(f"{amount!r} is not an amount such as '70GiB', '500MB' or a number of bytes "
                         "(units: B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)")
    value = int(float(m.group(1)) * _UNITS[m.group(2).upper()])
    if value < 1:
        raise ValueError(f"{amount!r}: an amount must be positive")
    return value


class Placement(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    device_map: Literal["auto", "balanced", "balanced_low_0", "sequential"] | dict[str, int | str] = Field(
        description="accelerate's strategy, or module name -> device (a GPU index, 'cuda:N', 'cpu', 'mps' or "
        "'disk'); an explicit map must name every module (accelerate checks it when the model loads)")
    max_memory: dict[str, str | int] | None = Field(
        None, description="device ('0', 'cuda:1', 'cpu', 'mps') -> the most the fp model's weights may take there, "
        f"e.g. '60GiB' or bytes (default: {DEFAULT_SHARE:.0%} of each device's free memory, so a quantized copy "
        "fits beside it); strategies only")
    offload_folder: str | None = Field(None, description="where modules placed on 'disk' are written (relative to "
                                       "the suite file); quantized copies' disk modules go to temporary folders in it")

    @field_validator("device_map")
    @classmethod
    def _devices(cls, v):
        if isinstance(v, dict):
            if not v:
                raise ValueError("an explicit device_map needs at least one module")
            bad = {k: d for k, d in v.items() if isinstance(d, bool) or not _DEVICE.match(str(d))}
            if bad:
                raise ValueError(f"unknown device(s) {bad}: use a GPU index (0), 'cuda:N', 'cpu', 'mps' or 'disk'")
        return v

    @field_validator("max_memory")
    @classmethod
    def _memory(cls, v):
        for device, amount in (v or {}).items():
            if not _DEVICE.match(device) or device == "disk":
                raise ValueError(f"unknown device {device!r}: a GPU index such as '0', 'cuda:N', 'cpu' or 'mps' "
                                 "(disk has no limit)")
            try:
                amount_bytes(amount)
            except ValueError as exc:
                raise ValueError(f"[{device!r}]: {exc}") from None
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "Placement":
        explicit = isinstance(self.device_map, dict)
        if explicit and self.max_memory:
            raise ValueError("max_memory applies to a strategy (auto, balanced, ...); an explicit device_map "
                             "already says where every module goes")
        if explicit and "disk" in map(str, self.device_map.values()) and self.offload_folder is None:
            raise ValueError("a device_map with 'disk' needs offload_folder")
        return self

    def from_pretrained_kwargs(self, free: dict[int | str, int] | None = None) -> dict:
        """Keyword arguments of `from_pretrained`: GPU indices as ints, amounts in bytes. free: device -> free
        bytes (`free_memory()`), for the default max_memory of a strategy; read from the machine when None."""
        if isinstance(self.device_map, dict):
            out: dict = {"device_map": {k: device_key(d) for k, d in self.device_map.items()}}
        else:
            out = {"device_map": self.device_map}
            if self.max_memory:
                out["max_memory"] = {device_key(k): amount_bytes(v) for k, v in self.max_memory.items()}
            else:
                free = free_memory() if free is None else free
                out["max_memory"] = {d: int(DEFAULT_SHARE * b) for d, b in free.items()}
        if self.offload_folder:
            out["offload_folder"] = self.offload_folder
        return out


def free_memory() -> dict[int | str, int]:
    """Free bytes per device accelerate can place on: every CUDA GPU by index, and 'cpu' (MemAvailable)."""
    import torch

    from qsens.metrics.resources import available_bytes

    free: dict[int | str, int] = {}
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            free[i] = int(torch.cuda.mem_get_info(i)[0])
    free["cpu"] = available_bytes(torch.device("cpu"))
    return free


def relative_to(placement: Placement | None, base: Path) -> Placement | None:
    """The placement with its offload_folder relative to the suite file's folder `base`, as a suite's paths are."""
    if placement is None or not placement.offload_folder:
        return placement
    return placement.model_copy(update={"offload_folder": str((base / placement.offload_folder).resolve())})


def method_problems(settings: list, checkpoints: list) -> list[tuple[str, str]]:
    """(where, what) for every quantizer setting whose method is not in PLACED_METHODS, when any checkpoint of
    the suite has a placement."""
    from qsens.documents import short

    placed = sorted({f"{c.family}/{c.name}" for c in checkpoints if c.placement is not None})
    if not placed:
        return []
    return [(f"quantizers ({s.label()})", f"method {s.method!r} is not supported on a placed checkpoint "
             f"({short(placed, 200)} has a placement); allowed there: {', '.join(PLACED_METHODS)}")
            for s in settings if s.method not in PLACED_METHODS]
