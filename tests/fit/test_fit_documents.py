"""Fits resample documents (issue 21): where every point was scored on the same >= 5 documents, each bootstrap draw
recomputes every point's Δ on one shared draw of documents. Checked on an exact law whose documents scale Δ by known
factors, so a draw's intercept is a closed form of the drawn documents."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import fit_synthetic as S
from qsens.fit.fitting import fit_law, with_documents
from qsens.fit.groups import to_points
from qsens.fit.laws import OUYANG
from qsens.metrics.compare import encode_window_sums
from qsens.metrics.docinterval import cells_document_sums

SIZES, RATIOS = (1.0e5, 2.0e5, 4.0e5), (5, 12, 32, 80)
FACTORS = np.array([0.6, 0.8, 1.0, 1.3, 1.7, 2.2])  # document j's Δ is the cell's Δ times FACTORS[j] / their mean


def doc_cells(factors=FACTORS, windows=3, tokens=64.0):
    """3-bit cells of an exact Ouyang law, each scored on len(factors) documents of equal length."""
    out = []
    for c in S.make_cells(S.ouyang, S.OUYANG_TRUE, seed=0, noise=0.0, fp_noise=0.0, bits=(3,), family="f",
                          schedule="cosine", sizes=SIZES, ratios=RATIOS, fit_group="g"):
        per_token = np.repeat(c["delta_loss"] * factors / factors.mean(), windows)
        sums = {"n_tokens": np.full(per_token.size, tokens), "fp_nll": np.full(per_token.size, 4.0 * tokens),
                "delta_nll": per_token * tokens, "doc": np.repeat(np.arange(len(factors)), windows)}
        out.append({**c, "window_sums": encode_window_sums(sums)})
    return out


def test_a_draw_recomputes_each_point_on_the_drawn_documents_in_float64():
    points = to_points(doc_cells(), "delta_loss", documents=cells_document_sums)[0]
    assert points.doc_num.shape == (len(points), 6)
    np.testing.assert_allclose(points.doc_num.sum(1) / points.doc_den.sum(1), points.y, rtol=1e-12)
    pick = np.array([5, 5, 0, 2, 2, 2])
    drawn = with_documents(points, pick)
    np.testing.assert_allclose(drawn.y, points.y * FACTORS[pick].mean() / FACTORS.mean(), rtol=1e-12)


def test_the_intercept_moves_with_the_drawn_documents_and_the_slopes_do_not():
    """Every draw's log k is log k_true + log(mean f over the drawn documents / mean f): one of the 462 multisets
    of 6 documents; α and β stay exact; the draws' variance of log k is that of the document draw (computed here
    with an independent generator, 200,000 draws) within 15% (Monte Carlo SE of a variance from 1,000 draws ~5%)."""
    points = to_points(doc_cells(), "delta_loss", documents=cells_document_sums)[0]
    fit = fit_law(OUYANG, points, n_boot=1000, seed=3, loo=False)
    log_k = fit.draws[:, 0] - S.OUYANG_TRUE["log_k"]
    possible = np.unique([np.log(FACTORS[list(m)].mean() / FACTORS.mean())
                          for m in itertools.combinations_with_replacement(range(6), 6)])
    assert np.abs(log_k[:, None] - possible[None, :]).min(axis=1).max() < 2e-5
    np.testing.assert_allclose(fit.draws[:, 1:], [[S.OUYANG_TRUE["alpha"], S.OUYANG_TRUE["beta"]]] * len(log_k),
                               atol=1e-5)
    rng = np.random.default_rng(12345)
    reference = np.log(FACTORS[rng.integers(0, 6, (200_000, 6))].mean(axis=1) / FACTORS.mean())
    assert np.var(log_k, ddof=1) / np.var(reference) == pytest.approx(1.0, abs=0.15)


def test_fewer_than_five_documents_are_not_resampled():
    """Two documents (the held-out novels) cannot stand for other text: no document sums, and the draws are the
    unit bootstrap's, draw for draw, as for cells without window sums."""
    two = doc_cells(np.array([0.7, 1.4]))
    assert cells_document_sums(two, "delta_loss") is None
    assert to_points(two, "delta_loss", documents=cells_document_sums)[0].doc_num is None
    bare = [{k: v for k, v in c.items() if k != "window_sums"} for c in two]
    a = fit_law(OUYANG, to_points(two, "delta_loss", documents=cells_document_sums)[0], n_boot=50, seed=1, loo=False)
    b = fit_law(OUYANG, to_points(bare, "delta_loss")[0], n_boot=50, seed=1, loo=False)
    np.testing.assert_array_equal(a.draws, b.draws)
    assert cells_document_sums(doc_cells(), "kl_mean") is None  # a metric the window sums do not hold


def test_the_stored_fit_says_how_many_documents_its_draws_resampled():
    from qsens.fit.pipeline import fit_cells

    fitted = [f for f in fit_cells(doc_cells(), n_boot=20, laws=(OUYANG,), bits_axes=("nominal",),
                                   documents=cells_document_sums) if f.record["law"] == "ouyang"]
    assert fitted and all(f.record["draws"]["documents"] == 6 for f in fitted)
    two = [f for f in fit_cells(doc_cells(np.array([0.7, 1.4])), n_boot=20, laws=(OUYANG,), bits_axes=("nominal",),
                         documents=cells_document_sums)
           if f.record["law"] == "ouyang"]
    assert two and all("documents" not in f.record["draws"] for f in two)


def test_each_fit_is_reported_as_it_ends():
    """`qsens fit` shows progress through on_fit: called once per fit, with the record that is returned."""
    from qsens.fit.pipeline import fit_cells

    seen = []
    out = fit_cells(doc_cells(), n_boot=10, laws=(OUYANG,), bits_axes=("nominal",), on_fit=seen.append)
    assert seen == [f.record for f in out] and len(seen) >= 2  # the fp-loss fit, then the degradation fit(s)
