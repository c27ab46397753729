"""Fits over stored-cell dicts: row order, exclusions, too-little data, the fits table, the CLI, the board hook."""

from __future__ import annotations

import random
import sqlite3

import numpy as np
import pytest

import fit_synthetic as S
from qsens.cli import main as qsens_main
from qsens.fit import predict
from qsens.store import fits as store
from qsens.fit.pipeline import compare_schedules, fit_cells


def _cells(seed=0, **kw):
    return S.make_cells(S.unified, S.UNIFIED_TRUE, seed=seed, **kw)


def _by_key(fits):
    return {f.record["key"]: f.record for f in fits}


def test_fits_do_not_depend_on_the_order_of_rows():
    cells = _cells()
    shuffled = cells[:]
    random.Random(1).shuffle(shuffled)
    a, b = _by_key(fit_cells(cells, n_boot=20)), _by_key(fit_cells(shuffled, n_boot=20))
    assert a.keys() == b.keys()
    for key, rec in a.items():
        assert rec["params"] == b[key]["params"]
        assert rec["d_star"] == b[key].get("d_star") if "d_star" in rec else True


def test_non_positive_values_are_excluded_and_recorded():
    cells = _cells(bits=(2, 8))
    for c in cells:
        if c["bits"] == 8 and c["tokens"] <= 5 * 1.0e5:
            c["delta_loss"] = -1e-5  # near-lossless noise
    records = [f.record for f in fit_cells(cells, n_boot=10)]
    eight = next(r for r in records if r["law"] == "ouyang" and r["bits"] == 8)
    assert eight["n_excluded"] == 1 and eight["excluded"][0]["reason"].startswith("non-positive")
    assert eight["n_points"] == len(S.SIZES) * len(S.RATIOS) - 1


def test_too_few_points_is_a_message_not_a_crash():
    cells = [c for c in _cells() if c["size"] == "n100000" and c["tokens"] in (500_000, 800_000)]
    records = [f.record for f in fit_cells(cells, n_boot=10)]
    assert records and all(r["status"] == "insufficient" for r in records)
    assert all("too few" in r["message"] for r in records)


def test_one_size_holds_the_n_exponent_fixed_and_says_so():
    cells = [c for c in _cells() if c["size"] == "n100000"]
    ouyang = next(f.record for f in fit_cells(cells, n_boot=10) if f.record["law"] == "ouyang")
    assert ouyang["status"] == "ok" and ouyang["params"]["alpha"]["fixed"] and "alpha" in ouyang["message"]


def test_schedule_comparison_finds_a_different_d_exponent():
    """Families of one fit group are compared (paired); a family outside it, never."""
    cosine = _cells(seed=1, family="micro-cosine", schedule="cosine", fit_group="micro")
    wsd = S.make_cells(S.unified, dict(S.UNIFIED_TRUE, beta=0.35), seed=2, family="micro-wsd", schedule="wsd",
                       fit_group="micro")
    same = S.make_cells(S.unified, S.UNIFIED_TRUE, seed=3, family="micro-other", schedule="other",
                        fit_group="micro")
    alien = S.make_cells(S.unified, S.UNIFIED_TRUE, seed=4, family="elsewhere", schedule="constant")
    comparisons = compare_schedules(fit_cells(cosine + wsd + same + alien, n_boot=60, bits_axes=("nominal",)))
    unified = {(c["schedule_a"], c["schedule_b"]): c for c in comparisons if c["law"] == "unified"}
    assert unified[("cosine", "wsd")]["differs"] and unified[("cosine", "wsd")]["ci_low"] > 0.1
    assert not unified[("cosine", "other")]["differs"]
    assert all("constant" not in (c["schedule_a"], c["schedule_b"]) for c in comparisons)
    assert all(c["paired"] and c["n_draws"] == 60 for c in unified.values())


def test_fits_table_replaces_rather_than_duplicates(tmp_path):
    con = sqlite3.connect(tmp_path / "qsens.sqlite")
    con.row_factory = sqlite3.Row
    records = [f.record for f in fit_cells(_cells(), n_boot=10)]
    store.save_fits(con, records)
    store.save_fits(con, records)
    assert con.execute("SELECT COUNT(*) FROM fits").fetchone()[0] == len(records)
    changed = [c if c["checkpoint"] != "n100000-d500000" else {**c, "delta_loss": c["delta_loss"] * 1.1}
               for c in _cells()]
    store.save_fits(con, [f.record for f in fit_cells(changed, n_boot=10)])  # new inputs: supersede
    rows = store.load_fits(con)
    assert len(rows) == len(records) and {r["key"] for r in rows} != {r["key"] for r in records}


def test_cli_fits_a_results_folder_and_the_board_can_draw_the_fit(tmp_path, capsys):
    from qsens.board.data import load
    from qsens.board.plots import fit_curve
    from qsens.store import ResultStore

    results = ResultStore(tmp_path)
    for cell in _cells():
        results.save(cell)
    assert qsens_main(["fit", "--results", str(tmp_path), "--bootstrap", "20"]) == 0
    assert qsens_main(["fit", "--results", str(tmp_path), "--bootstrap", "20"]) == 0
    out = capsys.readouterr().out
    assert "beta=" in out and "U-curve bottom" in out
    fits = load(tmp_path).fits
    # chinchilla, 3 ouyang, unified and kumar on each bits axis (nominal, effective)
    assert len({f["key"] for f in fits}) == len(fits) == 1 + 3 + 2 + 2
    unified = next(f for f in fits if f["law"] == "unified" and f["bits_axis"] == "nominal")
    mean, low, high = fit_curve(unified, {"n_params": 1e5, "bits": 3}, np.array([100.0]))  # D = 1e7
    expected = S.unified(1e5, 1e7, 3, S.UNIFIED_TRUE)
    assert low[0] <= mean[0] <= high[0] and mean[0] == pytest.approx(expected, rel=0.1)


def test_cli_without_a_database_says_so(tmp_path, capsys):
    assert qsens_main(["fit", "--results", str(tmp_path / "none")]) == 2
    assert "no results database" in capsys.readouterr().err


def test_predict_matches_the_law():
    cells = _cells(seed=5)
    record = next(f.record for f in fit_cells(cells, n_boot=10) if f.record["law"] == "kumar")
    p = {k: v["value"] for k, v in record["params"].items()}
    mean, _, _ = predict(record, 2e5, 4e6, 4)
    manual = p["C_T"] * 4e6 ** p["gamma_D"] / 2e5 ** p["gamma_N"] * np.exp(-4 / p["gamma_post"])
    assert float(mean) == pytest.approx(manual, rel=1e-9)


def test_too_few_checkpoints_give_no_interval_rather_than_a_false_one():
    """With 4 checkpoints of one size the only identifiable resamples are near-permutations of the data: the
    interval would collapse to the point estimate. It is reported as unknown (NaN), and so is a comparison."""
    cells = [c for c in _cells() if c["size"] == "n100000" and c["tokens"] <= 2_000_000]
    wsd = [{**c, "key": c["key"] + "w", "family": "w", "schedule": "wsd"} for c in cells]
    fits = fit_cells(cells + wsd, n_boot=30)
    unified = next(f.record for f in fits if f.record["law"] == "unified")
    assert unified["status"] == "ok" and np.isnan(unified["params"]["beta"]["ci_low"])
    assert all(c["differs"] is None for c in compare_schedules(fits))
