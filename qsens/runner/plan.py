"""Plan a suite's cells: every (checkpoint × quantizer setting × eval) with the key that identifies its numbers.

A cell's key hashes everything that determines its numbers (checkpoint files or hub revision, quantizer settings,
eval text and protocol, seed, bootstrap, metrics), so a changed input is a new cell, never a reused number. A method
that reads calibration text (GPTQ, AWQ) also hashes that text, and a method that quantizes with a library
(`Settings.libraries`: gptqmodel, bitsandbytes, hqq, torchao, ...) hashes the installed version of each: upgrading
the library makes new cells, and the old ones stay in the database beside them. Methods with neither (RTN, noise)
hash exactly what they hashed before these two were added, so their existing cells are reused.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from importlib import metadata

from qsens.families.checkpoint import Checkpoint, checkpoint_fingerprint
from qsens.quantizers.base import QuantSettings
from qsens.suites.files import check_text
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
    calibration_hash = check_text(suite.calibration_path)[0] if suite.calibration_path is not None else None
    inputs = {s: quantizer_inputs(s, calibration_hash) for s in suite.quantizers}
    cells = []
    for ckpt in suite.checkpoints:
        fingerprint = checkpoint_fingerprint(ckpt)
        structure = suite.structures.get((ckpt.location, ckpt.revision))
        for settings in suite.quantizers:
            if not applies(settings, structure):  # a layer set this checkpoint lacks (block 5 of 4)
                continue
            if not settings.pairs_with(ckpt.family, ckpt.name):  # an artifact is scored on its parent only
                continue
            for ev in suite.evals:
                key = cell_key(fingerprint, ckpt, settings, ev, seed=spec.seed,
                               bootstrap=spec.bootstrap.model_dump(), metrics=list(spec.metrics),
                               quantizer_inputs=inputs[settings])
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


def library_version(distribution: str) -> str | None:
    """The installed version of a quantization library's distribution (read from its metadata, not imported);
    None when it is not installed (the cell then fails when it runs, and is retried once it is installed)."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def quantizer_inputs(settings: QuantSettings, calibration_hash: str | None) -> dict:
    """What besides its settings decides a quantizer's output: the calibration text's hash (methods that read
    it) and each library's version (methods that quantize with one). {} for a method with neither."""
    out: dict = {}
    if settings.needs_calibration:
        out["calibration_hash"] = calibration_hash
    if settings.libraries:
        out["libraries"] = {name: library_version(name) for name in settings.libraries}
    return out


def cell_key(fingerprint: str, ckpt: Checkpoint, settings: QuantSettings, ev: EvalText, *,
             seed: int, bootstrap: dict, metrics: list[str], quantizer_inputs: dict | None = None) -> str:
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
    if quantizer_inputs:  # absent, not empty, for RTN and noise: their keys are those of earlier versions
        material["quantizer_inputs"] = quantizer_inputs
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:24]
