"""Export every cell with every field, under the stable field names other tools rely on.

CSV is opened by spreadsheets, which run a cell that starts with `=`, `+`, `-` or `@` (or tab / carriage return)
as a formula; names and errors come from suites, manifests and the hub, so such a *text* cell is written with a
leading single quote (`'=cmd|...`), the OWASP-recommended neutralisation. Numbers are written as they are (a
negative Δloss stays -0.0003); JSON carries every string unchanged.
"""

from __future__ import annotations

import csv
import io
import json

from qsens.metrics.paired import CI_METRICS
from qsens.store.cells import COLUMN_NAMES

# The export contract comes first, in this order; every other column follows.
CONTRACT = (
    ["family", "checkpoint", "schedule", "n_params", "tokens", "method", "bits", "group_size", "eval", "quantizer"]
    + [c for m in CI_METRICS for c in (m, f"{m}_ci_low", f"{m}_ci_high")]
    + ["status", "error", "seconds"]
)
FIELDS = CONTRACT + [c for c in COLUMN_NAMES if c not in CONTRACT]
_JSON_COLUMNS = {c for c in COLUMN_NAMES if c.endswith("_json")}


def _decoded(cell: dict) -> dict:
    out = {}
    for name in FIELDS:
        value = cell.get(name)
        out[name] = json.loads(value) if name in _JSON_COLUMNS and isinstance(value, str) else value
    return out


def to_json(cells: list[dict]) -> str:
    return json.dumps([_decoded(c) for c in cells], indent=1, sort_keys=False) + "\n"


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_safe(value):
    """A CSV cell value that no spreadsheet runs as a formula (see the module docstring)."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def to_csv(cells: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=FIELDS, lineterminator="\n")
    writer.writeheader()
    for cell in cells:
        writer.writerow({k: csv_safe(cell.get(k)) for k in FIELDS})
    return buf.getvalue()
