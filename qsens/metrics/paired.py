"""Sensitivity metrics of a quantized model against its full-precision checkpoint, with block-bootstrap CIs.

Everything is paired: fp and quantized losses are per token on identical tokens, so Δloss is the mean of
per-token differences. Its naive standard error `delta_loss_se_iid` is llama.cpp's (`perplexity
--kl-divergence`: ln(PPL_q/PPL_fp) with var(q) + var(fp) - 2 cov(q, fp), i.e. var of the difference), which
assumes independent tokens. Tokens within a window are not independent, so the reported intervals come from
a block bootstrap that resamples whole windows with replacement and recomputes each ratio-of-sums statistic.
"""

from __future__ import annotations

import math

import numpy as np

from qsens.metrics.scoring import QuantizedScores, ReferenceScores
from qsens.metrics.windows import EvalTokens

LN2 = math.log(2.0)
# Metrics with a bootstrap interval: each is a ratio of per-window sums (numerator, denominator).
CI_METRICS = ("fp_loss", "q_loss", "delta_loss", "ppl_ratio", "kl_mean", "top1_agree", "bits_per_byte")


def window_resample_counts(n_windows: int, samples: int, seed: int) -> np.ndarray:
    """[samples, n_windows] int: how often each window is drawn in each bootstrap replicate."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_windows, np.full(n_windows, 1.0 / n_windows), size=samples)


def _ratio(num: np.ndarray, den: np.ndarray, counts: np.ndarray) -> tuple[float, np.ndarray]:
    """Point estimate sum(num)/sum(den) and its bootstrap replicates (counts @ num) / (counts @ den)."""
    return float(num.sum() / den.sum()), (counts @ num) / (counts @ den)


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
    counts = window_resample_counts(W, bootstrap_samples, seed)
    out: dict[str, float] = {}
    reps: dict[str, np.ndarray] = {}
    out["fp_loss"], reps["fp_loss"] = _ratio(fp_sum, n_tok, counts)
    out["q_loss"], reps["q_loss"] = _ratio(q_sum, n_tok, counts)
    out["delta_loss"], reps["delta_loss"] = _ratio(q_sum - fp_sum, n_tok, counts)
    out["ppl_ratio"], reps["ppl_ratio"] = math.exp(out["delta_loss"]), np.exp(reps["delta_loss"])
    out["top1_agree"], reps["top1_agree"] = _ratio(per_window(q.agree), n_tok, counts)
    if n_bytes.sum() > 0:
        out["bits_per_byte"], reps["bits_per_byte"] = _ratio(q_sum / LN2, n_bytes, counts)
        out["fp_bits_per_byte"] = float(fp_sum.sum() / LN2 / n_bytes.sum())
    if q.kl is not None:
        out["kl_mean"], reps["kl_mean"] = _ratio(per_window(q.kl), n_tok, counts)
        for p in (50, 90, 95, 99):
            out[f"kl_p{p}"] = float(np.percentile(q.kl, p))
        out["kl_max"] = float(q.kl.max())
    d = q.nll - ref.nll
    out["delta_loss_se_iid"] = float(d.std(ddof=1) / math.sqrt(d.size)) if d.size > 1 else float("nan")
    out["fp_ppl"], out["q_ppl"] = math.exp(out["fp_loss"]), math.exp(out["q_loss"])
    if tokens.n_words:
        out["fp_word_perplexity"] = math.exp(fp_sum.sum() / tokens.n_words)
        out["q_word_perplexity"] = math.exp(q_sum.sum() / tokens.n_words)
    out.update(n_tokens=float(d.size), n_windows=float(W), n_bytes=float(n_bytes.sum()))
    alpha = 1.0 - confidence
    for name, r in reps.items():
        lo, hi = np.quantile(r, [alpha / 2, 1 - alpha / 2])
        out[f"{name}_ci_low"], out[f"{name}_ci_high"] = float(lo), float(hi)
    return out
