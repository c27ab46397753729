"""Cells whose Δ is within the resolution floor: flagged `unresolved`, left out of fits and findings, counted.

A cell is unresolved when its Δloss cannot be told from the floor on the same tokens: when the checkpoint and
eval have a floor cell (method `cast` with `scope: linears`, dtype float16: the selected Linear weights rounded to
fp16 and back, `qsens.quantizers.cast`; the floor of quantizers that touch Linear weights only), when the paired
95% interval of Δ(cell) - Δ(floor) includes 0 (`qsens.metrics.compare.paired_difference`); without a floor cell,
when the cell's own 95% interval of Δloss includes 0 (the floor is then statistical only, and `floor` says so).
No `cast` cell is ever fitted: the floor is the floor, and a `scope: all` cast row measures the dtype of every
parameter, not a quantizer (it is not the floor of Linear-only quantizers, so it is never compared against).
"""

from __future__ import annotations

import json

from qsens.metrics.compare import paired_difference

FLOOR_METHOD = "cast"
FLOOR_SETTINGS = {"scope": "linears", "dtype": "float16"}
FLOOR_LABEL = "cast-float16-linears"  # qsens.quantizers.cast.Settings(scope="linears").label()


def is_floor(c: dict) -> bool:
    """Whether cell `c` is a resolution floor: method cast, scope linears, dtype float16 (from settings_json when
    the cell has it, else from its quantizer label)."""
    if c.get("method") != FLOOR_METHOD:
        return False
    raw = c.get("settings_json")
    if raw:
        settings = json.loads(raw) if isinstance(raw, str) else dict(raw)
        return all(settings.get(k) == v for k, v in FLOOR_SETTINGS.items())
    return c.get("quantizer") == FLOOR_LABEL


def _floor_key(c: dict) -> tuple:
    return c.get("checkpoint"), c.get("family"), c.get("eval"), c.get("tokens_digest")


def mark_unresolved(cells: list[dict], samples: int = 1000, seed: int = 0) -> list[dict]:
    """Copies of `cells` with `unresolved` (bool) and `floor` (what the cell was compared with); floor cells
    get unresolved None."""
    floors = {_floor_key(c): c for c in cells if is_floor(c)}
    out = []
    for c in cells:
        if c.get("method") == FLOOR_METHOD:
            out.append({**c, "unresolved": None, "floor": "is the floor" if is_floor(c) else "a cast row, not fitted"})
            continue
        floor = floors.get(_floor_key(c))
        if floor is not None and c.get("window_sums") and floor.get("window_sums"):
            d = paired_difference(c, floor, "delta_loss", samples=samples, seed=seed)
            out.append({**c, "unresolved": bool(d["ci_low"] <= 0 <= d["ci_high"]),
                        "floor": f"paired vs {floor.get('quantizer') or FLOOR_LABEL}"})
            continue
        lo, hi = c.get("delta_loss_ci_low"), c.get("delta_loss_ci_high")
        out.append({**c, "unresolved": bool(lo is not None and lo <= 0 <= hi), "floor": "own interval includes 0"})
    return out


def for_fits(cells: list[dict], samples: int = 1000, seed: int = 0) -> tuple[list[dict], dict]:
    """(the cells to hand to the fits: every non-cast cell, marked by `mark_unresolved`, the same counts as
    `resolved_only`). Unresolved cells stay in: the degradation fits exclude them with a reason
    (qsens.fit.groups.UNRESOLVED), and the fp-loss fit, which no quantizer's Δ concerns, keeps every checkpoint."""
    marked = mark_unresolved(cells, samples, seed)
    return [c for c in marked if c.get("method") != FLOOR_METHOD], _counts(marked)


def _counts(marked: list[dict]) -> dict:
    gone = [c for c in marked if c["unresolved"]]
    by_bits: dict = {}
    for c in gone:
        by_bits[c.get("bits")] = by_bits.get(c.get("bits"), 0) + 1
    return {"unresolved": len(gone), "floor_cells": sum(c["unresolved"] is None for c in marked),
            "by_bits": dict(sorted(by_bits.items(), key=lambda kv: str(kv[0])))}


def resolved_only(cells: list[dict], samples: int = 1000, seed: int = 0) -> tuple[list[dict], dict]:
    """(cells to fit and count: resolved, no cast cells), {"unresolved": n, "floor_cells": n (every cast cell),
    "by_bits": {...}}."""
    marked = mark_unresolved(cells, samples, seed)
    return [c for c in marked if c["unresolved"] is False], _counts(marked)
