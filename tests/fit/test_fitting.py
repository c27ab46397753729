"""The sandwich standard errors of qsens/fit/fitting.py against independent references: statsmodels'
cluster-robust least-squares covariance, and the spread of estimates over simulated data sets."""

from __future__ import annotations

import numpy as np
import pytest
import statsmodels.api as sm

import fit_synthetic as S
from fit_coverage import CASES, in_workers, point_fit
from qsens.fit.fitting import canonical, standard_errors
from qsens.fit.groups import to_points
from qsens.fit.laws import KUMAR, OUYANG, UNIFIED


@pytest.mark.parametrize("law, generator, truth, bits", [(UNIFIED, S.unified, S.UNIFIED_TRUE, S.BITS),
                                                         (KUMAR, S.kumar, S.KUMAR_TRUE, S.BITS),
                                                         (OUYANG, S.ouyang, S.OUYANG_TRUE, (3,))])
def test_sandwich_errors_match_statsmodels_cluster_robust_least_squares(law, generator, truth, bits):
    """Residuals of ~1e-4 keep the soft-L1 weights within 1e-6 of 1, where the M-estimator's sandwich is
    statsmodels' OLS covariance clustered by checkpoint (CR1: G/(G−1)·(m−1)/(m−k)); 3 points a checkpoint
    for the pooled laws, 1 for Ouyang's."""
    cells = S.make_cells(generator, truth, seed=11, noise=1e-4, bits=bits)
    points = canonical(to_points(cells, "delta_loss")[0])
    clusters = np.unique(points.cluster, return_inverse=True)[1]
    ols = sm.OLS(np.log(points.y), law.design(points)).fit(cov_type="cluster", cov_kwds={"groups": clusters})
    ours = standard_errors(law, ols.params, points, {}, points.cluster)
    np.testing.assert_allclose(ours, ols.bse, rtol=1e-5)


@pytest.mark.parametrize("name", ["ouyang", "chinchilla"])
def test_sandwich_errors_match_the_spread_of_estimates_over_simulations(name):
    """Over 300 simulated data sets the median standard error is within 12% of the standard deviation of the
    estimates (whose own sampling error is ~4% here), for the linear and the nonlinear fit alike. Measured:
    0.96-1.00 for Ouyang, 0.91-0.96 for Chinchilla; a bread with IRLS weights instead of ψ' gave 0.83-0.85."""
    law = CASES[name][0]
    thetas, ses = map(np.array, zip(*in_workers(point_fit, range(300), name=name)))
    ratio = np.median(ses, axis=0) / np.std(thetas, axis=0, ddof=1)
    assert np.all(np.abs(ratio - 1) < 0.12), dict(zip(law.params, ratio))
