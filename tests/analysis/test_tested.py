"""README counts by paired tests, and the resolution floor, on cells whose window sums are built here."""

import numpy as np

from qsens.analysis.resolution import mark_unresolved, resolved_only
from qsens.analysis.tested import growth_tested, u_curve_tested
from qsens.metrics.compare import encode_window_sums

W, TOKENS = 400, 64.0


def cell(rng, tokens: int, fp: float, delta, noise: float, n_params=1000, bits=2, method="rtn", **kw):
    """An ok cell on W windows of 64 tokens (one shared tokens digest): per-token fp loss `fp`, Δ `delta` (a float,
    each window's mean Δ perturbed by N(0, noise^2); or the per-window means themselves, float [W]); Δ's interval
    is set to ±2 noise/sqrt(W) around it."""
    d = delta + noise * rng.normal(size=W) if np.isscalar(delta) else np.asarray(delta)
    sums = {"n_tokens": np.full(W, TOKENS), "fp_nll": np.full(W, fp * TOKENS), "delta_nll": d * TOKENS,
            "doc": np.zeros(W, dtype=np.int64)}
    mean, half = float(d.mean()), 2 * noise / np.sqrt(W)
    return {"family": "f", "eval": "e", "n_params": n_params, "bits": bits, "tokens": tokens, "fp_loss": fp,
            "delta_loss": mean, "delta_loss_ci_low": mean - half, "delta_loss_ci_high": mean + half,
            "tokens_digest": "same", "window_sums": encode_window_sums(sums), "status": "ok", "method": method,
            "checkpoint": f"c{n_params}-{tokens}", **kw}


def test_a_u_curve_counts_only_where_the_paired_interval_excludes_zero():
    rng = np.random.default_rng(0)
    # series A turns up by 0.05 nats (resolved). Series B turns up by exactly 0.001: its last cell's windows are
    # the middle one's plus 0.001 ± 0.04 (half the windows each way), so the paired SE is 0.04 / sqrt(400) = 0.002
    a = [cell(rng, t, fp, d, 0.01, n_params=1) for t, fp, d in ((1, 4.0, 0.1), (2, 3.8, 0.1), (3, 3.8, 0.15))]
    middle = 0.1 + 0.01 * rng.normal(size=W)
    signs = rng.permutation(np.repeat([1.0, -1.0], W // 2))
    b = [cell(rng, 1, 4.0, 0.1, 0.01, n_params=2), cell(rng, 2, 3.8, middle, 0.01, n_params=2),
         cell(rng, 3, 3.8, middle + 0.001 + 0.04 * signs, 0.01, n_params=2)]
    count = u_curve_tested(a + b, "e", samples=400)[2]
    assert (count.resolved, count.unresolved, count.point, count.total) == (1, 1, 2, 2)
    assert count.text("series").startswith("1 of 2 series (paired 95% interval excludes 0; 1 more")


def test_growth_counts_and_factors_past_the_gate():
    rng = np.random.default_rng(1)
    s = [cell(rng, t, fp, d, 0.001) for t, fp, d in ((1, 5.0, 0.01), (2, 4.0, 0.02), (3, 3.5, 0.03), (4, 3.4, 0.06))]
    out = growth_tested(s, samples=300, gate_loss={"e": 4.0})
    assert out["count"].resolved == 1
    assert np.isclose(out["factors"][0], s[-1]["delta_loss"] / s[0]["delta_loss"])  # about 6x over all budgets
    assert np.isclose(out["factors_past_gate"][0], s[-1]["delta_loss"] / s[1]["delta_loss"])  # about 3x past it


def test_cells_within_the_floor_are_unresolved_and_left_out():
    rng = np.random.default_rng(2)
    base = 1e-4 + 0.002 * rng.normal(size=W)
    signs = rng.permutation(np.repeat([1.0, -1.0], W // 2))
    floor = cell(rng, 1, 4.0, base, 0.002, bits=16, method="cast", quantizer="cast-float16-linears",
                 settings_json='{"method": "cast", "bits": 16, "dtype": "float16", "scope": "linears"}')
    near = cell(rng, 1, 4.0, base + 5e-5 + 0.002 * signs, 0.002, bits=8)  # 5e-5 above the floor, paired SE 1e-4
    far = cell(rng, 1, 4.0, 0.05, 0.002, bits=4)
    alone = cell(rng, 1, 4.0, 1e-5 + 0.002 * signs, 0.002, bits=8, eval="other", tokens_digest="other")  # no floor
    # a cast of every parameter (scope all) on the other eval is not the floor of Linear-only quantizers: `alone`
    # is still judged by its own interval, and the cast row is left out of the fits all the same
    cast_all = cell(rng, 1, 4.0, 0.0, 0.002, bits=16, method="cast", eval="other", tokens_digest="other",
                    settings_json={"method": "cast", "bits": 16, "dtype": "float16", "scope": "all"})
    cells = [floor, near, far, alone, cast_all]
    marked = {(c["eval"], c["bits"]): c for c in mark_unresolved(cells, samples=400)}
    assert marked[("e", 8)]["unresolved"] and not marked[("e", 4)]["unresolved"]
    assert marked[("e", 8)]["floor"] == "paired vs cast-float16-linears"
    assert marked[("e", 16)]["unresolved"] is None and marked[("e", 16)]["floor"] == "is the floor"
    assert marked[("other", 8)]["unresolved"] and marked[("other", 8)]["floor"] == "own interval includes 0"
    assert marked[("other", 16)]["unresolved"] is None and marked[("other", 16)]["floor"] == "a cast row, not fitted"
    kept, info = resolved_only(cells, samples=400)
    assert [c["bits"] for c in kept] == [4] and info == {"unresolved": 2, "floor_cells": 2, "by_bits": {8: 2}}


def test_fits_exclude_unresolved_cells_from_degradation_fits_only():
    """for_fits drops every cast cell and keeps the unresolved ones marked: the degradation fit's points leave them
    out with the resolution reason, the fp-loss fit keeps their checkpoint (its fp loss has nothing to do with Δ)."""
    from qsens.analysis.resolution import for_fits
    from qsens.fit.groups import UNRESOLVED, to_points

    rng = np.random.default_rng(3)
    base = 1e-4 + 0.002 * rng.normal(size=W)
    signs = rng.permutation(np.repeat([1.0, -1.0], W // 2))
    floor = cell(rng, 1, 4.0, base, 0.002, bits=16, method="cast", quantizer="cast-float16-linears",
                 settings_json={"method": "cast", "bits": 16, "dtype": "float16", "scope": "linears"}, key="floor")
    # own interval excludes 0 (Δ ≈ 3e-4 ± 2e-4), but it is 5e-5 from the floor's Δ with paired SE 1e-4
    near = cell(rng, 1, 4.0, base + 5e-5 + 0.002 * signs, 0.002, bits=8, key="near")
    near.update(delta_loss_ci_low=near["delta_loss"] / 2, delta_loss_ci_high=near["delta_loss"] * 1.5)
    far = cell(rng, 1, 4.0, 0.05, 0.002, bits=4, key="far")
    cells, info = for_fits([floor, near, far], samples=400)
    assert [c["key"] for c in cells] == ["near", "far"] and info["unresolved"] == 1 and info["floor_cells"] == 1
    points, excluded, _ = to_points(cells, "delta_loss")
    assert points.keys == ("far",) and excluded == [{"checkpoint": near["checkpoint"], "bits": 8,
                                                    "value": near["delta_loss"], "reason": UNRESOLVED}]
    fp_points, fp_excluded, _ = to_points(cells, "fp_loss", with_bits=False)
    assert set(fp_points.keys) == {"near", "far"} and fp_excluded == []


def test_seed_replicates_of_one_family_are_series_of_their_own():
    """Two training seeds of one family and size are two trajectories: mixing them into one series sorted by D
    would pair one seed's largest budget with another's smallest."""
    rng = np.random.default_rng(4)
    s1 = [cell(rng, t, 4.0, d, 0.001, train_seed=1) for t, d in ((1, 0.01), (2, 0.03))]
    s2 = [cell(rng, t, 4.0, d, 0.001, train_seed=2) for t, d in ((1, 0.02), (2, 0.01))]
    out = growth_tested(s1 + s2, samples=300)
    assert (out["count"].resolved, out["count"].against, out["count"].total) == (1, 1, 2)


def test_a_growth_factor_needs_both_ends_resolved_and_positive():
    rng = np.random.default_rng(5)
    s = [cell(rng, 1, 4.0, 0.01, 0.001), cell(rng, 2, 3.9, -0.02, 0.001)]  # Δ falls below 0 at the largest budget
    out = growth_tested(s, samples=300, gate_loss={"e": 5.0})
    assert out["factors"] is None and out["factors_past_gate"] is None and out["count"].against == 1
