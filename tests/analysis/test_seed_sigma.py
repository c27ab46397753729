"""The pilot's pooled seed SD equals the residual SD of a one-way ANOVA fitted by statsmodels (an independent
implementation), and its interval covers the true sigma at the nominal rate."""

import math

import numpy as np
import pytest
import statsmodels.formula.api as smf

from qsens.analysis.seed_sigma import pooled_seed_sd


def _cells(rng, sigma, n_groups=12, seeds=(0, 1, 2)):
    cells = []
    for g in range(n_groups):
        level = rng.normal(-3, 1)  # each (size, arm, D) has its own Δ: only the spread within matters
        for s in seeds:
            cells.append({"status": "ok", "train_seed": s, "size": f"h{g % 3}", "schedule": ["stable", "wsd"][g % 2],
                          "tokens": 1000 * g, "quantizer": "rtn-w3", "eval": "books", "bits": 3,
                          "delta_loss": math.exp(level + rng.normal(0, sigma))})
    return cells


def test_pooled_sd_equals_the_anova_residual_sd_from_statsmodels():
    rng = np.random.default_rng(0)
    cells = _cells(rng, 0.2)
    cells[4]["train_seed"] = None  # no seed: left out
    cells[7]["delta_loss"] = -1e-4  # Δ <= 0 has no log: left out
    [row] = pooled_seed_sd(cells, by="bits")
    kept = [c for i, c in enumerate(cells) if i not in (4, 7)]
    data = {"y": [math.log(c["delta_loss"]) for c in kept], "g": [str(c["tokens"]) for c in kept]}
    ols = smf.ols("y ~ C(g)", data=data).fit()
    assert row["sd"] == pytest.approx(math.sqrt(ols.mse_resid), rel=1e-12)
    assert row["df"] == ols.df_resid == len(kept) - 12
    assert row["left_out"] == 2 and row["groups"] == 12 and row["cells"] == len(kept)


def test_the_interval_covers_the_true_sigma_at_the_nominal_rate():
    rng = np.random.default_rng(1)
    hits = [(r := pooled_seed_sd(_cells(rng, 0.15), by=None)[0])["ci_low"] <= 0.15 <= r["ci_high"]
            for _ in range(400)]
    assert 0.92 <= np.mean(hits) <= 0.98  # 95% nominal; binomial SD over 400 trials is 1.1%


def test_a_group_with_one_seed_gives_no_sd():
    [row] = pooled_seed_sd(_cells(np.random.default_rng(2), 0.1, seeds=(0,)), by=None)
    assert row["sd"] is None and row["df"] == 0 and row["groups"] == 0
