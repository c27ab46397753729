"""Forward passes: per-token losses of the full-precision model (once per checkpoint) and of each quantized one.

The full-precision pass keeps, per scored token, its loss, its argmax and (for KL) its logits [T, vocab] float32
with their float64 log-sum-exp: in memory when small, else in a memory-mapped temp file (as llama.cpp's
`--kl-divergence-base` file does), so the full-precision model runs once per checkpoint and eval, however many
quantizers follow.

Precision: KL(fp || q) with d = z_fp - z_q (logits) is evaluated as
    KL = sum_v p_v d_v + log1p(sum_v p_v expm1(-d_v)),
an identity (lse_q - lse_fp = log sum_v p_v e^{-d_v}) in which the two terms are sums of small, exactly formed
differences accumulated in float64. Subtracting two float32 log-softmaxes instead leaves rounding noise (~1e-7)
as large as the KL of an 8-bit model. Per-token losses use a float32 log-sum-exp: its ~1e-7 relative error is
random and averages out of every mean reported.
"""

from __future__ import annotations

import os
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import torch

from qsens.metrics.windows import EvalTokens

IN_MEMORY_LIMIT_BYTES = int(os.environ.get("QSENS_KL_IN_MEMORY_BYTES", 2 * 1024**3))


@dataclass
class ReferenceScores:
    """Full-precision pass. nll, lse: float64 [T]; argmax: int64 [T]; logits: float32 [T, V] or None."""

    nll: np.ndarray
    argmax: np.ndarray
    logits: np.ndarray | None
    lse: np.ndarray
    tokens_digest: str
    _tmpdir: tempfile.TemporaryDirectory | None = field(default=None, repr=False)

    def close(self) -> None:
        self.logits = None
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None


@dataclass
class QuantizedScores:
    """Quantized pass on the same tokens. nll, kl: float64 [T]; agree: bool [T] (argmax equals fp argmax)."""

    nll: np.ndarray
    kl: np.ndarray | None
    agree: np.ndarray


def _batches(tokens: EvalTokens, batch_size: int) -> Iterator[list[int]]:
    """Window indices grouped by input length (so batches need no padding), in window order within a length."""
    by_len: dict[int, list[int]] = defaultdict(list)
    for i, (inp, _, _) in enumerate(tokens.windows):
        by_len[inp.numel()].append(i)
    for idx in by_len.values():
        for s in range(0, len(idx), batch_size):
            yield idx[s : s + batch_size]


def _window_logits(model, tokens: EvalTokens, device: torch.device, batch_size: int):
    """Yield (target slice [a, b) into tokens.targets, logits float32 [n, V], their logsumexp float64 [n])."""
    starts = np.concatenate([[0], np.cumsum([n for _, _, n in tokens.windows])])
    with torch.inference_mode():
        for batch in _batches(tokens, batch_size):
            ids = torch.stack([tokens.windows[i][0] for i in batch]).to(device)
            logits = model(input_ids=ids).logits.float()
            lse = torch.logsumexp(logits, dim=-1).double()  # one call per batch: per-row calls cost more than the math
            for row, i in enumerate(batch):
                _, first, n = tokens.windows[i]
                yield int(starts[i]), int(starts[i + 1]), logits[row, first : first + n], lse[row, first : first + n]


def _nll(z: torch.Tensor, lse: torch.Tensor, targets: torch.Tensor) -> np.ndarray:
    return (lse - z.gather(1, targets[:, None].to(z.device))[:, 0].double()).cpu().numpy()


def kl_divergence(z_fp: torch.Tensor, z_q: torch.Tensor) -> torch.Tensor:
    """KL(softmax(z_fp) || softmax(z_q)) per row: float32 logits [n, V] -> float64 [n] (see the module docstring)."""
    p = torch.softmax(z_fp, dim=-1)
    d = z_fp - z_q
    kl = (p * d).sum(-1, dtype=torch.float64) + torch.log1p((p * torch.expm1(-d)).sum(-1, dtype=torch.float64))
    bad = ~torch.isfinite(kl)
    if bad.any():  # expm1 overflowed (a logit of q far above fp's): the direct float64 form is safe there
        lp, lq = torch.log_softmax(z_fp[bad].double(), -1), torch.log_softmax(z_q[bad].double(), -1)
        kl[bad] = (lp.exp() * (lp - lq)).sum(-1)
    return kl


def score_reference(model, tokens: EvalTokens, device: torch.device, batch_size: int = 8,
                    keep_logits: bool = True) -> ReferenceScores:
    """Run the full-precision model once over every window."""
    T = tokens.n_targets
    nll, lse_all = np.empty(T, dtype=np.float64), np.empty(T, dtype=np.float64)
    argmax = np.empty(T, dtype=np.int64)
    store, tmpdir = None, None
    for a, b, z, lse in _window_logits(model, tokens, device, batch_size):
        if store is None and keep_logits:
            shape = (T, z.shape[-1])
            if T * z.shape[-1] * 4 <= IN_MEMORY_LIMIT_BYTES:
                store = np.empty(shape, dtype=np.float32)
            else:
                tmpdir = tempfile.TemporaryDirectory(prefix="qsens-fp-logits-")
                store = np.lib.format.open_memmap(os.path.join(tmpdir.name, "logits.npy"), "w+", np.float32, shape)
        nll[a:b] = _nll(z, lse, tokens.targets[a:b])
        lse_all[a:b] = lse.cpu().numpy()
        argmax[a:b] = z.argmax(dim=-1).cpu().numpy()
        if store is not None:
            store[a:b] = z.cpu().numpy()
    return ReferenceScores(nll, argmax, store, lse_all, tokens.digest, tmpdir)


def score_quantized(model, tokens: EvalTokens, ref: ReferenceScores, device: torch.device,
                    batch_size: int = 8) -> QuantizedScores:
    """Run a quantized model over the same windows; KL(fp || q) per token when the reference kept its logits."""
    if ref.tokens_digest != tokens.digest:
        raise ValueError("reference and quantized passes must score the same tokens")
    T = tokens.n_targets
    nll = np.empty(T, dtype=np.float64)
    agree = np.empty(T, dtype=bool)
    kl = np.empty(T, dtype=np.float64) if ref.logits is not None else None
    for a, b, z, lse in _window_logits(model, tokens, device, batch_size):
        nll[a:b] = _nll(z, lse, tokens.targets[a:b])
        agree[a:b] = z.argmax(dim=-1).cpu().numpy() == ref.argmax[a:b]
        if kl is not None:
            z_fp = torch.from_numpy(np.asarray(ref.logits[a:b])).to(z.device)
            kl[a:b] = kl_divergence(z_fp, z).cpu().numpy()
    return QuantizedScores(nll, kl, agree)
