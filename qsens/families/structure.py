"""A checkpoint's Linear module names, read from its config alone (the model is built on the meta device: no
weights are read or allocated), so a suite can expand and check layer sets before anything runs."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch

from qsens.families.checkpoint import Checkpoint

# Local checkpoints of one architecture (a family's budgets) share one build: keyed on their config.json text.
_BY_CONFIG_TEXT: dict[tuple[str, bool], tuple[str, ...]] = {}


def linear_names(ckpt: Checkpoint) -> tuple[str, ...]:
    """Qualified names of every nn.Linear of the checkpoint's model, in module order."""
    config_file = Path(ckpt.location) / "config.json"
    if not (ckpt.is_local and config_file.is_file()):
        return _from_hub(ckpt.location, ckpt.revision, ckpt.trust_remote_code)
    key = (config_file.read_text(encoding="utf-8"), ckpt.trust_remote_code)
    if key not in _BY_CONFIG_TEXT:
        _BY_CONFIG_TEXT[key] = _build(ckpt.location, None, ckpt.trust_remote_code)
    return _BY_CONFIG_TEXT[key]


@lru_cache(maxsize=64)
def _from_hub(location: str, revision: str | None, trust_remote_code: bool) -> tuple[str, ...]:
    return _build(location, revision, trust_remote_code)


def _build(location: str, revision: str | None, trust_remote_code: bool) -> tuple[str, ...]:
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(location, revision=revision, trust_remote_code=trust_remote_code)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    return tuple(name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear))
