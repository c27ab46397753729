"""Paired comparisons of two cells on the same tokens, against float64 computations done here."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from qsens.metrics.compare import decode_window_sums, encode_window_sums, paired_difference
from qsens.metrics.paired import window_sums
from qsens.metrics.scoring import QuantizedScores, ReferenceScores
from qsens.metrics.windows import EvalTokens
from qsens.analysis.effect import effect_markdown

W, PER = 400, 16


def _cell(fp: np.ndarray, q: np.ndarray, key: str, digest: str = "same") -> dict:
    n = fp.size
    w = np.arange(n) // PER
    tokens = EvalTokens(windows=[(torch.zeros(PER + 1, dtype=torch.long), 0, PER)] * W,
                        targets=torch.zeros(n, dtype=torch.long), target_bytes=torch.ones(n, dtype=torch.long),
                        window_index=torch.from_numpy(w), n_words=0, digest=digest)
    ref = ReferenceScores(fp, np.zeros(n, dtype=np.int64), None, np.zeros(n), digest)
    sums = window_sums(tokens, ref, QuantizedScores(q, None, np.ones(n, dtype=bool)))
    return {"key": key, "tokens_digest": digest, "window_sums": encode_window_sums(sums),
            "delta_loss": float((q - fp).mean()), "fp_loss": float(fp.mean())}


@pytest.fixture(scope="module")
def pair():
    """Two quantizers of one checkpoint: a large shared per-token component (text difficulty, both models
    err alike) plus small independent parts; B is worse than A by 0.01 nats/token."""
    rng = np.random.default_rng(0)
    n = W * PER
    fp = rng.gamma(2.0, 1.5, n)
    shared = rng.normal(0, 0.5, n)
    d_a, d_b = rng.normal(0, 0.05, n), rng.normal(0, 0.05, n)
    a = _cell(fp, fp + 0.05 + shared + d_a, "a")
    b = _cell(fp, fp + 0.06 + shared + d_b, "b")
    return a, b, d_a - d_b - 0.01


def test_window_sums_round_trip(pair):
    a, _, _ = pair
    s = decode_window_sums(a["window_sums"])
    assert s["n_tokens"].sum() == W * PER and s["doc"].tolist() == [0] * W


def test_paired_difference_matches_float64_and_is_as_narrow_as_the_difference(pair):
    a, b, diff = pair
    p = paired_difference(a, b, "delta_loss", seed=1)
    assert p["difference"] == pytest.approx(diff.mean(), abs=1e-12)
    # independent tokens in the difference: half-width ~ t(W/b - 1) sd / sqrt(n), b the block used
    t = stats.t.ppf(0.975, W / p["block_windows"] - 1)
    assert (p["ci_high"] - p["ci_low"]) / 2 == pytest.approx(t * diff.std(ddof=1) / math.sqrt(diff.size), rel=0.1)
    assert p["ci_high"] < 0  # B is worse: the paired interval sees it; each cell's own interval is ~7x wider


def test_unpaired_comparison_is_refused(pair):
    a, b, _ = pair
    with pytest.raises(ValueError, match="different tokens"):
        paired_difference(a, {**b, "tokens_digest": "other"})
    with pytest.raises(ValueError, match="window_sums"):
        paired_difference(a, {**b, "window_sums": None})


def test_report_states_the_paired_difference(pair):
    a, b, _ = pair
    rows = []
    for cell, tokens in ((a, 1_000_000), (b, 8_000_000)):  # the same quantizer on two checkpoints
        rows.append({**cell, "status": "ok", "eval": "e", "family": "f", "n_params": 1000, "tokens": tokens,
                     "checkpoint": f"c{tokens}", "quantizer": "rtn-w2", "delta_loss_ci_low": None,
                     "delta_loss_ci_high": None})
    text = effect_markdown(rows)
    p = paired_difference(b, a)
    assert f"paired difference {p['difference']:+.4f} [{p['ci_low']:+.4f}, {p['ci_high']:+.4f}]" in text


def test_report_pairs_within_a_training_run_and_labels_few_documents(pair):
    """A family holding two training seeds gives one check per (size, seed): the smallest and largest D of one run,
    never one seed's largest against the other's smallest; and an eval of < 5 documents says so in its heading."""
    a, b, _ = pair
    rows = []
    for seed, (first, last) in enumerate(((a, b), (b, a))):  # seed 0 grows a -> b, seed 1 shrinks b -> a
        for cell, tokens in ((first, 1_000_000), (last, 8_000_000)):
            rows.append({**cell, "status": "ok", "eval": "e", "family": "f", "n_params": 1000, "tokens": tokens,
                         "train_seed": seed, "checkpoint": f"s{seed}-c{tokens}", "quantizer": "rtn-w2",
                         "delta_loss_ci_low": None, "delta_loss_ci_high": None})
    text = effect_markdown(rows)
    grow, shrink = paired_difference(b, a), paired_difference(a, b)
    assert "- N=1,000, seed 0: " in text and "- N=1,000, seed 1: " in text
    before, after = text.split("seed 1:")
    assert f"{grow['difference']:+.4f}" in before and f"{shrink['difference']:+.4f}" in after
    assert "| N | seed | D |" in text
    assert "these documents only: 1 document)" in text  # the pair's window sums hold one document
