"""Strings from suites, manifests and the hub are data in every export (issue 16): a CSV text cell that a
spreadsheet would run as a formula gets a leading quote (OWASP's neutralisation); numbers and JSON are unchanged."""

import csv
import io
import json

import pytest

from qsens.store import ResultStore
from qsens.store.export import to_csv, to_json


@pytest.mark.parametrize("name", ["=cmd|' /C calc'!A0", "+1+1", "-2+3", "@SUM(A1:A9)", "\tx"])
def test_formula_cells_are_neutralised_in_csv_only(tmp_path, name):
    store = ResultStore(tmp_path)
    store.save({"key": "k", "family": "f", "checkpoint": name, "status": "failed", "error": "-boom",
                "delta_loss": -0.0003, "n_params": 10, "tokens": 100})
    (cell,) = store.cells()
    row = next(csv.DictReader(io.StringIO(to_csv([cell]))))
    assert row["checkpoint"] == "'" + name and row["error"] == "'-boom"
    assert row["delta_loss"] == "-0.0003" and row["family"] == "f"  # numbers and plain text as they are
    assert json.loads(to_json([cell]))[0]["checkpoint"] == name
