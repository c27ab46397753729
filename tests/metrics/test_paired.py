"""Sensitivity metrics against float64 computations done independently of qsens' scoring code."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy.special import log_softmax

from qsens.metrics.paired import sensitivity_metrics
from qsens.metrics.scoring import QuantizedScores, ReferenceScores, score_quantized, score_reference
from qsens.metrics.windows import EvalTokens, build_eval_tokens
from qsens.metrics.protocol import Protocol

from tests.metrics.test_windows import CharTokenizer

V = 128  # CharTokenizer ids are code points; the test text is ASCII


class BigramModel(torch.nn.Module):
    """logits[b, j] = table[input_ids[b, j]]: the prediction depends only on the current token."""

    def __init__(self, table: np.ndarray):
        super().__init__()
        self.table = torch.tensor(table, dtype=torch.float32)

    def forward(self, input_ids):
        return SimpleNamespace(logits=self.table[input_ids])


@pytest.fixture(scope="module")
def setup():
    rng = np.random.default_rng(0)
    text = "".join(rng.choice(list("abcdefgh ijk\n"), size=3000))
    fp_table = rng.normal(0, 2, size=(V, V)).astype(np.float32)
    q_table = (fp_table + rng.normal(0, 0.3, size=(V, V))).astype(np.float32)
    proto = Protocol(context_length=32, stride=32)
    tokens = build_eval_tokens(text, CharTokenizer(), proto)
    ref = score_reference(BigramModel(fp_table), tokens, torch.device("cpu"), batch_size=5)
    q = score_quantized(BigramModel(q_table), tokens, ref, torch.device("cpu"), batch_size=7)
    m = sensitivity_metrics(tokens, ref, q, bootstrap_samples=400, seed=1)
    return SimpleNamespace(text=text, fp=fp_table.astype(np.float64), q=q_table.astype(np.float64), m=m, tokens=tokens)


def float64_reference(s):
    """Recompute every metric over the scored (previous, target) pairs, in float64, from the text alone."""
    ids = np.array([ord(c) for c in s.text])
    L = 32
    targets = np.array([t for t in range(1, len(ids)) if t % L != 0])  # non-overlapping windows of 32
    prev, tgt = ids[targets - 1], ids[targets]
    lp_fp, lp_q = log_softmax(s.fp[prev], axis=-1), log_softmax(s.q[prev], axis=-1)
    nll_fp, nll_q = -lp_fp[np.arange(len(tgt)), tgt], -lp_q[np.arange(len(tgt)), tgt]
    kl = (np.exp(lp_fp) * (lp_fp - lp_q)).sum(-1)
    agree = lp_fp.argmax(-1) == lp_q.argmax(-1)
    return dict(fp_loss=nll_fp.mean(), q_loss=nll_q.mean(), delta_loss=(nll_q - nll_fp).mean(),
                ppl_ratio=math.exp((nll_q - nll_fp).mean()), kl_mean=kl.mean(), top1_agree=agree.mean(),
                bits_per_byte=nll_q.sum() / math.log(2) / len(tgt), kl_p99=np.percentile(kl, 99),
                delta_loss_se_iid=(nll_q - nll_fp).std(ddof=1) / math.sqrt(len(tgt)), n_tokens=len(tgt))


def test_metrics_match_float64_reference(setup):
    expected = float64_reference(setup)
    for name, value in expected.items():
        assert setup.m[name] == pytest.approx(value, rel=2e-5, abs=2e-6), name


def test_intervals_bracket_the_estimates(setup):
    for name in ("fp_loss", "q_loss", "delta_loss", "ppl_ratio", "kl_mean", "top1_agree", "bits_per_byte"):
        assert setup.m[f"{name}_ci_low"] <= setup.m[name] <= setup.m[f"{name}_ci_high"], name
    assert setup.m["delta_loss_ci_low"] > 0  # the perturbed bigram table is clearly worse


def _synthetic_scores(rng, n_windows, per_window, true_delta, window_sd, token_sd):
    """Per-token loss differences with a shared random effect per window (tokens within a window correlate)."""
    w = np.repeat(np.arange(n_windows), per_window)
    effect = rng.normal(0, window_sd, n_windows)[w]
    fp = rng.normal(3.0, 1.0, w.size)
    q = fp + true_delta + effect + rng.normal(0, token_sd, w.size)
    tokens = EvalTokens(windows=[(torch.zeros(per_window + 1, dtype=torch.long), 0, per_window)] * n_windows,
                        targets=torch.zeros(w.size, dtype=torch.long), target_bytes=torch.ones(w.size, dtype=torch.long),
                        window_index=torch.from_numpy(w), n_words=0, digest="x")
    ref = ReferenceScores(fp, np.zeros(w.size, dtype=np.int64), None, np.zeros(w.size), "x")
    return tokens, ref, QuantizedScores(q, None, np.ones(w.size, dtype=bool))


def test_block_bootstrap_covers_the_true_delta_at_nominal_rate_where_iid_errors_do_not():
    """Coverage over repeated synthetic experiments: block bootstrap near 95%, iid interval far below."""
    rng = np.random.default_rng(123)
    trials, covered_boot, covered_iid = 150, 0, 0
    for trial in range(trials):
        tokens, ref, q = _synthetic_scores(rng, n_windows=40, per_window=30, true_delta=0.05, window_sd=0.05,
                                           token_sd=0.05)
        m = sensitivity_metrics(tokens, ref, q, bootstrap_samples=300, seed=trial)
        covered_boot += m["delta_loss_ci_low"] <= 0.05 <= m["delta_loss_ci_high"]
        half = 1.96 * m["delta_loss_se_iid"]
        covered_iid += m["delta_loss"] - half <= 0.05 <= m["delta_loss"] + half
    assert 0.87 <= covered_boot / trials <= 0.99
    assert covered_iid / trials < 0.6  # within-window correlation makes the iid error far too small
