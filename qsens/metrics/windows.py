"""Tokenize eval text and cut it into scoring windows, as the protocol (`qsens.suites.protocol`) says."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import numpy as np
import torch

from qsens.metrics.text import documents_for
from qsens.suites.protocol import Protocol


@dataclass(frozen=True)
class WindowPlan:
    """Feed seq[start:end]; score targets seq[t] for t in [t_lo, t_hi) (predicted by logit t - start - 1)."""

    start: int
    end: int
    t_lo: int
    t_hi: int


def plan_windows(n: int, context_length: int, stride: int, last_logit: bool, drop_last: bool,
                 align_last: bool = False) -> list[WindowPlan]:
    """Windows over a sequence of n tokens; every target index in [1, n) is scored at most once.

    align_last: shift a short final window left so it has a full context (lm-eval's last rolling window).
    """
    cap = n - 1 if last_logit else n  # an input token whose prediction has no target is useless
    plans: list[WindowPlan] = []
    scored_upto, start = 1, 0
    while scored_upto < n and cap > 0:
        end = min(start + context_length, cap)
        if end - start < context_length:
            if drop_last:
                break
            if align_last:
                start = max(0, end - context_length)
        t_hi = min(end + 1, n) if last_logit else end
        t_lo = max(scored_upto, start + 1)
        if t_hi > t_lo:
            plans.append(WindowPlan(start, end, t_lo, t_hi))
            scored_upto = t_hi
        if end >= cap:
            break
        start += stride
    return plans


@dataclass
class EvalTokens:
    """Scoring windows of one eval text under one protocol and tokenizer.

    windows: per window (input_ids int64 [L_k], first_logit, n_targets): logits first_logit..first_logit+n_targets-1
        of the window predict its targets, in order.
    targets: int64 [T], every scored token id, in window order.
    target_bytes: int64 [T], UTF-8 bytes of text each target token stands for (prefix tokens: 0).
    window_index: int64 [T], which window scored each target (the block for the bootstrap).
    n_words: whitespace-separated words in the documents (meaningful when every token is scored).
    digest: sha256 over every window's ids and targets: equal digests mean identical scored tokens.
    """

    windows: list[tuple[torch.Tensor, int, int]]
    targets: torch.Tensor
    target_bytes: torch.Tensor
    window_index: torch.Tensor
    n_words: int
    digest: str

    @property
    def n_targets(self) -> int:
        return int(self.targets.numel())


def _token_bytes(text: str, offsets: list[tuple[int, int]]) -> np.ndarray:
    """Bytes per token: token i owns the text from its start offset to the next token's start."""
    if not offsets:
        return np.zeros(0, dtype=np.int64)
    starts = np.array([s for s, _ in offsets], dtype=np.int64)
    starts[0] = 0
    if text.isascii():
        byte_at = np.arange(len(text) + 1, dtype=np.int64)
    else:
        byte_at = np.concatenate([[0], np.cumsum([len(c.encode("utf-8")) for c in text])]).astype(np.int64)
    bounds = np.concatenate([byte_at[starts], [byte_at[-1]]])
    return np.diff(bounds)


def _prefix_id(tokenizer, prefix: str) -> int | None:
    if prefix == "none":
        return None
    token_id = tokenizer.bos_token_id if prefix == "bos" else tokenizer.eos_token_id
    if token_id is None:
        raise ValueError(f"protocol prefix '{prefix}' but the tokenizer has no {prefix} token")
    return int(token_id)


def _encode(tokenizer, doc: str) -> tuple[list[int], np.ndarray]:
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("qsens needs a fast (Rust) tokenizer for byte offsets; this checkpoint's is slow")
    enc = tokenizer(doc, add_special_tokens=False, return_offsets_mapping=True)
    return list(enc["input_ids"]), _token_bytes(doc, enc["offset_mapping"])


def build_eval_tokens(text: str, tokenizer, protocol: Protocol) -> EvalTokens:
    """Tokenize `text` and lay out its scoring windows; raises ValueError if nothing would be scored."""
    prefix = _prefix_id(tokenizer, protocol.prefix)
    budget = protocol.max_tokens
    windows, targets, tbytes, widx, n_words = [], [], [], [], 0
    digest = hashlib.sha256()
    for doc in documents_for(text, protocol):
        ids, nbytes = _encode(tokenizer, doc)
        if prefix is not None:
            ids, nbytes = [prefix] + ids, np.concatenate([[0], nbytes])
        if budget is not None:
            ids, nbytes = ids[:budget], nbytes[:budget]
            budget -= len(ids)
        n_words += len(re.split(r"\s+", doc.strip())) if doc.strip() else 0
        seq = torch.tensor(ids, dtype=torch.int64)
        for p in plan_windows(len(ids), protocol.context_length, protocol.effective_stride, protocol.last_logit,
                              protocol.drop_last, protocol.align_last):
            inp = seq[p.start : p.end]
            windows.append((inp, p.t_lo - p.start - 1, p.t_hi - p.t_lo))
            targets.append(seq[p.t_lo : p.t_hi])
            tbytes.append(torch.from_numpy(np.asarray(nbytes[p.t_lo : p.t_hi], dtype=np.int64)))
            widx.append(torch.full((p.t_hi - p.t_lo,), len(windows) - 1, dtype=torch.int64))
            digest.update(inp.numpy().tobytes() + b"|" + targets[-1].numpy().tobytes() + b"#")
        if budget is not None and budget <= 0:
            break
    if not windows:
        raise ValueError("the eval text yields no scored token under this protocol (text too short for drop_last?)")
    return EvalTokens(windows, torch.cat(targets), torch.cat(tbytes), torch.cat(widx), n_words,
                      digest.hexdigest()[:16])
