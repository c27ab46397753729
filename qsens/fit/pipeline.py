"""Fit every law to every group of cells, predict D* per (N, bits), and compare schedules.

`fit_cells(cells, metric)` returns one record per (law, group): the row stored in the `fits` table (see
`qsens.fit.store`), with status "ok" or "insufficient" (and a message saying what is missing).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np

from qsens.fit import groups
from qsens.fit.fitting import FitError, FitResult, fit_law
from qsens.fit.laws import CHINCHILLA, DELTA_LAWS, Law, d_star

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
    """The bootstrap seed of a fit: the user's seed mixed with (family, schedule, eval). The fp-loss fit and the
    degradation fits of one family share it (their draws pair up for D*); two schedules get independent draws."""
    blob = json.dumps([seed, group.family, group.schedule, group.eval]).encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:8], "little")


def fit_group(law: Law, group: groups.GroupKey, cells: list[dict], metric: str, n_boot: int,
              seed: int) -> Fitted:
    """Fit one law to one group of cells; never raises for too little data (status 'insufficient')."""
    points, excluded, inputs = groups.to_points(cells, metric, with_bits=law.target == "delta")
    record = {
        "key": fit_key(law.name, group, metric, inputs), "law": law.name, "formula": law.formula,
        "metric": metric, **group.as_dict(),
        "quantizer": _quantizer_label(cells, law.pooled_bits) if law.target == "delta" else None,
        "n_points": len(points), "n_excluded": len(excluded), "excluded": excluded,
        "inputs": sorted(k for k, _ in inputs), "n_boot": n_boot, "seed": seed,
    }
    try:
        result = fit_law(law, points, n_boot=n_boot, seed=family_seed(seed, group))
    except FitError as exc:
        note = f" ({len(excluded)} excluded: {excluded[0]['reason']})" if excluded else ""
        return Fitted({**record, "status": "insufficient", "message": str(exc) + note}, None)
    draws = result.draws[:MAX_STORED_DRAWS]
    residuals = [{"checkpoint": str(c).split("/", 1)[-1], "n_params": int(n), "tokens": int(d),
                  "bits": None if np.isnan(p) else float(p), "log_residual": float(r)}
                 for c, n, d, p, r in zip(result.points.cluster, result.points.n, result.points.d,
                                          result.points.p, result.residuals)]
    fixed = {k: (None if not np.isfinite(v) else v) for k, v in result.fixed.items()}
    message = f"held fixed (not identifiable here): {fixed}" if fixed else None
    return Fitted({**record, "status": "ok", "message": message, "params": result.params(), "r2": result.r2,
                   "residuals": residuals, "loo": result.loo, "n_boot_failed": result.n_boot_failed,
                   "draws": {"params": list(law.params), "values": draws.tolist()}}, result)


def _verdict(dstar: float, max_tokens: int) -> str:
    if not np.isfinite(dstar):
        return "no minimum (ΔL does not grow with D)"
    return "within the measured range" if dstar <= max_tokens else "beyond the measured range"


def d_star_table(fp: FitResult, delta: FitResult, cells: list[dict]) -> list[dict]:
    """D* for each measured size N and bit width of a degradation fit, with a paired-bootstrap interval.

    Bootstrap draw i of the fp fit and of the degradation fit come from resamples drawn with the same seed over
    each fit's sorted checkpoints (identical when both saw the same checkpoints); a draw with no minimum counts
    as D* = +inf, so an upper bound of inf means "possibly no bottom"."""
    sizes = groups.measured_sizes(cells)
    bit_widths = sorted({int(b) for b in delta.points.p if np.isfinite(b)})
    pairs = min(len(fp.draws), len(delta.draws))
    out = []
    for n, max_tokens in sizes.items():
        for bits in bit_widths:
            value = d_star(fp.theta, delta.law, delta.theta, n, bits)
            boot = np.array([d_star(fp.draws[i], delta.law, delta.draws[i], n, bits) for i in range(pairs)])
            with np.errstate(invalid="ignore"):  # draws without a bottom are +inf
                lo, hi = (np.percentile(boot, delta.percentiles()) if pairs and fp.interval_ok()
                          and delta.interval_ok() else (np.nan, np.nan))
            out.append({"n_params": n, "bits": bits, "d_star": value, "d_star_ci_low": float(lo),
                        "d_star_ci_high": float(hi), "max_measured_tokens": max_tokens,
                        "verdict": _verdict(value, max_tokens)})
    return out


def fit_cells(cells: list[dict], metric: str = "delta_loss", n_boot: int = 1000, seed: int = 0,
              laws: tuple[Law, ...] = DELTA_LAWS) -> list[Fitted]:
    """Every law on every group: the fp-loss (Chinchilla) fits first, then the degradation laws with D*."""
    fp_fits = {g: fit_group(CHINCHILLA, g, cs, "fp_loss", n_boot, seed)
               for g, cs in groups.fp_groups(cells).items()}
    out = list(fp_fits.values())
    for law in laws:
        for g, cs in groups.delta_groups(cells, per_bits=not law.pooled_bits).items():
            fitted = fit_group(law, g, cs, metric, n_boot, seed)
            fp = fp_fits.get(groups.GroupKey(g.family, g.schedule, g.eval))
            if metric == "delta_loss" and fitted.result is not None and fp is not None and fp.result is not None:
                fitted.record["d_star"] = d_star_table(fp.result, fitted.result, cs)
                fitted.record["fp_fit_key"] = fp.record["key"]
            out.append(fitted)
    return out


def d_exponent(law: Law) -> str:
    return "gamma_D" if law.name == "kumar" else "beta"


def compare_schedules(fits: list[Fitted]) -> list[dict]:
    """The D exponent of matching degradation fits under two schedules: difference and its bootstrap interval.

    Fits match when law, eval, method, settings and bits agree and their (non-empty) schedules differ. Draw i of
    one fit minus draw i of the other (independent resamples) gives the difference's distribution; its interval
    is expanded like the fits' own, by the fit with fewer checkpoints. differs is None (unknown) when either fit
    has too few checkpoints for an interval."""
    ok = [f for f in fits if f.result is not None and f.record["schedule"] and f.result.law.target == "delta"]
    out = []
    for i, a in enumerate(ok):
        for b in ok[i + 1:]:
            ra, rb = a.record, b.record
            same = all(ra[k] == rb[k] for k in ("law", "metric", "eval", "method", "group_size", "settings", "bits"))
            if not same or ra["schedule"] == rb["schedule"]:
                continue
            name = d_exponent(a.result.law)
            j = a.result.law.params.index(name)
            both_ok = a.result.interval_ok() and b.result.interval_ok()
            m = min(len(a.result.draws), len(b.result.draws)) if both_ok else 0
            diff = a.result.draws[:m, j] - b.result.draws[:m, j]
            widest = min((a.result, b.result), key=lambda r: len(np.unique(r.points.cluster)))
            lo, hi = np.percentile(diff, widest.percentiles()) if m else (np.nan, np.nan)
            out.append({"law": ra["law"], "metric": ra["metric"], "eval": ra["eval"], "method": ra["method"],
                        "settings": ra["settings"], "bits": ra["bits"], "exponent": name,
                        "schedule_a": ra["schedule"], "family_a": ra["family"], "value_a": ra["params"][name]["value"],
                        "schedule_b": rb["schedule"], "family_b": rb["family"], "value_b": rb["params"][name]["value"],
                        "difference": ra["params"][name]["value"] - rb["params"][name]["value"],
                        "ci_low": float(lo), "ci_high": float(hi), "n_draws": m,
                        "differs": None if not m else bool(lo > 0 or hi < 0), "fit_keys": [ra["key"], rb["key"]]})
    return out

