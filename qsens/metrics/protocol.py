"""The evaluation protocol: exactly which tokens are scored, with what context.

Perplexities disagree across tools mostly because of protocol (lm-evaluation-harness issues 2301, 1586), so a
suite states all of it and the protocol's hash is part of every cell's key.

Windowing, for one token sequence x[0..T) (a whole stream, or one document):
    window k feeds x[a_k : a_k + context_length] with a_k = k * stride;
    the logit at input position j predicts x[a_k + j + 1];
    a window scores the targets it predicts that no earlier window scored, so every target is scored once,
    and with stride < context_length each newly scored target sees at least context_length - stride tokens;
    `last_logit: false` (HF "fixed-length models" guide, GPTQ): targets lie inside the window, so with
        stride == context_length the first token of every window is context only;
    `last_logit: true` (lm-eval `loglikelihood_rolling`): the window's last logit also scores the token right
        after it, so with stride == context_length every token after the first is scored;
    `drop_last`: keep only full windows (GPTQ drops the ragged tail);
    `align_last`: instead, shift a short last window left so it has a full context (lm-eval);
    `prefix`: a BOS/EOS token prepended to each sequence so that its first real token is scored too
        (`bos_or_eos`: BOS when the tokenizer has one, else EOS, as lm-eval's HFLM);
    `window_bos`: the first input token of every window is replaced by BOS (llama-perplexity does this to each
        chunk when the vocabulary adds BOS; the replaced token is context, never a target);
    `score_from: second_half`: a window scores only the targets predicted from its second half, positions
        context_length // 2 ... context_length - 2 (llama-perplexity's `first = n_ctx/2`), so each scored token
        sees at least half a window of context;
    `context_length: model`: the model's maximum length (config n_positions / max_position_embeddings / n_ctx,
        else the tokenizer's model_max_length, else 2048: lm-eval's `resolve_max_length`).

Bytes and words (bits/byte, word perplexity) are counted over exactly the scored span: the text of the scored
tokens (`counts: scored`), or, as lm-eval's `wikitext` task does, the whole source documents before
detokenization (`counts: source`), which is the scored span only when every token of each document is scored.
"""

from __future__ import annotations

import hashlib
import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# Bump when the meaning of a stored metric changes, so old cells are never reused for the new meaning.
# 2: circular block bootstrap with a data-chosen block length; words/bytes over the scored span; wikitext_articles
#    as the HF document-level dataset splits it.
METRICS_VERSION = 2
# Protocol fields added after cells were published, with their defaults (the protocol they leave unchanged): left
# out of the hash at their default, so old keys stay valid.
LATER_DEFAULTS = {"window_bos": False, "score_from": "all", "separator": None, "max_tokens_rule": "first"}


class Protocol(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    unit: Literal["stream", "document"] = Field(
        "stream", description="score one concatenated stream, or each document on its own (no cross-document context)"
    )
    split: Literal["none", "lines", "lines_keepends", "hf_rows", "blank_lines", "wikitext_articles", "separator"] = Field(
        "none", description="how the file is cut into documents before joining or per-document scoring"
    )
    separator: str | None = Field(None, min_length=1, description="split: separator: the exact string between "
                                                                  "documents (e.g. a line '<|endoftext|>')")
    joiner: str = Field("\n\n", description="separator between documents when unit is 'stream'")
    detokenize: Literal["none", "wikitext"] = "none"
    context_length: int | Literal["model"] = Field(128, description="tokens per window, or 'model': its maximum")
    stride: int | None = Field(None, ge=1, le=1 << 20, description="defaults to context_length (non-overlapping windows)")
    last_logit: bool = False
    drop_last: bool = False
    align_last: bool = Field(False, description="shift a short last window left to a full context (lm-eval)")
    prefix: Literal["none", "bos", "eos", "bos_or_eos"] = "none"
    add_special_tokens: bool = Field(False, description="tokenize with the tokenizer's own special tokens "
                                                           "(lm-eval's tok_encode does)")
    counts: Literal["scored", "source"] = Field(
        "scored", description="bytes/words over the scored tokens' text, or over whole source documents (lm-eval)"
    )
    max_tokens: int | None = Field(None, ge=2, le=2**63 - 1, description="cap on tokens fed (stream) or summed over documents")
    max_tokens_rule: Literal["first", "even"] = Field(
        "first", description="first: the first max_tokens of the documents in order; even: an equal share from the "
                             "start of every document (a share a short document leaves is spread over the others)")
    batch_size: int = Field(8, ge=1, le=4096, description="windows per forward pass; does not change any number")
    window_bos: bool = Field(False, description="replace every window's first input token by BOS (llama-perplexity)")
    score_from: Literal["all", "second_half"] = Field(
        "all", description="score every new target of a window, or only those of its second half (llama-perplexity)")

    @model_validator(mode="after")
    def _stride_fits(self) -> "Protocol":
        if isinstance(self.context_length, int) and not 2 <= self.context_length <= 1 << 20:
            raise ValueError(f"context_length must be in 2..{1 << 20} or 'model', got {self.context_length}")
        if self.context_length == "model" and self.stride is not None:
            raise ValueError("stride needs a numeric context_length (with 'model' windows do not overlap)")
        if (self.split == "separator") != (self.separator is not None):
            raise ValueError("split: separator and a `separator` string go together (got split "
                             f"{self.split!r}, separator {self.separator!r})")
        if self.max_tokens_rule == "even" and (self.unit != "document" or self.max_tokens is None):
            raise ValueError("max_tokens_rule: even shares max_tokens between documents: it needs unit: document "
                             "and max_tokens")
        if self.stride is not None and self.stride > self.context_length:
            raise ValueError(f"stride ({self.stride}) must be <= context_length ({self.context_length})")
        if self.score_from == "second_half" and (self.stride not in (None, self.context_length) or not self.drop_last):
            raise ValueError("score_from 'second_half' scores full, non-overlapping windows (llama-perplexity's "
                             "chunks): needs stride = context_length (or unset) and drop_last: true")
        return self

    @property
    def effective_stride(self) -> int:
        if self.context_length == "model":
            raise ValueError("context_length 'model' is not resolved yet (Protocol.resolved)")
        return self.stride or self.context_length

    def resolved(self, model_max_length: int | None) -> "Protocol":
        """This protocol with context_length 'model' replaced by the model's maximum length."""
        if self.context_length != "model":
            return self
        if model_max_length is None:
            raise ValueError("protocol context_length is 'model' but the model's maximum length was not given")
        return self.model_copy(update={"context_length": int(model_max_length)})

    def hash(self) -> str:
        """Hash of everything that can change a number (batch_size cannot)."""
        # Fields added after METRICS_VERSION 2 enter the hash only when set, so older cells keep their keys.
        later = {name for name, default in LATER_DEFAULTS.items() if getattr(self, name) == default}
        fields = self.model_dump(exclude={"batch_size", *later})
        fields["stride"] = self.stride if self.context_length == "model" else self.effective_stride
        fields["metrics_version"] = METRICS_VERSION
        blob = json.dumps(fields, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


PRESETS: dict[str, dict] = {
    # GPTQ (IST-DASLab/gptq datautils.get_wikitext2 + llama_eval): HF wikitext-2-raw-v1 test rows joined with
    # "\n\n" into one stream, tokenized with the tokenizer's special tokens (a LLaMA/OPT BOS at the start),
    # non-overlapping 2048-token windows, ragged tail dropped, first token of each window unscored.
    "gptq": dict(
        unit="stream", split="hf_rows", joiner="\n\n", context_length=2048,
        last_logit=False, drop_last=True, prefix="none", add_special_tokens=True,
    ),
    # lm-evaluation-harness 0.4.13 `wikitext` task: one document per page of EleutherAI/wikitext_document_level,
    # wikitext detokenizer, tokenized as HFLM.tok_encode does (special tokens on), BOS prefix (EOS without one),
    # rolling windows of the model's max length where every token is scored once; words and bytes of the
    # original page (process_results).
    "lm-eval": dict(
        unit="document", split="wikitext_articles", detokenize="wikitext", context_length="model",
        last_logit=True, drop_last=False, align_last=True, prefix="bos_or_eos", add_special_tokens=True,
        counts="source",
    ),
    # llama.cpp `llama-perplexity` (tools/perplexity/perplexity.cpp, as in llama-cpp-python 0.3.36's vendored
    # copy): the whole text tokenized once with BOS in front (common_tokenize, add_special; GGUF add_bos),
    # cut into n_ctx chunks (the ragged tail dropped), each chunk's first token replaced by BOS, and the tokens
    # predicted from the second half of each chunk scored (first = n_ctx/2). n_ctx defaults to 512 there too;
    # `--chunks N` is max_tokens = N * n_ctx.
    "llama.cpp": dict(
        unit="stream", split="none", context_length=512, last_logit=False, drop_last=True, prefix="bos",
        add_special_tokens=False, window_bos=True, score_from="second_half",
    ),
    # qsens default for small models: one stream, non-overlapping windows, every window's first token context.
    "qsens": dict(unit="stream", split="none", context_length=128, last_logit=False),
}


def resolve_protocol(preset: str | None, overrides: dict) -> Protocol:
    """A preset's fields, then the suite's overrides (which are validated like any protocol)."""
    base = dict(PRESETS[preset]) if preset else {}
    base.update(overrides)
    return Protocol.model_validate(base, strict=True)  # a YAML "64" is not 64
