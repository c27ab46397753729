"""A checkpoint to measure: where it lives, its N and D, how it was trained; and its fingerprint.

A suite resolves to `Checkpoint`s (qsens.suites.load); the runner loads them (qsens.families.loading) and keys
cells by `checkpoint_fingerprint`, so a changed weight file is a new cell, never a reused number.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from qsens.families.placement import Placement


@dataclass(frozen=True)
class Checkpoint:
    family: str
    name: str
    location: str  # absolute local folder, or hub repo id
    revision: str | None  # None for local folders
    n_params: int
    tokens: int
    schedule: str | None = None
    size: str | None = None
    dtype: str = "float32"
    trust_remote_code: bool = False
    stage: str | None = None  # training stage (e.g. OLMo-2 'stage1' stable vs 'stage2' anneal), a covariate
    train_seed: int | None = None  # the manifest's training seed (init and data order); None for hub checkpoints
    fit_group: str | None = None  # the family's fit group (FamilySpec.fit_group; None: the family itself)
    # how the model is spread over devices (None: all on the suite's device); not compared, as it changes where the
    # arithmetic runs, not what it is (qsens.families.placement), so a placed checkpoint is the same checkpoint
    placement: Placement | None = field(default=None, compare=False, hash=False)

    @property
    def is_local(self) -> bool:
        return self.revision is None


# Files larger than this are fingerprinted by size plus their first and last MiB instead of read whole.
_FULL_HASH_LIMIT = 64 * 1024**2


def _file_digest(path: Path) -> str:
    size = path.stat().st_size
    h = hashlib.sha256(f"{path.name}:{size}".encode())
    with path.open("rb") as f:
        if size <= _FULL_HASH_LIMIT:
            h.update(f.read())
        else:
            h.update(f.read(1024**2))
            f.seek(-(1024**2), 2)
            h.update(f.read())
    return h.hexdigest()


def checkpoint_fingerprint(ckpt: Checkpoint) -> str:
    """Local folder: hash of its files (weights, config, tokenizer); hub: repo + revision."""
    if not ckpt.is_local:
        return f"hub:{ckpt.location}@{ckpt.revision}"
    folder = Path(ckpt.location)
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
        h.update(str(path.relative_to(folder)).encode() + b"=" + _file_digest(path).encode())
    return "local:" + h.hexdigest()[:16]
