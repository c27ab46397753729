"""Robust log-space least squares for one law, with a bootstrap over checkpoints and leave-one-out checks.

Every law is fitted on log y with `scipy.optimize.least_squares(loss="soft_l1")`: residuals are log-ratios, so a
point counts by its relative error, and the soft-L1 loss (quadratic below `f_scale`, linear above) keeps one
odd checkpoint from dragging the exponents. Each law gives its own deterministic starts (`Law.starts`: the
ordinary least-squares solution of a log-linear law, a small grid for the Chinchilla form) and bounds
(`Law.bounds`); a fit whose parameter ends at a bound is not a fit of the law but of its boundary: diagnostics
report it as degenerate.

Uncertainty: `n_boot` refits on checkpoints resampled with replacement (all points of a checkpoint, i.e. every bit
width measured on it, move together), with *expanded* percentile intervals: plain percentile intervals are too
narrow with few resampling units (here: a couple of dozen checkpoints), so the tail probability is shrunk until
its normal quantile equals sqrt(n/(n−p)) · t_{n−p} (Hesterberg 2015, "What teachers should know about the
bootstrap", sec. 5; n checkpoints, p free parameters). With 24 checkpoints and 3 parameters a 95% interval uses
the 1.3 and 98.7 percentiles. Those percentiles are then bias-corrected and accelerated (BCa; acceleration from
leave-one-checkpoint-out refits), which matters for the nonlinear Chinchilla parameters. A resample that cannot
identify the free parameters (too few distinct sizes, tokens or bit widths) is skipped and counted, never
silently fitted; with fewer than p + 3 checkpoints no interval is given (NaN), see `FitResult.interval_ok`.
Inputs are sorted canonically first, so a fit does not depend on the order of its rows.

Measured coverage (tests/fit/test_recovery.py; 1,500 seeded synthetic data sets per law, 5 sizes × 8 budgets,
100 refits): the 95% intervals hold the true value in 92-94.5% of trials for every parameter of every law. Why
these intervals and not another method: docs/fit-methods.md.

Paired draws: a bootstrap draws units from a *universe* (by default the fit's own units; the pipeline passes every
unit of the fit group and eval, see groups.py), and draw i of every fit that shares the universe and the seed picks
the same units. A unit a fit excluded (e.g. an 8-bit cell whose interval includes 0) contributes nothing to that fit
when picked, so the pairing survives exclusion. Draws that cannot identify the fit are skipped; `draw_ids` says
which draw each kept refit is, and paired statistics intersect them.

Training seeds (issue 21): where the points carry more than one training seed (`Points.replicate`; a family with
seed replicates, e.g. the micro family's seeds 0, 1, 2), a checkpoint's jitter is not its only noise: a seed's
whole trajectory can sit above another's. So each draw first resamples the seeds with replacement (whole
trajectories: the outer level), then the units (N, D) as above, and takes, for every drawn seed and every drawn
unit, that seed's points at that unit. Seeds and (N, D) are crossed (every seed trains every budget), so one unit
draw serves all drawn seeds; resampling both levels of a crossed design counts the seed-by-checkpoint interaction
twice, so the interval errs wide (McCullagh 2000, "Resampling and exchangeable arrays"). With pure seed offsets
c_s on an exact law the draws of the intercept are means of c over the drawn seeds, whose bootstrap variance is
mean((c − c̄)²) / S (tests/fit/test_seeds.py). The seed universe is that of the fit group and eval, like the units:
a fit draws the same seeds and units in draw i as its siblings; a fit of one seed only (e.g. a setting scored on
seed 0 alone) ignores the seed draw and resamples units as before, so its units stay paired. The expanded
percentiles, the jackknife (BCa) and the sandwich errors stay per unit (N, D), every seed's points of a unit
together. With one seed the draws are exactly those of the unit bootstrap alone.

Documents (issue 21): where every point was scored on the same a >= 5 documents (`Points.doc_num`/`doc_den`, from
the cells' per-window sums; e.g. WikiText-2 test by article), each draw also resamples the documents with
replacement, one draw shared by every point (one eval's documents score every checkpoint, so a hard document
moves all of them), and recomputes each point's y on them; a point whose y is then not positive leaves that draw.
The document draws come from a stream of their own, so the seed and unit draws, and the pairing of sibling fits,
are unchanged. With fewer documents (the two held-out novels) nothing is resampled: such an eval's intervals are
for those documents only (qsens.metrics.docinterval).
"""

from __future__ import annotations

import dataclasses

from dataclasses import dataclass, field

import numpy as np
from scipy import stats
from scipy.optimize import least_squares

from qsens.fit.laws import Law, Points

F_SCALE = {"delta": 0.1, "fp": 0.02}  # soft-L1 knee in log units: ~10% on Δloss, ~2% on the fp loss


def interval_percentiles(confidence: float, n_units: int, n_free: int) -> tuple[float, float]:
    """Percentiles (in %) of the expanded percentile interval (module doc); plain ones when n_units ≤ n_free."""
    tail = (1 - confidence) / 2
    if n_units <= n_free:
        return 100 * tail, 100 * (1 - tail)
    z = np.sqrt(n_units / (n_units - n_free)) * stats.t.ppf(1 - tail, n_units - n_free)
    adjusted = float(stats.norm.sf(z))
    return 100 * adjusted, 100 * (1 - adjusted)


class FitError(ValueError):
    """The data cannot support this fit (a message for the user, not a crash)."""


@dataclass
class FitResult:
    """A fitted law. theta: shape (p,) in law.params order; draws: shape (n_ok, p) bootstrap refits."""

    law: Law
    theta: np.ndarray
    draws: np.ndarray
    fixed: dict[str, float]
    r2: float
    residuals: np.ndarray  # shape (m,): log y − log prediction, in the canonical point order
    points: Points
    loo: list[dict] = field(default_factory=list)
    n_boot_failed: int = 0
    confidence: float = 0.95
    jackknife: np.ndarray | None = None  # shape (n_checkpoints, p): leave-one-checkpoint-out refits, for BCa
    se: np.ndarray | None = None  # shape (p,): sandwich standard errors (standard_errors), 0 where held
    draw_ids: np.ndarray | None = None  # shape (n_ok,): which bootstrap draw each row of draws is
    bounds: dict[str, tuple[float, float]] = field(default_factory=dict)  # free parameters' bounds, if any
    seeds: tuple[str, ...] = ()  # the training seeds the bootstrap resampled (module doc); () when one seed

    def at_bounds(self) -> list[str]:
        """Free parameters that ended at (within 1e-4 of the width of) one of their finite bounds."""
        out = []
        for name, (lo, hi) in self.bounds.items():
            v = self.theta[self.law.params.index(name)]
            tol = 1e-4 * (hi - lo if np.isfinite(hi - lo) else max(1.0, abs(v)))
            if (np.isfinite(lo) and v <= lo + tol) or (np.isfinite(hi) and v >= hi - tol):
                out.append(name)
        return out

    def percentiles(self) -> tuple[float, float]:
        """The bootstrap percentiles (in %) of this fit's intervals."""
        n_free = len(self.law.params) - len(self.fixed)
        return interval_percentiles(self.confidence, len(np.unique(self.points.cluster)), n_free)

    def interval_ok(self) -> bool:
        """Whether the bootstrap can give an interval: at least p + 3 checkpoints (with fewer, the only resamples
        that identify the fit are near-permutations of the data and the interval collapses to a point), and at
        most half of the resamples skipped."""
        n_free = len(self.law.params) - len(self.fixed)
        total = len(self.draws) + self.n_boot_failed
        return (len(np.unique(self.points.cluster)) >= n_free + 3 and len(self.draws) > 0
                and self.n_boot_failed <= total / 2)

    def params(self) -> dict[str, dict]:
        """{name: {value, se, ci_low, ci_high, fixed}} for fitted and derived parameters (expanded percentile CIs;
        se, the sandwich standard error, for fitted parameters only)."""
        point = self.law.derived(self.theta)
        boot = [self.law.derived(t) for t in self.draws]
        out = {}
        for name, value in point.items():
            values = np.array([b[name] for b in boot])
            if name in self.fixed or not np.isfinite(value):
                lo, hi = value, value  # held fixed, or a term dropped (e.g. A = 0 with one size)
            elif self.interval_ok() and np.all(np.isfinite(values)):
                jack = None if self.jackknife is None else np.array([self.law.derived(t)[name] for t in self.jackknife])
                lo, hi = np.percentile(values, bca_percentiles(self.percentiles(), values, value, jack))
            else:
                lo, hi = np.nan, np.nan
            j = self.law.params.index(name) if name in self.law.params else None
            se = None if j is None or self.se is None else float(self.se[j])  # reported maps carry none
            out[name] = {"value": value, "se": se, "ci_low": float(lo), "ci_high": float(hi),
                         "fixed": name in self.fixed}
        return out


def bca_percentiles(percentiles: tuple[float, float], draws: np.ndarray, estimate: float,
                    jackknife: np.ndarray | None) -> tuple[float, float]:
    """Bias-corrected and accelerated (BCa, Efron 1987) version of the given percentiles (in %).

    draws: shape (B,) bootstrap values; jackknife: shape (n,) leave-one-checkpoint-out values (acceleration).
    Corrects the median bias and skew of nonlinear parameters (e.g. Chinchilla's A and a), where plain
    percentiles under-cover. Falls back to the given percentiles when the correction is undefined."""
    below = np.mean(draws < estimate) + 0.5 * np.mean(draws == estimate)
    if not 0 < below < 1 or jackknife is None or not np.all(np.isfinite(jackknife)):
        return percentiles
    z0 = stats.norm.ppf(below)
    dev = jackknife.mean() - jackknife
    denom = 6 * np.sum(dev ** 2) ** 1.5
    accel = float(np.sum(dev ** 3) / denom) if denom > 0 else 0.0
    z = stats.norm.ppf(np.array(percentiles) / 100)
    with np.errstate(divide="ignore", invalid="ignore"):
        adjusted = stats.norm.cdf(z0 + (z0 + z) / (1 - accel * (z0 + z)))
    if not np.all(np.isfinite(adjusted)) or adjusted[0] >= adjusted[1]:
        return percentiles
    return tuple(float(v) for v in 100 * np.clip(adjusted, 0, 1))


def jackknife(law: Law, x: Points, fixed: dict[str, float], theta: np.ndarray,
              e_floor: float | None = None) -> np.ndarray | None:
    """Leave-one-checkpoint-out refits: shape (n_checkpoints, p); None if any refit is not identifiable."""
    start = [np.array([v for p, v in zip(law.params, theta) if p not in fixed])]
    out = []
    for c in np.unique(x.cluster):
        rest = x.take(np.flatnonzero(x.cluster != c))
        try:
            check_identifiable(law, rest, fixed)
        except FitError:
            return None
        out.append(fit_theta(law, rest, fixed, None if law.linear else start, e_floor))
    return np.array(out)


def standard_errors(law: Law, theta: np.ndarray, x: Points, fixed: dict[str, float],
                    units: np.ndarray) -> np.ndarray:
    """Cluster-robust (sandwich, CR1) standard errors of theta: shape (p,); 0 where held, NaN if singular.

    units: shape (m,), the checkpoint of each point (the cluster). This is the M-estimator's sandwich for the
    soft-L1 loss with a Gauss-Newton bread (Huber 1967); with residuals well below f_scale it is the textbook
    least-squares CR1 estimator (Cameron & Miller 2015; tested against statsmodels). A symmetric summary beside
    the bootstrap interval, e.g. for combining fits across families; the intervals do not use it (module doc)."""
    free_idx = [i for i, p in enumerate(law.params) if p not in fixed]
    out = np.zeros(len(law.params))
    _, unit = np.unique(units, return_inverse=True)
    n_units, m, k = unit.max() + 1, len(x), len(free_idx)
    if n_units <= 1 or m <= k:
        out[free_idx] = np.nan
        return out
    resid = law.log_predict(theta, x) - np.log(x.y)
    jac = law.log_jacobian(theta, x)[:, free_idx]
    # soft-L1 with z = (r / f_scale)²: the estimating equation is Σ ψ(r)·∂r/∂θ = 0 with ψ(r) = r·(1 + z)^(−1/2),
    # so the scores carry ψ(r) and the bread ψ'(r) = (1 + z)^(−3/2). The IRLS weights (1 + z)^(−1/2) in the bread
    # would understate the variance (se 15% low at residuals of half f_scale; test_fitting.py).
    z = (resid / F_SCALE[law.target]) ** 2
    try:
        bread = np.linalg.inv(jac.T @ (((1 + z) ** -1.5)[:, None] * jac))
    except np.linalg.LinAlgError:
        out[free_idx] = np.nan
        return out
    scores = np.zeros((n_units, k))
    np.add.at(scores, unit, (resid / np.sqrt(1 + z))[:, None] * jac)
    cov = bread @ (scores.T @ scores) @ bread * (n_units / (n_units - 1)) * ((m - 1) / (m - k))
    out[free_idx] = np.sqrt(np.clip(np.diag(cov), 0, None))
    return out


def canonical(x: Points) -> Points:
    """The points sorted by (cluster, N, D, P, y): a fit of any permutation of the rows is the same fit."""
    order = np.lexsort((x.y, np.nan_to_num(x.p), x.d, x.n, x.cluster))
    return x.take(order)


def check_identifiable(law: Law, x: Points, fixed: dict[str, float]) -> None:
    """Raise FitError unless x can identify the law's free parameters."""
    free = len(law.params) - len(fixed)
    need = {"points": free + 1, "token budgets": 3}
    have = {"points": len(x), "token budgets": len(np.unique(x.d))}
    if law.pooled_bits:
        need["bit widths"], have["bit widths"] = 2, len(np.unique(x.p))
    short = [f"{have[k]} {k} (needs ≥ {v})" for k, v in need.items() if have[k] < v]
    if short:
        raise FitError(f"too few points for the {law.name} law: " + ", ".join(short))
    if law.linear:
        cols = [i for i, p in enumerate(law.params) if p not in fixed]
        if np.linalg.matrix_rank(law.design(x)[:, cols]) < len(cols):
            raise FitError(f"the {law.name} law is not identifiable from these points (collinear N, D, P)")


def _expand(law: Law, free: np.ndarray, fixed: dict[str, float]) -> np.ndarray:
    it = iter(free)
    return np.array([fixed[p] if p in fixed else next(it) for p in law.params], dtype=float)


def fit_theta(law: Law, x: Points, fixed: dict[str, float], starts: list[np.ndarray] | None = None,
              e_floor: float | None = None) -> np.ndarray:
    """Robust least squares on log y; returns theta of shape (len(law.params),)."""
    log_y = np.log(x.y)
    free_names = [p for p in law.params if p not in fixed]
    box = law.bounds(x, fixed, e_floor)
    bounds = ([box.get(p, (-np.inf, np.inf))[0] for p in free_names],
              [box.get(p, (-np.inf, np.inf))[1] for p in free_names])

    free_idx = [law.params.index(p) for p in free_names]

    def residual(free: np.ndarray) -> np.ndarray:
        return law.log_predict(_expand(law, free, fixed), x) - log_y

    def jacobian(free: np.ndarray) -> np.ndarray:
        return law.log_jacobian(_expand(law, free, fixed), x)[:, free_idx]

    best = None
    for x0 in starts or law.starts(x, fixed):
        x0 = np.clip(x0, np.array(bounds[0]) + 1e-9, np.array(bounds[1]) - 1e-9)
        sol = least_squares(residual, x0, jac=jacobian, bounds=bounds, loss="soft_l1", f_scale=F_SCALE[law.target],
                            x_scale="jac", method="trf")
        if best is None or sol.cost < best.cost - 1e-12:
            best = sol
    return _expand(law, best.x, fixed)


def r_squared(law: Law, theta: np.ndarray, x: Points) -> tuple[float, np.ndarray]:
    """(R² of log y, residuals log y − log ŷ of shape (m,))."""
    resid = np.log(x.y) - law.log_predict(theta, x)
    total = np.sum((np.log(x.y) - np.log(x.y).mean()) ** 2)
    return (float(1 - np.sum(resid ** 2) / total) if total > 0 else float("nan")), resid


def resampled_seeds(x: Points, seeds: np.ndarray | None = None) -> np.ndarray:
    """The seed universe of a bootstrap (module doc, training seeds): shape (s,), sorted; one entry (or none) means
    seeds are not resampled."""
    if seeds is not None:
        return np.unique(np.asarray(seeds, dtype=str))
    return np.unique(x.replicate) if x.replicate is not None else np.array([], dtype=str)


def bootstrap(law: Law, x: Points, fixed: dict[str, float], theta: np.ndarray, n_boot: int,
              seed: int, universe: np.ndarray | None = None, e_floor: float | None = None,
              seeds: np.ndarray | None = None) -> tuple[np.ndarray, int, np.ndarray]:
    """Refits on units resampled with replacement: (draws of shape (n_ok, p), number skipped, draw ids (n_ok,)).

    Draw b picks len(universe) units from the sorted universe (default: x's own units) with `default_rng(seed)`;
    every fit with the same universe and seed sees the same picks (module doc: paired draws). With more than one
    training seed in `seeds` (default: x's own replicates), draw b first picks len(seeds) seeds, then the units,
    and takes every drawn seed's points at every drawn unit (module doc: training seeds)."""
    universe = np.unique(x.cluster) if universe is None else np.asarray(universe)
    seed_universe = resampled_seeds(x, seeds)
    own = set() if x.replicate is None else set(np.unique(x.replicate)) & set(seed_universe)
    by_seed = len(seed_universe) > 1 and len(own) > 1  # else: the unit bootstrap alone (its seed draw is ignored)
    members = [np.flatnonzero(x.cluster == c) for c in universe]
    if by_seed:
        members_of = [[np.flatnonzero((x.cluster == c) & (x.replicate == s)) for c in universe]
                      for s in seed_universe]
    rng = np.random.default_rng(seed)
    # documents (module doc) from a stream of their own, so the unit and seed draws stay those of a fit without them
    doc_rng = np.random.default_rng([seed, DOCUMENT_STREAM]) if x.doc_num is not None else None
    free_start = [np.array([v for p, v in zip(law.params, theta) if p not in fixed])]
    draws, ids, failed = [], [], 0
    for b in range(n_boot):
        seed_pick = rng.integers(0, len(seed_universe), len(seed_universe)) if len(seed_universe) > 1 else None
        pick = rng.integers(0, len(universe), len(universe))
        chosen = ([members_of[s][i] for s in seed_pick for i in pick] if by_seed else [members[i] for i in pick])
        sample = x.take(np.concatenate(chosen + [np.array([], dtype=int)]))
        if doc_rng is not None:
            sample = with_documents(sample, doc_rng.integers(0, x.doc_num.shape[1], x.doc_num.shape[1]))
        try:
            check_identifiable(law, sample, fixed)
            starts = free_start if not law.linear else None
            draws.append(fit_theta(law, sample, fixed, starts, e_floor))
            ids.append(b)
        except (FitError, ValueError, np.linalg.LinAlgError):
            failed += 1
    return np.array(draws).reshape(-1, len(law.params)), failed, np.array(ids, dtype=int)


DOCUMENT_STREAM = 7  # the document draws' stream: default_rng([seed, 7]), apart from the units' default_rng(seed)


def with_documents(x: Points, docs: np.ndarray) -> Points:
    """x with every point's y recomputed on the documents `docs` (int [a], drawn with replacement; the same draw for
    every point, since one eval's documents score every checkpoint); points whose recomputed y is not positive are
    dropped from this draw (a log-space fit cannot take them)."""
    y = x.doc_num[:, docs].sum(axis=1) / x.doc_den[:, docs].sum(axis=1)
    keep = np.flatnonzero(np.isfinite(y) & (y > 0))
    return dataclasses.replace(x.take(keep), y=y[keep])


def loo_largest_d(law: Law, x: Points, fixed: dict[str, float], e_floor: float | None = None) -> list[dict]:
    """For each size N, refit without its largest-D checkpoint and predict that checkpoint's points.

    One dict per held-out point: n_params, tokens, bits, observed, predicted, log_error (log obs − log pred);
    predicted/log_error are None with a `note` when the rest cannot support the fit."""
    out = []
    for n in np.unique(x.n):
        at_n = x.n == n
        held = at_n & (x.d == x.d[at_n].max())
        rest = x.take(np.flatnonzero(~held))
        try:
            check_identifiable(law, rest, fixed)
            pred = np.exp(law.log_predict(fit_theta(law, rest, fixed, None, e_floor), x.take(np.flatnonzero(held))))
            note = None
        except FitError as exc:
            pred, note = [None] * int(held.sum()), str(exc)
        for i, p in zip(np.flatnonzero(held), pred):
            out.append({"n_params": int(x.n[i]), "tokens": int(x.d[i]),
                        "bits": None if np.isnan(x.p[i]) else float(x.p[i]), "observed": float(x.y[i]),
                        "predicted": None if p is None else float(p),
                        "log_error": None if p is None else float(np.log(x.y[i]) - np.log(p)), "note": note})
    return out


def fit_law(law: Law, x: Points, n_boot: int = 1000, seed: int = 0, loo: bool = True,
            confidence: float = 0.95, universe: np.ndarray | None = None, e_floor: float | None = None,
            seeds: np.ndarray | None = None) -> FitResult:
    """Fit law to x (y > 0) with bootstrap CIs and LOO errors. Raises FitError when x is too small.
    universe: the bootstrap units to draw from (module doc); e_floor: the entropy floor of E (Law.bounds);
    seeds: the training seeds to draw from (module doc: training seeds; default x's own replicates)."""
    if np.any(~np.isfinite(x.y)) or np.any(x.y <= 0):
        raise ValueError("fit_law needs finite, positive y; exclude the other points first")
    x = canonical(x)
    fixed = law.fixed_params(x)
    check_identifiable(law, x, fixed)
    theta = fit_theta(law, x, fixed, None, e_floor)
    r2, resid = r_squared(law, theta, x)
    draws, failed, ids = bootstrap(law, x, fixed, theta, n_boot, seed, universe, e_floor, seeds)
    own = set() if x.replicate is None else set(np.unique(x.replicate)) & set(resampled_seeds(x, seeds))
    return FitResult(law, theta, draws, fixed, r2, resid, x, loo_largest_d(law, x, fixed, e_floor) if loo else [],
                     failed, confidence, jackknife(law, x, fixed, theta, e_floor) if n_boot else None,
                     standard_errors(law, theta, x, fixed, x.cluster), ids, law.bounds(x, fixed, e_floor),
                     tuple(sorted(own)) if len(own) > 1 else ())
