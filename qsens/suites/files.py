"""Up-front checks of the files a suite names, so `qsens validate` catches what would otherwise fail cell by cell.

A local checkpoint folder must hold a readable `config.json` (a JSON object) and non-empty weights; an eval or
calibration text must be readable, UTF-8 (gzip-compressed when it ends in .gz), within its size limit
(decompressed, see `qsens.metrics.text.text_limit`) and hold a visible character (not only whitespace, NUL or
zero-width characters). The checks read what the run would read anyway (the text is hashed for the cell key), nothing more.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from dataclasses import dataclass
from pathlib import Path

from qsens.metrics.text import MAX_TEXT_BYTES, TextTooLarge, limit_reason, read_bytes, text_limit
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


def check_manifest_folder(folder: Path) -> str | None:
    """What is wrong with the folder of a manifest's checkpoint (`check_model_folder`), saying how to get back one
    that a family pruned from its tree after scoring (checkpoints/gutenberg-amended/TRAINING.md): from git history."""
    problem = check_model_folder(folder)[1]
    if problem and not folder.is_dir():
        problem += (f" (a checkpoint pruned from the tree after its cells were published is in the git history: "
                    f"`git log --diff-filter=D -1 --format=%h -- {folder}` names the commit that removed it; "
                    f"`git checkout COMMIT^ -- {folder}` brings it back)")
    return problem


def resolve(base: Path, relative: str) -> tuple[Path | None, str | None]:
    """(`base / relative` with symlinks resolved, None), or (None, why it cannot be resolved): a symlink loop
    raises RuntimeError (Python <= 3.12) or OSError (ELOOP) in Path.resolve, which must not end a validate."""
    try:
        return (base / relative).resolve(), None
    except (RuntimeError, OSError) as exc:
        return None, f"cannot resolve {base / relative}: a symlink loop or an unreadable link ({exc})"


def _visible(text: str) -> bool:
    """True if the text has a character a tokenizer would score as content: not whitespace, not a control or
    format character (NUL, ESC, zero-width space U+200B, BOM U+FEFF, ...). Stops at the first one."""
    return any(ch.isprintable() and not ch.isspace() for ch in text)


def check_text(path: Path, max_tokens: int | None = None) -> tuple[str | None, str | None]:
    """(sha256[:16] of the file's bytes, None) for a usable text file, or (None, what is wrong with it).

    Decompressed as a stream and refused past `qsens.metrics.text.text_limit(max_tokens)` bytes."""
    try:
        if not path.is_file():
            return None, f"file not found: {path}"
        raw = path.read_bytes() if path.stat().st_size <= MAX_TEXT_BYTES else None
    except OSError as exc:
        return None, f"cannot read {path}: {exc.strerror or exc}"
    limit = text_limit(max_tokens)
    if raw is None:
        return None, f"{path} is {path.stat().st_size:,} bytes; {limit_reason(MAX_TEXT_BYTES)}"
    digest = hashlib.sha256(raw).hexdigest()[:16]
    try:
        data = read_bytes(path, limit)
    except TextTooLarge as exc:
        return None, f"{path} holds {exc}; {limit_reason(limit, max_tokens)} (cut the text, or raise max_tokens)"
    except (OSError, EOFError, zlib.error) as exc:
        return None, f"not a readable gzip file ({exc}): {path}"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, f"not UTF-8 (byte {data[exc.start]:#04x} at offset {exc.start}): {path}"
    if not text.strip():
        return None, f"{'empty' if not text else 'only whitespace'}: {path}"
    if not _visible(text):
        return None, (f"no visible character (only whitespace, zero-width or control characters such as NUL): "
                      f"{path}")
    return digest, None
