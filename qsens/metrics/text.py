"""Eval text: read a file, cut it into documents, and undo WikiText's tokenization when asked."""

from __future__ import annotations

import gzip
import re
from pathlib import Path

from qsens.metrics.protocol import Protocol

_ARTICLE_HEADING = re.compile(r"^ = [^=].* = $")


# What a text file may hold, decompressed, before anything reads it whole: the largest shipped text (a Gutenberg
# training shard used for calibration) is 35 MB; a gzip "bomb" of 1 MB expanding to 1 GiB stops here.
MAX_TEXT_BYTES = 64 << 20
# With `max_tokens`, an eval text may hold at most this many bytes per token scored (but always MIN_TEXT_BYTES):
# the run tokenizes the whole text before it cuts, so a text far beyond what it scores costs memory for nothing.
MAX_BYTES_PER_TOKEN = 64
MIN_TEXT_BYTES = 4 << 20


class TextTooLarge(ValueError):
    """The text (decompressed) holds more than its limit."""


def text_limit(max_tokens: int | None = None) -> int:
    """The most bytes an eval text may hold (decompressed): MAX_TEXT_BYTES, or with `max_tokens`
    max(MIN_TEXT_BYTES, MAX_BYTES_PER_TOKEN x max_tokens) if that is less."""
    if max_tokens is None:
        return MAX_TEXT_BYTES
    return min(MAX_TEXT_BYTES, max(MIN_TEXT_BYTES, MAX_BYTES_PER_TOKEN * max_tokens))


def limit_reason(limit: int, max_tokens: int | None = None) -> str:
    """Why `limit` is the limit, for a message."""
    if limit == MAX_TEXT_BYTES:
        return f"the limit for a text is {MAX_TEXT_BYTES:,} bytes"
    return (f"with max_tokens {max_tokens:,} the limit is max({MIN_TEXT_BYTES:,}, {MAX_BYTES_PER_TOKEN} bytes x "
            f"max_tokens) = {limit:,} bytes")


def read_bytes(path: str | Path, limit: int = MAX_TEXT_BYTES) -> bytes:
    """The bytes of a `.txt` file or, decompressed as a stream, of a `.gz` one; TextTooLarge past `limit` bytes
    (never more than limit + 1 decompressed bytes are held). OSError/EOFError/zlib.error for a broken file."""
    path = Path(path)
    if path.suffix != ".gz":
        if path.stat().st_size > limit:
            raise TextTooLarge(f"{path.stat().st_size:,} bytes")
        return path.read_bytes()
    with gzip.open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise TextTooLarge(f"more than {limit:,} bytes decompressed")
    return data


def read_text(path: str | Path, limit: int = MAX_TEXT_BYTES) -> str:
    """UTF-8 text of a `.txt` or gzip-compressed `.gz` file, newlines preserved as stored (see `read_bytes`)."""
    return read_bytes(path, limit).decode("utf-8")


def split_documents(text: str, split: str, separator: str | None = None) -> list[str]:
    """Cut text into documents.

    none: the whole file is one document.
    lines: every line (without its newline), empty lines included, as a `datasets` text loader yields them.
    lines_keepends: every line with its trailing newline.
    hf_rows: the rows of HF `wikitext` (`wikitext-2-raw-v1`, what GPTQ joins with "\n\n"): every line with its
        trailing newline, but a whitespace-only line is the empty string (the dataset script yields "" for it).
    blank_lines: paragraphs separated by one or more blank lines, surrounding whitespace stripped.
    separator: the text cut at every occurrence of `separator` (documents that are only whitespace dropped).
    wikitext_articles: the pages of EleutherAI/wikitext_document_level (what lm-eval's `wikitext` task scores):
        the file split on "\n"; a line that, with "= = =" -> "===", "= =" -> "==" and stripped, starts with "= " and
        ends with " =" opens a new page; a page is its lines joined by "\n" (so no newline after its last line,
        except the file's last page, whose last line is the empty string after the final newline); pages that
        are only whitespace are dropped, except the last.
    """
    if split == "none":
        return [text]
    if split == "lines":
        return text.split("\n")[:-1] if text.endswith("\n") else text.split("\n")
    if split == "lines_keepends":
        return text.splitlines(keepends=True)
    if split == "hf_rows":  # file iteration: lines end at "\n" only
        parts = text.split("\n")
        rows = [p + "\n" for p in parts[:-1]] + ([parts[-1]] if parts[-1] else [])
        return [row if row.strip() else "" for row in rows]
    if split == "separator":
        if not separator:
            raise ValueError("split 'separator' needs a non-empty separator")
        return [d for d in text.split(separator) if d.strip()]
    if split == "blank_lines":
        return [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    if split == "wikitext_articles":
        pages, lines = [], []
        for line in text.split("\n"):
            rline = line.replace("= = =", "===").replace("= =", "==").strip()
            if rline.startswith("= ") and rline.endswith(" ="):
                page = "\n".join(lines)
                if page.strip():
                    pages.append(page)
                lines = []
            lines.append(line)
        pages.append("\n".join(lines))
        return pages
    raise ValueError(f"unknown split {split!r}")


def wikitext_detokenize(text: str) -> str:
    """lm-evaluation-harness's `wikitext_detokenizer` (lm_eval/tasks/wikitext/preprocess_wikitext.py), rule for rule."""
    s = text.replace("s '", "s'")
    s = re.sub(r"/' [0-9]/", r"/'[0-9]/", s)
    for a, b in ((" @-@ ", "-"), (" @,@ ", ","), (" @.@ ", "."), (" : ", ": "), (" ; ", "; "), (" . ", ". "),
                 (" ! ", "! "), (" ? ", "? "), (" , ", ", ")):
        s = s.replace(a, b)
    s = re.sub(r"\(\s*([^\)]*?)\s*\)", r"(\1)", s)
    s = re.sub(r"\[\s*([^\]]*?)\s*\]", r"[\1]", s)
    s = re.sub(r"{\s*([^}]*?)\s*}", r"{\1}", s)
    s = re.sub(r"\"\s*([^\"]*?)\s*\"", r'"\1"', s)
    s = re.sub(r"'\s*([^']*?)\s*'", r"'\1'", s)
    for a, b in (("= = = =", "===="), ("= = =", "==="), ("= =", "=="), (" " + chr(176) + " ", chr(176)),
                 (" \n", "\n"), ("\n ", "\n"), (" N ", " 1 "), (" 's", "'s")):
        s = s.replace(a, b)
    return s


def documents_for(text: str, protocol: Protocol, with_source: bool = False) -> list:
    """The texts that are tokenized: one joined stream, or the documents themselves (empty ones dropped).

    with_source (documents only): (text to tokenize, the document before detokenization) pairs.
    """
    sources = split_documents(text, protocol.split, protocol.separator)
    docs = [wikitext_detokenize(d) for d in sources] if protocol.detokenize == "wikitext" else sources
    if protocol.unit == "stream":
        return [protocol.joiner.join(docs)]
    if with_source:
        return [(d, src) for d, src in zip(docs, sources) if d]
    return [d for d in docs if d]
