"""One checkpoint while its cells run: model and tokenizer loaded once, eval tokens and calibration built once,
quantizers run against it, and how many quantized models may stay resident beside it."""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from typing import Callable

import numpy as np
import torch

from qsens.families.checkpoint import Checkpoint
from qsens.families import placed
from qsens.families.loading import load_model, load_tokenizer
from qsens.metrics.resources import available_bytes, model_bytes
from qsens.metrics.text import TextTooLarge, limit_reason, read_text, text_limit
from qsens.metrics.windows import EvalTokens, build_eval_tokens, model_max_length, position_limit
from qsens.quantizers import method_module
from qsens.quantizers.base import QuantContext, QuantResult, QuantSettings
from qsens.quantizers.selected import quantize_selected
from qsens.suites.load import EvalText, Suite

# Most quantized models kept resident at once (each group shares one fp pass per eval); memory decides below that.
MAX_RESIDENT = int(os.environ.get("QSENS_MAX_RESIDENT", 16))


def calibration_sampler(suite: Suite, tokenizer) -> Callable[[int, int], torch.Tensor] | None:
    """n random token windows of `length` from the suite's calibration text, from a local seeded RNG."""
    if suite.calibration_path is None:
        return None
    ids = np.asarray(tokenizer(read_text(suite.calibration_path), add_special_tokens=False)["input_ids"])

    def sample(n: int, length: int) -> torch.Tensor:
        if ids.size <= length:
            raise ValueError(f"calibration text has {ids.size} tokens, fewer than one sample of {length}")
        starts = np.random.default_rng(suite.spec.seed).integers(0, ids.size - length, size=n)
        return torch.from_numpy(np.stack([ids[s : s + length] for s in starts]).astype(np.int64))

    return sample


def _check_fits(model, eval_name: str, context_length: int) -> None:
    """A window longer than the model's positions would be silently wrong or crash deep inside the model."""
    stated = position_limit(getattr(model, "config", None))
    if stated is not None and context_length > stated[1]:
        field, limit = stated
        raise ValueError(f"eval {eval_name!r}: context_length {context_length} exceeds the model's "
                         f"{field} {limit}: at most {limit}")


def _tokenizer_digest(tokenizer) -> str | None:
    """sha256 of a fast tokenizer's full serialization (vocab, merges, normalizer, special tokens), else None."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    return hashlib.sha256(backend.to_str().encode()).hexdigest()


# Checkpoints of one family share their tokenizer, so an eval text is tokenized once per run, not once per
# checkpoint (on the micro suite that was a quarter of the wall time). Keyed by everything the tokens depend on.
_EVAL_TOKENS: OrderedDict[tuple, EvalTokens] = OrderedDict()
_EVAL_TOKENS_KEPT = 8


def _cached_eval_tokens(tokenizer, ev: EvalText, max_length: int) -> EvalTokens:
    digest = _tokenizer_digest(tokenizer)
    key = (digest, ev.text_hash, ev.protocol.hash(), max_length)
    if digest is not None and key in _EVAL_TOKENS:
        _EVAL_TOKENS.move_to_end(key)
        return _EVAL_TOKENS[key]
    if ev.documents:  # a document set: each document was checked by the loader
        text = ev.read()
    else:
        limit = text_limit(ev.protocol.max_tokens)
        try:
            text = read_text(ev.path, limit)
        except TextTooLarge as exc:  # the same limit validate checked: a file swapped since then fails its cells
            raise TextTooLarge(f"{ev.path} holds {exc}; {limit_reason(limit, ev.protocol.max_tokens)} "
                               "(cut the text, or raise max_tokens)") from None
    tokens = build_eval_tokens(text, tokenizer, ev.protocol, max_length)
    if digest is not None:
        _EVAL_TOKENS[key] = tokens
        while len(_EVAL_TOKENS) > _EVAL_TOKENS_KEPT:
            _EVAL_TOKENS.popitem(last=False)
    return tokens


class LoadedCheckpoint:
    """The state shared by one checkpoint's cells: model, tokenizer, eval tokens."""

    def __init__(self, suite: Suite, ckpt: Checkpoint, device: torch.device):
        self.suite, self.ckpt, self.device = suite, ckpt, device
        self.tokenizer = load_tokenizer(ckpt)
        self.model = load_model(ckpt, device)
        self.placed = placed.is_placed(self.model)
        # per device of a placed model's map; a quantized copy is placed on the same map, so takes the same again
        self.bytes_by_device = placed.bytes_by_device(self.model) if self.placed else {}
        self.model_bytes = sum(self.bytes_by_device.values()) if self.placed else model_bytes(self.model)
        self.tokens: dict[str, EvalTokens] = {}
        self.calibration: Callable[[int, int], torch.Tensor] | None = None

    def eval_tokens(self, ev: EvalText) -> EvalTokens:
        if ev.name not in self.tokens:
            max_length = model_max_length(self.model.config, self.tokenizer)
            context_length = ev.protocol.resolved(max_length).context_length
            _check_fits(self.model, ev.name, context_length)
            tokens = _cached_eval_tokens(self.tokenizer, ev, max_length)
            scored = int(tokens.targets.numel())
            if ev.protocol.unit == "stream" and scored < context_length - 1:  # a full window scores cl - 1
                raise ValueError(f"eval text {ev.name!r} gives {scored} scored tokens, fewer than one window "
                                 f"(context_length {context_length}): use a longer text or a shorter "
                                 "context_length")
            self.tokens[ev.name] = tokens
        return self.tokens[ev.name]

    def quantize(self, settings: QuantSettings) -> QuantResult:
        if self.device.type == "cuda":  # peak memory per method, not per process
            torch.cuda.reset_peak_memory_stats(self.device)
        if self.calibration is None and self.suite.calibration_path is not None:
            self.calibration = calibration_sampler(self.suite, self.tokenizer)  # tokenized once per checkpoint
        ctx = QuantContext(
            fp_model=self.model, tokenizer=self.tokenizer, device=self.device, seed=self.suite.spec.seed, calibration=self.calibration,
            checkpoint_dir=self.ckpt.location if self.ckpt.is_local else None,
        )
        if not self.placed:
            return quantize_selected(method_module(settings.method), ctx, settings)  # only its layer set, if any
        with placed.onloaded(self.model):  # the copy the method makes holds real weights, where fp's are offloaded
            result = quantize_selected(method_module(settings.method), ctx, settings)
        result.model = placed.place_like(result.model, self.model, self.ckpt.placement.offload_folder)
        result.details["placement"] = placed.describe(result.model)
        return result

    def room_for_another(self, resident: int) -> bool:
        """Whether one more quantized model may stay resident: at most QSENS_MAX_RESIDENT, and two model sizes
        of memory left (one for the model, one for the next quantizer's working copy)."""
        if resident >= MAX_RESIDENT:
            return False
        if resident == 0:
            return True
        if self.placed:  # every device of the map needs room for its share twice over
            folder = self.ckpt.placement.offload_folder
            return all(placed.free_bytes(d, folder) > 2 * b for d, b in self.bytes_by_device.items())
        return available_bytes(self.device) > 2 * self.model_bytes

    def close(self) -> None:
        self.model = None
