"""Fit every law to every group of cells, predict D* per (N, bits), and compare schedules.

`fit_cells(cells, metric)` returns one record per (law, group): the row stored in the `fits` table (see
`qsens.store.fits`), with status "ok" or "insufficient" (and a message saying what is missing). An ok record
carries its diagnostics and verdict (`qsens.fit.diagnostics`): "fits", "does not fit" or "degenerate".
Degradation laws are fitted on both bits axes (nominal and effective bits per weight, see groups.py).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np

from qsens.fit import groups
from qsens.fit.diagnostics import diagnose
from qsens.fit.fitting import FitError, FitResult, fit_law
from qsens.fit.laws import CHINCHILLA, DELTA_LAWS, ENTROPY_FLOOR_BITS_PER_BYTE, Law, d_star

MAX_STORED_DRAWS = 200  # bootstrap refits kept with a fit, for the board's bands


@dataclass
class Fitted:
    """A record (the stored row) and, when the fit succeeded, the in-memory result behind it."""

    record: dict
    result: FitResult | None


def fit_key(law: str, group: groups.GroupKey, metric: str, inputs: list[tuple[str, float | None]]) -> str:
    """Hash of a fit's inputs: law, grouping, metric and the sorted (cell key, value) pairs."""
    blob = json.dumps({"law": law, "group": group.as_dict(), "metric": metric, "inputs": sorted(inputs,
                       key=lambda kv: kv[0])}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def _quantizer_label(cells: list[dict], pooled: bool) -> str | None:
    labels = sorted({str(c.get("quantizer")) for c in cells if c.get("quantizer")})
    if not labels:
        return None
    return groups._BITS_TOKEN.sub(lambda m: m.group(1) + "w*", labels[0], count=1) if pooled else labels[0]


def family_seed(seed: int, group: groups.GroupKey) -> int:
    """The bootstrap seed of a fit: the user's seed mixed with (fit group, eval). Every fit of one fit group and
    eval shares it and the universe of units (groups.py), so their draws pair up: the fp-loss and degradation fits
    for D*, and the two schedules of a comparison."""
    blob = json.dumps([seed, group.fit_group, group.eval]).encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:8], "little")


def entropy_floor(cells: list[dict]) -> float | None:
    """Chinchilla's lower bound on E in nats/token (laws.Chinchilla.bounds): the floor in bits/byte times the scored
    text's bytes per token; None when the cells carry no byte counts."""
    ratios = [c["n_bytes"] / c["n_tokens"] for c in cells if c.get("n_bytes") and c.get("n_tokens")]
    return ENTROPY_FLOOR_BITS_PER_BYTE * float(np.log(2)) * float(np.median(ratios)) if ratios else None


def fit_group(law: Law, group: groups.GroupKey, cells: list[dict], metric: str, n_boot: int,
              seed: int, universe: np.ndarray | None = None, seeds: np.ndarray | None = None,
              documents=None) -> Fitted:
    """Fit one law to one group of cells; never raises for too little data (status 'insufficient').
    universe, seeds: the bootstrap units and training seeds of the group's fit group and eval (default: the
    group's own; qsens.fit.fitting); documents: per-document sums of the cells, or None (groups.to_points)."""
    points, excluded, inputs = groups.to_points(cells, metric, with_bits=law.target == "delta",
                                                bits_axis=group.bits_axis or "nominal", documents=documents)
    record = {
        "key": fit_key(law.name, group, metric, inputs), "law": law.name, "formula": law.formula,
        "metric": metric, **group.as_dict(), "family": groups.family_label(cells),
        "quantizer": _quantizer_label(cells, law.pooled_bits) if law.target == "delta" else None,
        "n_points": len(points), "n_excluded": len(excluded), "excluded": excluded,
        "inputs": sorted(k for k, _ in inputs), "n_boot": n_boot, "seed": seed,
    }
    universe = groups.units(cells) if universe is None else universe
    seeds = groups.seeds(cells) if seeds is None else seeds
    try:
        result = fit_law(law, points, n_boot=n_boot, seed=family_seed(seed, group), universe=universe,
                         e_floor=entropy_floor(cells) if law.target == "fp" else None, seeds=seeds)
    except FitError as exc:
        note = f" ({len(excluded)} excluded: {excluded[0]['reason']})" if excluded else ""
        return Fitted({**record, "status": "insufficient", "verdict": "insufficient",
                       "message": str(exc) + note}, None)
    draws = result.draws[:MAX_STORED_DRAWS]
    name_of = {str(c.get("key")): str(c.get("checkpoint")) for c in cells}
    residuals = [{"checkpoint": name_of.get(k, ""), "n_params": int(n), "tokens": int(d),
                  "bits": None if np.isnan(p) else float(p), "log_residual": float(r)}
                 for k, n, d, p, r in zip(result.points.keys, result.points.n, result.points.d,
                                          result.points.p, result.residuals)]
    fixed = {k: (None if not np.isfinite(v) else v) for k, v in result.fixed.items()}
    message = f"held fixed (not identifiable here): {fixed}" if fixed else None
    diagnostics = diagnose(result)
    return Fitted({**record, "status": "ok", "message": message, "params": result.params(), "r2": result.r2,
                   "residuals": residuals, "loo": result.loo, "n_boot_failed": result.n_boot_failed,
                   "diagnostics": diagnostics, "verdict": diagnostics["verdict"],
                   "draws": {"params": list(law.params), "values": draws.tolist(),
                             "ids": result.draw_ids[:MAX_STORED_DRAWS].tolist(),
                             # the training seeds resampled as whole trajectories (absent: one seed)
                             **({"seeds": list(result.seeds)} if result.seeds else {}),
                             # documents resampled in each draw (absent: fewer than 5, kept fixed)
                             **({"documents": int(result.points.doc_num.shape[1])}
                                if result.points.doc_num is not None else {})}}, result)


def paired_draws(a: FitResult, b: FitResult) -> tuple[np.ndarray, np.ndarray]:
    """Rows of a.draws and b.draws from the same bootstrap draw (fitting.py: paired draws): two arrays (k, p)."""
    common, ia, ib = np.intersect1d(a.draw_ids, b.draw_ids, return_indices=True)
    return a.draws[ia], b.draws[ib]


def _verdict(dstar: float, max_tokens: int) -> str:
    if not np.isfinite(dstar):
        return "no minimum (ΔL does not grow with D)"
    return "within the measured range" if dstar <= max_tokens else "beyond the measured range"


def d_star_table(fp: FitResult, delta: FitResult, cells: list[dict], bits_axis: str = "nominal") -> list[dict]:
    """D* for each measured size N and bit width of a degradation fit, with a paired-bootstrap interval.

    Draws of the fp fit and of the degradation fit are paired by draw id: the same resampled units, also when
    exclusion removed a checkpoint from the degradation fit (fitting.py); a draw with no minimum counts as
    D* = +inf, so an upper bound of inf means "possibly no bottom". `bits` is the nominal width; `p` the value
    on the fit's bits axis."""
    sizes = groups.measured_sizes(cells)
    p_of = {}  # nominal bits -> P on the fit's axis
    for c in sorted(cells, key=lambda c: str(c.get("key"))):
        if c.get("bits") is not None:
            p = c.get("effective_bits") if bits_axis == "effective" else c["bits"]
            if p is not None:
                p_of.setdefault(int(c["bits"]), float(p))
    present = {float(v) for v in delta.points.p if np.isfinite(v)}
    bit_widths = sorted(b for b, v in p_of.items() if v in present)
    fp_draws, delta_draws = paired_draws(fp, delta)
    pairs = len(fp_draws)
    out = []
    for n, max_tokens in sizes.items():
        for bits in bit_widths:
            value = d_star(fp.theta, delta.law, delta.theta, n, p_of[bits])
            boot = np.array([d_star(fp_draws[i], delta.law, delta_draws[i], n, p_of[bits]) for i in range(pairs)])
            with np.errstate(invalid="ignore"):  # draws without a bottom are +inf
                lo, hi = (np.percentile(boot, delta.percentiles()) if pairs and fp.interval_ok()
                          and delta.interval_ok() else (np.nan, np.nan))
            out.append({"n_params": n, "bits": bits, "p": p_of[bits], "d_star": value, "d_star_ci_low": float(lo),
                        "d_star_ci_high": float(hi), "max_measured_tokens": max_tokens,
                        "verdict": _verdict(value, max_tokens)})
    return out


def fit_cells(cells: list[dict], metric: str = "delta_loss", n_boot: int = 1000, seed: int = 0,
              laws: tuple[Law, ...] = DELTA_LAWS, bits_axes: tuple[str, ...] = groups.BITS_AXES,
              documents=None, on_fit=None) -> list[Fitted]:
    """Every law on every group: the fp-loss (Chinchilla) fits first, then the degradation laws with D*, on each
    bits axis (the per-bit Ouyang form does not depend on the axis and is fitted once, on nominal bits).
    documents: `f(cells, metric)` giving per-document sums (qsens.metrics.docinterval.cells_document_sums), so the
    bootstrap resamples documents too; None keeps them fixed. on_fit(record), if given, is called as each fit ends
    (progress: a fit with 1,000 refits takes seconds to a minute)."""
    report = on_fit or (lambda record: None)
    members = {}  # (fit group, eval) -> its cells, across schedules
    for c in cells:
        if c.get("n_params") and c.get("tokens"):
            members.setdefault((groups.fit_group_of(c), c.get("eval")), []).append(c)
    universe = {k: groups.units(v) for k, v in members.items()}  # every bootstrap unit (N, D) of it
    seed_universe = {k: groups.seeds(v) for k, v in members.items()}  # every training seed of it
    fp_fits = {g: fit_group(CHINCHILLA, g, cs, "fp_loss", n_boot, seed, universe[(g.fit_group, g.eval)],
                            seed_universe[(g.fit_group, g.eval)], documents)
               for g, cs in groups.fp_groups(cells).items()}
    for f in fp_fits.values():
        report(f.record)
    out = list(fp_fits.values())
    for law in laws:
        for axis in bits_axes if law.pooled_bits else ("nominal",):
            for g, cs in groups.delta_groups(cells, per_bits=not law.pooled_bits, bits_axis=axis).items():
                fitted = fit_group(law, g, cs, metric, n_boot, seed, universe[(g.fit_group, g.eval)],
                                   seed_universe[(g.fit_group, g.eval)], documents)
                fp = fp_fits.get(groups.GroupKey(g.fit_group, g.schedule, g.eval))
                if metric == "delta_loss" and fitted.result is not None and fp is not None and fp.result is not None:
                    fitted.record["d_star"] = d_star_table(fp.result, fitted.result, cs, axis)
                    fitted.record["fp_fit_key"] = fp.record["key"]
                    fitted.record["fp_verdict"] = fp.record.get("verdict")  # D* is only as good as both fits
                report(fitted.record)
                out.append(fitted)
    return out


COMPARED = ("law", "metric", "fit_group", "eval", "method", "group_size", "settings", "bits", "bits_axis")


def compare_schedules(fits: list[Fitted]) -> list[dict]:
    """The D exponent of matching degradation fits under two schedules: difference and its paired interval.

    Only families declared comparable are compared: fits match when their fit group (the suite's `fit_group`),
    law, eval, method, settings, bits and bits axis agree and their (non-empty) schedules differ. Their bootstrap
    draws are paired (same N, D and data order resampled together, groups.py), so draw i of one minus draw i of the
    other gives the difference's distribution, its SD (`sd`) and its interval, expanded like the fits' own by the
    fit with fewer units. differs is None (unknown) when either fit has too few units for an interval."""
    ok = [f for f in fits if f.result is not None and f.record["schedule"] and f.result.law.target == "delta"]
    out = []
    for i, a in enumerate(ok):
        for b in ok[i + 1:]:
            ra, rb = a.record, b.record
            if not all(ra[k] == rb[k] for k in COMPARED) or ra["schedule"] == rb["schedule"]:
                continue
            name = a.result.law.d_exponent
            j = a.result.law.params.index(name)
            both_ok = a.result.interval_ok() and b.result.interval_ok()
            da, db = paired_draws(a.result, b.result) if both_ok else (np.empty((0, 1)), np.empty((0, 1)))
            m = len(da)
            diff = da[:, j] - db[:, j] if m else np.array([])
            widest = min((a.result, b.result), key=lambda r: len(np.unique(r.points.cluster)))
            lo, hi = np.percentile(diff, widest.percentiles()) if m else (np.nan, np.nan)
            out.append({"law": ra["law"], "metric": ra["metric"], "eval": ra["eval"], "method": ra["method"],
                        "settings": ra["settings"], "bits": ra["bits"], "bits_axis": ra["bits_axis"],
                        "fit_group": ra["fit_group"], "exponent": name, "paired": True,
                        "schedule_a": ra["schedule"], "family_a": ra["family"], "value_a": ra["params"][name]["value"],
                        "schedule_b": rb["schedule"], "family_b": rb["family"], "value_b": rb["params"][name]["value"],
                        "difference": ra["params"][name]["value"] - rb["params"][name]["value"],
                        "sd": float(np.std(diff, ddof=1)) if m > 1 else None,
                        "ci_low": float(lo), "ci_high": float(hi), "n_draws": m,
                        "differs": None if not m else bool(lo > 0 or hi < 0), "fit_keys": [ra["key"], rb["key"]]})
    return out
