"""Intervals over documents: resample documents, then blocks of windows within each drawn document.

A cell's own interval (`qsens.metrics.paired`) resamples blocks of windows of the scored text: it says how
precisely *these* tokens measure Δ. A reader generalises to other text like it, and documents differ (on the
micro family, Vathek's Δ sits up to 12 published SEs from Pride and Prejudice's), so the interval here treats
the documents as a sample too. Δ = sum(num) / sum(den) over every window (num, den: float64 [W] per-window sums;
doc: int [W], non-decreasing).

Two levels, as a two-stage (cluster) bootstrap (Davison & Hinkley 1997, section 3.8): each replicate draws the
documents with replacement, and each drawn document contributes one circular-block replicate of its own windows
(`qsens.metrics.blocks`, the block rule of a cell's interval, chosen per document). Resampling both stages counts
the within-document variance twice (D&H, eq. 3.17); so the replicates' deviations are rescaled to the variance
a / (a - 1) V_doc, where V_doc is the variance of Δ over document draws alone (documents kept whole, a documents),
an estimate of between- plus within-document variance, and widened as a t interval with a - 1 degrees of freedom.
The *between-document share* is 1 - V_within / total, V_within the variance of the within-document stage alone
(documents fixed): 0 when documents agree beyond their own noise, near 1 when they differ.

Fewer than MIN_DOCUMENTS documents cannot estimate a between-document variance: the interval is then the
cell's own block-bootstrap interval (`qsens.metrics.paired.block_bootstrap`: documents fixed, blocks inside
them), labelled THESE_DOCUMENTS_ONLY wherever it is shown.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import stats

from qsens.metrics.blocks import block_resample_counts, politis_white_block
from qsens.metrics.paired import block_bootstrap, interval, min_block_windows

MIN_DOCUMENTS = 5
THESE_DOCUMENTS_ONLY = "these documents only"
OVER_DOCUMENTS = "over documents"


@dataclass(frozen=True)
class DocumentInterval:
    """Δ with its interval; scope says what it covers (OVER_DOCUMENTS or THESE_DOCUMENTS_ONLY)."""

    estimate: float
    ci_low: float
    ci_high: float
    n_documents: int
    scope: str
    between_share: float | None  # None when fewer than MIN_DOCUMENTS documents
    per_document: np.ndarray = field(repr=False)  # float64 [a]: each document's own ratio

    def as_row(self, prefix: str = "") -> dict:
        return {f"{prefix}estimate": self.estimate, f"{prefix}ci_low": self.ci_low, f"{prefix}ci_high": self.ci_high,
                f"{prefix}n_documents": self.n_documents, f"{prefix}scope": self.scope,
                f"{prefix}between_share": self.between_share}


def document_sums(num: np.ndarray, den: np.ndarray, doc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-document sums (float64 [a] each, documents in order of first appearance) of per-window sums [W]."""
    _, which = np.unique(np.asarray(doc), return_inverse=True)
    return np.bincount(which, weights=num), np.bincount(which, weights=den)


def _within_replicates(num, den, doc, samples: int, seed: int, min_block: int) -> tuple[np.ndarray, np.ndarray]:
    """[samples, a] resampled (num, den) totals of every document: one circular-block replicate each."""
    ids = np.unique(doc)
    out_num, out_den = np.empty((samples, ids.size)), np.empty((samples, ids.size))
    for j, d in enumerate(ids):
        sel = doc == d
        n, m = num[sel], den[sel]
        ok = m > 0
        block = max(min_block, math.ceil(politis_white_block(n[ok] / m[ok]).block)) if ok.sum() >= 8 else min_block
        counts = block_resample_counts(np.zeros(n.size, dtype=np.int64), min(block, n.size), samples, seed + j)
        out_num[:, j], out_den[:, j] = counts @ n, counts @ m
    return out_num, out_den


def document_interval(num: np.ndarray, den: np.ndarray, doc: np.ndarray, *, samples: int = 1000,
                      confidence: float = 0.95, seed: int = 0, min_block: int = 1) -> DocumentInterval:
    """The two-level interval of sum(num) / sum(den) (see the module docstring)."""
    num, den, doc = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64), np.asarray(doc)
    total_num, total_den = document_sums(num, den, doc)
    a = total_num.size
    est = float(num.sum() / den.sum())
    per_doc = total_num / np.where(total_den > 0, total_den, np.nan)
    w_num, w_den = _within_replicates(num, den, doc, samples, seed, min_block)
    within = w_num.sum(axis=1) / w_den.sum(axis=1)
    v_within = float(np.var(within, ddof=1))
    z = stats.norm.ppf(0.5 + confidence / 2)
    if a < MIN_DOCUMENTS:  # the cell's own interval: blocks inside documents, bias-corrected, t-widened
        ratio, _ = block_bootstrap(num / np.where(den > 0, den, 1.0), doc, samples, confidence, seed, min_block)
        lo, hi = interval(ratio(num, den)[1], confidence)
        return DocumentInterval(est, float(lo), float(hi), a, THESE_DOCUMENTS_ONLY, None, per_doc)
    alpha = 1.0 - confidence
    rng = np.random.default_rng([seed, 1])
    draw = rng.integers(0, a, size=(samples, a))
    v_doc = float(np.var(total_num[draw].sum(axis=1) / total_den[draw].sum(axis=1), ddof=1))
    # each drawn document brings one of its own within-document replicates, independently of the other draws
    rep = rng.integers(0, samples, size=(samples, a))
    two = w_num[rep, draw].sum(axis=1) / w_den[rep, draw].sum(axis=1)
    v_two = float(np.var(two, ddof=1))
    v_total = max(v_doc * a / (a - 1), v_within)
    scale = math.sqrt(v_total / v_two) if v_two > 0 else 0.0
    scale *= float(stats.t.ppf(0.5 + confidence / 2, a - 1) / z)
    lo, hi = np.quantile(est + scale * (two - np.mean(two)), [alpha / 2, 1 - alpha / 2])
    share = 1.0 - v_within / v_total if v_total > 0 else 0.0
    return DocumentInterval(est, float(lo), float(hi), a, OVER_DOCUMENTS, float(share), per_doc)


def scope_label(interval: DocumentInterval) -> str:
    """How an interval is labelled where it is shown: '(these documents only)' or ''."""
    return f" ({THESE_DOCUMENTS_ONLY})" if interval.scope == THESE_DOCUMENTS_ONLY else ""


def cell_documents(cell: dict) -> int:
    """How many documents a stored cell's windows come from (its `window_sums`); 0 when it has none."""
    from qsens.metrics.compare import decode_window_sums

    if not cell.get("window_sums"):
        return 0
    return int(np.unique(decode_window_sums(cell["window_sums"])["doc"]).size)


def eval_documents(cells: list[dict], ev: str) -> int:
    """How many documents eval `ev` scores, from the first of `cells` on it that keeps window sums (one eval's
    cells share their windows); 0 when none does."""
    c = next((c for c in cells if c.get("eval") == ev and c.get("window_sums")), None)
    return cell_documents(c) if c is not None else 0


def scope_of(n_documents: int) -> str:
    """What an interval over `n_documents` documents can cover: OVER_DOCUMENTS or THESE_DOCUMENTS_ONLY."""
    return OVER_DOCUMENTS if n_documents >= MIN_DOCUMENTS else THESE_DOCUMENTS_ONLY


def cell_document_interval(a: dict, b: dict | None = None, metric: str = "delta_loss", *, samples: int = 1000,
                           confidence: float = 0.95, seed: int = 0) -> DocumentInterval:
    """The two-level interval of a cell's per-token metric (b None), or of metric(a) - metric(b) paired on the
    same tokens, from stored cells' `window_sums` (`qsens.metrics.compare`)."""
    from qsens.metrics.compare import SUMS, decode_window_sums

    if metric not in SUMS:
        raise ValueError(f"document interval of {metric!r}: allowed {sorted(SUMS)}")
    if not a.get("window_sums") or (b is not None and not b.get("window_sums")):
        raise ValueError("a cell has no window_sums (stored before they were kept; recompute it)")
    if b is not None and (not a.get("tokens_digest") or a.get("tokens_digest") != b.get("tokens_digest")):
        raise ValueError("scored on different tokens (eval, protocol or tokenizer differ)")
    sa = decode_window_sums(a["window_sums"])
    num = SUMS[metric](sa) - (SUMS[metric](decode_window_sums(b["window_sums"])) if b is not None else 0.0)
    n = sa["n_tokens"]
    return document_interval(num, n, sa["doc"], samples=samples, confidence=confidence, seed=seed,
                             min_block=min_block_windows(n.sum(), n.size))


def cells_document_sums(cells: list[dict], metric: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(numerator, token count) per cell and document, float64 [m, a] each, from the cells' `window_sums`, when
    every cell keeps them, `metric` is a per-token mean they hold (qsens.metrics.compare.SUMS) and all were scored on
    the same a >= MIN_DOCUMENTS documents; else None: fewer documents cannot stand for
    other text (labelled 'these documents only'), so the fit's draws keep them fixed."""
    from qsens.metrics.compare import SUMS, decode_window_sums

    if not cells or metric not in SUMS or not all(c.get("window_sums") for c in cells):
        return None
    num, den = [], []
    for c in cells:
        sums = decode_window_sums(c["window_sums"])
        _, which = np.unique(sums["doc"], return_inverse=True)
        num.append(np.bincount(which, weights=SUMS[metric](sums)))
        den.append(np.bincount(which, weights=sums["n_tokens"]))
    if len({len(v) for v in num}) != 1 or len(num[0]) < MIN_DOCUMENTS:
        return None
    return np.array(num), np.array(den)

