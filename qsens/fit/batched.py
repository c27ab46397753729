"""Many refits of one log-linear law at once: the bootstrap's and the jackknife's refits as one batched solve.

A resample is the fit's own m points with integer weights (how often each point was drawn, fitting.bootstrap),
so B refits of a log-linear law (log ŷ = X·θ, laws.Law.design) are B weighted problems on the same design X:

    minimise over θ_b   Σ_j w_bj · f² · (sqrt(1 + (r_bj / f)²) − 1),   r_b = X·θ_b − log y,

the soft-L1 objective of fitting.fit_theta (scipy's `least_squares(loss="soft_l1")`) of the resampled points
themselves: a point drawn twice counts twice. The objective is strictly convex in θ when the drawn points identify
the law (the design of the drawn points has full column rank, `identifiable`), so it has one minimum, and Newton's
method (gradient Xᵀ·(w·r/s), exact Hessian Xᵀ·diag(w/s³)·X with s = sqrt(1 + (r/f)²)) with a backtracking line
search reaches it in a few steps, for all B problems together. scipy's trust-region fit stops at its tolerances
(1e-8) near the same minimum: tests/fit/test_batched.py compares the two draw by draw.

Only laws without bounds are solved here (fitting.refit); a problem whose Newton step is not below STEP_TOL after
MAX_ITER steps is reported as not converged and refitted by fitting.fit_theta on its own.
"""

from __future__ import annotations

import numpy as np

from qsens.fit.laws import Law, Points

MAX_ITER = 50
MAX_HALVINGS = 40
STEP_TOL = 1e-8  # converged: a full Newton step below this, relative to max(|θ|, 1); the step is then taken


def identifiable(law: Law, x: Points, fixed: dict[str, float], weights: np.ndarray) -> np.ndarray:
    """fitting.check_identifiable of each resample, without building it: shape (B,) bool.

    weights: shape (B, m), how often each of x's points is in resample b. The counts are those of the resample
    (Σ w points, distinct D and P among the drawn points); the rank is that of the resample's design, whose
    singular values are those of sqrt(w)·X, with numpy's matrix_rank tolerance for its Σ w rows."""
    present = weights > 0
    free = len(law.params) - len(fixed)
    ok = weights.sum(axis=1) >= free + 1
    ok &= _distinct(x.d, present) >= 3
    if law.pooled_bits:
        ok &= _distinct(x.p, present) >= 2
    if law.linear:
        cols = [i for i, p in enumerate(law.params) if p not in fixed]
        a = np.sqrt(weights)[:, :, None] * law.design(x)[None, :, cols]
        s = np.linalg.svd(a, compute_uv=False)  # shape (B, k), descending
        rows = np.maximum(weights.sum(axis=1), len(cols))
        tol = s[:, :1] * rows[:, None] * np.finfo(float).eps
        ok &= (s > tol).sum(axis=1) >= len(cols)
    return ok


def _distinct(values: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Number of distinct values among the present points of each row: shape (B,)."""
    _, code = np.unique(values, return_inverse=True)
    onehot = np.zeros((len(values), code.max() + 1))
    onehot[np.arange(len(values)), code] = 1
    return ((present @ onehot) > 0).sum(axis=1)


def solve(design: np.ndarray, target: np.ndarray, weights: np.ndarray, start: np.ndarray,
          f_scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Weighted soft-L1 regressions of target on design: (theta of shape (B, k), converged of shape (B,) bool).

    design: shape (m, k) float64 (the free columns of Law.design); target: shape (m,), log y minus the fixed
    parameters' part; weights: shape (B, m) ≥ 0; start: shape (k,), e.g. the point fit (any start reaches the one
    minimum; a near one saves steps)."""
    n_batch, k = len(weights), design.shape[1]

    def cost(theta: np.ndarray) -> np.ndarray:
        r = theta @ design.T - target
        return f_scale ** 2 * np.sum(weights * (np.sqrt(1 + (r / f_scale) ** 2) - 1), axis=1)

    theta = np.repeat(np.asarray(start, float)[None, :], n_batch, axis=0)
    done = np.zeros(n_batch, dtype=bool)
    for _ in range(MAX_ITER):
        r = theta @ design.T - target  # shape (B, m)
        s = np.sqrt(1 + (r / f_scale) ** 2)
        grad = (weights * r / s) @ design  # shape (B, k)
        hess = np.einsum("bm,mk,ml->bkl", weights / s ** 3, design, design)
        try:
            step = -np.linalg.solve(hess, grad[:, :, None])[:, :, 0]
        except np.linalg.LinAlgError:
            break  # numerically singular: every problem not yet done goes to the one-by-one fit
        step[done] = 0.0
        now, t = cost(theta), np.ones(n_batch)
        for _ in range(MAX_HALVINGS):  # convex: a short enough Newton step never raises the cost
            worse = cost(theta + t[:, None] * step) > now
            if not worse.any():
                break
            t[worse] /= 2
        else:
            t[worse] = 0.0
        small = np.all(np.abs(step) <= STEP_TOL * np.maximum(np.abs(theta), 1.0), axis=1)
        theta = theta + t[:, None] * step
        done |= small
        if done.all():
            break
    return theta, done & np.all(np.isfinite(theta), axis=1)
