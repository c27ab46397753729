"""Fits resample training seeds (issue 21): whole trajectories as the outer level of the bootstrap, checked against
a closed form (the bootstrap variance of a mean over seeds), an exact enumeration of what a draw can be, and a
brute-force float64 least-squares refit of the drawn points (numpy lstsq, not the fit's solver)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import fit_synthetic as S
from qsens.fit.fitting import canonical, fit_law
from qsens.fit.groups import to_points
from qsens.fit.laws import OUYANG
from qsens.fit.pipeline import compare_schedules, fit_cells

SIZES, RATIOS = (1.0e5, 2.0e5, 4.0e5), (5, 12, 32, 80)


def seeded_cells(offsets, noise=0.0, schedule="cosine", seed_of=lambda s: s, rng_seed=0):
    """3-bit cells of an exact Ouyang law, one trajectory per training seed s with log Δ shifted by offsets[s]
    (plus log-normal noise): families f-s<s>, one fit group."""
    cells = []
    for s, c in enumerate(offsets):
        for cell in S.make_cells(S.ouyang, S.OUYANG_TRUE, seed=rng_seed + s, noise=noise, fp_noise=0.0, bits=(3,),
                                 family=f"f-s{s}", schedule=schedule, sizes=SIZES, ratios=RATIOS, fit_group="g"):
            cells.append({**cell, "delta_loss": cell["delta_loss"] * np.exp(c), "train_seed": seed_of(s),
                          "key": f"{cell['key']}-{schedule}"})
    return cells


def test_draws_are_means_over_resampled_seeds_with_the_closed_form_variance():
    """Offsets c = (0, 1, 4)e-3 on an exact law: every draw's log k is log k_true + the mean of c over 3 seeds drawn
    with replacement (one of the 10 multisets), slopes stay exact, and the variance of log k over 1,000 draws is
    the plug-in variance of a mean over seeds, mean((c - c̄)²) / S = 26/27 · 1e-6, within 15% (Monte Carlo SE of a
    variance from 1,000 draws: ~5%)."""
    c = np.array([0.0, 1e-3, 4e-3])
    points = to_points(seeded_cells(c), "delta_loss")[0]
    fit = fit_law(OUYANG, points, n_boot=1000, seed=5, loo=False)
    assert fit.seeds == ("0", "1", "2") and fit.n_boot_failed == 0
    log_k = fit.draws[:, 0] - S.OUYANG_TRUE["log_k"]
    possible = np.array(sorted({sum(m) / 3 for m in itertools.combinations_with_replacement(c, 3)}))
    assert len(possible) == 10  # distinct: the draws below can be told apart (spacing 3.3e-4)
    nearest = np.abs(log_k[:, None] - possible[None, :]).min(axis=1)
    assert nearest.max() < 2e-5
    np.testing.assert_allclose(fit.draws[:, 1:], [[S.OUYANG_TRUE["alpha"], S.OUYANG_TRUE["beta"]]] * len(log_k),
                               atol=1e-5)
    closed = np.mean((c - c.mean()) ** 2) / len(c)
    assert np.var(log_k, ddof=1) / closed == pytest.approx(1.0, abs=0.15)
    # the same cells without their seeds: every unit draw takes all three trajectories, and the seed noise is gone
    blind = [{**cell, "train_seed": None} for cell in seeded_cells(c)]
    unseeded = fit_law(OUYANG, to_points(blind, "delta_loss")[0], n_boot=200, seed=5, loo=False)
    assert unseeded.seeds == () and np.std(unseeded.draws[:, 0]) < 1e-5


def test_a_draw_is_every_drawn_seeds_points_at_every_drawn_unit_refitted_in_float64():
    """Residuals below 5e-3 (seed offsets (0, 4, -2)e-3, noise 5e-4: soft-L1 weights within 2e-3 of 1, so the
    fit is least squares to ~1e-5), draw b refits exactly the points the module doc says: default_rng(seed) picks
    3 seeds, then 12 units (N, D), and every drawn seed's point at every drawn unit is taken. The refit here is
    numpy's float64 lstsq of log Δ on (1, -log N, log D); a draw that mixed seeds up would move log k by ~1e-3."""
    points = canonical(to_points(seeded_cells([0.0, 4e-3, -2e-3], noise=5e-4), "delta_loss")[0])
    fit = fit_law(OUYANG, points, n_boot=30, seed=11, loo=False)
    units, seeds = np.unique(points.cluster), np.unique(points.replicate)
    rng = np.random.default_rng(11)
    for b in range(30):
        seed_pick = rng.integers(0, len(seeds), len(seeds))
        unit_pick = rng.integers(0, len(units), len(units))
        rows = [i for s in seed_pick for u in unit_pick
                for i in np.flatnonzero((points.cluster == units[u]) & (points.replicate == seeds[s]))]
        assert len(rows) == len(seed_pick) * len(unit_pick)  # one 3-bit point per seed and unit
        design = np.column_stack([np.ones(len(rows)), -np.log(points.n[rows]), np.log(points.d[rows])])
        ols, *_ = np.linalg.lstsq(design, np.log(points.y[rows]), rcond=None)
        if len(np.unique(points.d[rows])) < 3:  # too few budgets: the fit skips this draw
            assert b not in fit.draw_ids
            continue
        np.testing.assert_allclose(fit.draws[list(fit.draw_ids).index(b)], ols, rtol=0, atol=1e-5)


def test_the_pipeline_resamples_seeds_records_them_and_keeps_one_seed_fits_paired():
    """fit_cells on the cosine trajectories of 3 seeds (offsets c of SD 0.1 over 0.01 checkpoint noise): the draws
    of log k spread as a mean over resampled seeds plus the unit bootstrap's own spread (that of the same cells with
    their seeds unknown), the latter inflated by E[sum w_s²] / S = (2S - 1) / S = 5/3 (w: how often each seed is
    drawn; the checkpoint noise is counted at both levels, module doc): var = mean((c - c̄)²) / S + 5/3 var_units,
    within 25% (200 draws). The stored draws name the seeds. A WSD fit of seed 0 only, in the same fit group, is
    not resampled by seed and still pairs draw for draw with the cosine fit (a comparison keeps every draw)."""
    offsets = [0.0, 0.15, -0.1]
    cosine = seeded_cells(offsets, noise=0.01)
    wsd = seeded_cells(offsets[:1], noise=0.01, schedule="wsd", rng_seed=7)
    only = dict(laws=(OUYANG,), bits_axes=("nominal",))
    fits = fit_cells(cosine + wsd, n_boot=200, **only)
    by = {(f.record["law"], f.record["schedule"]): f for f in fits}
    seeded, one_seed = by[("ouyang", "cosine")], by[("ouyang", "wsd")]
    assert seeded.record["draws"]["seeds"] == ["0", "1", "2"] and "seeds" not in one_seed.record["draws"]
    blind = fit_cells([{**c, "train_seed": None} for c in cosine], n_boot=200, **only)
    unseeded = next(f for f in blind if f.record["law"] == "ouyang")
    var_seeds = np.mean((np.array(offsets) - np.mean(offsets)) ** 2) / 3
    var_units = np.var(unseeded.result.draws[:, 0], ddof=1)
    assert np.var(seeded.result.draws[:, 0], ddof=1) / (var_seeds + 5 / 3 * var_units) == pytest.approx(1, abs=0.25)
    width = lambda f: f.record["params"]["log_k"]["ci_high"] - f.record["params"]["log_k"]["ci_low"]  # noqa: E731
    assert width(seeded) > 1.5 * width(unseeded)
    (comparison,) = compare_schedules([seeded, one_seed])
    assert comparison["n_draws"] == len(seeded.result.draws) == len(one_seed.result.draws) == 200


def test_one_seed_everywhere_is_the_unit_bootstrap_unchanged():
    """Cells that all carry seed 0 draw exactly as cells that carry no seed (the published micro cells have none):
    the same refits, draw for draw, and no seeds recorded."""
    cells = seeded_cells([0.0], noise=0.02)
    a = fit_cells(cells, n_boot=50, laws=(OUYANG,), bits_axes=("nominal",))
    b = fit_cells([{**c, "train_seed": None} for c in cells], n_boot=50, laws=(OUYANG,), bits_axes=("nominal",))
    for fa, fb in zip(a, b):
        assert fa.record["draws"] == fb.record["draws"] and "seeds" not in fa.record["draws"]
