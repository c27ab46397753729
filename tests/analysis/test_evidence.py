"""The findings block's sentences on what its numbers rest on (qsens.analysis.evidence): documents, seeds, resolution."""

import math
import statistics

import numpy as np
import pytest

from qsens.analysis.evidence import documents, seeds
from qsens.metrics.compare import encode_window_sums


def cell(docs: int, rng, tokens=1, seed=0, bits=2, delta=0.1, n_params=10, eval="e", ci=(0.05, 0.15)):
    windows = 20 * docs
    sums = {"n_tokens": np.full(windows, 64.0), "fp_nll": np.full(windows, 4.0 * 64),
            "delta_nll": (delta + 0.02 * rng.normal(size=windows) + np.repeat(0.05 * rng.normal(size=docs), 20)) * 64,
            "doc": np.repeat(np.arange(docs), 20)}
    return {"family": "f", "eval": eval, "n_params": n_params, "size": f"s{n_params}", "schedule": "cosine",
            "quantizer": f"rtn-w{bits}", "method": "rtn", "bits": bits, "tokens": tokens, "train_seed": seed,
            "fp_loss": 4.0, "delta_loss": delta, "delta_loss_ci_low": ci[0], "delta_loss_ci_high": ci[1],
            "n_tokens": windows * 64, "status": "ok", "tokens_digest": eval, "window_sums": encode_window_sums(sums)}


def test_an_eval_of_two_documents_is_labelled_these_documents_only():
    rng = np.random.default_rng(0)
    text = documents([cell(2, rng)]).text
    assert "`e`: 2 documents, 2,560 tokens, every interval *these documents only*" in text


def test_an_eval_of_many_documents_reports_the_two_level_width_and_share():
    from qsens.metrics.docinterval import cell_document_interval

    rng = np.random.default_rng(1)
    c = cell(8, rng, ci=(0.08, 0.12))
    claim = documents([c])
    d = cell_document_interval(c)
    ratio = (d.ci_high - d.ci_low) / 0.04
    assert claim.numbers["e"]["width_ratio"] == pytest.approx((ratio, ratio))
    assert claim.numbers["e"]["share"] == pytest.approx((d.between_share, d.between_share))
    assert "8 documents" in claim.text and f"{ratio:.2f}" in claim.text


def test_the_seed_sd_is_the_pooled_sd_of_log_delta_within_checkpoint():
    rng = np.random.default_rng(2)
    deltas = {1: [0.10, 0.12, 0.09], 2: [0.30, 0.25, 0.36]}  # two budgets, three seeds each
    cells = [cell(2, rng, tokens=t, seed=s, delta=d, ci=(d / 2, 2 * d)) for t, ds in deltas.items()
             for s, d in enumerate(ds)]
    cells.append(cell(2, rng, tokens=3, seed=0, delta=0.01, ci=(-0.01, 0.03)))  # unresolved: left out
    claim = seeds(cells)
    ss = sum(sum((math.log(x) - statistics.fmean(map(math.log, ds))) ** 2 for x in ds) for ds in deltas.values())
    assert claim.numbers["e"]["resolved"][2][0] == pytest.approx(math.sqrt(ss / 4), rel=1e-12)
    assert claim.numbers["e"]["resolved"][2][3] == 4  # degrees of freedom: 2 groups x (3 - 1)
    assert "3 training seeds" in claim.text


def test_one_seed_says_no_interval_contains_training_noise():
    rng = np.random.default_rng(3)
    assert "no interval contains training noise" in seeds([cell(2, rng)]).text


def test_resolution_counts_cells_and_marks_the_floored_ones_in_the_table():
    from qsens.analysis.claims import delta_table
    from qsens.analysis.evidence import resolution, within_floor
    from qsens.fit.groups import UNRESOLVED

    rng = np.random.default_rng(4)
    cells = [cell(2, rng, tokens=1, delta=-0.01, ci=(-0.02, 0.0)), cell(2, rng, tokens=2, delta=0.01, ci=(-0.01, 0.03)),
             cell(2, rng, tokens=3, delta=0.02, ci=(0.01, 0.03)), cell(2, rng, tokens=4, delta=0.2, ci=(0.1, 0.3))]
    for i, c in enumerate(cells):
        c["checkpoint"] = f"ck{i}"
    fits = [{"status": "ok", "eval": "e", "excluded": [{"checkpoint": "ck2", "bits": 2, "reason": UNRESOLVED},
                                                        {"checkpoint": "ck0", "bits": 2, "reason": "non-positive"}]}]
    assert within_floor(fits) == {("e", "ck2", 2)}
    claim = resolution(cells, fits)
    assert claim.numbers == {"cells": 4, "nonpositive": 1, "includes_zero": 1, "within_floor": 1}
    table = delta_table(cells, "e", "f", within_floor(fits))
    assert "| 0.0200† |" in table and "0.2000 [0.1000, 0.3000]" in table and "| 0.0100 |" in table
