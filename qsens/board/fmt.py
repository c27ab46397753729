"""Number formatting shared by the templates (as Jinja filters) and the plots."""

from __future__ import annotations

import math


def _ok(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def human(x) -> str:
    """1234567 -> '1.23M': parameter and token counts."""
    if not _ok(x):
        return "—"
    for div, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(x) >= div:
            return f"{x / div:.3g}{suffix}"
    return f"{x:.3g}"


def num(x, digits: int = 4) -> str:
    """Significant digits, scientific only for very small or large magnitudes; '—' for missing."""
    if not _ok(x):
        return "—"
    if x != 0 and (abs(x) < 1e-3 or abs(x) >= 1e5):
        return f"{x:.{max(digits - 1, 1)}e}"
    return f"{x:.{digits}g}" if abs(x) >= 1 else f"{x:.{digits}f}".rstrip("0").rstrip(".") or "0"


def signed(x, digits: int = 4) -> str:
    if not _ok(x):
        return "—"
    return ("+" if x > 0 else "") + num(x, digits)


def ci(lo, hi, digits: int = 3) -> str:
    """'[lo, hi]' or '' when either bound is missing."""
    return f"[{num(lo, digits)}, {num(hi, digits)}]" if _ok(lo) and _ok(hi) else ""


def sort_value(x) -> str:
    """A data-sort attribute: the number as repr, or '' (missing values sort last in the page's script)."""
    return repr(float(x)) if _ok(x) else ""
