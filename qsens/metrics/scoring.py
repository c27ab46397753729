"""Forward passes: per-token losses of a full-precision model and of quantized ones, scored on the same batches.

No [T, V] logits are ever stored. `score_together` runs, for every batch of windows, the full-precision model
once and then each resident quantized model on the same input ids, and compares the logits while both are in
memory: a suite of k quantizers costs one full-precision pass plus k quantized passes per group of models that
fit in memory at once, and its memory is (models + one batch of logits), independent of the eval length T.
(The earlier design kept fp logits [T, V] float32 for KL: ~60 GB of temp file at V = 50,304 and T = 300K.)

Precision: KL(fp || q) with d = z_fp - z_q (logits) is evaluated as
    KL = sum_v p_v d_v + log1p(sum_v p_v expm1(-d_v)),
an identity (lse_q - lse_fp = log sum_v p_v e^{-d_v}) in which the two terms are sums of small, exactly formed
differences accumulated in float64. Subtracting two float32 log-softmaxes instead leaves rounding noise (~1e-7)
as large as the KL of an 8-bit model. Per-token losses use a float32 log-sum-exp: its ~1e-7 relative error is
random and averages out of every mean reported.

Model dtype: a bfloat16 or float16 model's logits are taken to float32 before anything else (`_scored_logits`),
so no softmax, log-sum-exp or KL term is ever formed in half precision (on bfloat16 logits over 4,096 tokens a
bfloat16 log-softmax was off by up to 0.07 and this KL by 10%); what is measured is the model's own half-precision
logits, scored as exactly as float32 ones (tests/metrics/test_scoring.py, tests/families/test_placement.py:
against float64 from the same logits).
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass
from typing import Hashable, Iterator, Mapping

import numpy as np
import torch

from qsens.metrics.windows import EvalTokens

# Fewest rows per comparison chunk (see _chunk_rows): bounds the float32 temporaries of KL at any n.
KL_ROWS = 256


@dataclass
class ReferenceScores:
    """Full-precision pass. nll, lse: float64 [T]; argmax: int64 [T].

    model: the full-precision model itself when KL is wanted (`score_quantized` recomputes its logits on each
    batch), else None.
    """

    nll: np.ndarray
    argmax: np.ndarray
    model: torch.nn.Module | None
    lse: np.ndarray
    tokens_digest: str

    def close(self) -> None:
        self.model = None


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


def _scored_logits(model, ids: torch.Tensor, rows: torch.Tensor | None, cols: torch.Tensor | None) -> torch.Tensor:
    """float32 [n, V]: the logits at (window row, position) pairs that predict scored targets (all, if None)."""
    logits = model(input_ids=ids).logits
    z = logits.reshape(-1, logits.shape[-1]) if rows is None else logits[rows, cols]
    return z.float()


def _batch_plan(tokens: EvalTokens, batch_size: int, device: torch.device):
    """Yield (input ids [B, L] on device, rows [n], cols [n], target indices [n] into tokens.targets)."""
    starts = np.concatenate([[0], np.cumsum([n for _, _, n in tokens.windows])])
    for batch in _batches(tokens, batch_size):
        ids = torch.stack([tokens.windows[i][0] for i in batch]).to(device)
        rows, cols, idx = [], [], []
        for row, i in enumerate(batch):
            _, first, n = tokens.windows[i]
            rows.append(np.full(n, row))
            cols.append(np.arange(first, first + n))
            idx.append(np.arange(starts[i], starts[i] + n))
        rows_np, cols_np = np.concatenate(rows), np.concatenate(cols)
        if rows_np.size == ids.numel() and (cols_np == np.tile(np.arange(ids.shape[1]), len(batch))).all():
            yield ids, None, None, np.concatenate(idx)  # every position scored, in order: a view, no copy
            continue
        yield ids, torch.from_numpy(rows_np).to(device), torch.from_numpy(cols_np).to(device), np.concatenate(idx)


def _nll_lse(z: torch.Tensor, targets: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """float64 [n] losses and log-sum-exps of float32 logits [n, V] at int64 targets [n]."""
    lse = torch.logsumexp(z, dim=-1).double()  # one call per batch: per-row calls cost more than the math
    nll = lse - z.gather(1, targets[:, None].to(z.device))[:, 0].double()
    return nll.cpu().numpy(), lse.cpu().numpy()


def _chunk_rows(V: int) -> int:
    """Rows per comparison chunk: ~16M elements, so each float32 temporary stays near 64 MB whatever n is."""
    return max(KL_ROWS, (1 << 24) // max(V, 1))


@dataclass
class _FpBatch:
    """The fp side of one batch, computed once and shared by every quantized model: z, p = softmax(z), lse."""

    z: torch.Tensor
    p: torch.Tensor
    lse: torch.Tensor

    @classmethod
    def of(cls, z: torch.Tensor) -> "_FpBatch":
        lse = torch.logsumexp(z, dim=-1, keepdim=True)
        return cls(z, torch.exp(z - lse), lse[:, 0].double())


def _kl_sums(z_fp: torch.Tensor, p: torch.Tensor, z_q: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """float64 [n] sums over v of p_v e_v and p_v expm1(e_v), e = z_q - z_fp (float32 terms, float64 sums), and
    int64 [n] argmax of z_q."""
    e = z_q - z_fp
    return (p * e).sum(-1, dtype=torch.float64), (p * torch.expm1(e)).sum(-1, dtype=torch.float64), z_q.argmax(-1)


def _kl_sums_fused(z_fp: torch.Tensor, p: torch.Tensor, z_q: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """`_kl_sums` with float64 terms too, written for torch.compile, which fuses it into one pass over [n, V]
    (eager it would materialise float64 copies). Measured for 333 x 50,304 on one CPU thread: eager `_kl_sums`
    1.1-1.4 s, this compiled 0.15 s, equal to float64 within 4e-6 relative per row."""
    e = (z_q - z_fp).double()
    pd = p.double()
    return (pd * e).sum(-1), (pd * torch.expm1(e)).sum(-1), z_q.argmax(-1)


_COMPILED: dict[str, object] = {}


def _sums_fn(elements: int):
    """`_kl_sums_fused` compiled by torch.compile when the sweep is big enough to repay its ~20 s of compiling
    (QSENS_KL_COMPILE_MIN elements, default 2e9; 0 forces it, a negative value never compiles); eager when
    compiling is unavailable or fails (the failure is remembered, so it is tried once per process)."""
    threshold = float(os.environ.get("QSENS_KL_COMPILE_MIN", 2e9))
    if threshold < 0 or elements < threshold or _COMPILED.get("failed"):
        return _kl_sums
    if "fn" not in _COMPILED:
        _COMPILED["fn"] = torch.compile(_kl_sums_fused, dynamic=True)
    return _COMPILED["fn"]


def _compare(fp: _FpBatch, z_q: torch.Tensor, targets: torch.Tensor, sums=_kl_sums
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """float64 [n] quantized losses, KL(fp || q) and int64 [n] argmax of z_q, from float32 logits [n, V] (see the
    module docstring).

    With e = z_q - z_fp: S = sum_v p_v expm1(e_v) = e^(lse_q - lse_fp) - 1, so KL = log1p(S) - sum_v p_v e_v and
    the quantized log-sum-exp is lse_fp + log1p(S): one exp-like pass over the quantized logits gives both,
    with sums accumulated in float64.
    """
    nll = torch.empty(z_q.shape[0], dtype=torch.float64, device=z_q.device)
    kl = torch.empty_like(nll)
    argmax = torch.empty(z_q.shape[0], dtype=torch.int64, device=z_q.device)
    step = _chunk_rows(z_q.shape[-1])
    tq = z_q.gather(1, targets[:, None].to(z_q.device))[:, 0].double()
    for s in range(0, z_q.shape[0], step):
        sl = slice(s, s + step)
        try:
            pe, s_sum, argmax[sl] = sums(fp.z[sl], fp.p[sl], z_q[sl])
        except Exception:  # noqa: BLE001 - a compiler failure (no C++ toolchain, triton): eager from now on
            if sums is _kl_sums:
                raise
            _COMPILED["failed"], sums = True, _kl_sums
            pe, s_sum, argmax[sl] = sums(fp.z[sl], fp.p[sl], z_q[sl])
        log1p_s = torch.log1p(s_sum)
        kl[sl], nll[sl] = log1p_s - pe, fp.lse[sl] + log1p_s - tq[sl]
    bad = ~(torch.isfinite(kl) & torch.isfinite(nll))
    if bad.any():  # expm1 overflowed (a logit of q far above fp's): the direct float64 forms are safe there
        lp, lq = torch.log_softmax(fp.z[bad].double(), -1), torch.log_softmax(z_q[bad].double(), -1)
        kl[bad] = (lp.exp() * (lp - lq)).sum(-1)
        nll[bad] = -lq.gather(1, targets[bad.to(targets.device)][:, None].to(lq.device))[:, 0]
    return nll, kl, argmax


def kl_divergence(z_fp: torch.Tensor, z_q: torch.Tensor) -> torch.Tensor:
    """KL(softmax(z_fp) || softmax(z_q)) per row: logits [n, V] of any float dtype (taken to float32 first, as
    `_scored_logits` does) -> float64 [n]."""
    dummy = torch.zeros(z_fp.shape[0], dtype=torch.int64, device=z_fp.device)
    return _compare(_FpBatch.of(z_fp.float()), z_q.float(), dummy)[1]


def score_together(fp_model, q_models: Mapping[Hashable, torch.nn.Module], tokens: EvalTokens,
                   device: torch.device, batch_size: int = 8, kl: bool = True, on_logits=None
                   ) -> tuple[ReferenceScores, dict[Hashable, QuantizedScores | BaseException]]:
    """One sweep over the windows: per batch, the fp model, then every quantized model on the same ids.

    Returns the fp scores (model=fp_model when kl) and, per key of `q_models`, its scores or the exception its
    forward raised (that model is dropped from the rest of the sweep; the others go on).
    on_logits(key, idx, z_fp, z_q), when given (and kl): called with each batch's float32 logits [n, V] of both
    models and the target indices idx [n] they score, for statistics the sweep itself does not keep.
    """
    T = tokens.n_targets
    fp_nll, fp_lse, fp_argmax = np.empty(T), np.empty(T), np.empty(T, dtype=np.int64)
    q_nll = {k: np.empty(T) for k in q_models}
    q_agree = {k: np.empty(T, dtype=bool) for k in q_models}
    q_kl = {k: np.empty(T) for k in q_models} if kl else {}
    failed: dict[Hashable, BaseException] = {}
    sums = None  # the KL kernel, chosen at the first batch (when V is known)
    with torch.inference_mode():
        for ids, rows, cols, idx in _batch_plan(tokens, batch_size, device):
            targets = tokens.targets[idx]
            z_fp = _scored_logits(fp_model, ids, rows, cols)
            fp = _FpBatch.of(z_fp) if kl and q_models else None
            if fp is None:
                fp_nll[idx], fp_lse[idx] = _nll_lse(z_fp, targets)
            else:
                fp_lse[idx] = fp.lse.cpu().numpy()
                fp_nll[idx] = (fp.lse - z_fp.gather(1, targets[:, None].to(z_fp.device))[:, 0].double()).cpu().numpy()
            am_fp = z_fp.argmax(dim=-1)
            fp_argmax[idx] = am_fp.cpu().numpy()
            for key, model in q_models.items():
                if key in failed:
                    continue
                try:
                    z_q = _scored_logits(model, ids.to(_device_of(model, device)), rows, cols).to(z_fp.device)
                    if fp is None:
                        q_nll[key][idx] = _nll_lse(z_q, targets)[0]
                        am_q = z_q.argmax(dim=-1)
                    else:
                        sums = sums or _sums_fn(T * z_fp.shape[-1] * len(q_models))
                        nll_k, kl_k, am_q = _compare(fp, z_q, targets, sums)
                        q_nll[key][idx], q_kl[key][idx] = nll_k.cpu().numpy(), kl_k.cpu().numpy()
                        if on_logits is not None:
                            on_logits(key, idx, z_fp, z_q)
                    q_agree[key][idx] = (am_q == am_fp).cpu().numpy()
                    del z_q
                except Exception as exc:  # noqa: BLE001 - one broken quantized model must not stop the others
                    failed[key] = exc
    ref = ReferenceScores(fp_nll, fp_argmax, fp_model if kl else None, fp_lse, tokens.digest)
    out: dict[Hashable, QuantizedScores | BaseException] = {
        k: failed.get(k) or QuantizedScores(q_nll[k], q_kl.get(k), q_agree[k]) for k in q_models
    }
    return ref, out


def _device_of(model: torch.nn.Module, default: torch.device) -> torch.device:
    """Where a model's input ids must go: a placed model's main device (qsens.families.placed: its hooks move
    activations on from there; its first parameter may be offloaded, on 'meta'), else its first parameter's."""
    hook = getattr(model, "_hf_hook", None)
    if hook is not None and getattr(hook, "execution_device", None) is not None:
        d = hook.execution_device
        return torch.device(f"cuda:{d}" if isinstance(d, int) else d)
    p = next(model.parameters(), None)
    return p.device if p is not None else default


def score_reference(model, tokens: EvalTokens, device: torch.device, batch_size: int = 8,
                    keep_logits: bool = True) -> ReferenceScores:
    """The full-precision pass alone; with keep_logits the model is kept so a later `score_quantized` gets KL."""
    ref, _ = score_together(model, {}, tokens, device, batch_size, kl=keep_logits)
    return ref


def score_quantized(model, tokens: EvalTokens, ref: ReferenceScores, device: torch.device,
                    batch_size: int = 8) -> QuantizedScores:
    """One quantized model over the same windows; KL(fp || q) per token when the reference kept its model.

    This recomputes the fp logits batch by batch (one more fp pass); runs of several quantizers use
    `score_together` so they share one fp pass.
    """
    if ref.tokens_digest != tokens.digest:
        raise ValueError("reference and quantized passes must score the same tokens")
    if ref.model is None:  # no KL: agreement against the stored fp argmax needs no fp logits
        nll, agree = np.empty(tokens.n_targets), np.empty(tokens.n_targets, dtype=bool)
        with torch.inference_mode():
            for ids, rows, cols, idx in _batch_plan(tokens, batch_size, device):
                z_q = _scored_logits(model, ids, rows, cols)
                nll[idx] = _nll_lse(z_q, tokens.targets[idx])[0]
                agree[idx] = z_q.argmax(dim=-1).cpu().numpy() == ref.argmax[idx]
        return QuantizedScores(nll, None, agree)
    _, out = score_together(ref.model, {0: model}, tokens, device, batch_size, kl=True)
    if isinstance(out[0], BaseException):
        raise out[0]
    return out[0]
