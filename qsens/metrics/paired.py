"""Sensitivity metrics of a quantized model against its full-precision checkpoint, with block-bootstrap CIs.

Everything is paired: fp and quantized losses are per token on identical tokens, so Δloss is the mean of
per-token differences. Its naive standard error `delta_loss_se_iid` is llama.cpp's (`perplexity
--kl-divergence`: ln(PPL_q/PPL_fp) with var(q) + var(fp) - 2 cov(q, fp), i.e. var of the difference), which
assumes independent tokens. Tokens, and adjacent windows of one text, are not independent, so the reported
intervals come from a circular block bootstrap over consecutive windows (`qsens.metrics.blocks`): the block
length is chosen from the per-window Δloss series by Politis & White's rule with a floor of MIN_BLOCK_TOKENS
(below), blocks stay inside one document, and each ratio-of-sums statistic is recomputed per replicate. The replicates' spread is then scaled by the
block bootstrap's estimated variance bias (`BlockChoice.variance_bias_factor`, from the same flat-top
estimates) and by a t quantile with W/b - 1 degrees of freedom: without them, coverage of AR(1) differences with
strongly correlated windows fell to ~90% (tests/metrics/test_blocks.py measures it).

Comparisons of two cells on the same tokens are paired too: `qsens.metrics.compare`.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

from qsens.metrics.blocks import block_resample_counts, politis_white_block
from qsens.metrics.scoring import QuantizedScores, ReferenceScores
from qsens.metrics.windows import EvalTokens

LN2 = math.log(2.0)
# Metrics with a bootstrap interval: each is a ratio of per-window sums (numerator, denominator).
CI_METRICS = ("fp_loss", "q_loss", "delta_loss", "ppl_ratio", "kl_mean", "top1_agree", "bits_per_byte")
# The block is at least MIN_BLOCK_TOKENS long (but leaves at least MIN_BLOCKS blocks): on the shipped micro
# checkpoints the bootstrap standard error of Δloss keeps growing with the block up to 16 windows of 128 tokens in
# 7 of 9 cells (3 sizes x 2/3/4 bits), where Politis-White's rule, blind to correlations below its
# significance band, picks 2-3 windows (measured with fixed blocks as in scripts/interval_widths.py).
MIN_BLOCK_TOKENS = 2048
MIN_BLOCKS = 16


def _ratio(num: np.ndarray, den: np.ndarray, counts: np.ndarray, block: int,
           quantile_scale: float) -> tuple[float, np.ndarray]:
    """Point estimate sum(num)/sum(den) and its scaled bootstrap replicates from (counts @ num) / (counts @ den).

    num, den: float64 [W] per-window sums; counts: int [samples, W]. The replicates' deviations are scaled by
    the block bootstrap's variance bias (`BlockChoice.variance_bias_factor`) and by quantile_scale."""
    est = float(num.sum() / den.sum())
    reps = (counts @ num) / (counts @ den)
    ok = den > 0
    bias = politis_white_block(num[ok] / den[ok]).variance_bias_factor(block, int(ok.sum())) if block > 1 else 1.0
    return est, est + math.sqrt(bias) * quantile_scale * (reps - est)


def min_block_windows(n_tokens: float, n_windows: int) -> int:
    """Smallest block (windows) for a series of n_windows windows holding n_tokens tokens in all."""
    per_window = n_tokens / max(n_windows, 1)
    return max(1, min(math.ceil(MIN_BLOCK_TOKENS / per_window), n_windows // MIN_BLOCKS))


def block_bootstrap(series: np.ndarray, doc: np.ndarray, samples: int, confidence: float, seed: int,
                    min_block: int = 1):
    """Set up one block bootstrap over W windows; returns (ratio, block).

    series: float64 [W], the per-window series that sets the block length; doc: int [W], document per window;
    min_block: the block is the larger of this and Politis-White's choice.
    ratio(num, den) -> (sum(num) / sum(den), scaled replicates [samples]) for per-window sums num, den [W].
    """
    W = series.size
    block = max(min_block, math.ceil(politis_white_block(series).block))
    counts = block_resample_counts(doc, block, samples, seed)
    # W / b blocks carry the information: widen as a t interval with W / b - 1 degrees of freedom would
    # (batch means), since the bootstrap's spread is itself estimated from that few blocks
    z = stats.norm.ppf(0.5 + confidence / 2)
    quantile_scale = float(stats.t.ppf(0.5 + confidence / 2, max(W / block - 1, 1)) / z)

    def ratio(num: np.ndarray, den: np.ndarray) -> tuple[float, np.ndarray]:
        return _ratio(num, den, counts, block, quantile_scale)

    return ratio, block


def interval(reps: np.ndarray, confidence: float) -> tuple[float, float]:
    """Percentile interval of bootstrap replicates."""
    alpha = 1.0 - confidence
    lo, hi = np.quantile(reps, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def window_sums(tokens: EvalTokens, ref: ReferenceScores, q: QuantizedScores) -> dict[str, np.ndarray]:
    """Per-window sums a cell keeps for later paired comparisons: n_tokens, fp_nll, delta_nll (float64 [W]) and
    doc (int64 [W])."""
    w, W = tokens.window_index.numpy(), len(tokens.windows)
    return {"n_tokens": np.bincount(w, minlength=W).astype(np.float64),
            "fp_nll": np.bincount(w, weights=ref.nll, minlength=W),
            "delta_nll": np.bincount(w, weights=q.nll - ref.nll, minlength=W), "doc": tokens.window_docs()}


def sensitivity_metrics(tokens: EvalTokens, ref: ReferenceScores, q: QuantizedScores, *,
                        bootstrap_samples: int = 1000, confidence: float = 0.95, seed: int = 0) -> dict:
    """All metrics of one cell as a flat dict of floats (CI bounds as `<name>_ci_low/high`)."""
    w = tokens.window_index.numpy()
    W = len(tokens.windows)

    def per_window(x: np.ndarray) -> np.ndarray:
        return np.bincount(w, weights=np.asarray(x, dtype=np.float64), minlength=W)

    n_tok = per_window(np.ones_like(ref.nll))
    n_bytes = per_window(tokens.target_bytes.numpy())
    fp_sum, q_sum = per_window(ref.nll), per_window(q.nll)
    # one block length per cell, from the series whose interval matters most (per-window mean Δloss)
    ratio, block = block_bootstrap((q_sum - fp_sum) / n_tok, tokens.window_docs(), bootstrap_samples, confidence,
                                   seed, min_block_windows(n_tok.sum(), W))

    out: dict[str, float] = {}
    reps: dict[str, np.ndarray] = {}
    out["fp_loss"], reps["fp_loss"] = ratio(fp_sum, n_tok)
    out["q_loss"], reps["q_loss"] = ratio(q_sum, n_tok)
    out["delta_loss"], reps["delta_loss"] = ratio(q_sum - fp_sum, n_tok)
    out["ppl_ratio"], reps["ppl_ratio"] = math.exp(out["delta_loss"]), np.exp(reps["delta_loss"])
    out["top1_agree"], reps["top1_agree"] = ratio(per_window(q.agree), n_tok)
    if n_bytes.sum() > 0:
        out["bits_per_byte"], reps["bits_per_byte"] = ratio(q_sum / LN2, n_bytes)
        out["fp_bits_per_byte"] = float(fp_sum.sum() / LN2 / n_bytes.sum())
    if q.kl is not None:
        out["kl_mean"], reps["kl_mean"] = ratio(per_window(q.kl), n_tok)
        for p in (50, 90, 95, 99):
            out[f"kl_p{p}"] = float(np.percentile(q.kl, p))
        out["kl_max"] = float(q.kl.max())
    d = q.nll - ref.nll
    out["delta_loss_se_iid"] = float(d.std(ddof=1) / math.sqrt(d.size)) if d.size > 1 else float("nan")
    out["fp_ppl"], out["q_ppl"] = math.exp(out["fp_loss"]), math.exp(out["q_loss"])
    if tokens.n_words:
        out["fp_word_perplexity"] = math.exp(fp_sum.sum() / tokens.n_words)
        out["q_word_perplexity"] = math.exp(q_sum.sum() / tokens.n_words)
    out.update(n_tokens=float(d.size), n_windows=float(W), n_bytes=float(n_bytes.sum()),
               bootstrap_block_windows=float(block), bootstrap_block_tokens=float(block * d.size / W))
    for name, r in reps.items():
        out[f"{name}_ci_low"], out[f"{name}_ci_high"] = interval(r, confidence)
    return out
