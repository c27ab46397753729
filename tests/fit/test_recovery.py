"""Known parameters are recovered: data drawn from each law (tests/fit/fit_synthetic.py, log-normal noise) are
fitted over seeded trials, and the true value must lie inside the bootstrap interval in at least 90% of them,
the issue's bar (the intervals are nominal 95%: expanded BCa percentiles over checkpoints, fitting.py).

Seeds are consecutive from fixed starts, never picked after a run: the fast test uses seeds 0-99, the heavy one
100-699 (reduced; CI runs it) or 100-2099 (QSENS_HEAVY=full), so the two never share a data set. Measured, 100
refits a trial: 92-94.5% for every parameter of every law over 1,500 trials (seeds 0-1499); lowest in these
blocks 92% (0-99) and 91.7% (100-699, the D and N exponents of the pooled laws). At a true 92.5%, a 100-trial
block falls below 90% with probability 13% per parameter and a 600-trial block 1%: the fast test guards
against gross regressions, the heavy one is the coverage check."""

from __future__ import annotations

import os

import numpy as np
import pytest

from fit_coverage import CASES, case_points, coverage, law_trial, schedule_trial
from qsens.fit.fitting import fit_law

BAR = 0.9
FULL = os.environ.get("QSENS_HEAVY") == "full"


@pytest.mark.parametrize("name", list(CASES))
def test_true_parameters_fall_inside_the_bootstrap_interval(name):
    cover = coverage(law_trial, range(100), name=name, n_boot=100)
    assert all(c >= BAR for c in cover.values()), cover


@pytest.mark.heavy
@pytest.mark.parametrize("name", list(CASES))
def test_coverage_over_many_trials(name):
    """Reduced: 600 trials (seeds 100-699); QSENS_HEAVY=full: 2,000 trials (seeds 100-2099)."""
    cover = coverage(law_trial, range(100, 2100 if FULL else 700), name=name, n_boot=100)
    assert all(c >= BAR for c in cover.values()), cover


@pytest.mark.heavy
def test_schedule_difference_interval_holds_zero_when_the_exponents_agree():
    """The cosine-vs-WSD comparison's interval is a coverage claim too: with equal D exponents it must hold 0.
    Reduced: 300 trials (measured 97% with independent draws, 95.7% with the paired draws of one fit group);
    QSENS_HEAVY=full: 1,000."""
    cover = coverage(schedule_trial, range(1000 if FULL else 300), n_boot=100)
    assert cover["beta difference"] >= BAR, cover


@pytest.mark.parametrize("name", list(CASES))
def test_noiseless_data_give_the_exact_parameters(name):
    """Without noise the robust fit must land on the generating parameters (to optimiser tolerance)."""
    law, truth, points = case_points(name, seed=0, noise=0.0, fp_noise=0.0)
    theta = fit_law(law, points, n_boot=0, loo=False).theta
    tol = 1e-6 if law.linear else 1e-3  # the nonlinear fit stops at least_squares' default tolerances
    np.testing.assert_allclose(theta, [truth[p] for p in law.params], rtol=tol, atol=tol)
