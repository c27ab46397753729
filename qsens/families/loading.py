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
    model, info = AutoModelForCausalLM.from_pretrained(ckpt.location, **pretrained_kwargs(ckpt),
                                                       dtype=getattr(torch, ckpt.dtype), output_loading_info=True,
                                                       **placed)
    check_loading_info(model, info, ckpt.location)
    return model.eval() if placed else model.to(device).eval()


class WeightsMismatch(RuntimeError):
    """The checkpoint's weights do not fill the model its config describes (or hold weights it has no place for)."""


def _listed(keys: set[str], limit: int = 5) -> str:
    shown = sorted(keys)[:limit]
    return ", ".join(shown) + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def check_loading_info(model: torch.nn.Module, info: dict, location: str) -> None:
    """Raise WeightsMismatch when transformers' loading info (`output_loading_info=True`) reports weights missing
    from the checkpoint (transformers initialises them at random: every number scored would be wrong), weights the
    model has no place for, shape mismatches or load errors. A tied weight (lm_head sharing the embedding's
    storage) is not missing: it is the loaded embedding (transformers drops it from missing_keys when it ties;
    the storage check covers models that tie it themselves)."""
    state = model.state_dict()
    missing = set(info.get("missing_keys") or ())
    if missing:
        loaded = {t.data_ptr() for name, t in state.items() if name not in missing}
        missing = {k for k in missing if k not in state or state[k].data_ptr() not in loaded}
    unexpected = set(info.get("unexpected_keys") or ())
    mismatched = {str(m[0]) if isinstance(m, tuple) else str(m) for m in info.get("mismatched_keys") or ()}
    problems = []
    if missing:
        problems.append(f"{len(missing)} weight(s) the config needs are missing from the checkpoint (they would be "
                        f"random): {_listed(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} weight(s) in the checkpoint have no place in the model its config "
                        f"describes: {_listed(unexpected)}")
    if mismatched:
        problems.append(f"{len(mismatched)} weight(s) have another shape than the config says: {_listed(mismatched)}")
    problems += [str(e)[:200] for e in info.get("error_msgs") or ()]
    if problems:
        raise WeightsMismatch(f"{location}: " + "; ".join(problems) + " (is config.json the one these weights "
                              "were saved with?)")


def resolve_device(requested: str) -> torch.device:
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("the suite asks for device 'cuda' but no CUDA device is available")
        return torch.device("cuda")
    return torch.device("cpu")
