"""Paired comparison of two cells scored on the same tokens: two quantizers of one checkpoint, or two checkpoints
(sharing a tokenizer) under one quantizer.

Each cell keeps its per-window sums (`window_sums` column: token counts, full-precision loss sums, Δloss sums,
document of each window). When two cells' `tokens_digest` match, the windows are the same tokens, so the
difference of any per-token mean is the mean of per-window differences, and its interval comes from the same
block bootstrap as a cell's own (`qsens.metrics.paired.block_bootstrap`) applied to the difference series:
the correlation between the two cells (shared text difficulty) cancels, which comparing two intervals for
overlap ignores. Cells scored on different tokens cannot be paired; comparing them raises.
"""

from __future__ import annotations

import base64
import io

import numpy as np

from qsens.metrics.paired import block_bootstrap, interval, min_block_windows

FIELDS = ("n_tokens", "fp_nll", "delta_nll", "doc")
# per-token means a comparison can difference: name -> per-window sum from the stored arrays
_SUMS = {
    "delta_loss": lambda s: s["delta_nll"],
    "q_loss": lambda s: s["fp_nll"] + s["delta_nll"],
    "fp_loss": lambda s: s["fp_nll"],
}
SUMS = _SUMS  # public name, for the document-level intervals (qsens.metrics.docinterval)


def encode_window_sums(sums: dict[str, np.ndarray]) -> str:
    """Base64 of an .npz holding FIELDS (float64 sums, int64 doc): a few KB per cell."""
    buf = io.BytesIO()
    np.savez_compressed(buf, **{k: np.asarray(sums[k]) for k in FIELDS})
    return base64.b64encode(buf.getvalue()).decode("ascii")


def decode_window_sums(blob: str) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(base64.b64decode(blob))) as z:
        return {k: z[k] for k in FIELDS}


def paired_difference(a: dict, b: dict, metric: str = "delta_loss", *, samples: int = 1000,
                      confidence: float = 0.95, seed: int = 0) -> dict:
    """metric(a) - metric(b) over the same tokens with its block-bootstrap interval.

    a, b: cells (store rows) with `tokens_digest` and `window_sums`. Returns {difference, ci_low, ci_high,
    block_windows}. Raises ValueError when the cells were not scored on the same tokens or lack window sums.
    """
    if metric not in _SUMS:
        raise ValueError(f"paired comparison of {metric!r}: allowed {sorted(_SUMS)}")
    if not a.get("tokens_digest") or a.get("tokens_digest") != b.get("tokens_digest"):
        raise ValueError("scored on different tokens (eval, protocol or tokenizer differ)")
    if not a.get("window_sums") or not b.get("window_sums"):
        raise ValueError("a cell has no window_sums (stored before they were kept; recompute it)")
    sa, sb = decode_window_sums(a["window_sums"]), decode_window_sums(b["window_sums"])
    n = sa["n_tokens"]
    diff = _SUMS[metric](sa) - _SUMS[metric](sb)
    ratio, block = block_bootstrap(diff / n, sa["doc"], samples, confidence, seed, min_block_windows(n.sum(), n.size))
    est, reps = ratio(diff, n)
    lo, hi = interval(reps, confidence)
    return {"difference": est, "ci_low": lo, "ci_high": hi, "block_windows": block}
