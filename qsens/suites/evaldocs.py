"""An eval text that is a set of documents: a list of files (one document each) or a folder of them.

The runner scores one text per eval, so the documents are joined by DOCUMENT_SEPARATOR (ASCII record separator,
which no shipped text contains: checked when the suite is loaded) and the eval's protocol cuts them there again
(`split: separator`), scoring each document on its own (`unit: document`). A single file with its own declared
separator is the protocol's `split: separator` with `separator: ...`, no list needed.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from qsens.metrics.text import read_text
from qsens.suites import files

DOCUMENT_SEPARATOR = "\x1e"
TEXT_SUFFIXES = (".txt", ".txt.gz")


def document_files(spec_path: str | list[str], base: Path) -> tuple[list[Path] | None, list[tuple[str, str]]]:
    """The files of a documents eval (None for a plain one-file eval), or problems (key, what)."""
    if isinstance(spec_path, str):
        folder, problem = files.resolve(base, spec_path)
        if problem:  # a symlink loop: the one-file check reports it with the same message
            return None, []
        if not folder.is_dir():
            return None, []
        found = sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(TEXT_SUFFIXES))
        if not found:
            return None, [("path", f"folder holds no .txt or .txt.gz file: {folder}")]
        return found, []
    if not spec_path:
        return None, [("path", "an empty list of documents")]
    resolved = [files.resolve(base, p) for p in spec_path]
    bad = [(f"path[{i}]", problem) for i, (_, problem) in enumerate(resolved) if problem]
    if bad:
        return None, bad
    paths = [path for path, _ in resolved]
    dup = sorted({str(p) for p in paths if paths.count(p) > 1})
    return paths, [("path", f"a document is listed twice: {', '.join(dup)}")] if dup else []


def documents_hash(paths: list[Path]) -> tuple[str | None, list[tuple[str, str]]]:
    """sha256[:16] over the documents' names, order and bytes' hashes, or the problems of their files."""
    digest, problems = hashlib.sha256(), []
    for i, p in enumerate(paths):
        h, problem = files.check_text(p)
        if problem:
            problems.append((f"path[{i}]", problem))
            continue
        if DOCUMENT_SEPARATOR in read_text(p):
            problems.append((f"path[{i}]", f"contains the document separator \\x1e: {p}"))
        digest.update(f"{p.name}\0{h}\0".encode())
    return (None, problems) if problems else (digest.hexdigest()[:16], [])


def joined_text(paths: list[Path]) -> str:
    """The documents, in order, joined by DOCUMENT_SEPARATOR."""
    return DOCUMENT_SEPARATOR.join(read_text(p) for p in paths)


def document_protocol_fields(protocol: dict) -> tuple[dict, list[tuple[str, str]]]:
    """The protocol overrides of a documents eval: split at the separator, one document at a time."""
    problems = [(f"protocol.{k}", f"is set by a list or folder of documents (got {protocol[k]!r})")
                for k in ("split", "separator") if k in protocol]
    if protocol.get("unit", "document") != "document":
        problems.append(("protocol.unit", f"a list or folder of documents is scored per document (got "
                                          f"{protocol['unit']!r})"))
    return {**protocol, "unit": "document", "split": "separator", "separator": DOCUMENT_SEPARATOR}, problems
