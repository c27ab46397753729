"""YAML suite -> a resolved `Suite`: every checkpoint with its N and D, every quantizer setting, every eval text.

Nothing runs on an invalid suite: all problems are collected into one `SuiteError` that names the file, the
key path (`quantizers[2].bits`) and what is allowed.
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from pydantic import ValidationError

from qsens.families.manifest import read_manifest
from qsens.quantizers import REGISTRY, method_module
from qsens.quantizers.base import QuantSettings
from qsens.suites.config import EvalSpec, FamilySpec, SuiteSpec, step_of
from qsens.suites.protocol import Protocol

# Quantizer keys whose YAML value is a list by nature; a list anywhere else is a sweep.
_LIST_VALUED = {"skip"}


class SuiteError(ValueError):
    def __init__(self, file: Path | str, problems: list[tuple[str, str]]):
        self.file = str(file)
        self.problems = list(dict.fromkeys(problems))  # a swept entry reports its problem once
        lines = [f"{self.file}: {where or '<top>'}: {what}" for where, what in self.problems]
        super().__init__("invalid suite\n  " + "\n  ".join(lines))


@dataclass(frozen=True)
class Checkpoint:
    family: str
    name: str
    location: str  # absolute local folder, or hub repo id
    revision: str | None  # None for local folders
    n_params: int
    tokens: int
    schedule: str | None = None
    size: str | None = None
    dtype: str = "float32"
    trust_remote_code: bool = False
    stage: str | None = None  # training stage (e.g. OLMo-2 'stage1' stable vs 'stage2' anneal), a covariate
    train_seed: int | None = None  # the manifest's training seed (init and data order); None for hub checkpoints

    @property
    def is_local(self) -> bool:
        return self.revision is None


@dataclass(frozen=True)
class EvalText:
    name: str
    path: Path
    protocol: Protocol
    text_hash: str


@dataclass
class Suite:
    spec: SuiteSpec
    path: Path
    checkpoints: list[Checkpoint]
    quantizers: list[QuantSettings]
    evals: list[EvalText]
    calibration_path: Path | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.spec.name


def _loc(parts: tuple) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def _pydantic_problems(exc: ValidationError, prefix: str = "") -> list[tuple[str, str]]:
    problems = []
    for err in exc.errors():
        where = _loc(tuple(err["loc"]))
        where = f"{prefix}.{where}" if prefix and where else (prefix or where)
        what = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            what = "unknown key"
        elif "input" in err and err["type"] not in ("missing",) and not isinstance(err["input"], (dict, list)):
            what += f" (got {err['input']!r})"
        problems.append((where, what))
    return problems


def expand_quantizers(entries: list[dict]) -> list[tuple[int, dict]]:
    """Each entry's list values (except naturally list-valued keys) sweep: bits: [2, 4] -> two settings."""
    out = []
    for i, entry in enumerate(entries):
        sweep = {k: v for k, v in entry.items() if isinstance(v, list) and k not in _LIST_VALUED}
        fixed = {k: v for k, v in entry.items() if k not in sweep}
        for combo in itertools.product(*sweep.values()):
            out.append((i, {**fixed, **dict(zip(sweep, combo))}))
    return out


def _quantizers(spec: SuiteSpec) -> tuple[list[QuantSettings], list[tuple[str, str]]]:
    settings, problems = [], []
    for i, entry in expand_quantizers(spec.quantizers):
        method = entry.get("method")
        if method not in REGISTRY:
            problems.append((f"quantizers[{i}].method", f"must be one of {sorted(REGISTRY)} (got {method!r})"))
            continue
        try:
            module = method_module(method)
        except ModuleNotFoundError as exc:
            problems.append((f"quantizers[{i}].method", f"{method!r} is not available in this install: {exc}"))
            continue
        try:
            settings.append(module.Settings.model_validate(entry))
        except ValidationError as exc:
            problems += _pydantic_problems(exc, f"quantizers[{i}]")
    labels = [s.label() for s in settings]
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        problems.append(("quantizers", f"the same setting appears twice: {dup}"))
    return settings, problems


def _manifest_checkpoints(fam: FamilySpec, where: str, base: Path) -> tuple[list[Checkpoint], list]:
    path = (base / fam.manifest).resolve()
    if not path.is_file():
        return [], [(f"{where}.manifest", f"file not found: {path}")]
    try:
        manifest = read_manifest(path)
    except (ValueError, ValidationError) as exc:
        return [], [(f"{where}.manifest", f"not a valid qsens manifest ({path}): {exc}")]
    sel = fam.select
    out = []
    for c in manifest.checkpoints:
        if (sel.schedule and c.schedule not in sel.schedule) or (sel.size and c.size not in sel.size):
            continue
        if sel.names and c.name not in sel.names:
            continue
        out.append(
            Checkpoint(fam.name, c.name, str(manifest.checkpoint_dir(path, c)), None, c.n_params, c.tokens,
                       c.schedule, c.size, fam.dtype, fam.trust_remote_code, train_seed=c.seed)
        )
    if not out:
        return [], [(f"{where}.select", f"selects no checkpoint of {path}")]
    return out, []


def _family_checkpoints(fam: FamilySpec, where: str, base: Path) -> tuple[list[Checkpoint], list]:
    if fam.manifest is not None:
        return _manifest_checkpoints(fam, where, base)
    out, problems = [], []
    for j, c in enumerate(fam.checkpoints):
        tokens = c.tokens if c.tokens is not None else step_of(c) * fam.tokens_per_step
        if c.path is not None:
            location = str((base / c.path).resolve())
            if not Path(location, "config.json").is_file():
                problems.append((f"{where}.checkpoints[{j}].path", f"not an HF model folder (no config.json): {location}"))
        else:
            location = fam.hub
        name = c.name or (c.revision if c.revision else Path(c.path).name)
        out.append(
            Checkpoint(fam.name, name, location, c.revision, c.n_params or fam.n_params, tokens,
                       c.schedule or fam.schedule, None, fam.dtype, fam.trust_remote_code, c.stage)
        )
    return out, problems


def _eval_text(ev: EvalSpec, where: str, base: Path) -> tuple[EvalText | None, list]:
    path = (base / ev.path).resolve()
    if not path.is_file():
        return None, [(f"{where}.path", f"file not found: {path}")]
    try:
        protocol = ev.resolved_protocol()
    except ValidationError as exc:
        return None, _pydantic_problems(exc, f"{where}.protocol")
    return EvalText(ev.name, path, protocol, hashlib.sha256(path.read_bytes()).hexdigest()[:16]), []


def load_suite(path: str | Path) -> Suite:
    """Parse and validate a suite file; raises SuiteError listing every problem found."""
    path = Path(path)
    if not path.is_file():
        raise SuiteError(path, [("", "file not found")])
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise SuiteError(path, [("", f"not valid YAML: {exc}")]) from None
    if not isinstance(raw, dict):
        raise SuiteError(path, [("", f"must be a mapping of keys, got {type(raw).__name__}")])
    try:
        spec = SuiteSpec.model_validate(raw)
    except ValidationError as exc:
        raise SuiteError(path, _pydantic_problems(exc)) from None
    base = path.parent
    problems: list[tuple[str, str]] = []
    quantizers, q_problems = _quantizers(spec)
    problems += q_problems
    checkpoints: list[Checkpoint] = []
    for i, fam in enumerate(spec.families):
        found, p = _family_checkpoints(fam, f"families[{i}]", base)
        checkpoints += found
        problems += p
    names = [(c.family, c.name) for c in checkpoints]
    dup = sorted({f"{f}/{n}" for f, n in names if names.count((f, n)) > 1})
    if dup:
        problems.append(("families", f"checkpoint names must be unique within a family: {dup}"))
    evals: list[EvalText] = []
    for i, ev in enumerate(spec.evals):
        found, p = _eval_text(ev, f"evals[{i}]", base)
        evals += [found] if found else []
        problems += p
    calibration = None
    if spec.calibration is not None:
        calibration = (base / spec.calibration.path).resolve()
        if not calibration.is_file():
            problems.append(("calibration.path", f"file not found: {calibration}"))
    if any(getattr(q, "needs_calibration", False) for q in quantizers) and calibration is None:
        problems.append(("calibration", "required by a quantizer in this suite (e.g. gptq) but missing"))
    if problems:
        raise SuiteError(path, problems)
    return Suite(spec, path.resolve(), checkpoints, quantizers, evals, calibration)
