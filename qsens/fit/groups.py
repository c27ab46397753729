"""From stored cells to fit inputs: which cells are fitted together, and which points are excluded.

A degradation fit pools the cells of one (family, schedule, eval, method, quantizer settings other than bits);
the per-bit Ouyang form splits that group by bits as well. The full-precision fit pools one (family, schedule,
eval), one point per checkpoint.

Non-positive values: a log-space fit cannot use Δloss ≤ 0 (near-lossless cells: 8-bit, early checkpoints, where
the measured difference is noise around zero). Such points, and non-finite ones, are *excluded*, and every
excluded point is recorded (checkpoint, bits, value, reason) with the fit. No floor is substituted: a floor
would set the fitted exponent as much as the data do.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass

import numpy as np

from qsens.fit.laws import Points

GROUP_FIELDS = ("family", "schedule", "eval", "method", "group_size", "settings", "bits")
_BITS_TOKEN = re.compile(r"(^|-)w?\d+(bit)?(?=-|$)")


@dataclass(frozen=True, order=True)
class GroupKey:
    """What a fit pools over. bits is None for fits pooled across bit widths; method/settings None for fp fits."""

    family: str
    schedule: str | None
    eval: str
    method: str | None = None
    group_size: int | None = None
    settings: str | None = None
    bits: int | None = None

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


def delta_groups(cells: list[dict], per_bits: bool) -> dict[GroupKey, list[dict]]:
    """Cells grouped for a degradation fit (ok cells with N, D and bits)."""
    out: dict[GroupKey, list[dict]] = {}
    for c in cells:
        if c.get("status", "ok") != "ok" or not c.get("n_params") or not c.get("tokens") or c.get("bits") is None:
            continue
        key = GroupKey(c["family"], c.get("schedule"), c["eval"], c.get("method"), c.get("group_size"),
                       settings_without_bits(c), int(c["bits"]) if per_bits else None)
        out.setdefault(key, []).append(c)
    return dict(sorted(out.items(), key=lambda kv: kv[0].sort_key()))


def fp_groups(cells: list[dict]) -> dict[GroupKey, list[dict]]:
    """Cells grouped for the full-precision fit, one cell kept per checkpoint (fp_loss is per checkpoint × eval)."""
    out: dict[GroupKey, dict[str, dict]] = {}
    for c in sorted(cells, key=lambda c: str(c.get("key"))):
        if c.get("status", "ok") != "ok" or not c.get("n_params") or not c.get("tokens"):
            continue
        per_ckpt = out.setdefault(GroupKey(c["family"], c.get("schedule"), c["eval"]), {})
        per_ckpt.setdefault(checkpoint_id(c), c)
    return {k: list(v.values()) for k, v in sorted(out.items(), key=lambda kv: kv[0].sort_key())}


def to_points(cells: list[dict], metric: str, with_bits: bool = True
              ) -> tuple[Points, list[dict], list[tuple[str, float]]]:
    """(points with finite positive metric, excluded points, (cell key, value) inputs for the fit key).
    with_bits=False leaves P as NaN (the fp-loss fit does not depend on the quantizer).

    Points arrays have shape (m,); excluded is a list of {checkpoint, bits, value, reason}."""
    rows, excluded, inputs = [], [], []
    for c in sorted(cells, key=lambda c: (checkpoint_id(c), c.get("bits") or 0, str(c.get("key")))):
        value = c.get(metric)
        value = float("nan") if value is None else float(value)
        inputs.append((str(c.get("key")), None if math.isnan(value) else value))
        if not math.isfinite(value) or value <= 0:
            reason = "not finite" if not math.isfinite(value) else "non-positive (log-space fit)"
            excluded.append({"checkpoint": c.get("checkpoint"), "bits": c.get("bits"),
                             "value": None if math.isnan(value) else value, "reason": reason})
            continue
        rows.append(c)
    points = Points(
        n=np.array([float(c["n_params"]) for c in rows]), d=np.array([float(c["tokens"]) for c in rows]),
        p=np.array([float(c["bits"]) if with_bits and c.get("bits") is not None else np.nan for c in rows]),
        y=np.array([float(c[metric]) for c in rows]),
        cluster=np.array([checkpoint_id(c) for c in rows], dtype=str),
        keys=tuple(str(c.get("key")) for c in rows),
    )
    return points, excluded, inputs


def measured_sizes(cells: list[dict]) -> dict[int, int]:
    """{N: largest D measured at N} over the given cells."""
    out: dict[int, int] = {}
    for c in cells:
        if c.get("n_params") and c.get("tokens"):
            out[int(c["n_params"])] = max(out.get(int(c["n_params"]), 0), int(c["tokens"]))
    return dict(sorted(out.items()))
