"""Cell keys: a hash of everything that determines a cell's numbers."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from qsens.quantizers.base import QuantSettings
from qsens.suites.load import Checkpoint, EvalText

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
