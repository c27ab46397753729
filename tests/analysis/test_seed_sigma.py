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


# --- trajectory_noise: checkpoint noise, per-seed slope and intercept spread, blinded to the group curves ---

from scipy import stats  # noqa: E402

from qsens.analysis.seed_sigma import trajectory_noise  # noqa: E402

BUDGETS = (2.1e6, 4.2e6, 8.4e6, 16.8e6)


def _trajectories(rng, sigma, tau_u, tau_v, n_groups=6, seeds=(0, 1, 2), budgets=BUDGETS):
    """Cells of n_groups (arm, bits) groups; each group its own curve a_j (any shape: it must cancel)."""
    cells = []
    x = np.log(budgets) - np.log(budgets).mean()
    for g in range(n_groups):
        curve = rng.normal(-3, 1, len(budgets))
        for s in seeds:
            u, v = rng.normal(0, tau_u), rng.normal(0, tau_v)
            for j, d in enumerate(budgets):
                cells.append({"status": "ok", "train_seed": s, "size": "h48", "schedule": ["stable", "wsd"][g % 2],
                              "tokens": d, "quantizer": f"rtn-w{g // 2}", "eval": "books", "bits": 3,
                              "delta_loss": math.exp(curve[j] + u + v * x[j] + rng.normal(0, sigma))})
    return cells


@pytest.mark.filterwarnings("ignore::UserWarning")  # the dummy coding is rank-deficient on purpose (pinv)
def test_checkpoint_noise_is_the_residual_mse_of_curve_plus_seed_lines_in_statsmodels():
    cells = _trajectories(np.random.default_rng(3), 0.15, 0.1, 0.08)
    [row] = trajectory_noise(cells, by=None)
    data = {"y": [math.log(c["delta_loss"]) for c in cells],
            "gd": [f"{c['schedule']}{c['quantizer']}{c['tokens']}" for c in cells],
            "gs": [f"{c['schedule']}{c['quantizer']}{c['train_seed']}" for c in cells],
            "x": [math.log(c["tokens"]) for c in cells]}
    ols = smf.ols("y ~ C(gd) + C(gs) + C(gs):x", data=data).fit()
    assert row["sigma"] == pytest.approx(math.sqrt(ols.mse_resid), rel=1e-9)
    assert row["df_sigma"] == ols.df_resid == 6 * 2 * 2


def test_slope_and_intercept_spread_equal_per_trajectory_fits_by_scipy():
    cells = _trajectories(np.random.default_rng(4), 0.15, 0.1, 0.08)
    [row] = trajectory_noise(cells, by=None)
    ss_b = ss_a = 0.0
    for sched in ("stable", "wsd"):
        for q in {c["quantizer"] for c in cells}:
            slopes, means = [], []
            for s in (0, 1, 2):
                mine = [c for c in cells if (c["schedule"], c["quantizer"], c["train_seed"]) == (sched, q, s)]
                if not mine:
                    continue
                fit = stats.linregress([math.log(c["tokens"]) for c in mine], [math.log(c["delta_loss"]) for c in mine])
                slopes.append(fit.slope)
                means.append(np.mean([math.log(c["delta_loss"]) for c in mine]))
            if slopes:
                ss_b += np.var(slopes, ddof=1) * (len(slopes) - 1)
                ss_a += np.var(means, ddof=1) * (len(means) - 1)
    assert row["df_seed"] == 12
    assert row["slope_sd"] == pytest.approx(math.sqrt(ss_b / 12), rel=1e-9)
    assert row["intercept_sd"] == pytest.approx(math.sqrt(ss_a / 12), rel=1e-9)


def test_the_slope_variance_estimate_is_unbiased_for_the_seed_slope_variance():
    rng, tau_v, sigma = np.random.default_rng(5), 0.12, 0.15
    x = np.log(BUDGETS) - np.log(BUDGETS).mean()
    excess = []
    for _ in range(600):
        [row] = trajectory_noise(_trajectories(rng, sigma, 0.1, tau_v), by=None)
        excess.append(row["slope_sd"] ** 2 - row["sigma"] ** 2 / float(x @ x))  # before truncation at 0
    se = np.std(excess, ddof=1) / math.sqrt(len(excess))
    assert abs(np.mean(excess) - tau_v ** 2) < 4 * se
    assert se < 0.3 * tau_v ** 2  # the check has the power to see a bias of the size of τ_v²


def test_seeds_missing_a_budget_keep_only_the_shared_budgets_and_say_how_many_were_left_out():
    cells = _trajectories(np.random.default_rng(6), 0.15, 0.1, 0.1, n_groups=1)
    cells = [c for c in cells if not (c["train_seed"] == 2 and c["tokens"] == BUDGETS[0])]
    [row] = trajectory_noise(cells, by=None)
    assert row["budgets_per_group"] == [3] and row["left_out"] == 2 and row["cells"] == 9


def test_nothing_returned_is_a_group_mean_or_a_contrast():
    [row] = trajectory_noise(_trajectories(np.random.default_rng(7), 0.15, 0.1, 0.1), by=None)
    assert not {k for k in row if "mean" in k or "beta" in k or "kappa" in k or "delta" in k}
