"""Forward passes: per-token losses of the full-precision model (once per checkpoint) and of each quantized one.

The full-precision pass keeps, per scored token, its loss, its argmax and (for KL) its full log-distribution.
That log-distribution is [T, vocab] float32: in memory when small, else in a memory-mapped temp file (the way
llama.cpp's `--kl-divergence-base` file does), so the full-precision model runs once per checkpoint and eval,
however many quantizers follow.
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
    """Full-precision pass. nll: float64 [T]; argmax: int64 [T]; logprobs: float32 [T, V] or None."""

    nll: np.ndarray
    argmax: np.ndarray
    logprobs: np.ndarray | None
    tokens_digest: str
    _tmpdir: tempfile.TemporaryDirectory | None = field(default=None, repr=False)

    def close(self) -> None:
        self.logprobs = None
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


def _window_logprobs(model, tokens: EvalTokens, device: torch.device, batch_size: int):
    """Yield (target slice [a, b) into tokens.targets, log-softmax float32 [n, V]) for every window."""
    starts = np.concatenate([[0], np.cumsum([n for _, _, n in tokens.windows])])
    with torch.inference_mode():
        for batch in _batches(tokens, batch_size):
            ids = torch.stack([tokens.windows[i][0] for i in batch]).to(device)
            logits = model(input_ids=ids).logits
            for row, i in enumerate(batch):
                _, first, n = tokens.windows[i]
                lp = torch.log_softmax(logits[row, first : first + n].float(), dim=-1)
                yield int(starts[i]), int(starts[i + 1]), lp


def _nll(lp: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return -lp.gather(1, targets[:, None].to(lp.device))[:, 0].double()


def score_reference(model, tokens: EvalTokens, device: torch.device, batch_size: int = 8,
                    keep_logprobs: bool = True) -> ReferenceScores:
    """Run the full-precision model once over every window."""
    T = tokens.n_targets
    nll = np.empty(T, dtype=np.float64)
    argmax = np.empty(T, dtype=np.int64)
    store, tmpdir = None, None
    for a, b, lp in _window_logprobs(model, tokens, device, batch_size):
        if store is None and keep_logprobs:
            shape = (T, lp.shape[-1])
            if T * lp.shape[-1] * 4 <= IN_MEMORY_LIMIT_BYTES:
                store = np.empty(shape, dtype=np.float32)
            else:
                tmpdir = tempfile.TemporaryDirectory(prefix="qsens-fp-logprobs-")
                store = np.lib.format.open_memmap(os.path.join(tmpdir.name, "lp.npy"), "w+", np.float32, shape)
        nll[a:b] = _nll(lp, tokens.targets[a:b]).cpu().numpy()
        argmax[a:b] = lp.argmax(dim=-1).cpu().numpy()
        if store is not None:
            store[a:b] = lp.cpu().numpy()
    return ReferenceScores(nll, argmax, store, tokens.digest, tmpdir)


def score_quantized(model, tokens: EvalTokens, ref: ReferenceScores, device: torch.device,
                    batch_size: int = 8) -> QuantizedScores:
    """Run a quantized model over the same windows; KL(fp || q) per token when the reference kept log-probs."""
    if ref.tokens_digest != tokens.digest:
        raise ValueError("reference and quantized passes must score the same tokens")
    T = tokens.n_targets
    nll = np.empty(T, dtype=np.float64)
    agree = np.empty(T, dtype=bool)
    kl = np.empty(T, dtype=np.float64) if ref.logprobs is not None else None
    for a, b, lp in _window_logprobs(model, tokens, device, batch_size):
        nll[a:b] = _nll(lp, tokens.targets[a:b]).cpu().numpy()
        agree[a:b] = lp.argmax(dim=-1).cpu().numpy() == ref.argmax[a:b]
        if kl is not None:
            lp_fp = torch.from_numpy(np.asarray(ref.logprobs[a:b])).to(lp.device)
            kl[a:b] = (lp_fp.exp() * (lp_fp - lp)).sum(dim=-1, dtype=torch.float64).cpu().numpy()
    return QuantizedScores(nll, kl, agree)
