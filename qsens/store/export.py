"""Export every cell with every field, under the stable field names other tools rely on."""

from __future__ import annotations

import csv
import io
import json

from qsens.metrics.paired import CI_METRICS
from qsens.store.db import COLUMN_NAMES

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


def to_csv(cells: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=FIELDS, lineterminator="\n")
    writer.writeheader()
    for cell in cells:
        writer.writerow({k: cell.get(k) for k in FIELDS})
    return buf.getvalue()
