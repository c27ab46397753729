"""The board's data model: "which checkpoint", headline rows, which stored fit a row and a plot show, number formats.

The fits are the fit pipeline's, stored and read back by qsens.store.fits (board_synthetic.make_results)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from board_synthetic import N1, N2, all_cells, cell

from qsens.board import fits as fit_view
from qsens.board import fmt
from qsens.board.model import best_checkpoints, headline, leaderboard_rows, match_fit, slug
from qsens.board.plots import fit_curve
from qsens.store.fits import read_fits


@pytest.fixture(scope="module")
def fits(built) -> list[dict]:
    """The synthetic results' fits as the store reads them back."""
    return read_fits(built[0])[0]


def _fit(fits, law, schedule="cosine", eval_name="vathek", bits=None, axis="nominal") -> dict:
    """The one stored fit of `law` for a group, picked by its columns."""
    (fit,) = [f for f in fits if f["law"] == law and f["schedule"] == schedule and f["eval"] == eval_name
              and f["bits"] == bits and f["bits_axis"] == axis]
    return fit


def test_which_checkpoint_matches_hand_computation():
    """q_loss = fp + Δloss from the table in board_synthetic.py, computed by hand:

    vathek, 2 bits: N1 cosine 6.2048 5.436 4.528 4.688 | N1 wsd 5.058 4.419 4.582 | N2 4.930 4.200 4.450
      -> best N2 D=16M (4.200), runner-up N1 wsd D=4M (4.419); 4.200+0.03 < 4.419-0.03, so clear.
    vathek, 4 bits: N1 cosine 6.2029 5.413 4.1886 3.9275 | N1 wsd 5.0206 4.0762 3.8979 | N2 4.9015 3.820 3.590
      -> best N2 D=48M (3.590), runner-up N2 D=16M (3.820).
    pride, 4 bits (fp + 0.3, Δ × 1.2, N1 cosine only): 6.50288 5.7132 4.49252 4.2346 -> N1 D=12M, runner-up D=4M.
    """
    best = {(b["family"], b["eval"], b["bits"]): b for b in best_checkpoints(all_cells())}
    b2 = best[("novels-probe", "vathek", 2)]
    assert (b2["n_params"], b2["tokens"], b2["schedule"]) == (N2, 16_000_000, "cosine")
    assert b2["q_loss"] == pytest.approx(4.200)
    assert b2["runner_up"] == f"novels-probe-wsd-n{N1}-d4000000" and b2["runner_up_q_loss"] == pytest.approx(4.419)
    assert b2["clear"] is True and b2["n_candidates"] == 10
    b4 = best[("novels-probe", "vathek", 4)]
    assert (b4["n_params"], b4["tokens"], b4["q_loss"]) == (N2, 48_000_000, pytest.approx(3.590))
    assert b4["runner_up"] == f"novels-probe-cosine-n{N2}-d16000000"
    p4 = best[("novels-probe", "pride", 4)]
    assert (p4["tokens"], p4["q_loss"], p4["n_candidates"]) == (12_000_000, pytest.approx(4.2346), 4)
    assert ("novels-probe", "pride", 3) not in best  # its only cell failed


def test_which_checkpoint_within_noise_is_not_clear():
    a = cell("f", None, 1000, 10_000, 4.00, 4, 0.01)
    b = cell("f", None, 1000, 20_000, 4.02, 4, 0.01)  # intervals ±0.03 overlap
    (best,) = best_checkpoints([a, b])
    assert best["checkpoint"] == a["checkpoint"] and best["clear"] is False


def test_headline_is_largest_n_then_largest_d_among_ok_cells():
    cells = [cell("f", None, 100, 5000, 4, 4, 0.1), cell("f", None, 200, 1000, 4, 4, 0.1),
             cell("f", None, 200, 3000, 4, 4, 0.1), cell("f", None, 200, 9000, 4, 4, 0.1, status="failed")]
    assert (headline(cells)["n_params"], headline(cells)["tokens"]) == (200, 3000)
    assert headline([cells[-1]]) is None


def test_leaderboard_rows_one_per_group_with_range_and_fit(fits):
    rows = leaderboard_rows(all_cells(), fits, {})
    keys = [(r["family"], r["schedule"], r["eval"], r["quantizer"]) for r in rows]
    assert len(keys) == len(set(keys)) == 11  # 2 schedules × 4 bits + pride × 2 quantizers + the hostile family
    row = next(r for r in rows if r["schedule"] == "cosine" and r["eval"] == "vathek" and r["bits"] == 2)
    assert (row["n_params"], row["tokens"], row["delta_loss"]) == (N2, 48_000_000, 0.900)
    assert (row["delta_loss_min"], row["delta_loss_max"]) == (0.0018, 0.900)
    ouyang = _fit(fits, "ouyang", bits=2)
    assert row["fit_key"] == ouyang["key"] and not row["fit_pooled"]
    assert [p["name"] for p in row["fit_exponents"]] == ["alpha", "beta"]  # the law's exponents, in its order
    assert row["fit_exponents"][1] == {"name": "beta", "value": ouyang["params"]["beta"]["value"],
                                       "lo": ouyang["params"]["beta"]["ci_low"], "hi": ouyang["params"]["beta"]["ci_high"]}
    wsd = next(r for r in rows if r["schedule"] == "wsd" and r["bits"] == 4)
    assert wsd["fit_key"] == _fit(fits, "ouyang", "wsd", bits=4)["key"]
    # One size: alpha held at 0; three checkpoints are too few for an interval, stored as NaN, shown as None.
    assert wsd["fit_exponents"] == [{"name": "alpha", "value": 0.0, "lo": 0.0, "hi": 0.0},
                                    {"name": "beta", "value": pytest.approx(wsd["fit_exponents"][1]["value"]),
                                     "lo": None, "hi": None}]
    failed_only = next(r for r in rows if r["eval"] == "pride" and r["bits"] == 3)
    assert (failed_only["n_ok"], failed_only["n_failed"], failed_only["delta_loss"]) == (0, 1, None)
    assert failed_only["fit_verdict"] == "insufficient" and failed_only["fit_exponents"] == []


def test_an_ok_pooled_fit_serves_a_bit_width_whose_own_fit_is_insufficient(fits):
    """Every 8-bit Δloss interval includes 0, so the 8-bit Ouyang fit has no points; the row shows a law pooled over
    bits (its quantizer label `rtn-w*-g32-asym` covers rtn-w8-g32-asym) on nominal bits, not the fp-loss fit of
    the same group; its exponents are the law's."""
    assert _fit(fits, "ouyang", bits=8)["status"] == "insufficient"
    rows = leaderboard_rows(all_cells(), fits, {})
    row = next(r for r in rows if r["schedule"] == "cosine" and r["eval"] == "vathek" and r["bits"] == 8)
    (picked,) = [f for f in fits if f["key"] == row["fit_key"]]
    assert (picked["status"], picked["bits"], picked["bits_axis"]) == ("ok", None, "nominal") and row["fit_pooled"]
    exponents = {"unified": ["alpha", "beta", "gamma"], "kumar": ["gamma_N", "gamma_D", "gamma_post"]}
    assert [p["name"] for p in row["fit_exponents"]] == exponents[picked["law"]]


def test_match_fit_prefers_the_newest_of_equally_specific_fits(fits):
    old = _fit(fits, "ouyang", bits=4)
    new = {**old, "key": "newer", "created_at": "2099-12-01T00:00:00+00:00"}
    row = {"family": "novels-probe", "schedule": "cosine", "eval": "vathek", "method": "rtn", "bits": 4,
           "quantizer": "rtn-w4-g32-asym", "group_size": 32}
    assert match_fit([old, new], row)["key"] == "newer"
    assert match_fit([old], {**row, "quantizer": "rtn-w4-g32-sym"}) is None  # another quantizer's fit


def test_the_drawn_curve_is_the_law_at_the_stored_parameters(fits):
    """Δloss = k · D^β / (N^α · P^γ) by hand from the stored parameters; P is the nominal bits on that axis and the
    cell's effective bits (4 + 0.5625 in board_synthetic) on the other; the band is around the curve."""
    d_over_n = np.array([10.0, 40.0, 120.0])
    cell_ = next(c for c in all_cells() if c["n_params"] == N2 and c["bits"] == 4 and c["eval"] == "vathek")
    for axis, p in (("nominal", 4.0), ("effective", 4.5625)):
        fit = _fit(fits, "unified", axis=axis)
        v = {k: fit["params"][k]["value"] for k in ("k", "alpha", "beta", "gamma")}
        d = d_over_n * N2
        expect = v["k"] * d ** v["beta"] / (N2 ** v["alpha"] * p ** v["gamma"])
        mean, low, high = fit_curve(fit, cell_, d_over_n)
        np.testing.assert_allclose(mean, expect, rtol=1e-9)
        assert np.all(low <= high) and np.all(low < mean * 1.5) and np.all(high > mean / 1.5)


def test_an_insufficient_fit_is_not_drawn(fits):
    insufficient = _fit(fits, "ouyang", bits=8)
    cell_ = next(c for c in all_cells() if c["bits"] == 8)
    assert fit_curve(insufficient, cell_, np.array([10.0])) is None


def test_d_star_is_read_for_the_size_and_bit_width(fits):
    fit = _fit(fits, "unified")
    entry = fit_view.d_star_entry(fit, N1, 3)
    assert (entry["n_params"], entry["bits"]) == (N1, 3)
    assert fit_view.d_star_entry(fit, N1, 5) is None and fit_view.d_star_entry(None, N1, 3) is None


def test_slug_is_safe_and_distinct():
    assert slug("<script>alert(1)</script>").startswith("script-alert-1-script-")
    assert slug("a/b") != slug("a-b") and "/" not in slug("../../etc")


def test_number_formats():
    assert fmt.human(106_816) == "107K" and fmt.human(None) == "—" and fmt.human(math.inf) == "∞"
    assert fmt.num(0.0453) == "0.0453" and fmt.num(math.nan) == "—" and fmt.num(-9e-5) == "-9.000e-05"
    assert fmt.sort_value(0.5) == "0.5" and fmt.sort_value(None) == ""


@pytest.mark.parametrize("values, sig, shown", [
    # Δloss from 9.7e-5 to 0.47: fixed decimals would need 6 places, so the whole column is scientific
    ([0.4722, 9.693e-05, None, -5.35e-4], 3, ["4.72e-01", "9.69e-05", "—", "-5.35e-04"]),
    # PPL ratios near 1: five significant digits of the smallest give five decimals, for every row
    ([1.6036, 0.99947, 1.0001], 5, ["1.60360", "0.99947", "1.00010"]),
    ([74.9, 18.72, 150.0], 3, ["74.9", "18.7", "150.0"]),
    ([0.87, 1.2e-5], 2, ["8.7e-01", "1.2e-05"]),  # p-values over five decades
    ([2.5e6, 3.0], 3, ["2.50e+06", "3.00e+00"]),
    ([0.0, None], 3, ["0.00", "—"]),
])
def test_a_column_has_one_format(values, sig, shown):
    f = fmt.column(values, sig)
    assert [f(v) for v in values] == shown


def test_an_interval_is_written_like_its_column():
    sci, fixed = fmt.column([0.4722, 9.693e-05]), fmt.column([0.5370, 0.9939], 4)
    assert sci.ci(-2.179e-06, 1.916e-04) == "[-2.18e-06, 1.92e-04]" and sci.signed(0.083) == "+8.30e-02"
    assert fixed.ci(0.5298, 0.544) == "[0.5298, 0.5440]" and fixed.ci(None, 1.0) == ""


def test_a_commit_with_uncommitted_changes_says_so():
    sha = "21d6043da25dcf885b2c2824bc400d397d25490d"
    assert fmt.commit(sha) == "21d6043da25d" and fmt.commit(None) == "—"
    assert fmt.commit(sha + "+dirty") == "21d6043da25d (uncommitted changes)"


def test_a_fit_group_fit_serves_each_member_family(fits):
    """A fit of a fit group (`family` lists its members) matches rows of each member family; the nominal-bits fit
    wins over an equally specific effective one."""
    nominal = {**_fit(fits, "unified"), "key": "nom", "family": "novels-probe,other"}
    effective = {**_fit(fits, "unified", axis="effective"), "key": "eff", "family": "novels-probe,other"}
    assert fit_view.families(nominal) == ["novels-probe", "other"]
    other = [{**c, "family": "other"} for c in all_cells() if c["family"] == "novels-probe"]
    rows = leaderboard_rows(all_cells() + other, [effective, nominal], {})
    picked = {(r["family"], r["fit_key"]) for r in rows if r["schedule"] == "cosine" and r["eval"] == "vathek"}
    assert picked == {("novels-probe", "nom"), ("other", "nom")}
    assert fit_view.diagnostics(nominal)["curvature_p"] == nominal["diagnostics"]["curvature"]["p_value"]


def test_which_checkpoint_on_the_same_tokens_is_decided_paired():
    """Two checkpoints scored on the same tokens: the text's difficulty varies a lot from window to window (so each
    cell's own interval is wide and they overlap), but the better checkpoint is better on every window by 0.01
    nats/token. The paired test sees it; comparing the two intervals cannot."""
    from qsens.metrics.compare import encode_window_sums

    rng = np.random.default_rng(7)
    n = np.full(200, 100.0)
    difficulty = 4.0 + rng.normal(0, 1.0, 200)  # per-window mean loss, shared by both checkpoints
    a = cell("f", None, 1000, 10_000, 4.00, 4, 0.01)
    b = cell("f", None, 1000, 20_000, 4.01, 4, 0.01)
    for c, offset in ((a, 0.0), (b, 0.01)):
        fp = n * (difficulty + offset + rng.normal(0, 1e-3, 200))
        c["window_sums"] = encode_window_sums({"n_tokens": n, "fp_nll": fp, "delta_nll": n * 0.01,
                                               "doc": np.zeros(200, dtype=np.int64)})
        c["tokens_digest"] = "same-ids"
        c["q_loss"] = float((fp.sum() + n.sum() * 0.01) / n.sum())
        half = 1.96 * difficulty.std() / np.sqrt(200)  # each cell's own interval, iid bound: about ±0.14
        c["q_loss_ci_low"], c["q_loss_ci_high"] = c["q_loss"] - half, c["q_loss"] + half
    assert a["q_loss_ci_high"] > b["q_loss_ci_low"]  # the intervals overlap
    (best,) = best_checkpoints([a, b])
    assert best["checkpoint"] == a["checkpoint"] and best["clear"] is True and best["clear_by"] == "paired"

    b["tokens_digest"] = "other-ids"  # different tokens: only the intervals can be compared, and they overlap
    (best,) = best_checkpoints([a, b])
    assert best["clear"] is False and best["clear_by"] == "intervals"


def test_eval_scopes_label_an_eval_of_few_documents():
    """The board says which evals' intervals are for their documents only (fewer than 5: issue 21)."""
    import numpy as np

    from qsens.board.model import eval_scopes
    from qsens.metrics.compare import encode_window_sums

    def cell(ev, docs):
        w = 4 * docs
        sums = {"n_tokens": np.ones(w), "fp_nll": np.ones(w), "delta_nll": np.zeros(w),
                "doc": np.repeat(np.arange(docs), 4)}
        return {"eval": ev, "window_sums": encode_window_sums(sums)}

    got = eval_scopes([cell("novels", 2), cell("wiki", 62), {"eval": "old"}])
    assert got == [{"eval": "novels", "documents": 2, "scope": "these documents only"},
                   {"eval": "old", "documents": 0, "scope": None},
                   {"eval": "wiki", "documents": 62, "scope": "over documents"}]
