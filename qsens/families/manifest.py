"""The manifest of a trained checkpoint family: what each checkpoint is, and how it was made.

A family directory looks like::

    <family>/manifest.json
    <family>/<checkpoint path>/{config.json, model.safetensors, tokenizer.json, ...}

`manifest.json` is written by `qsens family train` and read by suites (`families[].manifest`), so its
fields are the contract between the trainer and the runner. Paths are relative to the manifest's folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

MANIFEST_FORMAT = 1
INT64_MAX = 2**63 - 1  # what SQLite's INTEGER holds


class ManifestCheckpoint(BaseModel):
    """One saved checkpoint of a family."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="unique within the family, e.g. 's32-cosine-d0016M'")
    path: str = Field(description="HF folder, relative to the manifest's folder")
    size: str = Field(description="size label of the ladder rung, e.g. 's32'")
    schedule: str = Field(description="learning-rate schedule: 'cosine', 'wsd', 'constant', ...")
    n_params: int = Field(ge=1, le=INT64_MAX, description="non-embedding parameters N (embeddings and untied head excluded)")
    n_params_total: int = Field(ge=1, le=INT64_MAX)
    tokens: int = Field(ge=1, le=INT64_MAX, description="pretraining tokens D seen up to this checkpoint, exactly")
    steps: int = Field(ge=0, le=INT64_MAX)
    tokens_per_step: int = Field(ge=1, le=INT64_MAX, description="batch size x sequence length")
    epochs: float = Field(description="tokens / training-corpus tokens (>1 means data was repeated)")
    lr_at_checkpoint: float
    peak_lr: float
    seed: int = Field(ge=0, le=INT64_MAX)
    data_order: str = Field(description="how batches were drawn, enough to reproduce the order")
    train_seconds: float = 0.0
    extra: dict = Field(default_factory=dict, description="anything else the trainer wants to record")


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: Literal[1] = MANIFEST_FORMAT
    family: str
    description: str = ""
    train_text: list[str] = Field(default_factory=list, description="files the tokenizer/model trained on")
    heldout_text: list[str] = Field(default_factory=list, description="files never trained on")
    checkpoints: list[ManifestCheckpoint]

    def checkpoint_dir(self, manifest_path: Path, checkpoint: ManifestCheckpoint) -> Path:
        return (Path(manifest_path).parent / checkpoint.path).resolve()


def read_manifest(path: str | Path, max_bytes: int = 64 << 20) -> Manifest:
    """The manifest, strictly typed (a JSON "4" is not 4; a key given twice is an error). Raises
    `qsens.documents.InputError` when the file is unreadable, too large, not UTF-8 or not JSON, and
    pydantic's ValidationError when a field is wrong."""
    from qsens import documents

    raw = documents.read_checked(Path(path), max_bytes=max_bytes, fmt="json")
    return Manifest.model_validate_json(json.dumps(raw), strict=True)


def write_manifest(manifest: Manifest, path: str | Path) -> None:
    """Write atomically, so an interrupted trainer never leaves a half-written manifest."""
    path = Path(path)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest.model_dump(), indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
