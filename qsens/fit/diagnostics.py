"""Does a fitted law fit its data? Residual spread, structure of the residuals in D, local exponents, extrapolation.

Every fit gets (`diagnose`):

    residual_sd     sqrt(Σ r² / (m − k)) of the log residuals r (m points, k free parameters)
    curvature       per series (one size N and bit width P), the residuals regressed on the series-centred log D
                    and (log D)² (common coefficients across series; cluster-robust covariance over the bootstrap
                    units, Wald F-test of both being 0 with G − 1 denominator degrees of freedom, G units); the
                    curvature coefficient with its 95% interval, the p-value, and `effect`: the largest |trend +
                    curvature| the regression puts on a point, in log units
    local_exponents per series, d log y / d log D between consecutive budgets of the data (the exponent per step,
                    one doubling of D in the shipped family); a law with a D exponent β has them all near β
    loo_rms         RMS log error at the largest D of each size when that checkpoint is left out
                    (fitting.loo_largest_d), overall and per size
    at_bounds       parameters that ended at a bound (Law.bounds): the fit is then degenerate
    noise           the misfit test against the measured noise of each point (qsens.fit.noise.misfit_test): eval
                    noise from each cell's interval, plus seed noise where the points carry several training seeds
                    (`source` says which; with one seed, eval noise only); reduced χ², its p-value, and the
                    excess SD τ beyond the measured noise with its 95% interval

Verdict ("fits", "does not fit", "degenerate", or "unchecked" when the points are too few for a diagnostic),
with the reasons, from thresholds fixed here:

    misfit          with measured noise: χ² p-value < MISFIT_P (0.01) *and* excess SD τ > MAX_EXCESS_SD (0.25 log:
                    beyond their noise, a typical point missed by more than 28%); without it (a cell without an
                    interval, or too few groups for the test): residual SD > MAX_RESIDUAL_SD (0.25), the fixed
                    threshold, and the reason says the noise was not measured
    LOO             RMS > MAX_LOO_RMS (log 1.5: one budget ahead missed by more than 1.5x)
    curvature       p < CURVATURE_P (0.01) with effect > MIN_CURVATURE_EFFECT (0.1: the bend moves a point by > 10%)
    degenerate      a parameter at a bound (whatever else holds)

Why these: what the fits are used for are ratios of tens of percent (a schedule changes the D exponent by ~0.3,
a bit less moves Δloss 2-4x at fixed D) and D*, which extrapolates the law one step past the data. A law missing
a typical point by more than ~28% beyond what the measurement itself scatters, or one budget ahead by more than
1.5x, cannot carry those; a significant bend of more than 10% says the power law is the wrong shape in D, whatever
its R². A significance test alone would flag a law with 1% systematic errors on precise cells (every real law is
wrong at that precision), hence an effect size beside each p-value: a fit whose χ² is significant but whose
excess SD is at most 0.25 fits, and its excess SD says by how much it misses. Scatter that the measured noise
explains (an imprecise 8-bit series, say) is no misfit, however large its residual SD, which stays reported
(`residual_sd`) as the old fixed-threshold number. With one training seed a checkpoint's jitter around its own
trajectory is not measured noise, so it counts against the law. The LOO rule stays noise-blind: D* needs the next
budget predicted, whatever makes it unpredictable. Data drawn from the laws with 5% log-normal noise
(tests/fit/fit_synthetic.py) passes in over 97% of seeds (tests/fit/test_diagnostics.py), and a power law fitted
to a bent curve fails; the noise test's size and τ's coverage are measured in tests/fit/test_fit_noise.py.

What a verdict allows (`prediction_withheld`): D* and any curve past the measured range are shown only from a
degradation fit that fits, beside a full-precision fit that fits; every other fit says why not.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

from qsens.fit.fitting import FitResult
from qsens.fit.noise import misfit_test

MAX_RESIDUAL_SD = 0.25  # the fixed threshold, used when the noise is not measured
MAX_EXCESS_SD = 0.25
MISFIT_P = 0.01
MAX_LOO_RMS = math.log(1.5)
CURVATURE_P = 0.01
MIN_CURVATURE_EFFECT = 0.1


def _series(result: FitResult) -> np.ndarray:
    """Series index of each point (one per (N, P)): shape (m,)."""
    x = result.points
    labels = [f"{n}/{p}" for n, p in zip(x.n, np.nan_to_num(x.p, nan=-1.0))]
    return np.unique(labels, return_inverse=True)[1]


def curvature_test(result: FitResult) -> dict:
    """Residuals on series-centred log D and (log D)² (module doc): {slope, curvature, curvature_ci, p_value,
    effect, n_units}; p_value None when the test has too few units or budgets."""
    x, r = result.points, result.residuals
    series = _series(result)
    log_d = np.log(x.d)
    t, q = np.zeros(len(r)), np.zeros(len(r))
    for s in np.unique(series):
        idx = series == s
        t[idx] = log_d[idx] - log_d[idx].mean()
        q[idx] = t[idx] ** 2 - (t[idx] ** 2).mean()
    X = np.column_stack([t, q])
    _, unit = np.unique(x.cluster, return_inverse=True)
    g = int(unit.max()) + 1 if len(unit) else 0
    out = {"slope": None, "curvature": None, "curvature_ci": [None, None], "p_value": None, "effect": None,
           "n_units": g}
    if g < 4 or np.linalg.matrix_rank(X) < 2:
        return out
    xtx_inv = np.linalg.inv(X.T @ X)
    beta = xtx_inv @ X.T @ r
    e = r - X @ beta
    scores = np.zeros((g, 2))
    np.add.at(scores, unit, e[:, None] * X)
    m = len(r)
    cov = xtx_inv @ (scores.T @ scores) @ xtx_inv * (g / (g - 1)) * ((m - 1) / max(m - 2, 1))
    try:
        wald = float(beta @ np.linalg.solve(cov, beta))
    except np.linalg.LinAlgError:
        return out
    se_q = math.sqrt(max(cov[1, 1], 0.0))
    tq = stats.t.ppf(0.975, g - 1)
    out.update(slope=float(beta[0]), curvature=float(beta[1]),
               curvature_ci=[float(beta[1] - tq * se_q), float(beta[1] + tq * se_q)],
               p_value=float(stats.f.sf(wald / 2, 2, g - 1)), effect=float(np.max(np.abs(X @ beta))))
    return out


def local_exponents(result: FitResult) -> list[dict]:
    """Per series and consecutive pair of budgets: {n_params, bits, d_from, d_to, exponent} (from the data)."""
    x = result.points
    out = []
    for s in np.unique(_series(result)):
        idx = np.flatnonzero(_series(result) == s)
        by_d: dict[float, list[float]] = {}
        for i in idx:
            by_d.setdefault(float(x.d[i]), []).append(float(np.log(x.y[i])))
        ds = sorted(by_d)
        for a, b in zip(ds, ds[1:]):
            slope = (np.mean(by_d[b]) - np.mean(by_d[a])) / (np.log(b) - np.log(a))
            out.append({"n_params": int(x.n[idx[0]]), "bits": None if np.isnan(x.p[idx[0]]) else float(x.p[idx[0]]),
                        "d_from": int(a), "d_to": int(b), "exponent": float(slope)})
    return out


def loo_summary(loo: list[dict]) -> tuple[float | None, dict[int, float]]:
    """(RMS log error over every held-out point, {N: RMS at that size}); None without LOO errors."""
    per: dict[int, list[float]] = {}
    for e in loo:
        if e.get("log_error") is not None:
            per.setdefault(int(e["n_params"]), []).append(e["log_error"])
    rms = lambda v: float(math.sqrt(np.mean(np.square(v))))  # noqa: E731
    everything = [v for vs in per.values() for v in vs]
    return (rms(everything) if everything else None), {n: rms(v) for n, v in sorted(per.items())}


def residual_sd(result: FitResult) -> float | None:
    k = len(result.law.params) - len(result.fixed)
    m = len(result.residuals)
    return float(math.sqrt(np.sum(result.residuals ** 2) / (m - k))) if m > k else None


def _misfit_reason(diag: dict) -> str | None:
    """The misfit rule (module doc): against the measured noise when there is a test, else the fixed SD."""
    noise = diag.get("noise") or {}
    if noise.get("available"):
        if noise["p_value"] < MISFIT_P and noise["tau"] > MAX_EXCESS_SD:
            lo, hi = noise["tau_ci"]
            return (f"residuals exceed the measured noise ({noise['source']}): χ²/dof = {noise['reduced_chi2']:.3g} "
                    f"(p = {noise['p_value']:.1e}), excess SD {noise['tau']:.2f} [{lo:.2f}, {hi:.2f}] > "
                    f"{MAX_EXCESS_SD} (log)")
        return None
    if diag["residual_sd"] is not None and diag["residual_sd"] > MAX_RESIDUAL_SD:
        why = f": {noise['why']}" if noise.get("why") else ""
        return f"residual SD {diag['residual_sd']:.2f} > {MAX_RESIDUAL_SD} (log; noise not measured{why})"
    return None


def verdict(diag: dict) -> tuple[str, list[str]]:
    """("fits" | "does not fit" | "degenerate" | "unchecked", reasons) from a diagnostics dict (module doc)."""
    reasons = []
    if diag["at_bounds"]:
        reasons.append(f"parameter(s) at a bound: {', '.join(diag['at_bounds'])} (not identified by these data)")
    misfit = _misfit_reason(diag)
    if misfit:
        reasons.append(misfit)
    if diag["loo_rms"] is not None and diag["loo_rms"] > MAX_LOO_RMS:
        reasons.append(f"leave-largest-D-out RMS {diag['loo_rms']:.2f} > {MAX_LOO_RMS:.3f} (log 1.5)")
    c = diag["curvature"]
    if c["p_value"] is not None and c["p_value"] < CURVATURE_P and c["effect"] > MIN_CURVATURE_EFFECT:
        reasons.append(f"residuals bend in D (p = {c['p_value']:.1e}, up to {c['effect']:.2f} log)")
    if diag["at_bounds"]:
        return "degenerate", reasons
    if reasons:
        return "does not fit", reasons
    tested = (diag.get("noise") or {}).get("available") or diag["residual_sd"] is not None
    missing = [name for name, ok in (("misfit test", tested), ("curvature test", c["p_value"] is not None),
                                     ("leave-largest-D-out error", diag["loo_rms"] is not None)) if not ok]
    if missing:  # a law is not shown to fit by points too few to test it
        return "unchecked", [f"too few points for the {', '.join(missing)}"]
    return "fits", reasons


def prediction_withheld(fit: dict, fp_fit: dict | None = None, with_fp: bool = True) -> str | None:
    """Why a stored degradation fit's D* and extrapolations are not shown (module doc), or None when they are:
    its verdict and, for D* (with_fp), that of the fp-loss fit beside it (`fp_verdict`; fp_fit, the fp record,
    adds its reasons) must both be "fits"; a curve of Δ alone past the data needs only its own. Works on records
    stored before noise-aware verdicts too."""
    own = fit.get("verdict")
    if fit.get("status") != "ok" or own != "fits":
        reasons = "; ".join((fit.get("diagnostics") or {}).get("reasons") or [])
        said = "has no verdict" if not own else own if own == "does not fit" else f"is {own}"
        return f"the fit {said}" + (f" ({reasons})" if reasons else "")
    fp = fit.get("fp_verdict") if fp_fit is None else fp_fit.get("verdict")
    if with_fp and fp != "fits":
        reasons = "; ".join(((fp_fit or {}).get("diagnostics") or {}).get("reasons") or [])
        return (f"the full-precision loss fit beside it {'is ' + fp if fp else 'is missing'}"
                + (f" ({reasons})" if reasons else ""))
    return None


def diagnose(result: FitResult) -> dict:
    """Every diagnostic of a fit and its verdict (module doc), JSON-ready."""
    loo_rms, loo_per = loo_summary(result.loo)
    diag = {"residual_sd": residual_sd(result), "curvature": curvature_test(result),
            "local_exponents": local_exponents(result), "loo_rms": loo_rms,
            "loo_rms_per_size": {str(n): v for n, v in loo_per.items()}, "at_bounds": result.at_bounds(),
            "noise": misfit_test(result),
            "thresholds": {"residual_sd": MAX_RESIDUAL_SD, "excess_sd": MAX_EXCESS_SD, "misfit_p": MISFIT_P,
                           "loo_rms": MAX_LOO_RMS, "curvature_p": CURVATURE_P,
                           "curvature_effect": MIN_CURVATURE_EFFECT}}
    diag["verdict"], diag["reasons"] = verdict(diag)
    return diag
