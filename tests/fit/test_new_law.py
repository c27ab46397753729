"""A law is defined in one place: a law written here, in the test, is fitted, diagnosed, given a D*, compared
across schedules, reported and evaluated for the board by the unchanged package."""

from __future__ import annotations

import numpy as np
import pytest

import fit_synthetic as S
from qsens.fit import predict, report
from qsens.fit.fitting import fit_law
from qsens.fit.groups import to_points
from qsens.fit.laws import LAWS, Law, Points, quantized_loss
from qsens.fit.pipeline import compare_schedules, fit_cells


class PowerInTokens(Law):
    """y = k · D^β: no N and no P term."""

    name, formula = "tokens-only", "k·D^β"
    params, exponents = ("log_k", "beta"), ("beta",)
    d_exponent, n_exponent = "beta", None

    def design(self, x: Points) -> np.ndarray:
        return np.column_stack([np.ones(len(x)), np.log(x.d)])


TOY = PowerInTokens()
TRUTH = {"log_k": np.log(2e-4), "beta": 0.6}


def toy(n, d, p, t):
    return np.exp(t["log_k"]) * d ** t["beta"]


def cells(beta=TRUTH["beta"], seed=0, family="toy-cosine", schedule="cosine"):
    return S.make_cells(toy, dict(TRUTH, beta=beta), seed=seed, bits=(3,), family=family, schedule=schedule,
                        fit_group="toy")


def test_fit_law_recovers_the_exponent_of_a_law_defined_in_the_test():
    result = fit_law(TOY, to_points(cells(), "delta_loss")[0], n_boot=200)
    beta, k = result.params()["beta"], result.params()["k"]
    assert not result.fixed and set(result.params()) == {"log_k", "beta", "k"}
    assert beta["ci_low"] < TRUTH["beta"] < beta["ci_high"] and beta["ci_high"] - beta["ci_low"] < 0.1
    assert k["ci_low"] < np.exp(TRUTH["log_k"]) < k["ci_high"]


def test_the_pipeline_fits_compares_and_reports_a_law_defined_in_the_test(monkeypatch):
    fitted = fit_cells(cells() + cells(beta=0.4, seed=1, family="toy-wsd", schedule="wsd"), n_boot=100,
                       laws=(TOY,), bits_axes=("nominal",))
    records = {f.record["schedule"]: f for f in fitted if f.record["law"] == TOY.name}
    cosine = records["cosine"].record
    assert cosine["status"] == "ok" and cosine["verdict"] == "fits"
    assert cosine["params"]["beta"]["ci_low"] < TRUTH["beta"] < cosine["params"]["beta"]["ci_high"]

    # D*: the closed form from the law's degradation scale against a grid search on L + ΔL of the fitted curves
    fp = next(f.result for f in fitted if f.record["law"] == "chinchilla" and f.record["schedule"] == "cosine")
    grid = np.logspace(3, 13, 400_001)
    assert len(cosine["d_star"]) == len(S.SIZES)  # one per size at the one bit width
    for row in cosine["d_star"]:
        curve = quantized_loss(fp.theta, TOY, records["cosine"].result.theta, row["n_params"], grid, row["p"])
        assert row["d_star"] == pytest.approx(grid[np.argmin(curve)], rel=2 * (10 ** (10 / 400_000) - 1))

    (comparison,) = compare_schedules(fitted)
    assert comparison["exponent"] == "beta" and comparison["differs"]
    assert comparison["ci_low"] < 0.6 - 0.4 < comparison["ci_high"]

    monkeypatch.setitem(LAWS, TOY.name, TOY)  # known to the report and the board by name
    assert "beta=" in report.fits_table([cosine])
    mean, low, high = predict(cosine, np.array([1e5]), np.array([4e6]), 3)
    p = {k: v["value"] for k, v in cosine["params"].items()}
    assert mean[0] == pytest.approx(p["k"] * 4e6 ** p["beta"], rel=1e-12) and low[0] <= mean[0] <= high[0]
