"""Which layers a weight-only method quantizes."""

from __future__ import annotations

import copy
import fnmatch

import torch


def quantizable_linears(model: torch.nn.Module, skip: tuple[str, ...]) -> list[tuple[str, torch.nn.Linear]]:
    """Every `nn.Linear` whose qualified name matches none of the fnmatch patterns in `skip`.

    Embeddings are never returned (they are not Linear). The output head is skipped by the default
    `skip=("lm_head",)`; note that a head tied to the embeddings shares its weight, so quantizing it
    quantizes the embeddings too.
    """
    return [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and not any(fnmatch.fnmatchcase(name, p) for p in skip)
    ]


def working_copy(fp_model: torch.nn.Module, skip: tuple[str, ...], verb: str = "quantize"
                 ) -> tuple[torch.nn.Module, list[tuple[str, torch.nn.Linear]]]:
    """A copy of the full-precision model (which methods must not modify) and its selected Linear layers.

    The selected layers' parameters and buffers are copied, for the method to change in place; every other
    tensor (embeddings, an untied head, norms) is shared with `fp_model`, read-only, which halves the copy at
    real shapes (Pythia-160M: 77M of 162M parameters are embeddings). A model dispatched by accelerate
    (`hf_device_map`) is copied whole: its hooks move and offload tensors, which must not reach the fp model.
    Raises ValueError when `skip` leaves no layer, so a misconfigured method fails its cell instead of scoring
    the unmodified model as if it were quantized.
    """
    selected = quantizable_linears(fp_model, skip)
    if not selected:
        raise ValueError(f"no Linear layer left to {verb} after skip={list(skip)}")
    memo: dict[int, object] = {}
    if getattr(fp_model, "hf_device_map", None) is None:
        own = {id(t) for _, m in selected for t in (*m.parameters(recurse=False), *m.buffers(recurse=False))}
        memo = {id(t): t for t in (*fp_model.parameters(), *fp_model.buffers()) if id(t) not in own}
    model = copy.deepcopy(fp_model, memo)
    return model, quantizable_linears(model, skip)


def peak_memory_bytes(device: torch.device) -> int:
    """Peak accelerator memory since the last reset, or the process's peak RSS on CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB
