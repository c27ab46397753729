"""The pre-registered decision rule of docs/schedule-question.md (issue 13, 20) as code: fit, intervals, gates, verdict.

Input: the points of one (quantizer, eval) after the cell filters (checkpoint gate, resolved Δ, not destroyed), each
a `Point` (size, n_params, seed, arm 'stable' | 'cooled', tokens D, delta > 0). The model, by OLS,

    log Δ_i = c_N(i) + κ·cooled_i + (β_s + δ·cooled_i)·x_i + ε_i,    x = log D − log D̄,

with one intercept per size; β_c = β_s + δ. Intervals (95%):
- primary, the seed-cluster bootstrap: per replicate, within each size, as many seeds as it has are drawn with
  replacement and each drawn seed brings its whole trajectory (both arms: the same draw serves both, so δ and κ are
  paired); a size with one seed is kept as is. Percentile interval.
- check, the per-trajectory t-interval: the model (one intercept) on each trajectory of a size with >= 2 seeds
  that has >= 2 D values in both arms; mean ± t(0.975, n − 1)·SD/√n.
Fit gates per arm (as `qsens.testbed.gates.exponent_gates`, which this layer cannot import): log Δ = c_size +
β·log D; lower vs upper half of the sorted distinct D (split by count) differ by < 0.2; leave-one-out at the
largest D predicts each size's mean log Δ over seeds with |log error| < `loo_tol`.
Verdict: decay / D / both from each interval method; 'inconclusive' unless both methods give the same verdict and
every gate passes (and no arm lost > 10% of its checkpoints to filters 2–3, when `filtered_share` is given).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

import numpy as np
from scipy import stats

D_BAR = 23.73e6  # geometric mean of the budgets 4.19M ... 134.2M
NAMES = ("beta_s", "beta_c", "delta", "kappa")
ARMS = ("stable", "cooled")
BAND = 0.2  # "⊂ [−0.2, 0.2]" and "lower end > 0.2"
DECAY_BETA_C = 0.5  # decay needs the lower end of I(β_c) > 0.5
HALVES_TOL = 0.2
LEVEL_EFFECT = math.log(1.1)  # κ's lower end above this: the cooldown raises Δ at matched D
MAX_FILTERED_SHARE = 0.10


class Point(NamedTuple):
    size: str
    n_params: int
    seed: int
    arm: str
    tokens: float
    delta: float


def as_points(rows: Iterable) -> list[Point]:
    """Points from Point, 6-sequences or mappings with Point's fields; bad arm, D or Δ is a ValueError."""
    out = []
    for i, r in enumerate(rows):
        p = Point(**r) if isinstance(r, Mapping) else Point(*r)
        if p.arm not in ARMS:
            raise ValueError(f"point {i}: arm {p.arm!r}, allowed {ARMS}")
        if not (p.tokens > 0 and p.delta > 0):
            raise ValueError(f"point {i}: tokens {p.tokens} and delta {p.delta} must both be > 0 (log Δ, log D)")
        out.append(p)
    if not out:
        raise ValueError("no points")
    return out


class Design(NamedTuple):
    """X: (n, k + 3) float64, columns [size dummies (k, sorted sizes), cooled, x, cooled·x]; y: (n,) log Δ;
    traj: (n,) int index into `trajectories` ((size, seed), sorted); sizes: the k sizes."""
    X: np.ndarray
    y: np.ndarray
    traj: np.ndarray
    trajectories: list
    sizes: list


def design(points: Sequence[Point], d_bar: float = D_BAR) -> Design:
    sizes = sorted({p.size for p in points})
    trajectories = sorted({(p.size, p.seed) for p in points})
    cooled = np.array([p.arm == "cooled" for p in points], float)
    x = np.log([p.tokens for p in points]) - math.log(d_bar)
    dummies = np.array([[p.size == s for s in sizes] for p in points], float)
    X = np.column_stack([dummies, cooled, x, cooled * x])
    y = np.log([p.delta for p in points])
    traj = np.array([trajectories.index((p.size, p.seed)) for p in points])
    return Design(X, y, traj, trajectories, sizes)


def _named(coef: np.ndarray) -> np.ndarray:
    """(..., k + 3) OLS coefficients -> (..., 4) in NAMES order (β_s, β_c = β_s + δ, δ, κ)."""
    kappa, beta_s, delta = coef[..., -3], coef[..., -2], coef[..., -1]
    return np.stack([beta_s, beta_s + delta, delta, kappa], axis=-1)


def fit(points: Sequence[Point], d_bar: float = D_BAR) -> dict:
    """OLS point estimates {β_s, β_c, δ, κ, 'c_N': {size: intercept}} (numpy lstsq)."""
    d = design(points, d_bar)
    coef = np.linalg.lstsq(d.X, d.y, rcond=None)[0]
    return dict(zip(NAMES, _named(coef).tolist())) | {"c_N": dict(zip(d.sizes, coef[: len(d.sizes)].tolist()))}


def seed_draws(d: Design, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, T) int: how often each trajectory enters each replicate. Within a size of k seeds, k draws with
    replacement (each row of a size sums to k); a one-seed size is 1 in every replicate."""
    counts = np.zeros((n_boot, len(d.trajectories)), int)
    for size in d.sizes:
        idx = [t for t, (s, _) in enumerate(d.trajectories) if s == size]
        if len(idx) == 1:
            counts[:, idx[0]] = 1
            continue
        picks = rng.integers(0, len(idx), (n_boot, len(idx)))
        counts[:, idx] = (picks[:, :, None] == np.arange(len(idx))).sum(axis=1)
    return counts


def bootstrap_coefficients(d: Design, counts: np.ndarray) -> np.ndarray:
    """(B, T) trajectory counts -> (B, 4) refits in NAMES order. OLS of the resampled data through its normal
    equations: a replicate's X'X and X'y are the count-weighted sums of each trajectory's own (T, p, p), (T, p)."""
    p = d.X.shape[1]
    gram = np.zeros((len(d.trajectories), p, p))
    rhs = np.zeros((len(d.trajectories), p))
    for t in range(len(d.trajectories)):
        rows = d.X[d.traj == t]
        gram[t], rhs[t] = rows.T @ rows, rows.T @ d.y[d.traj == t]
    g, h = np.einsum("bt,tij->bij", counts, gram), np.einsum("bt,ti->bi", counts, rhs)
    try:
        coef = np.linalg.solve(g, h[..., None])[..., 0]
    except np.linalg.LinAlgError:  # a replicate without some column's support: minimum-norm solution
        coef = np.einsum("bij,bj->bi", np.linalg.pinv(g), h)
    return _named(coef)


def bootstrap_intervals(d: Design, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """{name: (low, high)} percentile intervals of the seed-cluster bootstrap."""
    boot = bootstrap_coefficients(d, seed_draws(d, n_boot, np.random.default_rng(seed)))
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(boot, [tail, 100 - tail], axis=0)
    return {n: (float(a), float(b)) for n, a, b in zip(NAMES, lo, hi)}


def trajectory_fits(d: Design) -> np.ndarray:
    """(n, 4) per-trajectory estimates (NAMES order) of the trajectories of sizes with >= 2 seeds that have
    >= 2 distinct D in both arms; columns [1, cooled, x, cooled·x] of the trajectory alone."""
    k = len(d.sizes)
    seeds_per_size = {s: sum(ts == s for ts, _ in d.trajectories) for s in d.sizes}
    out = []
    for t, (size, _) in enumerate(d.trajectories):
        X, y = d.X[d.traj == t, k:], d.y[d.traj == t]
        arms_ok = all(len(np.unique(X[X[:, 0] == a, 1])) >= 2 for a in (0.0, 1.0))
        if seeds_per_size[size] >= 2 and arms_ok:
            X = np.column_stack([np.ones(len(y)), X])
            out.append(_named(np.linalg.lstsq(X, y, rcond=None)[0]))
    return np.array(out).reshape(-1, len(NAMES))


def t_intervals(d: Design, level: float = 0.95) -> dict | None:
    """{name: (low, high), 'n': trajectories} from trajectory_fits; None with fewer than 2 trajectories."""
    est = trajectory_fits(d)
    n = len(est)
    if n < 2:
        return None
    half = stats.t.ppf(0.5 + level / 2, n - 1) * est.std(axis=0, ddof=1) / math.sqrt(n)
    mean = est.mean(axis=0)
    return {nm: (float(m - h), float(m + h)) for nm, m, h in zip(NAMES, mean, half)} | {"n": n}


def _slope_fit(sizes: list, logd: np.ndarray, y: np.ndarray) -> tuple[float, dict]:
    """OLS of y on size dummies + log D; (n,) each. Returns (β, {size: intercept})."""
    levels = sorted(set(sizes))
    X = np.column_stack([[float(s == lv) for s in sizes] for lv in levels] + [logd])
    coef = np.linalg.lstsq(X, y, rcond=None)[0]
    return float(coef[-1]), dict(zip(levels, coef[:-1].tolist()))


def arm_gates(points: Sequence[Point], loo_tol: float = 0.2, halves_tol: float = HALVES_TOL) -> dict:
    """Fit gates of one arm's points: {'pass', 'halves_pass', 'loo_pass', 'beta_lower_half', 'beta_upper_half',
    'loo_log_error': {size: predicted − observed}}; fewer than 4 distinct D fails with a 'reason'."""
    ds = sorted({p.tokens for p in points})
    if len(ds) < 4:
        return {"pass": False, "reason": f"fewer than 4 distinct D values ({len(ds)})"}
    sizes = [p.size for p in points]
    logd, y = np.log([p.tokens for p in points]), np.log([p.delta for p in points])
    tok = np.array([p.tokens for p in points])

    def sub(mask):
        return _slope_fit([s for s, m in zip(sizes, mask) if m], logd[mask], y[mask])

    half = len(ds) // 2
    lo, hi = sub(np.isin(tok, ds[:half]))[0], sub(np.isin(tok, ds[len(ds) - half:]))[0]
    beta, icpt = sub(tok != ds[-1])
    errors = {}
    for size in sorted({s for s, t in zip(sizes, tok) if t == ds[-1]} & set(icpt)):
        observed = y[(tok == ds[-1]) & (np.array(sizes) == size)].mean()
        errors[size] = float(icpt[size] + beta * math.log(ds[-1]) - observed)
    halves_pass = abs(hi - lo) < halves_tol
    loo_pass = bool(errors) and max(abs(e) for e in errors.values()) < loo_tol
    return {"pass": halves_pass and loo_pass, "halves_pass": halves_pass, "loo_pass": loo_pass,
            "beta_lower_half": lo, "beta_upper_half": hi, "loo_log_error": errors}


def classify(iv: Mapping[str, tuple[float, float]]) -> str:
    """'decay' | 'D' | 'both' | 'inconclusive' from intervals {beta_s, beta_c, delta: (low, high)}."""
    bs, bc, dl = iv["beta_s"], iv["beta_c"], iv["delta"]
    if bs[0] >= -BAND and bs[1] <= BAND and bc[0] > DECAY_BETA_C:
        return "decay"
    if bs[0] > BAND and dl[0] >= -BAND and dl[1] <= BAND:
        return "D"
    if bs[0] > BAND and dl[0] > BAND:
        return "both"
    return "inconclusive"


def decide(rows: Iterable, d_bar: float = D_BAR, n_boot: int = 2000, loo_tol: float = 0.2, seed: int = 0,
           filtered_share: Mapping[str, float] | None = None, halves_tol: float = HALVES_TOL) -> dict:
    """The rule on one (quantizer, eval). filtered_share: {arm: share of its checkpoints removed by filters 2–3};
    loo_tol, halves_tol: the fit gates' tolerances (0.2 and 0.2 in the original rule).
    Returns {'verdict', 'reason' (None when decisive), 'estimate', 'bootstrap', 't_check', 'verdict_bootstrap',
    'verdict_t', 'gates': {arm: arm_gates}, 'level_effect': bool (bootstrap κ low > log 1.1)}."""
    points = as_points(rows)
    d = design(points, d_bar)
    boot, tcheck = bootstrap_intervals(d, n_boot, seed), t_intervals(d)
    v_boot = classify(boot)
    v_t = classify(tcheck) if tcheck else "inconclusive"
    gates = {arm: arm_gates([p for p in points if p.arm == arm], loo_tol, halves_tol) for arm in ARMS}
    unresolved = [a for a, s in (filtered_share or {}).items() if s > MAX_FILTERED_SHARE]
    if unresolved:
        verdict, reason = "inconclusive", f"Δ not resolved ({', '.join(sorted(unresolved))})"
    elif not all(g["pass"] for g in gates.values()):
        verdict, reason = "inconclusive", "power law not adequate"
    elif tcheck is None:
        verdict, reason = "inconclusive", "t-check has fewer than 2 trajectories"
    elif v_boot != v_t:
        verdict, reason = "inconclusive", f"interval methods disagree (bootstrap {v_boot}, t {v_t})"
    elif v_boot == "inconclusive":
        verdict, reason = "inconclusive", "intervals decide no category"
    else:
        verdict, reason = v_boot, None
    return {"verdict": verdict, "reason": reason, "estimate": fit(points, d_bar), "bootstrap": boot,
            "t_check": tcheck, "verdict_bootstrap": v_boot, "verdict_t": v_t, "gates": gates,
            "level_effect": boot["kappa"][0] > LEVEL_EFFECT}
