"""Block bootstrap over scoring windows: a block length chosen from the data, and the resampling itself.

Adjacent windows of one text are correlated (a scene, a topic, a hard passage spans many windows), so resampling
single windows understates the variance of every mean over them. Blocks of `b` consecutive windows keep the
correlation up to lag ~b inside each draw. `b` comes from the per-window series itself by Politis & White's
automatic rule for the circular block bootstrap (Econometric Reviews 23:1, 2004, with the correction of
Patton, Politis & White, Econometric Reviews 28:4, 2009):

    b = (2 G^2 / D)^(1/3) n^(1/3),  G = sum_{|k|<=M} lam(k/M) |k| R(k),  D = 4/3 (sum_{|k|<=M} lam(k/M) R(k))^2,

with R the sample autocovariance, lam the flat-top window (1 on |t| <= 1/2, 2(1 - |t|) to |t| = 1), and
M = 2 m, m the smallest lag after which K_n = max(5, sqrt(log10 n)) sample autocorrelations in a row lie
within +-2 sqrt(log10 n / n). b is capped at min(3 sqrt(n), n / 3) as in the paper's implementation.

Blocks never cross a document boundary: a block is `b` consecutive windows of one document, wrapping around
within it (circular), or the whole document when it has fewer than `b` windows.
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class BlockChoice:
    """Politis-White estimates for one series of n elements: block length b (>= 1), and the flat-top estimates
    sigma2 = sum_k lam(k/M) R(k) (long-run variance) and G = sum_k lam(k/M) |k| R(k), per element (nan when not
    estimated), with the window's weights L0 = sum_{|k|<=M} lam(k/M) and L1 = sum_{|k|<=M} lam(k/M) |k|."""

    block: float
    sigma2: float
    G: float
    L0: float = 1.0
    L1: float = 0.0

    def variance_bias_factor(self, block: int, n: int) -> float:
        """sigma2 / E[bootstrap variance] for blocks of `block` of the n elements.

        The circular block bootstrap's variance of the mean is about (sigma2 (1 - b/n) - G/b) / n: a Bartlett
        window of width b over autocovariances taken around the sample mean, each about sigma2/n too small
        (Kunsch 1989; Politis & White 2004, eq. 5). The flat-top sigma2 and G are taken around the sample mean
        too, so they are first corrected for it: E[sigma2_hat] ~ sigma2 (1 - L0/n), E[G_hat] ~ G - sigma2 L1/n.
        Clipped to [1/2, 2] so that noise in the estimates cannot dominate an interval."""
        if not (np.isfinite(self.sigma2) and np.isfinite(self.G)) or self.sigma2 <= 0 or block >= n:
            return 1.0
        sigma2 = self.sigma2 / max(1.0 - self.L0 / n, 0.5)
        G = self.G + sigma2 * self.L1 / n
        expected = sigma2 * (1.0 - block / n) - G / block
        if expected <= 0:
            return 2.0
        return float(min(2.0, max(0.5, sigma2 / expected)))


def politis_white_block(x: np.ndarray) -> BlockChoice:
    """Optimal circular-block-bootstrap block length (in elements of x) for the mean of x: float64 [n].

    block is 1.0 for series too short to estimate (n < 8) or without detectable autocorrelation.
    """
    x = np.asarray(x, dtype=np.float64)
    n = x.size
    if n < 8:
        return BlockChoice(1.0, float("nan"), float("nan"))
    e = x - x.mean()
    kn = max(5, math.ceil(math.sqrt(math.log10(n))))
    m_max = math.ceil(math.sqrt(n)) + kn
    max_lag = min(m_max + kn, n - 1)
    # autocovariances R(0..max_lag) by FFT (zero-padded: no wrap-around), normalised by n as in the paper
    f = np.fft.rfft(e, 2 * n)
    acov = np.fft.irfft(f * np.conj(f), 2 * n)[: max_lag + 1] / n
    if acov[0] <= 0:
        return BlockChoice(1.0, 0.0, 0.0)
    rho = np.abs(acov / acov[0])
    band = 2.0 * math.sqrt(math.log10(n) / n)
    m = None
    for cand in range(0, max_lag - kn + 1):
        if np.all(rho[cand + 1 : cand + kn + 1] < band):
            m = cand
            break
    M = min(2 * max(m, 1), m_max) if m is not None else m_max
    M = min(M, max_lag)
    k = np.arange(1, M + 1)
    lam = np.where(k / M <= 0.5, 1.0, 2.0 * (1.0 - k / M))
    G = 2.0 * np.sum(lam * k * acov[1 : M + 1])
    g0 = acov[0] + 2.0 * np.sum(lam * acov[1 : M + 1])
    if g0 <= 0:
        return BlockChoice(1.0, float(g0), float(G))
    b = (2.0 * G**2 / (4.0 / 3.0 * g0**2)) ** (1.0 / 3.0) * n ** (1.0 / 3.0)
    b = max(1.0, min(b, math.ceil(min(3 * math.sqrt(n), n / 3))))
    L0, L1 = 1.0 + 2.0 * float(lam.sum()), 2.0 * float(np.sum(lam * k))
    return BlockChoice(float(b), float(g0), float(G), L0, L1)


def _doc_layout(doc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per window: index of its document's first window, and its document's window count."""
    doc = np.asarray(doc)
    if doc.size and np.any(np.diff(doc) < 0):
        raise ValueError("windows must be in document order (non-decreasing document index)")
    _, first, n_doc = np.unique(doc, return_index=True, return_counts=True)
    which = np.searchsorted(first, np.arange(doc.size), side="right") - 1
    return first[which], n_doc[which]


_COUNTS: OrderedDict[tuple, np.ndarray] = OrderedDict()
# the draws kept for reuse, newest last: at most this many bytes besides the newest (a [1,000, 4,700] draw is 37 MB;
# a long eval's, 1,000 x 50,000 windows, 400 MB, is kept alone)
_COUNTS_BYTES = 256 << 20


def block_resample_counts(doc: np.ndarray, block: int, samples: int, seed: int) -> np.ndarray:
    """[samples, W] int64, read-only: how often each window is drawn in each circular-block bootstrap replicate.

    doc: int [W], the document of each window, non-decreasing. Each replicate concatenates blocks whose first
    window is drawn at random and cuts the result at W windows. A start is drawn with probability inversely
    proportional to its block's length, so that every window is drawn once per replicate on average even when
    some documents are shorter than `block`. block = 1 is the ordinary bootstrap over windows.
    The draw depends on the layout, block, samples and seed only, not on the values resampled, so the cells of
    one eval (same windows) reuse it: the README's paired tests draw it once per eval and block, not per pair.
    """
    doc = np.ascontiguousarray(doc)
    key = (hashlib.sha256(doc.tobytes()).hexdigest(), str(doc.dtype), int(block), int(samples), int(seed))
    if key in _COUNTS:
        _COUNTS.move_to_end(key)
        return _COUNTS[key]
    counts = _draw_counts(doc, block, samples, seed)
    counts.setflags(write=False)
    _COUNTS[key] = counts
    while len(_COUNTS) > 1 and sum(c.nbytes for c in _COUNTS.values()) > _COUNTS_BYTES:
        _COUNTS.popitem(last=False)
    return counts


def _draw_counts(doc: np.ndarray, block: int, samples: int, seed: int) -> np.ndarray:
    W = int(np.asarray(doc).size)
    start, n_doc = _doc_layout(doc)
    length = np.minimum(block, n_doc)
    p = 1.0 / length
    p /= p.sum()
    rng = np.random.default_rng(seed)
    if np.all(n_doc == W):  # one document (a stream): k blocks of L windows, circular over all W
        L = int(length[0])
        starts = rng.integers(0, W, size=(samples, math.ceil(W / L)))
        window = ((starts[:, :, None] + np.arange(L)) % W).reshape(samples, -1)[:, :W]
        flat = window + (np.arange(samples) * W)[:, None]
        return np.bincount(flat.ravel(), minlength=samples * W).reshape(samples, W)
    # enough blocks that every replicate reaches W windows: expected block length is W / sum(1 / length)
    per_sample = math.ceil(1.1 * (1.0 / length).sum()) + 4
    uniform = bool(np.all(length == length[0]))

    def draw() -> np.ndarray:
        return rng.integers(0, W, size=(samples, per_sample)) if uniform else rng.choice(W, (samples, per_sample), p=p)

    first = draw()
    while (length[first].sum(axis=1) < W).any():  # rare: top up every replicate alike
        first = np.concatenate([first, draw()], axis=1)
    lens = length[first]
    ends = np.cumsum(lens, axis=1)
    used = (ends - lens) < W  # blocks that start before the replicate is full
    first, lens, begin = first[used], lens[used], (ends - lens)[used]
    owner = np.nonzero(used)[0]
    offset = np.arange(lens.sum()) - np.repeat(np.cumsum(lens) - lens, lens)
    first_r, owner_r = np.repeat(first, lens), np.repeat(owner, lens)
    keep = np.repeat(begin, lens) + offset < W  # the last block of a replicate is cut at W
    s0, nd = start[first_r], n_doc[first_r]
    window = s0 + (first_r - s0 + offset) % nd
    flat = owner_r[keep] * W + window[keep]
    return np.bincount(flat, minlength=samples * W).reshape(samples, W)
