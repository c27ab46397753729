"""D*, the bottom of the U-curve, against a hand-worked case and a fine grid search on the fitted curve."""

from __future__ import annotations

import math

import numpy as np
import pytest

import fit_synthetic as S
from qsens.fit.fitting import fit_law
from qsens.fit.groups import to_points
from qsens.fit.laws import CHINCHILLA, KUMAR, OUYANG, UNIFIED, d_star, quantized_loss


def test_d_star_of_a_hand_worked_case():
    """L_q = 2 + 1/√D + D^0.5 / 100 (B = 1, b = 0.5, k = 0.01, β = 0.5, N = 1): dL/dD = 0 at D = 100."""
    theta_fp = np.array([math.log(2.0), -np.inf, 0.0, math.log(1.0), 0.5])
    theta_delta = np.array([math.log(0.01), 0.0, 0.5])
    assert d_star(theta_fp, OUYANG, theta_delta, n=1.0, bits=4) == pytest.approx(100.0, rel=1e-12)


def test_no_bottom_when_degradation_does_not_grow_with_tokens():
    theta_fp = np.array([math.log(2.0), -np.inf, 0.0, math.log(1.0), 0.5])
    assert d_star(theta_fp, OUYANG, np.array([math.log(0.01), 0.0, -0.1]), n=1.0, bits=4) == math.inf


def _grid_argmin(theta_fp, law, theta_delta, n, bits) -> float:
    """Independent reference: the D minimising L + ΔL on a log grid of 400,001 points over 1e3 .. 1e13."""
    grid = np.logspace(3, 13, 400_001)
    return float(grid[np.argmin(quantized_loss(theta_fp, law, theta_delta, n, grid, bits))])


@pytest.mark.parametrize("law, generator, truth", [(OUYANG, S.ouyang, S.OUYANG_TRUE),
                                                   (UNIFIED, S.unified, S.UNIFIED_TRUE),
                                                   (KUMAR, S.kumar, S.KUMAR_TRUE)])
def test_closed_form_d_star_matches_a_grid_search_on_the_fitted_curve(law, generator, truth):
    cells = S.make_cells(generator, truth, seed=3, bits=(3,) if law is OUYANG else S.BITS)
    fp = fit_law(CHINCHILLA, to_points(cells, "fp_loss", with_bits=False)[0], n_boot=0, loo=False)
    delta = fit_law(law, to_points(cells, "delta_loss")[0], n_boot=0, loo=False)
    for n in (1e5, 1.6e6):
        for bits in ((3,) if law is OUYANG else S.BITS):
            closed = d_star(fp.theta, law, delta.theta, n, bits)
            step = 10 ** (10 / 400_000)  # the grid's ratio between neighbours
            assert closed == pytest.approx(_grid_argmin(fp.theta, law, delta.theta, n, bits), rel=2 * (step - 1))


def test_fitted_d_star_is_near_the_true_one():
    """From noisy unified-law data, D* of the fitted curves is within 15% of D* of the generating curves."""
    cells = S.make_cells(S.unified, S.UNIFIED_TRUE, seed=4)
    fp = fit_law(CHINCHILLA, to_points(cells, "fp_loss", with_bits=False)[0], n_boot=0, loo=False)
    delta = fit_law(UNIFIED, to_points(cells, "delta_loss")[0], n_boot=0, loo=False)
    true_fp = np.array([S.CHINCHILLA_TRUE[p] for p in CHINCHILLA.params])
    true_delta = np.array([S.UNIFIED_TRUE[p] for p in UNIFIED.params])
    for bits in S.BITS:
        expected = _grid_argmin(true_fp, UNIFIED, true_delta, 4e5, bits)
        assert d_star(fp.theta, UNIFIED, delta.theta, 4e5, bits) == pytest.approx(expected, rel=0.15)
