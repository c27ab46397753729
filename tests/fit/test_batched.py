"""The batched refits (qsens/fit/batched.py) are the fits scipy's least_squares gives the same resampled points:
every bootstrap draw and every leave-one-checkpoint-out refit of fit_law is compared, draw by draw, with
`scipy.optimize.least_squares(loss="soft_l1")` on the drawn points themselves (rows repeated as drawn, built
here from default_rng as the module doc describes the draw), and the batched identifiability check with
check_identifiable of the drawn points.

Tolerances: scipy stops at its default tolerances (1e-8) near the one minimum of a log-linear law; measured over
330 data sets (seeds 0-9 and 100-199 of Ouyang, unified and Kumar, 100 draws each) the batched draws agreed with
scipy's to 3.2e-8 relative. Chinchilla (nonlinear, bounded) is still refitted by scipy one draw at a time, on
the same rows in the same order: the same computation as here."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import least_squares

import fit_synthetic as S
from fit_coverage import CASES, case_points
from qsens.fit import batched, fitting
from qsens.fit.fitting import F_SCALE, FitError, canonical, check_identifiable, fit_law
from qsens.fit.groups import to_points
from qsens.fit.laws import UNIFIED, Ouyang, Points

one_at_a_time = fitting.fit_theta
RTOL = {True: 1e-6, False: 1e-12}  # by law.linear; measured worst: 3.2e-8 and 0 (module doc)


def scipy_fit(law, points: Points, fixed: dict, start: np.ndarray) -> np.ndarray:
    """The reference: least_squares on log y of exactly these points, from the given free-parameter start."""
    free = [p for p in law.params if p not in fixed]
    box = law.bounds(points, fixed, None)
    lo, hi = np.array([box.get(p, (-np.inf, np.inf))[0] for p in free]), np.array([box.get(p, (-np.inf, np.inf))[1]
                                                                                   for p in free])

    def full(v):
        out = np.array([fixed.get(p, 0.0) for p in law.params])
        out[[law.params.index(p) for p in free]] = v
        return out

    sol = least_squares(lambda v: law.log_predict(full(v), points) - np.log(points.y), np.clip(start, lo + 1e-9,
                        hi - 1e-9), bounds=(lo, hi), loss="soft_l1", f_scale=F_SCALE[law.target], method="trf",
                        x_scale="jac", jac=lambda v: law.log_jacobian(full(v), points)[:, [law.params.index(p)
                                                                                            for p in free]])
    return full(sol.x)


def drawn_rows(points: Points, n_boot: int, seed: int) -> list[np.ndarray]:
    """Row indices of each bootstrap draw of a one-seed fit: len(units) units picked with default_rng(seed)."""
    units = np.unique(points.cluster)
    rng = np.random.default_rng(seed)
    return [np.concatenate([np.flatnonzero(points.cluster == units[u]) for u in rng.integers(0, len(units), len(units))])
            for _ in range(n_boot)]


def assert_close(ours: np.ndarray, reference: np.ndarray, rtol: float) -> None:
    """Relative to |reference|, with parameters near 0 (|θ| < 0.1) compared to 0.1."""
    np.testing.assert_array_less(np.abs(ours - reference) / np.maximum(np.abs(reference), 0.1), rtol)


@pytest.mark.parametrize("name", list(CASES))
def test_every_draw_and_leave_one_out_refit_is_scipys_fit_of_the_drawn_points(name):
    for seed in (0, 1, 2):
        law, _, points = case_points(name, seed)
        fit = fit_law(law, points, n_boot=40, seed=seed, loo=False)
        x = canonical(points)
        start = np.array([v for p, v in zip(law.params, fit.theta) if p not in fit.fixed])
        rows = drawn_rows(x, 40, seed)
        kept = [b for b, r in enumerate(rows) if _identifiable(law, x.take(r), fit.fixed)]
        assert list(fit.draw_ids) == kept and fit.n_boot_failed == 40 - len(kept)
        reference = np.array([scipy_fit(law, x.take(rows[b]), fit.fixed, start) for b in kept])
        assert_close(fit.draws, reference, RTOL[law.linear])
        loo = np.array([scipy_fit(law, x.take(np.flatnonzero(x.cluster != c)), fit.fixed, start)
                        for c in np.unique(x.cluster)])
        assert_close(fit.jackknife, loo, RTOL[law.linear])


def _identifiable(law, points, fixed) -> bool:
    try:
        check_identifiable(law, points, fixed)
        return True
    except FitError:
        return False


class BoundedOuyang(Ouyang):
    """Ouyang's law with β held in [0, 0.3] (the data's β is 0.5): a log-linear law the batch must not solve."""

    name = "ouyang-bounded"

    def bounds(self, x, fixed, e_floor=None):
        return {"beta": (0.0, 0.3)}


def test_a_log_linear_law_with_bounds_is_refitted_one_at_a_time_within_them():
    law, points = BoundedOuyang(), case_points("ouyang", 6)[2]
    fit = fit_law(law, points, n_boot=20, seed=6, loo=False)
    x = canonical(points)
    rows = drawn_rows(x, 20, 6)
    assert np.all(fit.draws[:, 2] <= 0.3) and np.all(fit.draws[:, 2] > 0.299)  # β pressed against its bound
    reference = np.array([scipy_fit(law, x.take(rows[b]), fit.fixed, fit.theta) for b in fit.draw_ids])
    assert_close(fit.draws, reference, RTOL[True])  # a start of its own (law.starts): scipy's tolerance apart


def test_identifiable_is_check_identifiable_of_the_drawn_points():
    """Sparse random weights on a 2-size × 3-budget ladder with one bit width missing at some checkpoints: draws
    with too few points, budgets, bit widths, or one size only (the unified design is then rank deficient)."""
    cells = [c for c in S.make_cells(S.unified, S.UNIFIED_TRUE, seed=5, sizes=(1e5, 2e5), ratios=(5, 8, 12))
             if not (c["bits"] == 2 and c["tokens"] % 3 == 0)]
    points = canonical(to_points(cells, "delta_loss")[0])
    rng = np.random.default_rng(0)
    weights = rng.integers(0, 3, (600, len(points))) * (rng.random((600, len(points))) < 0.25)
    ours = batched.identifiable(UNIFIED, points, {}, weights.astype(float))
    theirs = [_identifiable(UNIFIED, points.take(np.repeat(np.arange(len(points)), w)), {}) for w in weights]
    assert list(ours) == theirs
    assert 0.1 < np.mean(theirs) < 0.9  # both outcomes are exercised
    one_size = [w for w in weights if len(np.unique(points.n[w > 0])) == 1 and len(np.unique(points.d[w > 0])) >= 3
                and len(np.unique(points.p[w > 0])) >= 2 and w.sum() >= 5]
    assert one_size and not any(_identifiable(UNIFIED, points.take(np.repeat(np.arange(len(points)), w)), {})
                                for w in one_size)  # the rank branch decided these


def test_a_draw_the_batch_does_not_converge_on_is_refitted_alone(monkeypatch):
    """With no batched step allowed no draw converges; each is then refitted by the one-at-a-time path, and the
    draws are still scipy's fits of the drawn points."""
    monkeypatch.setattr(batched, "MAX_ITER", 0)
    calls = []
    monkeypatch.setattr(fitting, "fit_theta", lambda *a, **k: calls.append(len(a[1])) or one_at_a_time(*a, **k))
    law, _, points = case_points("kumar", 4)
    fit = fit_law(law, points, n_boot=20, seed=4, loo=False)
    assert len(calls) == 1 + len(fit.draws) + len(np.unique(points.cluster))  # point fit, draws, jackknife
    x = canonical(points)
    start = np.array([v for p, v in zip(law.params, fit.theta) if p not in fit.fixed])
    rows = drawn_rows(x, 20, 4)
    assert_close(fit.draws, np.array([scipy_fit(law, x.take(rows[b]), fit.fixed, start) for b in fit.draw_ids]),
                 RTOL[True])
