"""YAML suite -> a resolved `Suite`: every checkpoint with its N and D, every quantizer setting, every eval text.

Nothing runs on an invalid suite: all problems are collected into one `SuiteError` that names the file, the
key path (`quantizers[2].bits`) and what is allowed. Types are strict (a YAML `"4"` is not 4, `"yes"` is not a
boolean); the file itself is read defensively (`qsens.documents`); files the suite names are checked up
front (`qsens.suites.files`); quantizer sweeps are counted before they are expanded, and bounded.
"""

from __future__ import annotations

import itertools
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from qsens.families.checkpoint import Checkpoint
from qsens.families.manifest import read_manifest
from qsens.families.placement import method_problems, relative_to
from qsens.quantizers import REGISTRY, method_module
from qsens.quantizers.base import QuantSettings
from qsens import documents
from qsens.suites import files
from qsens.suites.config import EvalSpec, FamilySpec, SuiteSpec, step_of
from qsens.documents import INT64_MAX, InputError, pydantic_problems, short
from qsens.metrics.protocol import Protocol
from qsens.metrics.text import read_text

# Quantizer keys whose YAML value is a list by nature; a list anywhere else is a sweep.
_LIST_VALUED = {"skip"}
# Quantizer settings per suite, counted before any sweep is expanded.
MAX_SETTINGS = 10_000
# What one setting may cost, checked before anything is allocated (RTN pads every row to a multiple of group_size).
QUANT_BOUNDS = {"group_size": 65_536, "blocksize": 65_536, "calibration_samples": 65_536,
                "calibration_length": 65_536, "batch_size": 4_096}
MAX_MANIFEST_BYTES = 64 << 20


class SuiteError(ValueError):
    def __init__(self, file: Path | str, problems: list[tuple[str, str]]):
        self.file = str(file)
        self.problems = list(dict.fromkeys(problems))  # a swept entry reports its problem once
        lines = [f"{self.file}: {where or '<top>'}: {what}" for where, what in self.problems]
        super().__init__("invalid suite\n  " + "\n  ".join(lines))


@dataclass(frozen=True)
class EvalText:
    name: str
    path: Path
    protocol: Protocol
    text_hash: str
    documents: tuple[Path, ...] = ()  # a list or folder of documents (qsens.suites.evaldocs); () for one file

    def read(self) -> str:
        """The text the protocol cuts into windows (documents joined by their separator)."""
        from qsens.suites.evaldocs import joined_text

        return joined_text(list(self.documents)) if self.documents else read_text(self.path)


@dataclass
class Suite:
    spec: SuiteSpec
    path: Path
    checkpoints: list[Checkpoint]
    quantizers: list[QuantSettings]
    evals: list[EvalText]
    calibration_path: Path | None = None
    warnings: list[str] = field(default_factory=list)
    # (location, revision) -> Linear module names, read when a quantizer sweeps `layers` (suites.layer_sweeps)
    structures: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.spec.name


def _sweeps(entry: dict) -> dict:
    return {k: v for k, v in entry.items() if isinstance(v, list) and k not in _LIST_VALUED}


def expand_quantizers(entries: list[dict]) -> list[tuple[int, dict]]:
    """Each entry's list values (except naturally list-valued keys) sweep: bits: [2, 4] -> two settings."""
    out = []
    for i, entry in enumerate(entries):
        sweep = _sweeps(entry)
        fixed = {k: v for k, v in entry.items() if k not in sweep}
        for combo in itertools.product(*sweep.values()):
            out.append((i, {**fixed, **dict(zip(sweep, combo))}))
    return out


def _entry_problems(i: int, entry: dict) -> tuple[type | None, list[tuple[str, str]]]:
    """The method's Settings class, or the problems that must stop this entry before it is expanded."""
    method = entry.get("method")
    if not isinstance(method, str) or method not in REGISTRY:
        return None, [(f"quantizers[{i}].method", f"must be one of {sorted(REGISTRY)} (got {short(method)})")]
    try:
        module = method_module(method)
    except ModuleNotFoundError as exc:
        return None, [(f"quantizers[{i}].method", f"{method!r} is not available in this install: {exc}")]
    fields = module.Settings.model_fields
    problems = [(f"quantizers[{i}].{k}", f"unknown key (allowed for {method}: {', '.join(sorted(fields))})")
                for k in entry if k not in fields]
    problems += [(f"quantizers[{i}].{k}", "an empty list sweeps nothing: give at least one value")
                 for k, v in _sweeps(entry).items() if not v]
    for key, bound in QUANT_BOUNDS.items():
        values = entry.get(key) if isinstance(entry.get(key), list) else [entry.get(key)]
        big = [v for v in values if isinstance(v, int) and not isinstance(v, bool) and v > bound]
        if big:
            problems.append((f"quantizers[{i}].{key}", f"at most {bound:,} (got {short(big[0])})"))
    return module.Settings, problems


def _quantizers(spec: SuiteSpec) -> tuple[list[QuantSettings], list[tuple[str, str]]]:
    settings, problems, classes = [], [], {}
    for i, entry in enumerate(spec.quantizers):
        cls, p = _entry_problems(i, entry)
        problems += p
        if cls is not None and not p:
            classes[i] = cls
    counts = {i: math.prod(len(v) for v in _sweeps(spec.quantizers[i]).values()) for i in classes}
    if sum(counts.values()) > MAX_SETTINGS:
        factors = "; ".join(f"quantizers[{i}]: " + " x ".join(f"{k} ({len(v)})" for k, v in
                            _sweeps(spec.quantizers[i]).items()) for i, n in counts.items() if n > 1)
        return [], problems + [("quantizers", f"the sweeps make {sum(counts.values()):,} settings, more than the "
                                              f"limit of {MAX_SETTINGS:,} ({factors})")]
    order = list(classes)  # entry indices in the suite, of the entries that may expand
    for j, entry in expand_quantizers([spec.quantizers[i] for i in order]):
        i = order[j]
        try:  # through JSON, strictly: a YAML "4" is not 4 and "yes" is not a boolean
            settings.append(classes[i].model_validate_json(json.dumps(entry), strict=True))
        except ValidationError as exc:
            problems += pydantic_problems(exc, f"quantizers[{i}]")
    dup = sorted(label for label, n in Counter(s.label() for s in settings).items() if n > 1)
    if dup:
        problems.append(("quantizers", f"the same setting appears twice: {short(dup, 200)}"))
    return settings, problems


def _bind_quantizers(settings: list[QuantSettings], base: Path) -> tuple[list[QuantSettings], list]:
    """Settings that name files (pre-quantized artifacts) resolved against the suite's folder and fingerprinted."""
    bound, problems = [], []
    for s in settings:
        try:
            bound.append(s.bind(base))
        except (ValueError, OSError) as exc:
            problems.append((f"quantizers ({s.label()})", str(exc)))
    return bound, problems


def _pairing_problems(settings: list[QuantSettings], checkpoints: list[Checkpoint]) -> list:
    """A setting bound to one parent checkpoint (a pre-quantized artifact) must name one of the suite's."""
    names = sorted(f"{c.family}/{c.name}" for c in checkpoints)
    return [(f"quantizers ({s.label()})", f"parent {getattr(s, 'parent', '?')!r} is none of the suite's checkpoints "
             f"(allowed: {short(names, 300)})") for s in settings
            if checkpoints and not any(s.pairs_with(c.family, c.name) for c in checkpoints)]


def _manifest_checkpoints(fam: FamilySpec, where: str, base: Path) -> tuple[list[Checkpoint], list]:
    path, problem = files.resolve(base, fam.manifest)
    if problem:
        return [], [(f"{where}.manifest", problem)]
    if not path.is_file():
        return [], [(f"{where}.manifest", f"file not found: {path}")]
    try:
        manifest = read_manifest(path, max_bytes=MAX_MANIFEST_BYTES)
    except InputError as exc:
        return [], [(f"{where}.manifest", f"{path}: {w or '<top>'}: {m}") for w, m in exc.problems]
    except ValidationError as exc:
        return [], [(f"{where}.manifest", f"{path}: {w or '<top>'}: {m}") for w, m in pydantic_problems(exc)]
    sel = fam.select
    out = []
    for c in manifest.checkpoints:
        if (sel.schedule and c.schedule not in sel.schedule) or (sel.size and c.size not in sel.size):
            continue
        if sel.names and c.name not in sel.names:
            continue
        out.append(
            Checkpoint(fam.name, c.name, str(manifest.checkpoint_dir(path, c)), None, c.n_params, c.tokens,
                       c.schedule, c.size, fam.dtype, fam.trust_remote_code, None,
                       train_seed=c.seed, fit_group=fam.fit_group, placement=relative_to(fam.placement, base))
        )
    if not out:
        return [], [(f"{where}.select", f"selects no checkpoint of {path}")]
    return out, [(f"{where}.manifest", f"{path}: checkpoint {c.name!r}: {problem}")
                 for c in out for problem in [_folder_problem(c)] if problem]


def _family_checkpoints(fam: FamilySpec, where: str, base: Path) -> tuple[list[Checkpoint], list]:
    if fam.manifest is not None:
        return _manifest_checkpoints(fam, where, base)
    out, problems = [], []
    for j, c in enumerate(fam.checkpoints):
        tokens = c.tokens if c.tokens is not None else step_of(c) * fam.tokens_per_step
        if tokens > INT64_MAX:
            problems.append((f"{where}.checkpoints[{j}]", f"step x tokens_per_step = {tokens:,} tokens does not fit "
                                                         "in 64 bits; give 'tokens' explicitly"))
        elif tokens < 1:
            problems.append((f"{where}.checkpoints[{j}]", f"step {step_of(c)} x tokens_per_step = 0 tokens: a "
                                                         "checkpoint must have seen at least 1 token (a fit takes "
                                                         "log D); leave the initialisation out"))
        if c.path is not None:
            resolved, problem = files.resolve(base, c.path)
            location = str(resolved or base / c.path)
            problem = problem or files.check_model_folder(Path(location))[1]
            if problem:
                problems.append((f"{where}.checkpoints[{j}].path", problem))
        else:
            location = fam.hub
        name = c.name or (c.revision if c.revision else Path(c.path).name)
        out.append(
            Checkpoint(fam.name, name, location, c.revision, c.n_params or fam.n_params, tokens,
                       c.schedule or fam.schedule, None, fam.dtype, fam.trust_remote_code, c.stage,
                       fit_group=fam.fit_group, placement=relative_to(c.placement or fam.placement, base))
        )
    return out, problems


def duplicate_checkpoints(checkpoints: list[Checkpoint], family_order: list[str]) -> list[tuple[str, str]]:
    """The same weights (location, revision, dtype) at the same (N, D) under two names would be computed twice and
    counted twice in a fit: refused, once per repeated family when a whole family repeats another."""
    first: dict[tuple, Checkpoint] = {}
    repeats: dict[tuple[str, str], list[tuple[Checkpoint, Checkpoint]]] = {}
    for c in checkpoints:
        same = (c.location, c.revision, c.dtype, c.n_params, c.tokens)
        if same in first:
            repeats.setdefault((first[same].family, c.family), []).append((first[same], c))
        else:
            first[same] = c
    problems = []
    for (fam_a, fam_b), pairs in repeats.items():
        where = f"families[{family_order.index(fam_b)}]"
        whole = fam_a != fam_b and len(pairs) == sum(c.family == fam_b for c in checkpoints)
        if whole:
            problems.append((where, f"family {fam_b!r} lists the same checkpoints as family {fam_a!r} (same weights, "
                                    "N and D): give each family once, its cells would be computed twice"))
            continue
        for a, b in pairs:
            problems.append((where, f"checkpoint {short(b.name)} is the same as {short(a.family + '/' + a.name)} (same weights "
                                    f"{b.location}{'@' + b.revision if b.revision else ''}, N and D): give each "
                                    "checkpoint once, its cells would be computed twice"))
    return problems


def _folder_problem(ckpt: Checkpoint) -> str | None:
    return files.check_manifest_folder(Path(ckpt.location))


def _eval_documents(ev: EvalSpec, where: str, base: Path) -> tuple[EvalText | None, list] | None:
    from qsens.suites import evaldocs

    paths, problems = evaldocs.document_files(ev.path, base)
    if paths is None and not problems:
        return None
    if problems:
        return None, [(f"{where}.{k}", m) for k, m in problems]
    text_hash, problems = evaldocs.documents_hash(paths)
    overrides, more = evaldocs.document_protocol_fields(ev.protocol)
    problems = [(f"{where}.{k}", m) for k, m in problems + more]
    if problems:
        return None, problems
    try:
        protocol = ev.resolved_protocol(overrides)
    except ValidationError as exc:
        return None, pydantic_problems(exc, f"{where}.protocol")
    where_from = (base / ev.path).resolve() if isinstance(ev.path, str) else paths[0].parent
    return EvalText(ev.name, where_from, protocol, text_hash, tuple(paths)), []


def _eval_text(ev: EvalSpec, where: str, base: Path) -> tuple[EvalText | None, list]:
    as_documents = _eval_documents(ev, where, base)
    if as_documents is not None:
        return as_documents
    path, problem = files.resolve(base, ev.path)
    if problem:
        return None, [(f"{where}.path", problem)]
    try:
        protocol = ev.resolved_protocol()
    except ValidationError as exc:
        return None, pydantic_problems(exc, f"{where}.protocol")
    text_hash, problem = files.check_text(path, protocol.max_tokens)
    if problem:
        return None, [(f"{where}.path", problem)]
    return EvalText(ev.name, path, protocol, text_hash), []


def _context_problems(checkpoints: list[Checkpoint], evals: list[EvalText], spec: SuiteSpec) -> list:
    """An eval window longer than the positions a local checkpoint's config states (hub ones are checked at run)."""
    problems, limits = [], {}
    for c in checkpoints:
        if c.is_local and c.location not in limits:
            info = files.check_model_folder(Path(c.location))[0]
            limits[c.location] = info.max_positions if info else None
    for ev in evals:
        need = ev.protocol.context_length
        if need == "model":  # resolves to each checkpoint's own maximum: it fits by definition
            continue
        for c in checkpoints:
            stated = limits.get(c.location)
            if stated is not None and need > stated[1]:
                field, limit = stated
                where = f"evals[{[e.name for e in spec.evals].index(ev.name)}].protocol.context_length"
                problems.append((where, f"{need} exceeds {field} {limit} of checkpoint {c.family}/{c.name}: "
                                        f"at most {limit}"))
                break
    return problems


def _read_suite(path: Path) -> dict:
    """The suite file as plain, checked data (raises SuiteError)."""
    try:
        raw = documents.parse_yaml(documents.read_text(path))
    except InputError as exc:
        raise SuiteError(path, exc.problems) from None
    if not isinstance(raw, dict):
        raise SuiteError(path, [("", f"must be a mapping of keys, got {type(raw).__name__}")])
    problems = documents.check_tree(raw)
    if problems:
        raise SuiteError(path, problems)
    return raw


def _device_problems(spec: SuiteSpec) -> list:
    if spec.device != "cuda":
        return []
    import torch

    if torch.cuda.is_available():
        return []
    return [("device", "'cuda' but this machine has no CUDA device (torch.cuda.is_available() is False); "
                       "allowed here: auto, cpu")]


def _layer_sweeps(spec: SuiteSpec, checkpoints: list[Checkpoint]) -> tuple[SuiteSpec, dict, list]:
    """`layers:` sweeps expanded into canonical sets (needs the checkpoints' structure, so only when present;
    without a checkpoint, the families' own problems are the ones to report)."""
    if not any(isinstance(q, dict) and "layers" in q for q in spec.quantizers):
        return spec, {}, []
    if not checkpoints:
        entries = [{k: v for k, v in q.items() if k != "layers"} if isinstance(q, dict) else q for q in spec.quantizers]
        return spec.model_copy(update={"quantizers": entries}), {}, []
    from qsens.suites import layer_sweeps

    try:
        structures = layer_sweeps.checkpoint_structures(checkpoints)
    except Exception as exc:  # noqa: BLE001 - an unreadable config is reported like any other suite problem
        return spec, {}, [("quantizers", f"layer sets need each checkpoint's config, which failed to load: {exc}")]
    entries, found = layer_sweeps.expand_entries(list(spec.quantizers), structures)
    return spec.model_copy(update={"quantizers": entries}), structures, found


def load_suite(path: str | Path) -> Suite:
    """Parse and validate a suite file; raises SuiteError listing every problem found."""
    path = Path(path)
    if not path.exists():
        raise SuiteError(path, [("", "file not found")])
    raw = _read_suite(path)
    try:  # through JSON, strictly: a YAML "4" is not 4 and "yes" is not a boolean
        spec = SuiteSpec.model_validate_json(json.dumps(raw), strict=True)
    except ValidationError as exc:
        raise SuiteError(path, pydantic_problems(exc)) from None
    base = path.parent
    problems: list[tuple[str, str]] = _device_problems(spec)
    checkpoints: list[Checkpoint] = []
    for i, fam in enumerate(spec.families):
        found, p = _family_checkpoints(fam, f"families[{i}]", base)
        checkpoints += found
        problems += p
    spec, structures, l_problems = _layer_sweeps(spec, checkpoints)
    problems += l_problems
    quantizers, q_problems = _quantizers(spec)
    quantizers, bind_problems = _bind_quantizers(quantizers, base)
    problems += q_problems + bind_problems
    problems += duplicate_checkpoints(checkpoints, [f.name for f in spec.families])
    dup = sorted(f"{f}/{n}" for (f, n), k in Counter((c.family, c.name) for c in checkpoints).items() if k > 1)
    if dup:
        problems.append(("families", f"checkpoint names must be unique within a family: {dup}"))
    evals: list[EvalText] = []
    for i, ev in enumerate(spec.evals):
        found, p = _eval_text(ev, f"evals[{i}]", base)
        evals += [found] if found else []
        problems += p
    calibration = None
    if spec.calibration is not None:
        calibration, problem = files.resolve(base, spec.calibration.path)
        problem = problem or files.check_text(calibration)[1]
        if problem:
            problems.append(("calibration.path", problem))
    problems += _context_problems(checkpoints, evals, spec)
    problems += _pairing_problems(quantizers, checkpoints) + method_problems(quantizers, checkpoints)
    if any(getattr(q, "needs_calibration", False) for q in quantizers) and calibration is None:
        problems.append(("calibration", "required by a quantizer in this suite (e.g. gptq) but missing"))
    if problems:
        raise SuiteError(path, problems)
    return Suite(spec, path.resolve(), checkpoints, quantizers, evals, calibration, structures=structures)
