"""llama.cpp's `llama-perplexity --kl-divergence` statistics, computed from the per-token arrays of one sweep.

The definitions are those of llama.cpp's tools/perplexity/perplexity.cpp (`kl_divergence`, llama-cpp-python
0.3.36's vendored copy), so a cell can be set beside the table its users know:
    mean and uncertainty of x over n tokens: mean(x) and sqrt((mean(x^2) - mean(x)^2) / (n - 1));
    PPL = exp(mean nll) with uncertainty PPL * that of mean nll;
    ln(PPL(Q)/PPL(base)): mean of nll_q - nll_fp, uncertainty sqrt(u_q^2 + u_fp^2 - 2 cov) with
        cov = (mean(nll_q nll_fp) - mean(nll_q) mean(nll_fp)) / (n - 1), which is the paired one;
    Cor(ln(PPL(Q)), ln(PPL(base))): cov / (u_q u_fp), the Pearson correlation of the two models' per-token losses;
    KL(fp || q) per token: mean with uncertainty, percentiles by linear interpolation between order statistics
        (its `percentile`, numpy's default), median, min, max; KL(q || fp) the same (llama.cpp has one direction);
    Δp = p_q(correct token) - p_fp(correct token): mean with uncertainty, SD, RMS, the same percentiles;
    same top token: the fraction of tokens whose argmax agrees, uncertainty sqrt(p (1 - p) / (n - 1)).
Everything is float64 here (llama.cpp accumulates float32 terms into doubles and stores the base model's
log-probabilities as 16-bit codes; see tests/fixtures/llamacpp/README.md for what that changes).

Percentages are fractions here (llama.cpp prints 100 x).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Hashable

import numpy as np
import torch

PERCENTILES = (99.9, 99.0, 95.0, 90.0, 50.0, 10.0, 5.0, 1.0, 0.1)


def mean_and_uncertainty(x: np.ndarray) -> tuple[float, float]:
    """llama.cpp's (mean, sqrt(population variance / (n - 1))); uncertainty 0 for n <= 10, as there."""
    n = x.size
    mean = float(x.mean())
    var = float(np.mean((x - mean) ** 2))
    return mean, (np.sqrt(var / (n - 1)) if n > 10 and var > 0 else 0.0)


def distribution(x: np.ndarray) -> dict:
    """Mean, uncertainty of the mean, SD, min, max and the PERCENTILES of float64 [n]."""
    mean, se = mean_and_uncertainty(x)
    out = {"mean": mean, "se": se, "sd": float(x.std(ddof=1)) if x.size > 1 else 0.0,
           "min": float(x.min()), "max": float(x.max())}
    out.update({f"p{p:g}": float(v) for p, v in zip(PERCENTILES, np.percentile(x, PERCENTILES))})
    return out


def llamacpp_statistics(fp_nll: np.ndarray, q_nll: np.ndarray, kl: np.ndarray, kl_reverse: np.ndarray | None,
                        same_top: np.ndarray) -> dict:
    """The statistics of the module docstring from float64 [T] losses of both models, KL(fp || q) [T],
    KL(q || fp) [T] (or None) and bool [T] argmax agreement, all over the same scored tokens."""
    n = fp_nll.size
    if n < 2:
        raise ValueError("llama.cpp statistics need at least two scored tokens")
    lq, lq_u = mean_and_uncertainty(q_nll)
    lf, lf_u = mean_and_uncertainty(fp_nll)
    cov = (float(np.mean(q_nll * fp_nll)) - lq * lf) / (n - 1) if n >= 10 else 0.0
    ratio_u = float(np.sqrt(max(lq_u**2 + lf_u**2 - 2 * cov, 0.0)))
    dp = np.exp(-q_nll) - np.exp(-fp_nll)
    top = float(np.mean(same_top))
    out = {
        "n_tokens": int(n),
        "ppl_q": float(np.exp(lq)), "ppl_q_se": float(np.exp(lq) * lq_u),
        "ppl_fp": float(np.exp(lf)), "ppl_fp_se": float(np.exp(lf) * lf_u),
        "ln_ppl_ratio": lq - lf, "ln_ppl_ratio_se": ratio_u,
        "logprob_correlation": cov / (lq_u * lf_u) if lq_u > 0 and lf_u > 0 else float("nan"),
        "kl": distribution(kl),
        "delta_p": {**distribution(dp), "rms": float(np.sqrt(np.mean(dp**2)))},
        "same_top": top, "same_top_se": float(np.sqrt(top * (1 - top) / (n - 1))),
    }
    if kl_reverse is not None:
        out["kl_reverse"] = distribution(kl_reverse)
    return out


def reverse_kl(z_fp: torch.Tensor, z_q: torch.Tensor, rows: int = 4096) -> np.ndarray:
    """KL(softmax(z_q) || softmax(z_fp)) per row, float64 [n], from float32 logits [n, V] (float64 log-softmax,
    `rows` rows at a time)."""
    out = np.empty(z_fp.shape[0])
    for s in range(0, z_fp.shape[0], rows):
        lp = torch.log_softmax(z_fp[s : s + rows].double(), -1)
        lq = torch.log_softmax(z_q[s : s + rows].double(), -1)
        out[s : s + rows] = (lq.exp() * (lq - lp)).sum(-1).cpu().numpy()
    return out


@dataclass
class ReverseKL:
    """An `on_logits` observer of `qsens.metrics.scoring.score_together`: KL(q || fp) per scored token, per model.

    values[key]: float64 [T] in the order of the eval's targets."""

    n_targets: int
    values: dict[Hashable, np.ndarray] = field(default_factory=dict)

    def __call__(self, key: Hashable, idx: np.ndarray, z_fp: torch.Tensor, z_q: torch.Tensor) -> None:
        if key not in self.values:
            self.values[key] = np.full(self.n_targets, np.nan)
        self.values[key][idx] = reverse_kl(z_fp, z_q)
