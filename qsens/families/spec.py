"""Typed spec of a checkpoint ladder for `qsens family train` (YAML, unknown keys are errors)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SizeSpec(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]+$")
    hidden: int = Field(ge=4)
    layers: int = Field(ge=1)
    heads: int = Field(ge=1)
    mlp: int = Field(ge=4)

    @model_validator(mode="after")
    def _heads_divide(self) -> "SizeSpec":
        if self.hidden % self.heads:
            raise ValueError(f"hidden ({self.hidden}) must be divisible by heads ({self.heads})")
        return self


class OptimSpec(_Strict):
    peak_lr: float = Field(3e-3, gt=0)
    min_lr_ratio: float = Field(0.05, ge=0, le=1, description="final lr of a decay, as a fraction of peak")
    warmup_steps: int = Field(20, ge=0, description="linear warmup, the same for every run and schedule")
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = Field(0.1, ge=0)
    grad_clip: float = Field(1.0, gt=0)


class LadderSpec(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]+$")
    description: str = ""
    seed: int = 0
    train_text: list[str] = Field(min_length=1, description="files (.txt/.txt.gz), relative to the spec")
    heldout_text: list[str] = Field(default_factory=list, description="never trained on; recorded in the manifest")
    vocab_size: int = Field(1024, ge=260)
    max_train_chars: int | None = Field(None, ge=1000, description="use only the first chars of the training text")
    sequence_length: int = Field(128, ge=8)
    batch_size: int = Field(32, ge=1)
    sizes: list[SizeSpec] = Field(min_length=1)
    budgets: list[int] = Field(min_length=1, description="token budgets D, each saved as a checkpoint")
    schedules: list[Literal["cosine", "wsd"]] = Field(default_factory=lambda: ["cosine", "wsd"])
    wsd_cooldown_fraction: float = Field(0.2, gt=0, lt=1)
    optim: OptimSpec = OptimSpec()
    threads: int = Field(0, ge=0, description="torch threads per process (0: torch's default)")

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.sequence_length

    def steps_for(self, budget: int) -> int:
        return max(1, round(budget / self.tokens_per_step))


def load_ladder_spec(path: str | Path) -> LadderSpec:
    from qsens.suites import document

    path = Path(path)
    try:  # read like a suite: size cap, UTF-8, duplicate keys and 64-bit integers are errors
        raw = document.parse_yaml(document.read_text(path))
        problems = document.check_tree(raw)
        if problems:
            raise document.InputError(problems)
        return LadderSpec.model_validate(raw)
    except document.InputError as exc:
        raise ValueError("invalid family spec\n  " + "\n  ".join(f"{path}: {w or '<top>'}: {m}"
                                                                   for w, m in exc.problems)) from None
    except ValidationError as exc:
        lines = [f"{path}: {'.'.join(str(p) for p in e['loc']) or '<top>'}: "
                 f"{'unknown key' if e['type'] == 'extra_forbidden' else e['msg']}" for e in exc.errors()]
        raise ValueError("invalid family spec\n  " + "\n  ".join(lines)) from None
