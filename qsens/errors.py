"""How a failure is recorded: one text with the exception and where it was raised."""

from __future__ import annotations

import traceback

MAX_ERROR_CHARS = 4000  # a cell's or a step's `error`: the message and a traceback tail, never a whole log


def error_text(exc: BaseException, frames: int = 3) -> str:
    """'Type: message' and the last `frames` entries of its traceback, at most MAX_ERROR_CHARS characters."""
    tail = "".join(traceback.format_exception(exc)[-frames:]).strip()
    return f"{type(exc).__name__}: {exc}\n{tail}"[:MAX_ERROR_CHARS]


# C0 and C1 control characters (ESC starts ANSI/OSC sequences: clear screen, set title, hyperlinks) and the Unicode
# bidirectional overrides that reorder what a terminal shows; newline and tab are layout, kept.
_UNSAFE = {c: f"\\x{c:02x}" for c in [*range(0x00, 0x20), *range(0x7F, 0xA0)] if chr(c) not in "\n\t"}
_UNSAFE |= {c: f"\\u{c:04x}" for c in [*range(0x202A, 0x202F), *range(0x2066, 0x206A)]}


def terminal_safe(text: str) -> str:
    """`text` with every control character written as its escape (`\\x1b`), so names and messages that come from
    suites, manifests, checkpoints or the hub reach a terminal as data and never as commands."""
    return str(text).translate(_UNSAFE)
