"""Load a checkpoint and its tokenizer with transformers, from a local HF folder or a Hub repo revision."""

from __future__ import annotations

import torch

from qsens.families.checkpoint import Checkpoint

def pretrained_kwargs(ckpt: Checkpoint) -> dict:
    """Arguments shared by model and tokenizer loads: which files, and whether remote code may run.

    `trust_remote_code` is off unless the suite turns it on; safetensors are used whenever the checkpoint has
    them (transformers' own preference), and pickled weights load through torch's weights_only loader.
    """
    kwargs: dict = {"trust_remote_code": ckpt.trust_remote_code}
    if not ckpt.is_local:
        kwargs["revision"] = ckpt.revision
    return kwargs


def _quiet_transformers() -> None:
    """Per-file progress bars of transformers would drown qsens' own per-cell progress."""
    from transformers.utils import logging

    logging.disable_progress_bar()


def load_tokenizer(ckpt: Checkpoint):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(ckpt.location, **pretrained_kwargs(ckpt))


def load_model(ckpt: Checkpoint, device: torch.device) -> torch.nn.Module:
    """The model in its checkpoint dtype, in eval mode, on `device`; or, with a placement
    (qsens.families.placement), spread over the devices its device_map names (accelerate), `device` unused."""
    from transformers import AutoModelForCausalLM

    _quiet_transformers()
    placed = ckpt.placement.from_pretrained_kwargs() if ckpt.placement is not None else {}
    model = AutoModelForCausalLM.from_pretrained(ckpt.location, **pretrained_kwargs(ckpt),
                                                 dtype=getattr(torch, ckpt.dtype), **placed)
    return model.eval() if placed else model.to(device).eval()


def resolve_device(requested: str) -> torch.device:
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("the suite asks for device 'cuda' but no CUDA device is available")
        return torch.device("cuda")
    return torch.device("cpu")
