"""Pretrain a ladder of small Llama checkpoints: sizes x token budgets x schedules, on one fixed data order.

Data order: the training text is one token stream (documents joined by the EOS token) cut into non-overlapping
windows of `sequence_length + 1`; epoch e visits them in a permutation drawn from the seed and e, and global
step s takes the next `batch_size` windows. A batch depends on (seed, step) only, so every run of every size
and schedule sees the same batches in the same order, and a resumed run continues exactly where it stopped.
The micro family's order (`seed=None`) draws epoch e from `default_rng(spec.seed + e)`; a seeded order draws it
from `default_rng([seed, e])` (a factorial family), and a replicate seed of the micro family from
`default_rng([seed, e, 1])`: numpy's SeedSequence([1, 0]) equals SeedSequence(1), so `[seed, e]` alone would give
seed 1 the micro family's second epoch as its first.

Schedules (`lr_at`): `cosine` is one run per budget (linear warmup, cosine to min_lr at that budget's last
step); `wsd` is one warmup-stable run at peak lr, and each budget D_i branches off it at (1 - f)·D_i into a
linear cooldown to min_lr ending at D_i (Hägele et al. 2024; Catalan-Tatjer et al. 2025); f is the spec's
`wsd_cooldown_fraction` unless a cooldown of the factorial passes its own.
"""

from __future__ import annotations

import math
import time
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from qsens.testbed.spec import LadderSpec, SizeSpec


def lr_at(step: int, total_steps: int, spec: LadderSpec, schedule: str, fraction: float | None = None) -> float:
    """Learning rate of `step` (0-based) in a run ending at `total_steps` (for wsd: that budget's branch).

    `schedule` is 'cosine', 'stable' (peak after warmup) or 'wsd' (a cooldown of `fraction`)."""
    o = spec.optim
    peak, low = o.peak_lr, o.peak_lr * o.min_lr_ratio
    if step < o.warmup_steps:
        return peak * (step + 1) / o.warmup_steps
    if schedule == "cosine":
        progress = (step - o.warmup_steps) / max(1, total_steps - 1 - o.warmup_steps)
        return low + (peak - low) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    if schedule == "stable":
        return peak
    cooldown_start = wsd_branch_step(total_steps, spec, fraction)
    if step < cooldown_start:
        return peak
    progress = (step - cooldown_start + 1) / (total_steps - cooldown_start)
    return peak + (low - peak) * progress


def wsd_branch_step(total_steps: int, spec: LadderSpec, fraction: float | None = None) -> int:
    """First cooldown step of a WSD branch ending at `total_steps` (never inside the warmup)."""
    f = spec.wsd_cooldown_fraction if fraction is None else fraction
    return max(spec.optim.warmup_steps, round(total_steps * (1 - f)))


REPLICATE_STREAM = 1  # the third entropy word of a replicate seed's data order (see DataOrder)


class DataOrder:
    """Batches by global step over a token stream (int64 [T]); see the module docstring."""

    def __init__(self, stream: np.ndarray, spec: LadderSpec, seed: int | None = None, replicate: bool = False):
        self.stream, self.L, self.B = stream, spec.sequence_length, spec.batch_size
        self.seed, self.seeded = (spec.seed, False) if seed is None else (seed, True)
        # a replicate seed of the micro family: default_rng([seed, e]) would repeat the original order's epochs
        # (numpy's SeedSequence([1, 0]) is SeedSequence(1), the micro family's second epoch), so a third word
        self.entropy_tail = [REPLICATE_STREAM] if replicate and self.seeded else []
        self.n_windows = (len(stream) - 1) // self.L
        if self.n_windows < self.B:
            raise ValueError(f"training text has {len(stream)} tokens: fewer than one batch of windows")

    @lru_cache(maxsize=4)
    def _perm(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, epoch, *self.entropy_tail] if self.seeded else self.seed + epoch)
        return rng.permutation(self.n_windows)

    def batch(self, step: int) -> torch.Tensor:
        """int64 [batch_size, sequence_length + 1]."""
        g = np.arange(step * self.B, (step + 1) * self.B)
        starts = np.array([self._perm(int(e))[p] for e, p in zip(g // self.n_windows, g % self.n_windows)]) * self.L
        return torch.from_numpy(np.stack([self.stream[s : s + self.L + 1] for s in starts]))

    def _rule(self) -> str:
        if not self.seeded:
            return "default_rng(seed+e)"
        return f"default_rng([seed, e, {REPLICATE_STREAM}])" if self.entropy_tail else "default_rng([seed, e])"

    def describe(self) -> str:
        return (f"stream of {len(self.stream)} tokens (documents joined by EOS), {self.n_windows} windows of "
                f"{self.L}+1 tokens at multiples of {self.L}; epoch e in permutation numpy "
                f"{self._rule()}; "
                f"step s takes windows s*{self.B}..(s+1)*{self.B}-1; seed {self.seed}")


def build_model(size: SizeSpec, spec: LadderSpec, vocab_size: int, eos_id: int, seed: int | None = None,
                device: str = "cpu"):
    """Float32 Llama, initialised on the CPU from `seed` (default spec.seed) and then moved, so CPU and CUDA runs
    of a seed start from the same weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=size.hidden, intermediate_size=size.mlp, num_hidden_layers=size.layers,
        num_attention_heads=size.heads, num_key_value_heads=size.heads, max_position_embeddings=spec.sequence_length,
        tie_word_embeddings=True, bos_token_id=eos_id, eos_token_id=eos_id,
    )
    torch.manual_seed(spec.seed if seed is None else seed)  # every run of a (size, seed) starts from the same weights
    return LlamaForCausalLM(config).to(device)


def build_training_model(size: SizeSpec, spec: LadderSpec, vocab_size: int, eos_id: int, seed: int | None = None,
                         device: str = "cpu"):
    """The model a ladder trains: the HF Llama itself (`trainer: hf`), or `FastLlama` holding the same initial
    weights (`trainer: fast`, the default of the gutenberg family): equal to rounding, several times faster."""
    hf = build_model(size, spec, vocab_size, eos_id, seed, device)
    if spec.trainer == "hf":
        return hf
    from qsens.testbed.fastllama import FastLlama

    return FastLlama.from_hf(hf)


def as_hf(model):
    """A CPU `LlamaForCausalLM` copy of a training model (what is stored and scored); the model trains on."""
    import copy

    from qsens.testbed.fastllama import FastLlama

    return model.to_hf() if isinstance(model, FastLlama) else copy.deepcopy(model).to("cpu")


def trainer_of(model) -> str:
    from qsens.testbed.fastllama import FastLlama

    return "fast" if isinstance(model, FastLlama) else "hf"


def batch_loss(model, batch: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of a batch (int64 [B, S + 1]) under either training model."""
    inputs, targets = batch[:, :-1], batch[:, 1:]
    if trainer_of(model) == "fast":
        return model.loss(inputs, targets)
    logits = model(input_ids=inputs).logits
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def non_embedding_params(model) -> int:
    """N: parameters outside the token embeddings and the output head (Kaplan et al. 2020 counting)."""
    head = model.get_output_embeddings().weight
    emb = model.get_input_embeddings().weight
    return sum(p.numel() for p in model.parameters() if p is not head and p is not emb)


def make_optimizer(model, spec: LadderSpec) -> torch.optim.Optimizer:
    o = spec.optim
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if trainer_of(model) == "fast":  # one fused kernel per step over all parameters, on CPU and CUDA alike
        return torch.optim.AdamW(groups, lr=o.peak_lr, betas=o.betas, fused=True)
    # foreach on CUDA (fewer kernel launches); off on the CPU, where the micro family was trained that way
    return torch.optim.AdamW(groups, lr=o.peak_lr, betas=o.betas, fused=False, foreach=model.device.type == "cuda")


def train_steps(model, opt, data: DataOrder, steps: range, lr_of, state_path: Path, log, grad_clip: float,
                save_every_s: float = 120.0):
    """Train over `steps`, saving (model, optimizer, next step) to `state_path` every `save_every_s` seconds.

    Returns (last loss, seconds). `lr_of(step)` gives the learning rate.
    """
    model.train()
    device = model.device
    t0 = last_save = last_log = time.time()
    loss_value = float("nan")
    for step in steps:
        for group in opt.param_groups:
            group["lr"] = lr_of(step)
        batch = data.batch(step).to(device)
        loss = batch_loss(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        now = time.time()
        if now - last_log > 20 or step == steps[-1]:
            loss_value = loss.item()  # only here: .item() waits for the GPU
            done = step - steps[0] + 1
            log(f"step {step + 1}/{steps[-1] + 1} loss {loss_value:.4f} lr {lr_of(step):.2e} "
                f"{done * batch[:, 1:].numel() / (now - t0):,.0f} tok/s")
            last_log = now
        if now - last_save > save_every_s and step != steps[-1]:
            save_state(state_path, model, opt, step + 1)
            last_save = now
    return loss_value, time.time() - t0


def run_settings(model) -> dict[str, str]:
    """What a run may never change between its start and its end (a resume checks it): the training model and
    the BLAS route of this process (qsens.blas): either changes the rounding, so a resume would not be exact."""
    from qsens import blas

    return {"trainer": trainer_of(model), "blas": blas.route()}


def save_state(path: Path, model, opt, next_step: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "next_step": next_step,
                "settings": run_settings(model)}, tmp)
    tmp.replace(path)


def load_state(path: Path, model, opt) -> int:
    """Restore a saved state; returns the next step to run (0 when there is none). Refuses a state saved under
    other run settings (a state from before they were recorded counts as the HF trainer on the default route)."""
    if not path.is_file():
        return 0
    state = torch.load(path, weights_only=True, map_location=model.device)
    was, now = state.get("settings", {"trainer": "hf", "blas": "default"}), run_settings(model)
    if was != now:
        raise ValueError(f"{path}: this run was started with {was} and would resume with {now}; a run never "
                         f"switches (resume must stay exact): restore the spec's `trainer` or {_BLAS_HINT}, or "
                         f"delete the state file to restart the run")
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    return int(state["next_step"])


_BLAS_HINT = "set QSENS_BLAS (shim | off) to the route it started on"
