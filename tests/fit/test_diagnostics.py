"""Fits that report their own failure (qsens/fit/diagnostics.py), exclusion by evidence, the Chinchilla bounds,
fits across families of one fit group (the N exponent) and paired draws through exclusion."""

from __future__ import annotations

import numpy as np
import pytest
import statsmodels.api as sm

import fit_synthetic as S
from qsens.fit.diagnostics import curvature_test, diagnose
from qsens.fit.fitting import fit_law
from qsens.fit.groups import NO_EVIDENCE, to_points
from qsens.fit.laws import CHINCHILLA, OUYANG, UNIFIED, Points
from qsens.fit.pipeline import compare_schedules, fit_cells


def _fit(law, cells, n_boot=0):
    return fit_law(law, to_points(cells, "delta_loss")[0], n_boot=n_boot)


def test_curvature_p_value_matches_statsmodels_cluster_robust_wald_test():
    """The residual regression on centred log D and (log D)² per series, clustered by checkpoint, against
    statsmodels' OLS with cluster covariance (CR1) and its F-test of both coefficients (G − 1 denominator df)."""
    result = _fit(UNIFIED, S.make_cells(S.unified, S.UNIFIED_TRUE, seed=3, noise=0.2))
    x, r = result.points, result.residuals
    series = np.unique([f"{n}/{p}" for n, p in zip(x.n, x.p)], return_inverse=True)[1]
    t = np.log(x.d) - np.array([np.log(x.d)[series == s].mean() for s in series])
    q = t ** 2 - np.array([(t ** 2)[series == s].mean() for s in series])
    groups = np.unique(x.cluster, return_inverse=True)[1]
    ols = sm.OLS(r, np.column_stack([t, q])).fit(cov_type="cluster", cov_kwds={"groups": groups}, use_t=True)
    ref = ols.f_test(np.eye(2))
    ours = curvature_test(result)
    assert ours["curvature"] == pytest.approx(ols.params[1], rel=1e-9)
    assert ours["p_value"] == pytest.approx(float(ref.pvalue), rel=1e-6)


def test_data_drawn_from_the_law_fits_in_almost_every_seed():
    """False alarms: 5% log-normal noise around the unified law, 150 seeds. Measured: 150 of 150 'fits', and
    the curvature test's p-values are uniform-like (share below 0.05 within binomial error of 5%)."""
    verdicts, small_p = [], 0
    for seed in range(150):
        diag = diagnose(_fit(UNIFIED, S.make_cells(S.unified, S.UNIFIED_TRUE, seed=seed)))
        verdicts.append(diag["verdict"])
        small_p += diag["curvature"]["p_value"] < 0.05
    assert verdicts.count("fits") >= 0.97 * len(verdicts)
    assert small_p <= 15  # 5% of 150 is 7.5; 15 is beyond the binomial 99.5th percentile (14)


def test_a_power_law_on_a_bent_curve_does_not_fit_and_says_why():
    """The local D exponent falls along the budgets (as on the shipped family): log Δ has a (log D)² term."""
    def bent(n, d, p, t):
        log_d = np.log(d / n) - np.log(25)
        return S.unified(n, d, p, t) * np.exp(-0.35 * log_d ** 2)

    result = _fit(UNIFIED, S.make_cells(bent, S.UNIFIED_TRUE, seed=0))
    diag = diagnose(result)
    assert diag["verdict"] == "does not fit"
    assert diag["curvature"]["p_value"] < 1e-6 and diag["curvature"]["curvature_ci"][1] < 0
    assert any("bend" in r for r in diag["reasons"])
    first = [e["exponent"] for e in diag["local_exponents"] if e["n_params"] == 100000 and e["bits"] == 2]
    assert first[0] > first[-1] + 0.5  # the exponent per step falls


def test_cells_whose_interval_includes_zero_are_excluded_and_counted():
    cells = S.make_cells(S.unified, S.UNIFIED_TRUE, seed=1, bits=(2, 8))
    for c in cells:
        lo, hi = (-1e-5, 3e-5) if c["bits"] == 8 else (0.9 * c["delta_loss"], 1.1 * c["delta_loss"])
        c.update(delta_loss=1e-5 if c["bits"] == 8 else c["delta_loss"], delta_loss_ci_low=lo, delta_loss_ci_high=hi)
    points, excluded, _ = to_points(cells, "delta_loss")
    assert len(excluded) == len(S.SIZES) * len(S.RATIOS) and {e["reason"] for e in excluded} == {NO_EVIDENCE}
    assert set(points.p) == {2.0}
    kept, none, _ = to_points(cells, "delta_loss", exclude_no_evidence=False)
    assert not none and len(kept) == 2 * len(points)


def test_effective_bits_are_the_p_axis_when_asked():
    cells = S.make_cells(S.unified, S.UNIFIED_TRUE, seed=1)
    points = to_points(cells, "delta_loss", bits_axis="effective")[0]
    assert set(points.p) == {b + 2.25 for b in S.BITS}


def test_chinchilla_without_an_irreducible_loss_is_reported_degenerate():
    """L = A/N^a + B/D^b (no E): E runs to its entropy floor and the fit says it is degenerate; the same sizes
    drawn with E = 1.7 fit inside the bounds."""
    rng = np.random.default_rng(0)
    n, d = np.meshgrid(S.SIZES, [r * 1e5 for r in S.RATIOS])
    n, d = n.ravel(), d.ravel()
    truth = dict(S.CHINCHILLA_TRUE)
    for log_e, expect in ((np.log(1e-9), "degenerate"), (truth["log_E"], None)):
        y = S.chinchilla(n, d, {**truth, "log_E": log_e}) * np.exp(0.002 * rng.standard_normal(len(n)))
        x = Points(n, d, np.full(len(n), np.nan), y, np.array([f"{a}/{b}" for a, b in zip(n, d)]), ("",) * len(n))
        result = fit_law(CHINCHILLA, x, n_boot=0, e_floor=0.5)
        diag = diagnose(result)
        if expect:
            assert diag["verdict"] == "degenerate" and "log_E" in diag["at_bounds"]
            assert result.law.derived(result.theta)["E"] == pytest.approx(0.5, rel=1e-3)
        else:
            assert not diag["at_bounds"] and result.law.derived(result.theta)["E"] == pytest.approx(1.7, rel=0.05)


def test_five_families_of_one_fit_group_recover_the_n_exponent():
    """Five synthetic families, one size each (as suites/pythia.yaml declares Pythia), drawn from the unified law
    with α = 0.25: one fit group recovers α inside its 95% interval; as five separate groups α is held at 0."""
    cells = []
    for i, n in enumerate(S.SIZES):
        cells += S.make_cells(S.unified, S.UNIFIED_TRUE, seed=100 + i, family=f"syn-{i}", sizes=(n,),
                              fit_group="syn")
    fits = [f.record for f in fit_cells(cells, n_boot=200, bits_axes=("nominal",)) if f.record["law"] == "unified"]
    assert len(fits) == 1 and fits[0]["family"] == ",".join(f"syn-{i}" for i in range(5))
    alpha = fits[0]["params"]["alpha"]
    assert not alpha["fixed"] and alpha["ci_low"] < S.UNIFIED_TRUE["alpha"] < alpha["ci_high"]
    assert alpha["ci_high"] - alpha["ci_low"] < 0.2
    apart = [{**c, "fit_group": None} for c in cells]
    alone = [f.record for f in fit_cells(apart, n_boot=0, bits_axes=("nominal",)) if f.record["law"] == "unified"]
    assert len(alone) == 5 and all(r["params"]["alpha"]["fixed"] and r["params"]["alpha"]["value"] == 0
                                   for r in alone)


def test_schedule_draws_stay_paired_when_exclusion_removes_a_checkpoint():
    """Twin schedules with identical values: every paired draw differs by exactly 0. With one WSD cell excluded
    (its interval includes 0) the draws that did not pick that checkpoint still differ by exactly 0 (about
    (1 − 1/40)^40 = 36% of them); independent draws would give no exact zero at all."""
    cosine = S.make_cells(S.ouyang, S.OUYANG_TRUE, seed=0, bits=(3,), schedule="cosine", fit_group="g",
                          family="c")
    wsd = [{**c, "key": c["key"] + "-w", "schedule": "wsd", "family": "w"} for c in cosine]
    diffs = {}
    for label, cells in (("all", cosine + wsd), ("one excluded", cosine + [
            {**c, "delta_loss_ci_low": -1.0, "delta_loss_ci_high": 1.0} if i == 7 else c for i, c in enumerate(wsd)])):
        fitted = fit_cells(cells, n_boot=100, laws=(OUYANG,))
        comparison = next(c for c in compare_schedules(fitted) if c["law"] == "ouyang")
        a, b = (next(f.result for f in fitted if f.record["key"] == k) for k in comparison["fit_keys"])
        common = np.intersect1d(a.draw_ids, b.draw_ids)
        diffs[label] = (a.draws[np.isin(a.draw_ids, common), 2] - b.draws[np.isin(b.draw_ids, common), 2])
    assert np.all(diffs["all"] == 0) and len(diffs["all"]) == 100
    zero = np.mean(np.abs(diffs["one excluded"]) < 1e-12)
    assert 0.2 < zero < 0.55
