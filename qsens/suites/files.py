"""Up-front checks of the files a suite names, so `qsens validate` catches what would otherwise fail cell by cell.

A local checkpoint folder must hold a readable `config.json` (a JSON object) and non-empty weights; an eval or
calibration text must be readable, UTF-8 (gzip-compressed when it ends in .gz) and not only whitespace. The
checks read what the run would read anyway (the text is hashed for the cell key), nothing more.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import zlib
from dataclasses import dataclass
from pathlib import Path

from qsens.metrics.windows import position_limit

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


@dataclass(frozen=True)
class FolderInfo:
    max_positions: tuple[str, int] | None  # (field, value) of the positions config.json states (position_limit)


def check_model_folder(folder: Path) -> tuple[FolderInfo | None, str | None]:
    """(what config.json says, None) for a usable HF folder, or (None, what is wrong with it)."""
    if not folder.is_dir():
        return None, f"folder not found: {folder}"
    config = folder / "config.json"
    if not config.is_file():
        return None, f"not an HF model folder (no config.json): {folder}"
    try:
        data = json.loads(config.read_bytes().decode("utf-8"))
    except OSError as exc:
        return None, f"cannot read {config}: {exc.strerror or exc}"
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        return None, f"{config} is not valid UTF-8 JSON: {str(exc)[:120]}"
    if not isinstance(data, dict):
        return None, f"{config} must hold a JSON object"
    weights = [folder / name for name in WEIGHT_FILES if (folder / name).is_file()]
    if not weights:
        return None, f"no weights in {folder} (expected one of {', '.join(WEIGHT_FILES)})"
    empty = [w.name for w in weights if w.stat().st_size == 0]
    if empty:
        return None, f"empty weights file(s) {empty} in {folder}"
    try:
        stated = position_limit(data)
    except (TypeError, ValueError, OverflowError):  # a position count that is not a number: the model load says so
        stated = None
    return FolderInfo(stated if stated and stated[1] > 0 else None), None


def check_text(path: Path) -> tuple[str | None, str | None]:
    """(sha256[:16] of the file's bytes, None) for a usable text file, or (None, what is wrong with it)."""
    if not path.is_file():
        return None, f"file not found: {path}"
    try:
        raw = path.read_bytes()
    except OSError as exc:
        return None, f"cannot read {path}: {exc.strerror or exc}"
    digest = hashlib.sha256(raw).hexdigest()[:16]
    try:
        data = gzip.decompress(raw) if path.suffix == ".gz" else raw
    except (OSError, EOFError, zlib.error) as exc:
        return None, f"not a readable gzip file ({exc}): {path}"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, f"not UTF-8 (byte {data[exc.start]:#04x} at offset {exc.start}): {path}"
    if not text.strip():
        return None, f"{'empty' if not text else 'only whitespace'}: {path}"
    return digest, None
