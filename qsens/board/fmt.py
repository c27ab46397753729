"""Number formatting shared by the templates (as Jinja filters and globals) and the plots.

A table column shows every number in one format (`column`): fixed decimals chosen from the column's smallest
magnitude, or scientific notation for the whole column when its values span too many decades for fixed decimals.
An interval is written in its point value's format, so `0.4722 [0.4403, 0.4990]` never sits beside `9.693e-05`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

MAX_DECIMALS = 6  # beyond this many decimals a column is written in scientific notation
MAX_FIXED = 1e6  # and from this magnitude on
MAX_SPAN = 1e4  # and when its magnitudes span this factor (p-values from 1e-5 to 0.9 read better as 1.0e-05, 9.0e-01)


def _ok(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def human(x) -> str:
    """1234567 -> '1.23M': parameter and token counts ('∞' for +inf: a D* without a bottom)."""
    if x == math.inf:
        return "∞"
    if not _ok(x):
        return "—"
    for div, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(x) >= div:
            return f"{x / div:.3g}{suffix}"
    return f"{x:.3g}"


def num(x, digits: int = 4) -> str:
    """One number alone (captions, tooltips): significant digits, scientific only for very small or large
    magnitudes; '—' for missing. Table columns use `column`."""
    if not _ok(x):
        return "—"
    if x != 0 and (abs(x) < 1e-3 or abs(x) >= 1e5):
        return f"{x:.{max(digits - 1, 1)}e}"
    return f"{x:.{digits}g}" if abs(x) >= 1 else f"{x:.{digits}f}".rstrip("0").rstrip(".") or "0"


@dataclass(frozen=True)
class Column:
    """The format of one table column: `decimals` fixed decimals, or scientific with `sig` significant digits
    when decimals is None. Call it on a number; '—' for a missing one."""

    decimals: int | None
    sig: int = 3

    def __call__(self, x) -> str:
        if not _ok(x):
            return "—"
        return f"{x:.{self.sig - 1}e}" if self.decimals is None else f"{x:.{self.decimals}f}"

    def signed(self, x) -> str:
        """With an explicit '+' on positive values (changes, differences)."""
        return ("+" if _ok(x) and x > 0 else "") + self(x)

    def ci(self, lo, hi) -> str:
        """'[lo, hi]' in the column's format, or '' when either bound is missing."""
        return f"[{self(lo)}, {self(hi)}]" if _ok(lo) and _ok(hi) else ""


def column(values: Iterable, sig: int = 3) -> Column:
    """The format of a column of `values` (missing and non-finite ones ignored): enough fixed decimals to give its
    smallest non-zero magnitude `sig` significant digits, unless that takes more than MAX_DECIMALS decimals, the
    column reaches MAX_FIXED or spans MAX_SPAN: then scientific notation for the whole column."""
    magnitudes = [abs(float(v)) for v in values if _ok(v) and v != 0]
    if not magnitudes:
        return Column(max(sig - 1, 0), sig)
    low, high = min(magnitudes), max(magnitudes)
    decimals = max(sig - 1 - math.floor(math.log10(low)), 0)
    if decimals > MAX_DECIMALS or high >= MAX_FIXED or high / low >= MAX_SPAN:
        return Column(None, sig)
    return Column(decimals, sig)


def values(rows: Iterable[dict], *keys: str) -> list:
    """Every value of `keys` over `rows` (dicts), for `column`."""
    return [r.get(k) for r in rows for k in keys]


def sort_value(x) -> str:
    """A data-sort attribute: the number as repr, or '' (missing values sort last in the page's script)."""
    return repr(float(x)) if _ok(x) else ""


def commit(value) -> str:
    """A recorded code commit, short: '21d6043da25d', and '(uncommitted changes)' where qsens.provenance marked it
    '+dirty' (the short form must not drop that mark)."""
    if not value:
        return "—"
    sha, _, flag = str(value).partition("+")
    return sha[:12] + (" (uncommitted changes)" if flag == "dirty" else f" +{flag}" if flag else "")
