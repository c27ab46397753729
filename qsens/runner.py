"""Run a suite: for each checkpoint, one full-precision pass per eval text, then every quantizer against it.

`plan_cells` lists every cell with its key; `run_checkpoint` computes one checkpoint's pending cells and hands
each finished row to `emit` (the local executor writes it to the store at once; a distributed executor
returns rows to its driver). A failing cell becomes a 'failed' row with its error, and the run goes on.
"""

from __future__ import annotations

import gc
import time
import traceback
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable

import numpy as np
import torch

from qsens.families.loading import load_model, load_tokenizer
from qsens.metrics.paired import sensitivity_metrics
from qsens.metrics.scoring import ReferenceScores, score_quantized, score_reference
from qsens.metrics.text import read_text
from qsens.metrics.windows import EvalTokens, build_eval_tokens
from qsens.quantizers import method_module
from qsens.quantizers.base import QuantContext, QuantResult, QuantSettings
from qsens.store.keys import cell_key, checkpoint_fingerprint
from qsens.suites.load import Checkpoint, EvalText, Suite


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
        "stage": c.stage, "train_seed": c.train_seed,
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


class _Checkpoint:
    """The state shared by one checkpoint's cells: model, tokenizer, eval tokens, fp references."""

    def __init__(self, suite: Suite, ckpt: Checkpoint, device: torch.device):
        self.suite, self.ckpt, self.device = suite, ckpt, device
        self.tokenizer = load_tokenizer(ckpt)
        self.model = load_model(ckpt, device)
        self.tokens: dict[str, EvalTokens] = {}
        self.refs: dict[str, ReferenceScores] = {}
        self.calibration: Callable[[int, int], torch.Tensor] | None = None

    def reference(self, ev: EvalText) -> tuple[EvalTokens, ReferenceScores]:
        if ev.name not in self.refs:
            tokens = build_eval_tokens(read_text(ev.path), self.tokenizer, ev.protocol)
            ref = score_reference(self.model, tokens, self.device, ev.protocol.batch_size,
                                  keep_logits="kl" in self.suite.spec.metrics)
            if not np.isfinite(ref.nll).all():
                raise FloatingPointError("the full-precision model gives non-finite losses on this eval text")
            self.tokens[ev.name], self.refs[ev.name] = tokens, ref
        return self.tokens[ev.name], self.refs[ev.name]

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

    def close(self) -> None:
        for ref in self.refs.values():
            ref.close()
        self.model = None


def _score_cell(state: _Checkpoint, result: QuantResult, cell: Cell) -> dict:
    tokens, ref = state.reference(cell.eval)
    q = score_quantized(result.model, tokens, ref, state.device, cell.eval.protocol.batch_size)
    if not np.isfinite(q.nll).all():
        raise FloatingPointError(f"{(~np.isfinite(q.nll)).sum()} non-finite quantized losses")
    boot = state.suite.spec.bootstrap
    metrics = sensitivity_metrics(tokens, ref, q, bootstrap_samples=boot.samples, confidence=boot.confidence,
                                  seed=state.suite.spec.seed)
    return {**metrics, "tokens_digest": tokens.digest}


def run_checkpoint(suite: Suite, ckpt: Checkpoint, cells: list[Cell], device: torch.device,
                   emit: Callable[[dict], None], provenance: dict) -> None:
    """Compute `cells` (all of checkpoint `ckpt`); emit a running row as each starts and a final row as each ends."""
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
    by_settings: dict[QuantSettings, list[Cell]] = defaultdict(list)
    for cell in cells:
        by_settings[cell.settings].append(cell)
    try:
        for settings, group in by_settings.items():
            started_at, t_q = _now(), time.perf_counter()
            for cell in group:
                emit({**identity_row(cell, suite.name), **base, "status": "running", "started_at": started_at})
            try:
                result = state.quantize(settings)
            except Exception as exc:  # noqa: BLE001
                for cell in group:
                    finish(cell, t_q, status="failed", error=f"quantization failed: {_error_text(exc)}",
                           started_at=started_at)
                continue
            outcome = {"quant_seconds": result.seconds, "effective_bits": result.effective_bits,
                       "layers_quantized": len(result.layers_quantized), "backend": result.backend,
                       "peak_memory_bytes": result.peak_memory_bytes,
                       "details_json": {**result.details, "layers": result.layers_quantized}}
            for cell in group:
                t_c = time.perf_counter()
                try:
                    finish(cell, t_c, status="ok", error=None, started_at=started_at, **outcome,
                           **_score_cell(state, result, cell))
                except Exception as exc:  # noqa: BLE001
                    finish(cell, t_c, status="failed", error=_error_text(exc), started_at=started_at, **outcome)
            del result
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
    finally:
        state.close()
