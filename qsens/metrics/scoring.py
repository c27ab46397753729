"""Forward passes: per-token losses of a full-precision model and of quantized ones, scored on the same batches.

No [T, V] logits are ever stored. `score_together` runs, for every batch of windows, the full-precision model
once and then each resident quantized model on the same input ids, and compares the logits while both are in
memory: a suite of k quantizers costs one full-precision pass plus k quantized passes per group of models that
fit in memory at once, and its memory is (models + one batch of logits), independent of the eval length T.
(The earlier design kept fp logits [T, V] float32 for KL: ~60 GB of temp file at V = 50,304 and T = 300K.)

The compare step (fp log-sum-exp, per-model loss, KL(fp || q), argmax) is `qsens.metrics.fused`: one pass over
the vocabulary per model and batch, sums in float64, KL within 5e-7 relative of float64 log-softmaxes.

Model dtype: a bfloat16 or float16 model's logits are taken to float32 before anything else (`_scored_logits`),
so no softmax, log-sum-exp or KL term is ever formed in half precision (on bfloat16 logits over 4,096 tokens a
bfloat16 log-softmax was off by up to 0.07 and this KL by 10%); what is measured is the model's own half-precision
logits, scored as exactly as float32 ones (tests/metrics/test_scoring.py, tests/families/test_placement.py:
against float64 from the same logits).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Hashable, Iterator, Mapping

import numpy as np
import torch

from qsens.metrics import fused
from qsens.metrics.windows import EvalTokens


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


def kl_divergence(z_fp: torch.Tensor, z_q: torch.Tensor) -> torch.Tensor:
    """KL(softmax(z_fp) || softmax(z_q)) per row: logits [n, V] of any float dtype (taken to float32 first, as
    `_scored_logits` does) -> float64 [n]."""
    dummy = torch.zeros(z_fp.shape[0], dtype=torch.int64, device=z_fp.device)
    return fused.compare(fused.fp_side(z_fp.float()), z_q.float(), dummy)[1]


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
    ks = None  # the compare kernels, chosen at the first batch (when V is known)
    with torch.inference_mode():
        for ids, rows, cols, idx in _batch_plan(tokens, batch_size, device):
            targets = tokens.targets[idx]
            z_fp = _scored_logits(fp_model, ids, rows, cols)
            ks = ks or fused.kernels(T * z_fp.shape[-1] * (1 + len(q_models)))  # logits the sweep compares
            fp = fused.fp_side(z_fp, ks)
            fp_nll[idx], fp_lse[idx] = fp.nll(targets).cpu().numpy(), fp.lse.cpu().numpy()
            fp_argmax[idx] = fp.argmax.cpu().numpy()
            for key, model in q_models.items():
                if key in failed:
                    continue
                try:
                    z_q = _scored_logits(model, ids.to(_device_of(model, device)), rows, cols).to(z_fp.device)
                    if kl:
                        nll_k, kl_k, am_q = fused.compare(fp, z_q, targets, ks)
                        q_nll[key][idx], q_kl[key][idx] = nll_k.cpu().numpy(), kl_k.cpu().numpy()
                        if on_logits is not None:
                            on_logits(key, idx, z_fp, z_q)
                    else:
                        q_side = fused.fp_side(z_q, ks)
                        q_nll[key][idx], am_q = q_side.nll(targets).cpu().numpy(), q_side.argmax
                    q_agree[key][idx] = (am_q == fp.argmax).cpu().numpy()
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
                q_side = fused.fp_side(_scored_logits(model, ids, rows, cols))
                nll[idx] = q_side.nll(tokens.targets[idx]).cpu().numpy()
                agree[idx] = q_side.argmax.cpu().numpy() == ref.argmax[idx]
        return QuantizedScores(nll, None, agree)
    _, out = score_together(ref.model, {0: model}, tokens, device, batch_size, kl=True)
    if isinstance(out[0], BaseException):
        raise out[0]
    return out[0]
