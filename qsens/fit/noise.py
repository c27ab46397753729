"""The measured noise of a fit's points, and the misfit test against it: reduced χ², its p-value, the excess SD.

Noise of one point, in log units (every law is fitted on log y):

    eval   the cell's own interval of the fitted metric (`<metric>_ci_low/_ci_high`, EVAL_CONFIDENCE; the block
           bootstrap over the scored windows, qsens.metrics.paired): SD = (hi − lo) / (2 z · y), z the normal
           quantile of the interval, the delta method for log y (`eval_sd`, stored per point in Points.noise by
           groups.to_points). It is the noise of *these* tokens. The between-document part of a two-level interval
           (qsens.metrics.docinterval) is common to every point of a fit, since one eval's documents score every
           checkpoint: it moves the whole law, not the points around it, so it is not counted here.
    seed   where the points carry several training seeds (Points.replicate): the seed-to-seed variance of log y at
           one (N, D, P), pooled over the fit's replicated (N, D, P) groups (d_pure = Σ (n_g − 1) degrees of
           freedom), less the eval variance it already contains: σ²_seed = max(0, s²_pooled − mean eval variance).
           With one seed there is nothing to measure it from: the test uses eval noise only, and `source` says so.
           Checkpoint-to-checkpoint jitter of one trajectory is then not measured noise, and counts as misfit.

The test, a lack-of-fit test in the form of a random-effects meta-regression: the points are collapsed to one
per group g = (N, D, P) (with one seed each point is its own group): ȳ_g the mean of log y over the group's
seeds, v_g = (σ²_seed + mean eval variance of its points) / n_g. Then

    Q(τ²) = min_θ Σ_g (ȳ_g − log f_θ(x_g))² / (v_g + τ²)

the law refitted by weighted least squares with the reported fit's fixed parameters and bounds (exact for the
log-linear laws; from the reported parameters for Chinchilla). Under the law, with Gaussian noise of the measured
size, Q(0) is χ² with dof = G − k (G groups, k free parameters); with an estimated seed variance (σ²_seed > 0),
Q(0) / dof is F(dof, d_pure), the classical lack-of-fit test (Draper & Smith 1998, sec. 2.1; exact when the seed
variance dominates the eval variance, conservative otherwise). A seed offset shared by a whole trajectory averages
into every group mean alike and the intercept absorbs it, so it also makes the test conservative. Reported
(`misfit_test`):

    chi2, dof, reduced_chi2 = chi2 / dof, p_value, reference ("chi2" or "F")
    tau      the excess SD beyond the measured noise, log units: the τ with Q(τ²) = dof (Paule & Mandel 1982;
             0 when Q(0) ≤ dof)
    tau_ci   its 95% Q-profile interval (Viechtbauer 2007): the τ² where Q(τ²) lies between the reference's
             2.5 and 97.5 percentiles. Q falls as τ² grows, so each end is one root; an end is 0 where Q(0) is
             already below its percentile. Exact for a log-linear law with Gaussian noise of known size.

Why the reported fit's own residuals are not used: it is unweighted and robust (soft-L1), so Σ r² / v of its
residuals is not χ² when v varies between points, and it is never below the weighted refit's Q(0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import optimize, stats

from qsens.fit.laws import Law, Points

EVAL_CONFIDENCE = 0.95  # the level of the cells' intervals: suites' default bootstrap.confidence
CONFIDENCE = 0.95  # of tau's interval


def eval_sd(value: float | None, low: float | None, high: float | None,
            confidence: float = EVAL_CONFIDENCE) -> float:
    """SD of log y from a cell's interval [low, high] of y (module doc); NaN without a usable one."""
    if value is None or low is None or high is None:
        return float("nan")
    value, low, high = float(value), float(low), float(high)
    if not (math.isfinite(value) and math.isfinite(low) and math.isfinite(high)) or value <= 0 or high < low:
        return float("nan")
    return (high - low) / (2 * stats.norm.ppf(0.5 + confidence / 2) * value)


@dataclass(frozen=True)
class Groups:
    """The points collapsed to one per (N, D, P) group (module doc).

    x: Points of shape (G,), y the geometric mean over the group's seeds, noise the RMS eval SD of its points;
    var: float64 [G], v_g; seed_var: σ²_seed (None with one seed); dof_pure: Σ (n_g − 1) over replicated groups;
    n_seeds: distinct seeds."""

    x: Points
    var: np.ndarray
    seed_var: float | None
    dof_pure: int
    n_seeds: int


def collapse(points: Points) -> Groups:
    """Group the points by (bootstrap unit, P): the unit is the fit group and (N, D), so a group holds one
    (N, D, P)'s seed replicates. Needs points.noise (finite everywhere)."""
    ev = np.asarray(points.noise, dtype=float) ** 2
    log_y = np.log(points.y)
    labels = [f"{c}|{p}" for c, p in zip(points.cluster, np.nan_to_num(points.p, nan=-1.0))]
    _, group = np.unique(labels, return_inverse=True)
    count = np.bincount(group)
    mean = np.bincount(group, weights=log_y) / count
    mean_ev = np.bincount(group, weights=ev) / count
    seeds = np.unique(points.replicate) if points.replicate is not None else np.array([""])
    replicated = count[group] > 1
    dof_pure = int(np.sum(count[count > 1] - 1))
    seed_var = None
    if len(seeds) > 1 and dof_pure > 0:
        pooled = float(np.sum((log_y - mean[group])[replicated] ** 2) / dof_pure)
        seed_var = max(0.0, pooled - float(np.mean(ev[replicated])))
    first = np.array([np.flatnonzero(group == g)[0] for g in range(len(count))])
    x = points.take(first)
    x = Points(x.n, x.d, x.p, np.exp(mean), x.cluster, x.keys, x.replicate, np.sqrt(mean_ev))
    return Groups(x, ((seed_var or 0.0) + mean_ev) / count, seed_var, dof_pure, len(seeds))


class _Weighted:
    """Q(τ²) of one law on grouped points (module doc): a weighted refit per τ²."""

    def __init__(self, law: Law, x: Points, var: np.ndarray, fixed: dict[str, float], theta: np.ndarray,
                 bounds: dict[str, tuple[float, float]]):
        self.law, self.x, self.var, self.log_y = law, x, var, np.log(x.y)
        self.free = [i for i, p in enumerate(law.params) if p not in fixed]
        self.theta = np.array(theta, dtype=float)  # the reported fit: fixed values and the nonlinear start
        if law.linear:
            X = law.design(x)
            held = [i for i in range(len(law.params)) if i not in self.free]
            self.X = X[:, self.free]
            self.offset = X[:, held] @ self.theta[held] if held else np.zeros(len(x))
        else:
            names = [law.params[i] for i in self.free]
            self.lo = np.array([bounds.get(p, (-np.inf, np.inf))[0] for p in names])
            self.hi = np.array([bounds.get(p, (-np.inf, np.inf))[1] for p in names])

    def _full(self, free: np.ndarray) -> np.ndarray:
        theta = self.theta.copy()
        theta[self.free] = free
        return theta

    def __call__(self, tau2: float) -> float:
        w = 1.0 / np.sqrt(self.var + tau2)
        if self.law.linear:
            sol, *_ = np.linalg.lstsq(self.X * w[:, None], (self.log_y - self.offset) * w, rcond=None)
            r = (self.log_y - self.offset - self.X @ sol) * w
            return float(r @ r)
        start = np.clip(self.theta[self.free], self.lo + 1e-9, self.hi - 1e-9)
        sol = optimize.least_squares(
            lambda f: (self.law.log_predict(self._full(f), self.x) - self.log_y) * w, start,
            jac=lambda f: self.law.log_jacobian(self._full(f), self.x)[:, self.free] * w[:, None],
            bounds=(self.lo, self.hi), method="trf", x_scale="jac")
        self.theta = self._full(sol.x)  # warm start for the next τ²
        return float(2 * sol.cost)


def _root(q, q0: float, target: float, max_var: float) -> float:
    """The τ² ≥ 0 with q(τ²) = target for the decreasing q (q0 = q(0)); 0 when q0 ≤ target.

    Bracket: at τ² = max_var · q0 / target every term r²/(v + τ²) of the refit at τ² = 0 is at most target/q0
    of r²/v, so q, a minimum over θ, is at most target there."""
    if q0 <= target:
        return 0.0
    hi = max(max_var, 1e-12) * q0 / target
    while q(hi) > target:  # only if a nonlinear refit missed its minimum
        hi *= 4.0
        if hi > 1e6:  # log units: an SD of 1000 is no longer an estimate
            return float("inf")
    return float(optimize.brentq(lambda t: q(t) - target, 0.0, hi, xtol=1e-14, rtol=1e-6))


def reference(dof: int, dof_pure: int, estimated: bool):
    """(name, survival function of Q, quantile of Q) of the test's reference distribution (module doc)."""
    if estimated:
        return (f"F({dof}, {dof_pure})", lambda q: float(stats.f.sf(q / dof, dof, dof_pure)),
                lambda p: float(dof * stats.f.ppf(p, dof, dof_pure)))
    return (f"chi2({dof})", lambda q: float(stats.chi2.sf(q, dof)), lambda p: float(stats.chi2.ppf(p, dof)))


def q_test(law: Law, groups: Groups, fixed: dict[str, float], theta: np.ndarray,
           bounds: dict[str, tuple[float, float]], confidence: float = CONFIDENCE) -> dict | None:
    """chi2, dof, reduced_chi2, p_value, reference, tau, tau_ci of grouped points (module doc); None when the
    groups are too few for a test (dof < 1)."""
    k = len(law.params) - len(fixed)
    dof = len(groups.var) - k
    if dof < 1:
        return None
    q = _Weighted(law, groups.x, groups.var, fixed, theta, bounds)
    chi2 = q(0.0)
    name, sf, ppf = reference(dof, groups.dof_pure, bool(groups.seed_var))
    tail = (1 - confidence) / 2
    top = float(np.max(groups.var))
    tau2 = _root(q, chi2, float(dof), top)
    low, high = _root(q, chi2, ppf(1 - tail), top), _root(q, chi2, ppf(tail), top)
    return {"chi2": chi2, "dof": dof, "reduced_chi2": chi2 / dof, "p_value": sf(chi2), "reference": name,
            "tau": math.sqrt(tau2), "tau_ci": [math.sqrt(low), math.sqrt(high)], "confidence": confidence}


def misfit_test(result) -> dict:
    """The misfit test of a fit (a qsens.fit.fitting.FitResult) against its points' measured noise, JSON-ready:
    {available, source, n_seeds, eval_sd_median, seed_sd, seed_dof, groups} and, when available, q_test's
    numbers; `why` when it is not available."""
    x = result.points
    noise = np.full(len(x), np.nan) if x.noise is None else np.asarray(x.noise, dtype=float)
    n_seeds = len(np.unique(x.replicate)) if x.replicate is not None and len(x) else 1
    out = {"available": False, "n_seeds": n_seeds,
           "source": f"eval + seed ({n_seeds} training seeds)" if n_seeds > 1 else "eval only (one training seed)",
           "eval_sd_median": float(np.nanmedian(noise)) if np.isfinite(noise).any() else None}
    missing = int(np.sum(~np.isfinite(noise) | (noise <= 0)))
    if missing:
        return {**out, "source": "not measured",
                "why": f"{missing} of {len(x)} points carry no interval of the fitted value"}
    groups = collapse(x)
    out.update(seed_sd=None if groups.seed_var is None else math.sqrt(groups.seed_var), seed_dof=groups.dof_pure,
               groups=len(groups.var))
    if n_seeds > 1 and groups.seed_var is None:
        out["source"] = f"eval only ({n_seeds} training seeds, none at the same (N, D, P))"
    test = q_test(result.law, groups, result.fixed, result.theta, result.bounds)
    if test is None:
        return {**out, "why": f"{len(groups.var)} (N, D, P) groups leave no degree of freedom for the test"}
    return {**out, "available": True, **test}
