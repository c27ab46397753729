"""Run a suite: for each checkpoint, one full-precision pass per eval text, then every quantizer against it.

`plan_cells` lists every cell with its key; `run_checkpoint` computes one checkpoint's pending cells and hands
each finished row to `emit` (the local executor writes it to the store at once; a distributed executor
returns rows to its driver). A failing cell becomes a 'failed' row with its error, and the run goes on.
"""

from __future__ import annotations

import gc
import hashlib
import os
import time
import traceback
from collections import OrderedDict, defaultdict
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable

import numpy as np
import torch

from qsens.families.loading import load_model, load_tokenizer
from qsens.metrics.compare import encode_window_sums
from qsens.metrics.paired import sensitivity_metrics, window_sums
from qsens.metrics.resources import available_bytes, measured, model_bytes
from qsens.metrics.scoring import score_together
from qsens.metrics.text import read_text
from qsens.metrics.windows import EvalTokens, build_eval_tokens, model_max_length
from qsens.quantizers import method_module
from qsens.quantizers.base import QuantContext, QuantResult, QuantSettings
from qsens.store.keys import cell_key, checkpoint_fingerprint
from qsens.suites.load import Checkpoint, EvalText, Suite


# Most quantized models kept resident at once (each group shares one fp pass per eval); memory decides below that.
MAX_RESIDENT = int(os.environ.get("QSENS_MAX_RESIDENT", 16))


@dataclass(frozen=True)
class Cell:
    key: str
    checkpoint: Checkpoint
    settings: QuantSettings
    eval: EvalText


def plan_cells(suite: Suite) -> list[Cell]:
    """Every (checkpoint x quantizer x eval) cell of the suite, keyed by its full configuration."""
    spec = suite.spec
    cells = []
    for ckpt in suite.checkpoints:
        fingerprint = checkpoint_fingerprint(ckpt)
        for settings in suite.quantizers:
            for ev in suite.evals:
                key = cell_key(fingerprint, ckpt, settings, ev, seed=spec.seed,
                               bootstrap=spec.bootstrap.model_dump(), metrics=list(spec.metrics))
                cells.append(Cell(key, ckpt, settings, ev))
    return cells


def identity_row(cell: Cell, suite_name: str) -> dict:
    c, s, ev = cell.checkpoint, cell.settings, cell.eval
    return {
        "key": cell.key, "suite": suite_name, "family": c.family, "checkpoint": c.name, "schedule": c.schedule,
        "size": c.size, "n_params": c.n_params, "tokens": c.tokens, "location": c.location, "revision": c.revision,
        "stage": c.stage, "train_seed": c.train_seed, "fit_group": c.fit_group,
        "eval": ev.name, "eval_hash": ev.text_hash, "protocol_hash": ev.protocol.hash(),
        "protocol_json": ev.protocol.model_dump(mode="json"), "method": s.method, "bits": s.bits,
        "group_size": s.group_size_value(), "quantizer": s.label(), "settings_json": s.model_dump(mode="json"),
    }


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _error_text(exc: BaseException) -> str:
    tail = "".join(traceback.format_exception(exc)[-3:]).strip()
    return f"{type(exc).__name__}: {exc}\n{tail}"[:4000]


def calibration_sampler(suite: Suite, tokenizer) -> Callable[[int, int], torch.Tensor] | None:
    """n random token windows of `length` from the suite's calibration text, from a local seeded RNG."""
    if suite.calibration_path is None:
        return None
    ids = np.asarray(tokenizer(read_text(suite.calibration_path), add_special_tokens=False)["input_ids"])

    def sample(n: int, length: int) -> torch.Tensor:
        if ids.size <= length:
            raise ValueError(f"calibration text has {ids.size} tokens, fewer than one sample of {length}")
        starts = np.random.default_rng(suite.spec.seed).integers(0, ids.size - length, size=n)
        return torch.from_numpy(np.stack([ids[s : s + length] for s in starts]).astype(np.int64))

    return sample


def _check_fits(model, eval_name: str, context_length: int) -> None:
    """A window longer than the model's positions would be silently wrong or crash deep inside the model."""
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if isinstance(limit, int) and context_length > limit:
        raise ValueError(f"eval {eval_name!r}: context_length {context_length} exceeds the model's "
                         f"max_position_embeddings {limit}: at most {limit}")


def _tokenizer_digest(tokenizer) -> str | None:
    """sha256 of a fast tokenizer's full serialization (vocab, merges, normalizer, special tokens), else None."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    return hashlib.sha256(backend.to_str().encode()).hexdigest()


# Checkpoints of one family share their tokenizer, so an eval text is tokenized once per run, not once per
# checkpoint (on the micro suite that was a quarter of the wall time). Keyed by everything the tokens depend on.
_EVAL_TOKENS: OrderedDict[tuple, EvalTokens] = OrderedDict()
_EVAL_TOKENS_KEPT = 8


def _cached_eval_tokens(tokenizer, ev: EvalText, max_length: int) -> EvalTokens:
    digest = _tokenizer_digest(tokenizer)
    key = (digest, ev.text_hash, ev.protocol.hash(), max_length)
    if digest is not None and key in _EVAL_TOKENS:
        _EVAL_TOKENS.move_to_end(key)
        return _EVAL_TOKENS[key]
    tokens = build_eval_tokens(read_text(ev.path), tokenizer, ev.protocol, max_length)
    if digest is not None:
        _EVAL_TOKENS[key] = tokens
        while len(_EVAL_TOKENS) > _EVAL_TOKENS_KEPT:
            _EVAL_TOKENS.popitem(last=False)
    return tokens


class _Checkpoint:
    """The state shared by one checkpoint's cells: model, tokenizer, eval tokens."""

    def __init__(self, suite: Suite, ckpt: Checkpoint, device: torch.device):
        self.suite, self.ckpt, self.device = suite, ckpt, device
        self.tokenizer = load_tokenizer(ckpt)
        self.model = load_model(ckpt, device)
        self.model_bytes = model_bytes(self.model)
        self.tokens: dict[str, EvalTokens] = {}
        self.calibration: Callable[[int, int], torch.Tensor] | None = None

    def eval_tokens(self, ev: EvalText) -> EvalTokens:
        if ev.name not in self.tokens:
            max_length = model_max_length(self.model.config, self.tokenizer)
            context_length = ev.protocol.resolved(max_length).context_length
            _check_fits(self.model, ev.name, context_length)
            tokens = _cached_eval_tokens(self.tokenizer, ev, max_length)
            scored = int(tokens.targets.numel())
            if ev.protocol.unit == "stream" and scored < context_length - 1:  # a full window scores cl - 1
                raise ValueError(f"eval text {ev.name!r} gives {scored} scored tokens, fewer than one window "
                                 f"(context_length {context_length}): use a longer text or a shorter "
                                 "context_length")
            self.tokens[ev.name] = tokens
        return self.tokens[ev.name]

    def quantize(self, settings: QuantSettings) -> QuantResult:
        if self.device.type == "cuda":  # peak memory per method, not per process
            torch.cuda.reset_peak_memory_stats(self.device)
        if self.calibration is None and self.suite.calibration_path is not None:
            self.calibration = calibration_sampler(self.suite, self.tokenizer)  # tokenized once per checkpoint
        ctx = QuantContext(
            fp_model=self.model, tokenizer=self.tokenizer, reload=lambda **kw: load_model(self.ckpt, self.device, **kw),
            device=self.device, seed=self.suite.spec.seed, calibration=self.calibration,
            checkpoint_dir=self.ckpt.location if self.ckpt.is_local else None,
        )
        return method_module(settings.method).quantize(ctx, settings)

    def room_for_another(self, resident: int) -> bool:
        """Whether one more quantized model may stay resident: at most QSENS_MAX_RESIDENT, and two model sizes
        of memory left (one for the model, one for the next quantizer's working copy)."""
        if resident >= MAX_RESIDENT:
            return False
        return resident == 0 or available_bytes(self.device) > 2 * self.model_bytes

    def close(self) -> None:
        self.model = None


def _score_group(state: _Checkpoint, group: list["_Quantized"], ev: EvalText) -> tuple[dict, float]:
    """Score every model of `group` on eval `ev` in one sweep; per settings its metrics row or exception."""
    tokens = state.eval_tokens(ev)
    t0 = time.perf_counter()
    ref, scores = score_together(state.model, {g.settings: g.result.model for g in group}, tokens, state.device,
                                 ev.protocol.batch_size, kl="kl" in state.suite.spec.metrics)
    sweep_seconds = time.perf_counter() - t0
    if not np.isfinite(ref.nll).all():
        raise FloatingPointError("the full-precision model gives non-finite losses on this eval text")
    boot, out = state.suite.spec.bootstrap, {}
    for settings, q in scores.items():
        if isinstance(q, BaseException):
            out[settings] = q
        elif not np.isfinite(q.nll).all():
            out[settings] = FloatingPointError(f"{(~np.isfinite(q.nll)).sum()} non-finite quantized losses")
        else:
            metrics = sensitivity_metrics(tokens, ref, q, bootstrap_samples=boot.samples, confidence=boot.confidence,
                                          seed=state.suite.spec.seed)
            out[settings] = {**metrics, "tokens_digest": tokens.digest,
                             "window_sums": encode_window_sums(window_sums(tokens, ref, q))}
    ref.close()
    return out, sweep_seconds


@dataclass
class _Quantized:
    settings: QuantSettings
    cells: list[Cell]
    result: QuantResult
    started_at: str
    outcome: dict


def run_checkpoint(suite: Suite, ckpt: Checkpoint, cells: list[Cell], device: torch.device,
                   emit: Callable[[dict], None], provenance: dict) -> None:
    """Compute `cells` (all of checkpoint `ckpt`); emit a running row as each starts and a final row as each ends.

    Quantized models stay resident while memory allows (`_Checkpoint.room_for_another`); each such group is
    scored against one full-precision pass per eval (`score_together`), so no fp logits are stored. A group's
    cells are written when the group is scored, so a crash loses the group in flight (recomputed next run).
    """
    base = {**provenance, "seed": suite.spec.seed}

    def finish(cell: Cell, started: float, **fields) -> None:
        emit({**identity_row(cell, suite.name), **base, **fields, "seconds": time.perf_counter() - started,
              "finished_at": _now()})

    t0 = time.perf_counter()
    try:
        state = _Checkpoint(suite, ckpt, device)
    except Exception as exc:  # noqa: BLE001 - any load failure fails this checkpoint's cells, not the run
        for cell in cells:
            finish(cell, t0, status="failed", error=f"loading checkpoint failed: {_error_text(exc)}", started_at=_now())
        return
    pending: dict[QuantSettings, list[Cell]] = defaultdict(list)
    for cell in cells:
        pending[cell.settings].append(cell)
    queue = list(pending.items())
    try:
        while queue:
            with measured(device) as usage:
                group = _quantize_group(state, queue, finish, emit, suite.name, base)
                scored = _score_all(state, group, suite)
            for g in group:
                for cell in g.cells:
                    row, seconds = scored[(g.settings, cell.eval.name)]
                    fields = {**g.outcome, **usage.as_row(), "started_at": g.started_at}
                    # seconds = its quantization + its share of the group's sweep (the sweeps run after all quantizing)
                    as_if_started = time.perf_counter() - g.result.seconds - seconds
                    if isinstance(row, BaseException):
                        finish(cell, as_if_started, status="failed", error=_error_text(row), **fields)
                    else:
                        finish(cell, as_if_started, status="ok", error=None, **fields, **row)
            del group, scored
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
    finally:
        state.close()


def _quantize_group(state: _Checkpoint, queue: list, finish, emit, suite_name: str, base: dict) -> list[_Quantized]:
    """Quantize settings off the front of `queue` while their models may stay resident; failures finish here."""
    group: list[_Quantized] = []
    while queue and state.room_for_another(len(group)):
        settings, cells = queue.pop(0)
        started_at, t_q = _now(), time.perf_counter()
        for cell in cells:
            emit({**identity_row(cell, suite_name), **base, "status": "running", "started_at": started_at})
        try:
            result = state.quantize(settings)
        except Exception as exc:  # noqa: BLE001
            for cell in cells:
                finish(cell, t_q, status="failed", error=f"quantization failed: {_error_text(exc)}",
                       started_at=started_at)
            continue
        outcome = {"quant_seconds": result.seconds, "effective_bits": result.effective_bits,
                   "layers_quantized": len(result.layers_quantized), "backend": result.backend,
                   "peak_memory_bytes": result.peak_memory_bytes,
                   "details_json": {**result.details, "layers": result.layers_quantized, "resident_group": 0}}
        group.append(_Quantized(settings, cells, result, started_at, outcome))
    for g in group:
        g.outcome["details_json"]["resident_group"] = len(group)
    return group


def _score_all(state: _Checkpoint, group: list[_Quantized], suite: Suite) -> dict:
    """(settings, eval name) -> (metrics row or exception, this cell's share of the sweep seconds)."""
    out: dict = {}
    for ev in suite.evals:
        members = [g for g in group if any(c.eval.name == ev.name for c in g.cells)]
        if not members:
            continue
        try:
            rows, seconds = _score_group(state, members, ev)
        except Exception as exc:  # noqa: BLE001 - the fp pass failed: every cell of this eval fails
            rows, seconds = {g.settings: exc for g in members}, 0.0
        for settings, row in rows.items():
            out[(settings, ev.name)] = (row, seconds / len(members))
    return out
