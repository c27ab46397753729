"""From stored cells to fit inputs: which cells are fitted together, and which points are excluded.

A degradation fit pools the cells of one (fit group, schedule, eval, method, quantizer settings other than bits,
bits axis); the per-bit Ouyang form splits that group by bits as well. The full-precision fit pools one (fit group,
schedule, eval), one point per checkpoint. The fit group is the suite's `fit_group` of a family (cell column
`fit_group`), by default the family itself: several families (e.g. the Pythia sizes) in one fit group make one fit
across their sizes, and two families of one fit group under different learning-rate schedules are the families
declared comparable (their schedule comparison is paired, see pipeline.compare_schedules).

Bootstrap unit: a point's `cluster` is its fit group and (N, D): the checkpoint, and, across schedules of one fit
group (same sizes, budgets and data order), the checkpoint's twin. All fits of one (fit group, eval) resample the
same units in the same draws, so draws pair up across schedules and between the fp-loss and Δloss fits (D*).

Training seeds: a checkpoint's training seed (cell column `train_seed`, init and data order) is its `replicate`.
Seed replicates of one (N, D) share the unit, and a fit group whose cells carry more than one seed is resampled
by seed as well, whole trajectories at a time (qsens.fit.fitting: training seeds); the seeds of a (fit group, eval)
are its seed universe (`seeds`), shared by its fits like the units, so draws still pair up.

Exclusion by evidence, not sign: a cell whose Δloss interval includes 0 (`<metric>_ci_low` ≤ 0 ≤ `_ci_high`:
8-bit, early checkpoints, where the measured difference is noise around zero) carries no evidence of
degradation and is *excluded*, whatever its sign, so noise cannot set an exponent; so is a non-positive or
non-finite value (a log-space fit cannot use it; cells without an interval are judged by sign alone), and so is a
cell `qsens.analysis.resolution` flagged `unresolved` (its Δ within the fp16 floor's noise). Every
excluded point is recorded (checkpoint, bits, value, reason) and counted with the fit. No floor is substituted:
a floor would set the fitted exponent as much as the data do.

Bits axis: P is the nominal bit width ("nominal") or the effective bits per weight, scales and zeros included
(`effective_bits`, "effective"; RTN 2-bit in groups of 8 with an fp16 scale and zero stores 4.25). Both are
fitted; every output names its axis.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass

import numpy as np

from qsens.fit.laws import Points
from qsens.fit.noise import eval_sd

GROUP_FIELDS = ("fit_group", "schedule", "eval", "method", "group_size", "settings", "bits", "bits_axis")
BITS_AXES = ("nominal", "effective")
_BITS_TOKEN = re.compile(r"(^|-)w?\d+(bit)?(?=-|$)")


@dataclass(frozen=True, order=True)
class GroupKey:
    """What a fit pools over. bits is None for fits pooled across bit widths; method/settings None for fp fits."""

    fit_group: str
    schedule: str | None
    eval: str
    method: str | None = None
    group_size: int | None = None
    settings: str | None = None
    bits: int | None = None
    bits_axis: str | None = None  # "nominal" or "effective" for degradation fits; None for fp fits

    def as_dict(self) -> dict:
        return {f: getattr(self, f) for f in GROUP_FIELDS}

    def sort_key(self) -> tuple:
        return tuple("" if v is None else str(v) for v in self.as_dict().values())


def settings_without_bits(cell: dict) -> str:
    """The quantizer's settings other than bits, as a stable string (settings_json, else the quantizer label)."""
    raw = cell.get("settings_json")
    if raw:
        settings = json.loads(raw) if isinstance(raw, str) else dict(raw)
        settings.pop("bits", None)
        return json.dumps(settings, sort_keys=True)
    label = str(cell.get("quantizer") or cell.get("method") or "")
    return _BITS_TOKEN.sub(lambda m: m.group(1) + "w*", label, count=1)


def checkpoint_id(cell: dict) -> str:
    return f"{cell.get('family')}/{cell.get('checkpoint')}"


def fit_group_of(cell: dict) -> str:
    """The cell's fit group: its `fit_group` column, else its family."""
    return str(cell.get("fit_group") or cell.get("family"))


def unit_id(cell: dict) -> str:
    """The bootstrap unit of a cell (module doc): fit group and (N, D)."""
    return f"{fit_group_of(cell)}/{int(cell['n_params'])}/{int(cell['tokens'])}"


def units(cells: list[dict]) -> np.ndarray:
    """Sorted unique bootstrap units of the cells: shape (u,), the universe a bootstrap draws from."""
    return np.unique(np.array([unit_id(c) for c in cells if c.get("n_params") and c.get("tokens")], dtype=str))


def replicate_id(cell: dict) -> str:
    """The training-seed replicate of a cell's checkpoint: its train_seed as a string, '' when it has none."""
    seed = cell.get("train_seed")
    return "" if seed is None else str(int(seed))


def seeds(cells: list[dict]) -> np.ndarray:
    """Sorted unique training-seed replicates of the cells: shape (s,), the seed universe a bootstrap draws from."""
    return np.unique(np.array([replicate_id(c) for c in cells if c.get("n_params") and c.get("tokens")], dtype=str))


def family_label(cells: list[dict]) -> str:
    """The member families of a group, comma-joined (sorted)."""
    return ",".join(sorted({str(c.get("family")) for c in cells}))


def delta_groups(cells: list[dict], per_bits: bool, bits_axis: str = "nominal") -> dict[GroupKey, list[dict]]:
    """Cells grouped for a degradation fit (ok cells with N, D and bits; effective_bits too on that axis)."""
    out: dict[GroupKey, list[dict]] = {}
    for c in cells:
        if c.get("status", "ok") != "ok" or not c.get("n_params") or not c.get("tokens") or c.get("bits") is None:
            continue
        if bits_axis == "effective" and not c.get("effective_bits"):
            continue
        key = GroupKey(fit_group_of(c), c.get("schedule"), c["eval"], c.get("method"), c.get("group_size"),
                       settings_without_bits(c), int(c["bits"]) if per_bits else None, bits_axis)
        out.setdefault(key, []).append(c)
    return dict(sorted(out.items(), key=lambda kv: kv[0].sort_key()))


def fp_groups(cells: list[dict]) -> dict[GroupKey, list[dict]]:
    """Cells grouped for the full-precision fit, one cell kept per checkpoint (fp_loss is per checkpoint × eval)."""
    out: dict[GroupKey, dict[str, dict]] = {}
    for c in sorted(cells, key=lambda c: str(c.get("key"))):
        if c.get("status", "ok") != "ok" or not c.get("n_params") or not c.get("tokens"):
            continue
        per_ckpt = out.setdefault(GroupKey(fit_group_of(c), c.get("schedule"), c["eval"]), {})
        per_ckpt.setdefault(checkpoint_id(c), c)
    return {k: list(v.values()) for k, v in sorted(out.items(), key=lambda kv: kv[0].sort_key())}


NO_EVIDENCE = "interval includes 0 (no evidence of degradation)"
UNRESOLVED = "within the resolution floor (qsens.analysis.resolution)"


def exclusion_reason(cell: dict, metric: str) -> str | None:
    """Why a cell cannot be a point of a log-space fit of `metric` (module doc), or None if it can."""
    value = cell.get(metric)
    value = float("nan") if value is None else float(value)
    if not math.isfinite(value):
        return "not finite"
    low, high = cell.get(f"{metric}_ci_low"), cell.get(f"{metric}_ci_high")
    if low is not None and high is not None and float(low) <= 0 <= float(high):
        return NO_EVIDENCE
    if value <= 0:
        return "non-positive (log-space fit)"
    return None


def to_points(cells: list[dict], metric: str, with_bits: bool = True, bits_axis: str = "nominal",
              exclude_no_evidence: bool = True, documents=None) -> tuple[Points, list[dict], list[tuple[str, float]]]:
    """(points with finite positive metric, excluded points, (cell key, value) inputs for the fit key).
    with_bits=False leaves P as NaN (the fp-loss fit does not depend on the quantizer); bits_axis picks P's column
    (`bits` or `effective_bits`); exclude_no_evidence=False keeps cells whose interval includes 0 (the old rule,
    for comparison only).

    Points arrays have shape (m,), `noise` each cell's eval SD of log y from its interval (qsens.fit.noise);
    excluded is a list of {checkpoint, bits, value, reason}. documents: `f(kept cells, metric)` -> (numerator, token
    count) per cell and document, float64 [m, a] each, or None (qsens.metrics.docinterval.cells_document_sums): with it
    the points carry `doc_num`/`doc_den` and the bootstrap resamples documents (qsens.fit.fitting)."""
    rows, excluded, inputs = [], [], []
    for c in sorted(cells, key=lambda c: (checkpoint_id(c), c.get("bits") or 0, str(c.get("key")))):
        value = c.get(metric)
        value = float("nan") if value is None else float(value)
        inputs.append((str(c.get("key")), None if math.isnan(value) else value))
        reason = exclusion_reason(c, metric)
        if reason == NO_EVIDENCE and not exclude_no_evidence and value > 0:
            reason = None
        # flagged by qsens.analysis.resolution: Δ not told from the floor's. Checked after the cell's own interval,
        # so without a floor cell (where unresolved means that interval includes 0) the reason is NO_EVIDENCE as
        # before; never for the fp-loss fit (with_bits False), which no quantizer's Δ concerns
        if not reason and with_bits and c.get("unresolved"):
            reason = UNRESOLVED
        if reason:
            excluded.append({"checkpoint": c.get("checkpoint"), "bits": c.get("bits"),
                             "value": None if math.isnan(value) else value, "reason": reason})
            continue
        rows.append(c)
    p_column = "effective_bits" if bits_axis == "effective" else "bits"
    points = Points(
        n=np.array([float(c["n_params"]) for c in rows]), d=np.array([float(c["tokens"]) for c in rows]),
        p=np.array([float(c[p_column]) if with_bits and c.get(p_column) is not None else np.nan for c in rows]),
        y=np.array([float(c[metric]) for c in rows]),
        cluster=np.array([unit_id(c) for c in rows], dtype=str),
        keys=tuple(str(c.get("key")) for c in rows),
        replicate=np.array([replicate_id(c) for c in rows], dtype=str),
        noise=np.array([eval_sd(c.get(metric), c.get(f"{metric}_ci_low"), c.get(f"{metric}_ci_high")) for c in rows],
                       dtype=float),
    )
    docs = documents(rows, metric) if documents is not None else None
    if docs is not None:
        points = dataclasses.replace(points, doc_num=docs[0], doc_den=docs[1])
    return points, excluded, inputs


def measured_sizes(cells: list[dict]) -> dict[int, int]:
    """{N: largest D measured at N} over the given cells."""
    out: dict[int, int] = {}
    for c in cells:
        if c.get("n_params") and c.get("tokens"):
            out[int(c["n_params"])] = max(out.get(int(c["n_params"]), 0), int(c["tokens"]))
    return dict(sorted(out.items()))
