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
    `prefix`: a BOS/EOS token prepended to each sequence so that its first real token is scored too.
"""

from __future__ import annotations

import hashlib
import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# Bump when the meaning of a stored metric changes, so old cells are never reused for the new meaning.
METRICS_VERSION = 1


class Protocol(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    unit: Literal["stream", "document"] = Field(
        "stream", description="score one concatenated stream, or each document on its own (no cross-document context)"
    )
    split: Literal["none", "lines", "lines_keepends", "blank_lines", "wikitext_articles"] = Field(
        "none", description="how the file is cut into documents before joining or per-document scoring"
    )
    joiner: str = Field("\n\n", description="separator between documents when unit is 'stream'")
    detokenize: Literal["none", "wikitext"] = "none"
    context_length: int = Field(128, ge=2, le=1 << 20)
    stride: int | None = Field(None, ge=1, le=1 << 20, description="defaults to context_length (non-overlapping windows)")
    last_logit: bool = False
    drop_last: bool = False
    align_last: bool = Field(False, description="shift a short last window left to a full context (lm-eval)")
    prefix: Literal["none", "bos", "eos"] = "none"
    max_tokens: int | None = Field(None, ge=2, le=2**63 - 1, description="cap on tokens fed (stream) or summed over documents")
    batch_size: int = Field(8, ge=1, le=4096, description="windows per forward pass; does not change any number")

    @model_validator(mode="after")
    def _stride_fits(self) -> "Protocol":
        if self.stride is not None and self.stride > self.context_length:
            raise ValueError(f"stride ({self.stride}) must be <= context_length ({self.context_length})")
        return self

    @property
    def effective_stride(self) -> int:
        return self.stride or self.context_length

    def hash(self) -> str:
        """Hash of everything that can change a number (batch_size cannot)."""
        fields = self.model_dump(exclude={"batch_size"})
        fields["stride"] = self.effective_stride
        fields["metrics_version"] = METRICS_VERSION
        blob = json.dumps(fields, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


PRESETS: dict[str, dict] = {
    # GPTQ (IST-DASLab/gptq datautils.get_wikitext2 + llama_eval): test rows joined with "\n\n" into one stream,
    # non-overlapping 2048-token windows, ragged tail dropped, first token of each window unscored.
    "gptq": dict(
        unit="stream", split="lines_keepends", joiner="\n\n", context_length=2048,
        last_logit=False, drop_last=True, prefix="none",
    ),
    # lm-evaluation-harness `wikitext` task: one document per article, wikitext detokenizer, EOT prefix token,
    # rolling windows of the model's max length where every token is scored once; word/byte perplexity, bpb.
    "lm-eval": dict(
        unit="document", split="wikitext_articles", detokenize="wikitext", context_length=2048,
        last_logit=True, drop_last=False, align_last=True, prefix="eos",
    ),
    # qsens default for small models: one stream, non-overlapping windows, every window's first token context.
    "qsens": dict(unit="stream", split="none", context_length=128, last_logit=False),
}


def resolve_protocol(preset: str | None, overrides: dict) -> Protocol:
    """A preset's fields, then the suite's overrides (which are validated like any protocol)."""
    base = dict(PRESETS[preset]) if preset else {}
    base.update(overrides)
    return Protocol.model_validate(base, strict=True)  # a YAML "64" is not 64
