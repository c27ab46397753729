"""Tokenize eval text and cut it into scoring windows, as the protocol (`qsens.metrics.protocol`) says."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import numpy as np
import torch

from qsens.metrics.text import documents_for
from qsens.metrics.protocol import Protocol


@dataclass(frozen=True)
class WindowPlan:
    """Feed seq[start:end]; score targets seq[t] for t in [t_lo, t_hi) (predicted by logit t - start - 1)."""

    start: int
    end: int
    t_lo: int
    t_hi: int


def plan_windows(n: int, context_length: int, stride: int, last_logit: bool, drop_last: bool,
                 align_last: bool = False, score_from: str = "all") -> list[WindowPlan]:
    """Windows over a sequence of n tokens; every target index in [1, n) is scored at most once.

    align_last: shift a short final window left so it has a full context (lm-eval's last rolling window).
    score_from 'second_half': only targets predicted from positions >= context_length // 2 (llama-perplexity).
    """
    skip = context_length // 2 if score_from == "second_half" else 0
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
        t_lo = max(scored_upto, start + skip + 1)
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
    target_bytes: int64 [T], UTF-8 bytes each target stands for (see `_span_counts`; prefix tokens: 0).
    window_index: int64 [T], which window scored each target (the unit the block bootstrap resamples).
    n_words: words in exactly the scored span (protocol `counts` says which text they are counted on).
    digest: sha256 over every window's ids and targets: equal digests mean identical scored tokens.
    window_doc: int64 [W], the document each window belongs to (None: one document); bootstrap blocks never
        cross from one document to the next.
    """

    windows: list[tuple[torch.Tensor, int, int]]
    targets: torch.Tensor
    target_bytes: torch.Tensor
    window_index: torch.Tensor
    n_words: int
    digest: str
    window_doc: np.ndarray | None = None

    @property
    def n_targets(self) -> int:
        return int(self.targets.numel())

    def window_docs(self) -> np.ndarray:
        """int64 [W]: document of each window (all 0 when the text is one stream)."""
        if self.window_doc is None:
            return np.zeros(len(self.windows), dtype=np.int64)
        return np.asarray(self.window_doc, dtype=np.int64)


def _span_counts(text: str, offsets: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """UTF-8 bytes and word starts each token stands for: int64 [n] each.

    Token i owns the text from its start offset to the next token's start (the first token from 0, the last to
    the end), so the counts of any set of tokens are those of exactly the text they cover. A word is a maximal
    run of non-whitespace; it belongs to the token that covers its first character.
    """
    if not offsets:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    starts = np.array([s for s, _ in offsets], dtype=np.int64)
    starts[0] = 0
    starts = np.maximum.accumulate(starts)  # special tokens carry (0, 0) offsets: they own no text
    if text.isascii():
        byte_at = np.arange(len(text) + 1, dtype=np.int64)
    else:
        byte_at = np.concatenate([[0], np.cumsum([len(c.encode("utf-8")) for c in text])]).astype(np.int64)
    bounds = np.concatenate([starts, [len(text)]])
    word_starts = np.array([m.start() for m in re.finditer(r"\S+", text)], dtype=np.int64)
    words_before = np.searchsorted(word_starts, bounds, side="left")
    return np.diff(byte_at[bounds]), np.diff(words_before)


def source_counts(page: str) -> tuple[int, int]:
    r"""lm-evaluation-harness `wikitext` process_results: (UTF-8 bytes, len(re.split(r"\s+", page))) of the page
    before detokenization. The split counts 1 + the number of whitespace runs, so leading/trailing whitespace
    adds an empty 'word', as it does there."""
    return len(page.encode("utf-8")), len(re.split(r"\s+", page))


TOKENIZER_UNSET_LENGTH = int(1e30)  # transformers' VERY_LARGE_INTEGER: model_max_length not configured


POSITION_FIELDS = ("n_positions", "max_position_embeddings", "n_ctx")  # lm-eval's order


def position_limit(config) -> tuple[str, int] | None:
    """(field, value) of the positions a model config states (a transformers config or config.json as a dict; the
    text config of a multimodal one), in lm-eval 0.4.13's order; None when it states none."""
    get = (lambda c, k: c.get(k)) if isinstance(config, dict) else (lambda c, k: getattr(c, k, None))
    cfg = get(config, "text_config") or config
    for attr in POSITION_FIELDS:
        value = get(cfg, attr)
        if value is not None:
            return attr, int(value)
    return None


def model_max_length(config, tokenizer, default: int = 2048) -> int:
    """The model's maximum context, as lm-eval 0.4.13 `resolve_max_length` finds it: the (text) config's
    positions (`position_limit`), else the tokenizer's model_max_length when set, else 2048."""
    stated = position_limit(config)
    if stated is not None:
        return stated[1]
    value = getattr(tokenizer, "model_max_length", None)
    return int(value) if value is not None and value != TOKENIZER_UNSET_LENGTH else default


def _prefix_id(tokenizer, prefix: str) -> int | None:
    if prefix == "none":
        return None
    if prefix == "bos_or_eos":  # lm-eval HFLM.prefix_token_id
        prefix = "bos" if tokenizer.bos_token_id is not None else "eos"
    token_id = tokenizer.bos_token_id if prefix == "bos" else tokenizer.eos_token_id
    if token_id is None:
        raise ValueError(f"protocol prefix '{prefix}' but the tokenizer has no {prefix} token")
    return int(token_id)


def _encode(tokenizer, doc: str, special_tokens: bool) -> tuple[list[int], np.ndarray, np.ndarray]:
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("qsens needs a fast (Rust) tokenizer for byte offsets; this checkpoint's is slow")
    enc = tokenizer(doc, add_special_tokens=special_tokens, return_offsets_mapping=True)
    return (list(enc["input_ids"]), *_span_counts(doc, enc["offset_mapping"]))


def _documents(text: str, protocol: Protocol) -> list[tuple[str, str]]:
    """(text to tokenize, text it came from before detokenization) per document."""
    if protocol.counts == "source":
        if protocol.unit != "document":
            raise ValueError("protocol counts: 'source' needs unit: document (counts are per source document)")
        return [(d, src) for d, src in documents_for(text, protocol, with_source=True)]
    return [(d, d) for d in documents_for(text, protocol)]


def even_shares(lengths: list[int], cap: int) -> list[int]:
    """Tokens to keep from each document so that they sum to min(cap, sum(lengths)) in shares as equal as the
    documents allow: a document shorter than its share is kept whole and the rest is shared among the others
    (water-filling); the share's remainder goes one token each to the first documents."""
    keep = [0] * len(lengths)
    left, open_ = min(cap, sum(lengths)), sorted(range(len(lengths)), key=lambda i: lengths[i])
    while open_:
        share, extra = divmod(left, len(open_))
        if lengths[open_[0]] <= share:
            i = open_.pop(0)
            keep[i], left = lengths[i], left - lengths[i]
            continue
        for rank, i in enumerate(sorted(open_)):
            keep[i] = share + (rank < extra)
        break
    return keep


def build_eval_tokens(text: str, tokenizer, protocol: Protocol, model_max_length: int | None = None) -> EvalTokens:
    """Tokenize `text` and lay out its scoring windows; raises ValueError if nothing would be scored.

    model_max_length: the model's context (`model_max_length`), needed when protocol.context_length is 'model'.
    Bytes and words are counted over exactly the scored tokens' text; with `counts: source` (lm-eval) over whole
    source documents instead, so max_tokens then keeps whole documents only.
    """
    protocol = protocol.resolved(model_max_length)
    prefix = _prefix_id(tokenizer, protocol.prefix)
    budget = protocol.max_tokens
    windows, targets, tbytes, widx, wdoc, n_words = [], [], [], [], [], 0
    digest = hashlib.sha256()
    documents = _documents(text, protocol)

    def encode(doc: str):
        ids, nbytes, nwords = _encode(tokenizer, doc, protocol.add_special_tokens)
        if prefix is not None:
            ids, nbytes, nwords = [prefix] + ids, np.concatenate([[0], nbytes]), np.concatenate([[0], nwords])
        return ids, nbytes, nwords

    shares = None
    if protocol.max_tokens_rule == "even":  # every document's length first; otherwise encode as they are scored
        encoded = [encode(doc) for doc, _ in documents]
        shares = even_shares([len(e[0]) for e in encoded], budget)
    else:
        encoded = (encode(doc) for doc, _ in documents)
    for d, ((doc, source), (ids, nbytes, nwords)) in enumerate(zip(documents, encoded)):
        if shares is not None:
            if shares[d] < 2:  # nothing to score: the document contributes no window
                continue
            ids, nbytes, nwords = ids[:shares[d]], nbytes[:shares[d]], nwords[:shares[d]]
        elif budget is not None:
            if protocol.counts == "source" and len(ids) > budget:
                break  # source counts are per whole document: never score part of one
            ids, nbytes, nwords = ids[:budget], nbytes[:budget], nwords[:budget]
            budget -= len(ids)
        seq = torch.tensor(ids, dtype=torch.int64)
        plans = plan_windows(len(ids), protocol.context_length, protocol.effective_stride, protocol.last_logit,
                             protocol.drop_last, protocol.align_last, protocol.score_from)
        if protocol.counts == "source" and plans:
            if prefix is None or sum(p.t_hi - p.t_lo for p in plans) != len(ids) - 1:
                raise ValueError("protocol counts: 'source' needs a prefix token and every token of each document "
                                 "scored (drop_last: false)")
            # the difference between the source's counts and the tokenized text's rides on the first target
            src_bytes, src_words = source_counts(source)
            first = plans[0].t_lo
            nbytes = np.array(nbytes, dtype=np.int64)
            nwords = np.array(nwords, dtype=np.int64)
            nbytes[first] += src_bytes - nbytes[first:].sum()
            nwords[first] += src_words - nwords[first:].sum()
        for p in plans:
            inp = seq[p.start : p.end]
            if protocol.window_bos:
                inp = inp.clone()
                inp[0] = _prefix_id(tokenizer, "bos")
            windows.append((inp, p.t_lo - p.start - 1, p.t_hi - p.t_lo))
            targets.append(seq[p.t_lo : p.t_hi])
            tbytes.append(torch.from_numpy(np.asarray(nbytes[p.t_lo : p.t_hi], dtype=np.int64)))
            n_words += int(np.sum(nwords[p.t_lo : p.t_hi]))
            widx.append(torch.full((p.t_hi - p.t_lo,), len(windows) - 1, dtype=torch.int64))
            wdoc.append(d)
            digest.update(inp.numpy().tobytes() + b"|" + targets[-1].numpy().tobytes() + b"#")
        if shares is None and budget is not None and budget <= 0:
            break
    if not windows:
        raise ValueError("the eval text yields no scored token under this protocol (text too short for drop_last?)")
    return EvalTokens(windows, torch.cat(targets), torch.cat(tbytes), torch.cat(widx), n_words,
                      digest.hexdigest()[:16], np.asarray(wdoc, dtype=np.int64))
