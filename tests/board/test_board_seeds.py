"""Seed bands on the board (issue 21): a family with three training seeds is drawn as the mean per (N, D) with a
min-max band, and its tables say how many seeds; fitted curves and D* are shown past the data only from fits that
fit. The synthetic seeds (board_synthetic.seeded_cells) scale Δloss by known factors, so means and ranges are
closed forms."""

from __future__ import annotations

import numpy as np
import pytest
from board_synthetic import CHECKPOINTS, N1, SEED_SCALE, T0, make_results, seeded_cells

from qsens.board import canvas, plots
from qsens.board.build import build_board
from qsens.board.model import family_page, leaderboard_rows
from qsens.store.fits import read_fits


@pytest.fixture(scope="module")
def seeded_site(tmp_path_factory):
    root = tmp_path_factory.mktemp("seeds")
    results = make_results(root / "results", cells=seeded_cells())
    build_board(results, root / "site", now=T0)
    return results, root / "site"


def _n1_2bit():
    return sorted((c for c in seeded_cells() if c["n_params"] == N1 and c["bits"] == 2), key=lambda c: c["tokens"])


def _truth_n1_2bit():
    """{D: (mean, min, max)} of Δloss over the three seeds, from the probe's numbers × SEED_SCALE."""
    out = {}
    for schedule, n, d, _, deltas in CHECKPOINTS:
        if schedule == "cosine" and n == N1:
            v = [deltas[2] * k for k in SEED_SCALE]
            out[d] = (sum(v) / 3, min(v), max(v))
    return out


def test_the_seed_summary_is_the_mean_and_range_over_seeds():
    rows = plots.seed_summary(_n1_2bit(), "delta_loss")
    truth = _truth_n1_2bit()
    assert [r["tokens"] for r in rows] == sorted(truth) and all(r["n_seeds"] == 3 for r in rows)
    for r in rows:
        assert (r["mean"], r["low"], r["high"]) == pytest.approx(truth[r["tokens"]], rel=1e-12)


def test_the_delta_plot_draws_the_mean_and_a_min_max_band():
    """The drawn band's vertices are the seeds' min and max at each D/N, the line is their mean."""
    plt = canvas.pyplot()
    fig, ax = plt.subplots()
    x, edge, note = plots._delta_seed_series(ax, _n1_2bit(), N1, 1e-6, "#000000", "N1")
    truth = _truth_n1_2bit()
    assert edge == 0 and "mean of 3 training seeds" in note and "min–max" in note
    np.testing.assert_allclose(x, [d / N1 for d in sorted(truth)])
    (band,) = ax.collections
    ys = band.get_paths()[0].vertices[:, 1]
    for d, (mean, low, high) in truth.items():
        assert np.any(np.isclose(ys, low, rtol=1e-12)) and np.any(np.isclose(ys, high, rtol=1e-12))
    mean_line = next(line for line in ax.lines if line.get_label().endswith("mean of 3 seeds"))
    np.testing.assert_allclose(mean_line.get_ydata(), [truth[d][0] for d in sorted(truth)], rtol=1e-12)
    plt.close(fig)


def test_tables_say_how_many_seeds(seeded_site):
    results, site = seeded_site
    fits = read_fits(results)[0]
    rows = leaderboard_rows(seeded_cells(), fits, {})
    assert rows and {r["n_seeds"] for r in rows} == {3}
    page = (site / family_page("seeds-probe")).read_text()
    assert "of 3 training seeds (plots: their mean and min–max band)" in page
    assert "mean of 3 training seeds per (N, D), band: min–max over the seeds" in page
    index = (site / "index.html").read_text()
    assert 'title="training seeds of the checkpoints' in index and '<td class="num" data-sort="3">3</td>' in index
    ok = [f for f in fits if f["status"] == "ok" and f["law"] != "chinchilla"]
    assert ok and all(f["draws"].get("seeds") == ["0", "1", "2"] for f in ok)  # the fits resampled the seeds
    assert all(f["diagnostics"]["noise"]["n_seeds"] == 3 for f in ok)


def _fit_line(fit_record, fits, verdict):
    plt = canvas.pyplot()
    fig, ax = plt.subplots()
    cell = next(c for c in seeded_cells() if c["n_params"] == N1 and c["bits"] == 2)
    x = np.array([2.0, 10.0, 40.0])
    record = {**fit_record, "verdict": verdict}
    notes = plots._draw_fit(ax, [record if f["key"] == record["key"] else f for f in fits], cell, N1, x, "#000")
    line = ax.lines[-1].get_xdata()
    plt.close(fig)
    return (float(line.min()), float(line.max())), len(ax.collections), notes[0]


def test_a_fit_that_does_not_fit_is_drawn_over_the_data_only_without_a_band(seeded_site):
    fits = read_fits(seeded_site[0])[0]
    fit = next(f for f in fits if f["law"] == "ouyang" and f["bits"] == 2 and f["status"] == "ok")
    (lo, hi), bands, note = _fit_line(fit, fits, "fits")
    assert (lo, hi) == pytest.approx((2.0 / 1.25, 40.0 * 1.25)) and bands == 1 and "band: 2.5-97.5" in note
    (lo, hi), bands, note = _fit_line(fit, fits, "does not fit")
    assert (lo, hi) == pytest.approx((2.0, 40.0)) and bands == 0
    assert "not extrapolated: the fit does not fit" in note


def test_d_star_is_marked_only_beside_an_fp_fit_that_fits(seeded_site, tmp_path):
    fits = read_fits(seeded_site[0])[0]
    fit = next(f for f in fits if f["law"] == "ouyang" and f["bits"] == 2 and f["status"] == "ok")
    fp = next(f for f in fits if f["key"] == fit["fp_fit_key"])
    cells = [c for c in seeded_cells() if c["bits"] == 2]
    assert fit.get("d_star")
    for own, beside, marked in (("fits", "fits", True), ("fits", "degenerate", False), ("does not fit", "fits", False)):
        changed = [{**f, "verdict": own} if f["key"] == fit["key"] else {**f, "verdict": beside} if f is fp else f
                   for f in fits]
        caption = plots.ucurve_plot(cells, changed, "t", tmp_path / f"{own}-{beside}.svg")
        svg = (tmp_path / f"{own}-{beside}.svg").read_text()
        assert ("D* (fit)" in svg) == marked, (own, beside)
        assert ("D* of the fit not shown" in caption) == (not marked)


def test_a_family_is_plotted_with_the_families_holding_its_other_seeds():
    """The micro family's seeds 1-2 come from a second manifest, hence a second family: seed_siblings joins
    families of one fit group and schedule whose training seeds are disjoint, and nothing else."""
    from qsens.board.model import seed_siblings

    def cells(family, schedule, seeds, group="g"):
        return [{"family": family, "schedule": schedule, "train_seed": s, "fit_group": group} for s in seeds]

    all_cells = (cells("a", "cosine", [0]) + cells("a-seeds", "cosine", [1, 2]) + cells("b-seeds", "wsd", [1, 2])
                 + cells("again", "cosine", [0]) + cells("other", "cosine", [3], group="h")
                 + cells("hub", "cosine", [None]))
    siblings = seed_siblings(all_cells)
    assert siblings["a"] == {"a", "a-seeds"}
    assert siblings["a-seeds"] == {"a", "a-seeds", "again"}  # both hold seed 0; neither holds 1-2
    assert siblings["b-seeds"] == {"b-seeds"}
    assert siblings["hub"] == {"hub"}
