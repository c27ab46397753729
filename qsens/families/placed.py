"""Models spread over devices by a placement (`qsens.families.placement`): what the runner needs to quantize
them and to count their memory.

A placed model is one transformers loaded with a device_map: accelerate hooks on its modules move activations
to each module's execution device, and modules on an offloaded device ('disk', or 'cpu' beside a GPU) keep their
weights outside the module (the parameters are on 'meta') and bring them in for each forward.

Quantizers rewrite weights, so they cannot work on 'meta' parameters. `onloaded(fp)` gives the offloaded modules
real host tensors for the time a quantizer copies the model; `place_like(q, fp)` then dispatches the quantized copy
on the fp model's own map, so both take the same bytes on every device and the copy's offloaded modules stream
in per forward as the fp model's do. Equal numbers to the unplaced model: tests/families/test_placement.py.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import weakref
from typing import Iterator

import torch


def is_placed(model: torch.nn.Module) -> bool:
    """Whether accelerate dispatched this model (a device_map with two devices or more, or one with 'disk')."""
    return hasattr(model, "_hf_hook") and isinstance(getattr(model, "hf_device_map", None), dict)


def main_device(model: torch.nn.Module) -> torch.device:
    """Where a placed model takes its input ids and runs its offloaded modules (its top hook's device)."""
    d = model._hf_hook.execution_device
    return torch.device(f"cuda:{d}" if isinstance(d, int) else d)


def _hooks(module: torch.nn.Module) -> list:
    hook = getattr(module, "_hf_hook", None)
    if hook is None:
        return []
    return list(getattr(hook, "hooks", None) or [hook])  # a SequentialHook holds several


def _device_name(device) -> str:
    """'cuda:i', 'cpu', 'mps' or 'disk': where a module's weights lie (an offloaded 'cpu' module: host memory)."""
    d = str(device)
    return f"cuda:{d}" if d.isdigit() else d


def bytes_by_device(model: torch.nn.Module) -> dict[str, int]:
    """Bytes of a placed model's parameters and buffers on each device of its map ('cuda:i', 'cpu', 'disk');
    offloaded weights count where they lie, not where they run. Tied weights count once (the first module)."""
    seen: set[int] = set()
    out: dict[str, int] = {}
    for name, device in model.hf_device_map.items():
        module = model.get_submodule(name) if name else model
        where = _device_name(device)
        for t in list(module.parameters()) + list(module.buffers()):
            if id(t) in seen:
                continue
            seen.add(id(t))
            out[where] = out.get(where, 0) + t.numel() * t.element_size()
    return out


def free_bytes(device: str, folder: str | None = None) -> int:
    """Free memory of 'cuda:i' or 'cpu', or free disk space where offloaded modules are written."""
    from qsens.metrics.resources import available_bytes

    if device == "disk":
        return shutil.disk_usage(folder or tempfile.gettempdir()).free
    return available_bytes(torch.device(device))


@contextlib.contextmanager
def onloaded(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Within the block, every offloaded module of the placed `model` holds its weights as host tensors ('cpu')
    and no longer offloads them after a forward, and no hook holds its weights map (so a deep copy made here
    copies each weight once, as ordinary tensors). Restored when the block ends: weights back to 'meta'.

    Forwards inside the block run only where the main device is the CPU (offloaded weights are on the host):
    the methods allowed under a placement (`placement.PLACED_METHODS`) run none.
    """
    flipped: list[tuple[torch.nn.Module, object, list[str]]] = []
    maps: list[tuple[object, object]] = []
    from accelerate.utils import set_module_tensor_to_device
    from accelerate.utils.modeling import named_module_tensors

    try:
        for module in model.modules():
            for hook in _hooks(module):
                if getattr(hook, "offload", False):
                    names = [n for n, t in named_module_tensors(module, include_buffers=hook.offload_buffers,
                                                                recurse=hook.place_submodules,
                                                                remove_non_persistent=True) if t.device.type == "meta"]
                    for n in names:
                        set_module_tensor_to_device(module, n, "cpu", value=hook.weights_map[n])
                    hook.offload = False
                    flipped.append((module, hook, names))
                if getattr(hook, "weights_map", None) is not None:
                    maps.append((hook, hook.weights_map))
                    hook.weights_map = None
        yield model
    finally:
        for hook, weights_map in maps:
            hook.weights_map = weights_map
        for module, hook, names in flipped:
            for n in names:
                set_module_tensor_to_device(module, n, "meta")
            hook.offload = True


def place_like(q: torch.nn.Module, fp: torch.nn.Module, offload_folder: str | None = None) -> torch.nn.Module:
    """Dispatch `q` (a quantized copy made from `fp` inside `onloaded(fp)`: same modules, real weights) on
    `fp`'s device map with `fp`'s main device. Its 'disk' modules are written to a fresh folder (in
    offload_folder, else the temp folder), removed when `q` is garbage collected."""
    from accelerate import dispatch_model
    from accelerate.hooks import remove_hook_from_module
    from accelerate.utils import offload_state_dict

    remove_hook_from_module(q, recurse=True)
    device_map = dict(fp.hf_device_map)
    folder = None
    on_disk = [name for name, d in device_map.items() if str(d) == "disk"]
    if on_disk:
        if offload_folder:
            os.makedirs(offload_folder, exist_ok=True)
        folder = tempfile.mkdtemp(prefix="qsens-offload-", dir=offload_folder)
        weakref.finalize(q, shutil.rmtree, folder, True)
        # written here, not by dispatch_model: its prefix match misses the whole model (a map {'': 'disk'})
        offload_state_dict(folder, {k: v for k, v in q.state_dict().items()
                                    if any(m == "" or k == m or k.startswith(m + ".") for m in on_disk)})
    main = fp._hf_hook.execution_device
    dispatch_model(q, device_map=device_map, main_device=main, offload_dir=folder,
                   skip_keys=getattr(q, "_skip_keys_device_placement", None))
    return q


def describe(model: torch.nn.Module) -> dict:
    """What a cell row records of a placed model: its main device, the modules per device and bytes per device."""
    counts: dict[str, int] = {}
    for device in model.hf_device_map.values():
        where = _device_name(device)
        counts[where] = counts.get(where, 0) + 1
    return {"main_device": str(main_device(model)), "modules": counts, "bytes": bytes_by_device(model)}
