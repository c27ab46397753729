"""How a failure is recorded: one text with the exception and where it was raised."""

from __future__ import annotations

import traceback

MAX_ERROR_CHARS = 4000  # a cell's or a step's `error`: the message and a traceback tail, never a whole log


def error_text(exc: BaseException, frames: int = 3) -> str:
    """'Type: message' and the last `frames` entries of its traceback, at most MAX_ERROR_CHARS characters."""
    tail = "".join(traceback.format_exception(exc)[-frames:]).strip()
    return f"{type(exc).__name__}: {exc}\n{tail}"[:MAX_ERROR_CHARS]
