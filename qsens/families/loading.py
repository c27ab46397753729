"""Load a checkpoint and its tokenizer with transformers, from a local HF folder or a Hub repo revision."""

from __future__ import annotations

import torch

from qsens.suites.load import Checkpoint

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


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


def load_model(ckpt: Checkpoint, device: torch.device, **extra) -> torch.nn.Module:
    """The model in eval mode on `device`; `extra` goes to from_pretrained (e.g. quantization_config)."""
    from transformers import AutoModelForCausalLM

    _quiet_transformers()
    kwargs = {**pretrained_kwargs(ckpt), "dtype": _DTYPES[ckpt.dtype], **extra}
    model = AutoModelForCausalLM.from_pretrained(ckpt.location, **kwargs)
    if "quantization_config" not in extra and "device_map" not in extra:
        model = model.to(device)
    return model.eval()


def resolve_device(requested: str) -> torch.device:
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("the suite asks for device 'cuda' but no CUDA device is available")
        return torch.device("cuda")
    return torch.device("cpu")
