"""The board's data model: "which checkpoint", headline rows, fit matching and reading, law evaluation."""

from __future__ import annotations

import json
import math
import sqlite3

import numpy as np
import pytest
from board_synthetic import FITS, N1, N2, all_cells, cell

from qsens.board import data as board_data
from qsens.board import fmt, laws
from qsens.board.model import best_checkpoints, headline, leaderboard_rows, match_fit, slug


def _fits() -> list[dict]:
    rows = [{"key": k, "law": law, "family": "novels-probe", "schedule": sched, "eval": "vathek", "method": "rtn",
             "bits": "pooled" if bits is None else bits, "group_size": gs, "quantizer": q,
             "params_json": json.dumps(p), "r2": r2, "created_at": "2026-11-22"}
            for k, law, sched, bits, gs, q, p, r2, _ in FITS]
    return [board_data.normalize_fit(r) for r in rows]


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


def test_leaderboard_rows_one_per_group_with_range_and_fit():
    rows = leaderboard_rows(all_cells(), _fits(), {})
    keys = [(r["family"], r["schedule"], r["eval"], r["quantizer"]) for r in rows]
    assert len(keys) == len(set(keys)) == 11  # 2 schedules × 4 bits + pride × 2 quantizers + the hostile family
    row = next(r for r in rows if r["schedule"] == "cosine" and r["eval"] == "vathek" and r["bits"] == 2)
    assert (row["n_params"], row["tokens"], row["delta_loss"]) == (N2, 48_000_000, 0.900)
    assert (row["delta_loss_min"], row["delta_loss_max"]) == (0.0018, 0.900)
    assert row["fit_key"] == "fit-w2-cosine" and {p["name"] for p in row["fit_exponents"]} == {"alpha", "beta"}
    row4 = next(r for r in rows if r["schedule"] == "cosine" and r["eval"] == "vathek" and r["bits"] == 4)
    assert row4["fit_key"] == "fit-pooled-cosine" and row4["fit_pooled"]
    wsd = next(r for r in rows if r["schedule"] == "wsd" and r["bits"] == 4)
    assert wsd["fit_key"] is None  # both fits are for the cosine schedule
    failed_only = next(r for r in rows if r["eval"] == "pride" and r["bits"] == 3)
    assert (failed_only["n_ok"], failed_only["n_failed"], failed_only["delta_loss"]) == (0, 1, None)


def test_match_fit_prefers_the_newest_of_equally_specific_fits():
    old, new = _fits()[0], {**_fits()[0], "key": "newer", "created_at": "2026-12-01"}
    row = {"family": "novels-probe", "schedule": "cosine", "eval": "vathek", "method": "rtn", "bits": 4,
           "quantizer": "rtn-w4-g32-asym", "group_size": 32}
    assert match_fit([old, new], row)["key"] == "newer"


@pytest.mark.parametrize("params, expect", [
    ({"beta": 0.5}, (0.5, None, None)),
    ({"beta": [0.5, 0.4, 0.6]}, (0.5, 0.4, 0.6)),
    ({"beta": {"value": 0.5, "ci_low": 0.4, "ci_high": 0.6}}, (0.5, 0.4, 0.6)),
    ([{"name": "beta", "value": 0.5, "low": 0.4, "high": 0.6}], (0.5, 0.4, 0.6)),
    ({"beta": "nan"}, (None, None, None)),
])
def test_normalize_fit_reads_parameter_shapes(params, expect):
    fit = board_data.normalize_fit({"law": "x", "family": "fam/wsd", "bits": "pooled", "params": json.dumps(params)})
    (p,) = fit["params"]
    assert (p["value"], p["lo"], p["hi"]) == expect
    assert (fit["family"], fit["schedule"], fit["pooled"], fit["bits"]) == ("fam", "wsd", True, None)


def test_normalize_fit_survives_garbage():
    fit = board_data.normalize_fit({"params_json": "{not json", "bits": "four", "r2": "x", "d_star": "[1,"})
    assert fit["params"] == [] and fit["r2"] is None and fit["law"] == "?"


def test_read_fits_without_table_is_empty(tmp_path):
    db = tmp_path / "qsens.sqlite"
    sqlite3.connect(db).close()
    assert board_data.read_fits(db) == []


def test_builtin_law_matches_formula_and_band_contains_it():
    (fit,) = [f for f in _fits() if f["key"] == "fit-pooled-cosine"]
    n, d = np.array([N1, N2]), np.array([4e6, 1.6e7])
    mean, lo, hi = laws.predict(fit, n, d, 4)
    p = {x["name"]: x["value"] for x in fit["params"]}
    expect = p["k"] * d ** p["beta"] / (n ** p["alpha"] * 4 ** p["gamma"])
    np.testing.assert_allclose(mean, expect, rtol=1e-12)
    assert mean[0] == pytest.approx(0.0196)  # k was set through this measured point
    assert np.all(lo <= mean) and np.all(mean <= hi)


def test_unknown_law_is_not_drawable():
    fit = board_data.normalize_fit({"law": "spline", "params": json.dumps({"knots": 3})})
    assert laws.predict(fit, [1e5], [1e6], 4) is None


def test_slug_is_safe_and_distinct():
    assert slug("<script>alert(1)</script>").startswith("script-alert-1-script-")
    assert slug("a/b") != slug("a-b") and "/" not in slug("../../etc")


def test_number_formats():
    assert fmt.human(106_816) == "107K" and fmt.human(None) == "—"
    assert fmt.num(0.0453) == "0.0453" and fmt.num(math.nan) == "—" and fmt.num(-9e-5) == "-9.000e-05"
    assert fmt.ci(1.0, 2.0) == "[1, 2]" and fmt.ci(None, 2.0) == ""
    assert fmt.sort_value(0.5) == "0.5" and fmt.sort_value(None) == ""


def test_a_fit_group_fit_serves_each_member_family_with_its_verdict():
    """A fit of a fit group (`family` lists its members) matches rows of each member family; its verdict and
    diagnostics reach the row and the record; the nominal-bits fit wins over an equally specific effective one."""
    diag = {"residual_sd": 0.8, "curvature": {"p_value": 0.004}, "loo_rms": 0.7, "reasons": ["residual SD 0.80 > 0.25"]}
    base = {"law": "unified", "family": "novels-probe,other", "schedule": "cosine", "eval": "vathek", "method": "rtn",
            "bits": None, "params": json.dumps({"beta": 1.5}), "verdict": "does not fit",
            "diagnostics": json.dumps(diag), "created_at": "2026-11-22"}
    nominal = board_data.normalize_fit({**base, "key": "nom", "bits_axis": "nominal"})
    effective = board_data.normalize_fit({**base, "key": "eff", "bits_axis": "effective"})
    assert nominal["families"] == ["novels-probe", "other"] and nominal["diagnostics"]["curvature_p"] == 0.004
    rows = leaderboard_rows(all_cells(), [effective, nominal], {})
    row = next(r for r in rows if r["schedule"] == "cosine" and r["eval"] == "vathek" and r["bits"] == 4)
    assert row["fit_key"] == "nom" and row["fit_verdict"] == "does not fit"


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
