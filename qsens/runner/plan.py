"""Plan a suite's cells: every (checkpoint × quantizer setting × eval) with the key that identifies its numbers.

A cell's key hashes everything that determines its numbers (checkpoint files or hub revision, quantizer settings,
eval text and protocol, seed, bootstrap, metrics), so a changed input is a new cell, never a reused number.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from qsens.families.checkpoint import Checkpoint, checkpoint_fingerprint
from qsens.quantizers.base import QuantSettings
from qsens.suites.layer_sweeps import applies
from qsens.suites.load import EvalText, Suite


@dataclass(frozen=True)
class Cell:
    key: str
    checkpoint: Checkpoint
    settings: QuantSettings
    eval: EvalText

    @property
    def label(self) -> str:
        """checkpoint, quantizer and eval, as a person reads them (progress bars)."""
        return f"{self.checkpoint.name} {self.settings.label()} {self.eval.name}"


def plan_cells(suite: Suite) -> list[Cell]:
    """Every (checkpoint x quantizer x eval) cell of the suite, keyed by its full configuration."""
    spec = suite.spec
    cells = []
    for ckpt in suite.checkpoints:
        fingerprint = checkpoint_fingerprint(ckpt)
        structure = suite.structures.get((ckpt.location, ckpt.revision))
        for settings in suite.quantizers:
            if not applies(settings, structure):  # a layer set this checkpoint lacks (block 5 of 4)
                continue
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


def cell_key(fingerprint: str, ckpt: Checkpoint, settings: QuantSettings, ev: EvalText, *,
             seed: int, bootstrap: dict, metrics: list[str]) -> str:
    material = {
        "checkpoint": fingerprint,
        "family": ckpt.family,
        "name": ckpt.name,
        "dtype": ckpt.dtype,
        "n_params": ckpt.n_params,
        "tokens": ckpt.tokens,
        "quantizer": settings.model_dump(mode="json"),
        "eval_hash": ev.text_hash,
        "protocol_hash": ev.protocol.hash(),
        "seed": seed,
        "bootstrap": bootstrap,
        "metrics": sorted(metrics),
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:24]
