"""Typed spec of a checkpoint ladder for `qsens family train` (YAML, unknown keys are errors)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


# The ladder trains small models; a size beyond this is a typo, refused before anything is allocated.
MAX_PARAMS = 2_000_000_000
# Training memory per parameter: float32 weights, gradients and AdamW's two moments.
TRAIN_BYTES_PER_PARAM = 16
INT64_MAX = 2**63 - 1
Seed = Annotated[int, Field(ge=0, le=2**63 - 1)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SizeSpec(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]+$")
    hidden: int = Field(ge=4)
    layers: int = Field(ge=1)
    heads: int = Field(ge=1)
    mlp: int = Field(ge=4)
    seeds: list[Seed] | None = Field(None, min_length=1, description="training seeds of this size (default: ladder's)")

    def params(self, vocab_size: int) -> int:
        """Parameters of this size's Llama (tied embeddings, as trainer.build_model makes it), counted from the
        shapes alone: embedding, per layer q/k/v/o, gate/up/down and two norms, the final norm."""
        per_layer = 4 * self.hidden * self.hidden + 3 * self.hidden * self.mlp + 2 * self.hidden
        return vocab_size * self.hidden + self.layers * per_layer + self.hidden

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


class CooldownSpec(_Strict):
    """WSD cooldowns of length f·D branching off the stable run at (1 - f)·D, for each listed budget D."""

    fraction: float = Field(gt=0, lt=1)
    budgets: list[int] | Literal["all"] = "all"


class LadderSpec(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]+$")
    description: str = ""
    seed: Seed = 0
    seeds: list[Seed] | None = Field(None, min_length=1, description="training seeds (init, data order); default [seed]")
    train_text: list[str] = Field(min_length=1, description="files (.txt/.txt.gz), relative to the spec")
    heldout_text: list[str] = Field(default_factory=list, description="never trained on; recorded in the manifest")
    vocab_size: int = Field(1024, ge=260)
    max_train_chars: int | None = Field(None, ge=1000, description="use only the first chars of the training text")
    sequence_length: int = Field(128, ge=8)
    batch_size: int = Field(32, ge=1)
    sizes: list[SizeSpec] = Field(min_length=1)
    budgets: list[int] = Field(min_length=1, description="token budgets D, each saved as a checkpoint")
    schedules: list[Literal["cosine", "wsd"]] = Field(default_factory=lambda: ["cosine", "wsd"])
    wsd_cooldown_fraction: float = Field(0.2, gt=0, lt=1, description="the one cooldown when `cooldowns` is unset")
    cooldowns: list[CooldownSpec] | None = Field(
        None, min_length=1, description="cooldown factorial; when set, the stable run is saved at every branch point")
    cosine_budgets: list[int] | None = Field(None, min_length=1, description="budgets with a cosine run (default: all)")
    save_dtype: Literal["float32", "float16"] = Field("float32", description="dtype of the stored (scored) weights")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: cuda when available")
    optim: OptimSpec = OptimSpec()
    threads: int = Field(0, ge=0, le=4096, description="torch threads per process (0: torch's default)")
    trainer: Literal["hf", "fast"] = Field(
        "hf", description="training model: the HF Llama, or qsens' FastLlama (same weights and loss to rounding)")

    @model_validator(mode="after")
    def _known_budgets(self) -> "LadderSpec":
        known = set(self.budgets)
        listed = [("cosine_budgets", self.cosine_budgets or [])]
        listed += [(f"cooldowns[{i}].budgets", c.budgets) for i, c in enumerate(self.cooldowns or [])
                   if c.budgets != "all"]
        for where, budgets in listed:
            if set(budgets) - known:
                raise ValueError(f"{where}: {sorted(set(budgets) - known)} not in budgets {sorted(known)}")
        fractions = [c.fraction for c in self.cooldowns or []]
        if len(set(fractions)) != len(fractions):
            raise ValueError(f"cooldowns: a fraction appears twice: {fractions}")
        return self

    @property
    def factorial(self) -> bool:
        """True when the spec lists a cooldown factorial (new-style names, stable checkpoints, seeds in names)."""
        return self.cooldowns is not None

    def seeds_for(self, size: SizeSpec) -> list[int]:
        return size.seeds or self.seeds or [self.seed]

    def cooldown_plan(self) -> list[tuple[int, float]]:
        """(budget, fraction) of every WSD cooldown branch, by budget then fraction."""
        if self.cooldowns is None:
            return [(b, self.wsd_cooldown_fraction) for b in sorted(self.budgets)]
        return sorted((b, c.fraction) for c in self.cooldowns
                      for b in (self.budgets if c.budgets == "all" else c.budgets))

    def cosine_plan(self) -> list[int]:
        return sorted(self.cosine_budgets or self.budgets) if "cosine" in self.schedules else []

    def fingerprint(self, size: SizeSpec) -> str:
        """What a checkpoint of `size` depends on besides its own seed and schedule (recorded in the manifest, so
        a spec edited after training cannot silently pass old checkpoints off as new ones)."""
        import hashlib
        import json

        keys = {"train_text", "max_train_chars", "vocab_size", "sequence_length", "batch_size", "optim", "save_dtype"}
        material = self.model_dump(mode="json", include=keys) | {
            "size": size.model_dump(mode="json", include={"hidden", "layers", "heads", "mlp"})}
        return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.sequence_length

    def steps_for(self, budget: int) -> int:
        return max(1, round(budget / self.tokens_per_step))


def spec_problems(spec: LadderSpec) -> list[tuple[str, str]]:
    """(key path, what) of what the types cannot say: every budget is at least one optimizer step of
    batch_size x sequence_length tokens (a smaller one was rounded up to a step and named as if trained on its own
    D), and every size has at most MAX_PARAMS parameters (checked before anything is allocated)."""
    problems = []
    step = spec.tokens_per_step
    for i, budget in enumerate(spec.budgets):
        if budget < step:
            problems.append((f"budgets[{i}]", f"{budget:,} tokens is less than one step of batch_size x "
                                              f"sequence_length = {step:,} tokens: at least {step:,} (got {budget})"))
    for i, size in enumerate(spec.sizes):
        n = size.params(spec.vocab_size)
        if n > MAX_PARAMS:
            problems.append((f"sizes[{i}]", f"hidden {size.hidden:,}, layers {size.layers:,}, mlp {size.mlp:,} and "
                                            f"vocab_size {spec.vocab_size:,} make {n:.3g} parameters; at most "
                                            f"{MAX_PARAMS:,} (qsens.testbed.spec.MAX_PARAMS)"))
    return problems


def training_bytes(spec: LadderSpec, size: SizeSpec) -> int:
    """Memory one training run of `size` needs, estimated from the shapes: TRAIN_BYTES_PER_PARAM per parameter,
    plus float32 activations of one batch (per layer ~12 x hidden + 3 x mlp values per token, and the logits)
    counted twice for their gradients."""
    tokens = spec.batch_size * spec.sequence_length
    activations = tokens * (size.layers * (12 * size.hidden + 3 * size.mlp) + 2 * spec.vocab_size) * 4 * 2
    return TRAIN_BYTES_PER_PARAM * size.params(spec.vocab_size) + activations


def load_ladder_spec(path: str | Path) -> LadderSpec:
    """The family spec, read like a suite and strictly typed (a YAML "8" is not 8); raises
    qsens.documents.DocumentError (a ValueError) listing every problem."""
    from qsens import documents

    spec = documents.read_model(Path(path), LadderSpec, "family spec")
    problems = spec_problems(spec)
    if problems:
        raise documents.DocumentError(Path(path), "family spec", problems)
    return spec
