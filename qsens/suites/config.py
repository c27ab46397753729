"""Typed suite configuration. Every model forbids unknown keys; `qsens.suites.load` turns YAML into these
(strictly: a YAML "4" is not 4). Integers are bounded to what SQLite stores (64 bits) or what a run can afford."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from qsens.families.placement import Placement
from qsens.metrics.protocol import PRESETS, Protocol

METRIC_NAMES = ("delta_loss", "ppl_ratio", "kl", "top1_agree", "bits_per_byte")
# Metrics a suite may ask for that are not on by default (so suites that list none keep their cell keys):
# llama.cpp's --kl-divergence statistics (qsens.metrics.llamacpp_stats), stored in the `stats_json` column.
OPTIONAL_METRICS = ("llamacpp",)
INT64_MAX = 2**63 - 1  # what SQLite's INTEGER holds
MAX_BOOTSTRAP_SAMPLES = 20_000


def _not_only_dots(name: str) -> str:
    if set(name) == {"."}:
        raise ValueError(f"a name made of dots only ({name!r}) would point at a folder; use letters or digits")
    return name


# Names become folder and file names (results/<suite>/, board pages): no separators, never '.' or '..'.
Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.\-]+$", max_length=100), AfterValidator(_not_only_dots)]


def _hub_repo_id(repo_id: str) -> str:
    """A hub repo id by the hub's own rules (huggingface_hub.utils.validate_repo_id: 'name' or 'namespace/name',
    letters, digits, '-', '_', '.', no '--' or '..', at most 96 characters per part, not ending in '.git')."""
    try:
        from huggingface_hub.utils import HFValidationError, validate_repo_id
    except ImportError:  # huggingface_hub comes with transformers; without it the run could not reach the hub anyway
        return repo_id
    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise ValueError(f"not a hub repo id: {exc}") from None
    return repo_id


_BAD_REF = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]|\.\.|//|@\{|\.lock(?:/|$)|(?:^|/)\.")


def _hub_revision(revision: str) -> str:
    """A revision (branch, tag or commit) by git's ref-name rules (`git check-ref-format`), which the hub enforces:
    no '..', no leading or trailing '/', no '//', no whitespace, control characters or any of ~^:?*[\\, no '@{',
    no part starting with '.' or ending with '.lock', not '@' alone."""
    if (not revision or revision == "@" or revision.startswith("/") or revision.endswith(("/", "."))
            or _BAD_REF.search(revision)):
        raise ValueError(f"not a valid hub revision (branch, tag or commit): git's ref-name rules forbid '..', a "
                         f"leading or trailing '/', '//', whitespace, control characters and ~^:?*[\\ (got "
                         f"{revision!r})")
    return revision


HubRepo = Annotated[str, AfterValidator(_hub_repo_id)]
HubRevision = Annotated[str, Field(max_length=255), AfterValidator(_hub_revision)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CheckpointSpec(_Strict):
    """One checkpoint: a local HF folder (`path`) or a revision of the family's hub repo."""

    name: str | None = None
    path: str | None = Field(None, description="local HF folder, relative to the suite file")
    revision: HubRevision | None = Field(None, description="hub revision (branch, tag or commit) of the family's repo")
    n_params: int | None = Field(None, ge=1, le=INT64_MAX, description="non-embedding parameters N (default: the family's)")
    tokens: int | None = Field(None, ge=1, le=INT64_MAX, description="pretraining tokens D (a fit takes log D)")
    step: int | None = Field(None, ge=0, le=INT64_MAX, description="training step; D = step x family.tokens_per_step")
    schedule: str | None = None
    stage: str | None = Field(None, description="training stage, e.g. 'stable' or 'anneal' (default: from an "
                              "OLMo-2 revision name 'stage1-...')")
    placement: Placement | None = Field(None, description="device_map / max_memory of this checkpoint (default: "
                                        "the family's, else the suite's)")

    @model_validator(mode="before")
    @classmethod
    def _from_revision(cls, data):
        """D and the stage from an OLMo-style revision 'stage1-step40000-tokens84B' unless given explicitly."""
        if not isinstance(data, dict) or not isinstance(data.get("revision"), str):
            return data
        info = parse_revision(data["revision"])
        data = dict(data)
        if info.get("stage") and data.get("stage") is None:
            data["stage"] = info["stage"]
        if "tokens" in info and data.get("tokens") is None:
            if info.get("stage") not in (None, "stage1"):
                raise ValueError(f"revision {data['revision']!r} counts only the tokens of its own stage: give the "
                                 "cumulative pretraining 'tokens' explicitly")
            data["tokens"] = info["tokens"]
        return data

    @model_validator(mode="after")
    def _one_source(self) -> "CheckpointSpec":
        if (self.path is None) == (self.revision is None):
            raise ValueError("give exactly one of 'path' (local folder) or 'revision' (hub)")
        return self


class ManifestSelect(_Strict):
    schedule: list[str] | None = None
    size: list[str] | None = None
    names: list[str] | None = None


class FamilySpec(_Strict):
    name: Name
    manifest: str | None = Field(None, description="manifest.json of a family trained by `qsens family train`")
    select: ManifestSelect = ManifestSelect()
    hub: HubRepo | None = Field(None, description="HF Hub repo id, e.g. EleutherAI/pythia-70m-deduped")
    n_params: int | None = Field(None, ge=1, le=INT64_MAX, description="default non-embedding N of every checkpoint")
    tokens_per_step: int | None = Field(None, ge=1, le=INT64_MAX,
                                          description="D = step x tokens_per_step (Pythia: 2097152)")
    schedule: str | None = Field(None, description="learning-rate schedule ('cosine', 'wsd', 'linear', ...), "
                                 "never a data mix (that is a checkpoint's 'stage')")
    fit_group: str | None = Field(None, pattern=r"^[A-Za-z0-9_.\-]+$",
                                  description="families fitted together across sizes; two families of one fit "
                                  "group under different schedules are compared, paired (default: the family)")
    trust_remote_code: bool = False
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    placement: Placement | None = Field(None, description="device_map / max_memory for models that do not fit "
                                        "one device (default: the suite's)")
    checkpoints: list[CheckpointSpec] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> "FamilySpec":
        if (self.manifest is None) == (not self.checkpoints):
            raise ValueError("give either 'manifest' or a 'checkpoints' list, not both and not neither")
        if any(c.revision is not None for c in self.checkpoints) and self.hub is None:
            raise ValueError("checkpoints with 'revision' need the family's 'hub' repo id")
        for i, c in enumerate(self.checkpoints):
            if (c.n_params or self.n_params) is None:
                raise ValueError(f"checkpoints[{i}]: n_params missing (set it on the checkpoint or the family)")
            if c.tokens is None and step_of(c) is None:
                raise ValueError(f"checkpoints[{i}]: give 'tokens', or 'step' / a 'stepN' revision with tokens_per_step")
            if c.tokens is None and self.tokens_per_step is None:
                raise ValueError(f"checkpoints[{i}]: tokens derive from the step only with the family's tokens_per_step")
        return self


_REVISION = re.compile(r"(?:(?P<stage>stage\d+)(?:-[A-Za-z0-9_]+)*?-)?step(?P<step>\d+)(?:-tokens(?P<tokens>\d+)(?P<unit>[MBT]))?")
_UNIT = {"M": 10**6, "B": 10**9, "T": 10**12}


def parse_revision(revision: str) -> dict:
    """What a hub revision name says: Pythia 'step143000' -> step; OLMo 'step20000-tokens83B' -> step and
    tokens (rounded to the unit); OLMo-2 'stage1-step40000-tokens84B' -> also the stage. {} for other names."""
    match = _REVISION.fullmatch(revision or "")
    if not match:
        return {}
    out: dict = {"step": int(match["step"])}
    if match["tokens"] is not None:
        out["tokens"] = int(match["tokens"]) * _UNIT[match["unit"]]
    if match["stage"]:
        out["stage"] = revision.split("-step")[0]
    return out


def step_of(spec: CheckpointSpec) -> int | None:
    """The training step, given directly or read from a revision name ('step143000', 'step20000-tokens83B')."""
    if spec.step is not None:
        return spec.step
    return parse_revision(spec.revision or "").get("step")


class EvalSpec(_Strict):
    name: Name
    path: str | list[str] = Field(description="UTF-8 text file (.txt or .txt.gz), relative to the suite file; or "
                                          "a list of such files or a folder of them, one document each")
    preset: Literal[tuple(PRESETS)] | None = None  # type: ignore[valid-type]
    protocol: dict = Field(default_factory=dict, description="Protocol fields overriding the preset")

    def resolved_protocol(self, overrides: dict | None = None) -> Protocol:
        from qsens.metrics.protocol import resolve_protocol

        return resolve_protocol(self.preset, self.protocol if overrides is None else overrides)


class CalibrationSpec(_Strict):
    """Where calibration samples come from; how many and how long is each method's setting (e.g. GPTQ's)."""

    path: str = Field(description="the family's training text (never the eval text)")


class BootstrapSpec(_Strict):
    samples: int = Field(1000, ge=100, le=MAX_BOOTSTRAP_SAMPLES)
    confidence: float = Field(0.95, gt=0.5, lt=1.0)


class SuiteSpec(_Strict):
    name: Name
    description: str = ""
    seed: int = Field(0, ge=0, le=INT64_MAX)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    placement: Placement | None = Field(None, description="device_map / max_memory of every family's models")
    families: list[FamilySpec] = Field(min_length=1)
    quantizers: list[dict] = Field(min_length=1, description="validated per method by qsens.suites.load")
    evals: list[EvalSpec] = Field(min_length=1)
    metrics: list[Literal[METRIC_NAMES + OPTIONAL_METRICS]] = Field(default_factory=lambda: list(METRIC_NAMES))  # type: ignore[valid-type]
    bootstrap: BootstrapSpec = BootstrapSpec()
    calibration: CalibrationSpec | None = None

    @model_validator(mode="before")
    @classmethod
    def _placement_default(cls, data):
        """The suite's placement is that of every family without its own (a checkpoint's own still wins). Copied
        only when valid: a wrong one is reported once, at `placement`."""
        if not isinstance(data, dict) or data.get("placement") is None or not isinstance(data.get("families"), list):
            return data
        try:
            Placement.model_validate(data["placement"], strict=True)
        except ValueError:
            return data
        return {**data, "families": [{**f, "placement": data["placement"]}
                                     if isinstance(f, dict) and f.get("placement") is None else f
                                     for f in data["families"]]}

    @model_validator(mode="after")
    def _unique_names(self) -> "SuiteSpec":
        for what, names in (("families", [f.name for f in self.families]), ("evals", [e.name for e in self.evals])):
            dup = {n for n in names if names.count(n) > 1}
            if dup:
                raise ValueError(f"{what}: duplicate name(s) {sorted(dup)}")
        return self
