"""The SQLite store and its exports."""

import csv
import io
import json
import sqlite3

import pytest

from qsens.store import ResultStore
from qsens.store.export import CONTRACT, FIELDS, to_csv, to_json

REQUIRED = ["family", "checkpoint", "schedule", "n_params", "tokens", "method", "bits", "group_size", "fp_loss",
            "q_loss", "delta_loss", "ppl_ratio", "kl_mean", "top1_agree", "bits_per_byte", "status", "error", "seconds"]


def row(key, status="ok", **kw):
    base = dict(key=key, family="f", checkpoint="c1", n_params=10, tokens=100, method="rtn", bits=4, group_size=32,
                quantizer="rtn-w4-g32-asym", eval="e", status=status, delta_loss=0.25, delta_loss_ci_low=0.2,
                delta_loss_ci_high=0.3, settings_json={"bits": 4}, qsens_version="0.1.0")
    return {**base, **kw}


def test_export_carries_the_contract_fields_with_cis():
    for name in REQUIRED:
        assert name in CONTRACT
    for metric in ("fp_loss", "q_loss", "delta_loss", "ppl_ratio", "kl_mean", "top1_agree", "bits_per_byte"):
        assert f"{metric}_ci_low" in FIELDS and f"{metric}_ci_high" in FIELDS
    for prov in ("qsens_version", "git_commit", "torch_version", "transformers_version", "device", "seed"):
        assert prov in FIELDS


def test_save_replaces_a_cell_and_counts_attempts(tmp_path):
    store = ResultStore(tmp_path)
    assert store.claim([row("k1", status="running")]) == (["k1"], {})
    store.mark_running(row("k1", status="running"))
    store.save(row("k1", status="failed", error="boom", delta_loss=None))
    assert store.claim([row("k1", status="running")]) == (["k1"], {})
    store.mark_running(row("k1", status="running"))
    store.save(row("k1"))
    (cell,) = store.cells()
    assert (cell["status"], cell["error"], cell["attempts"], cell["delta_loss"]) == ("ok", None, 2, 0.25)
    assert store.done_keys() == {"k1"} and store.integrity_ok()


def test_unknown_column_is_refused(tmp_path):
    with pytest.raises(KeyError, match="not cell columns"):
        ResultStore(tmp_path).save(row("k", delta_los=1.0))


def test_json_and_csv_exports_round_trip(tmp_path):
    store = ResultStore(tmp_path)
    store.save(row("a"))
    store.save(row("b", checkpoint="c2", status="failed", error="OOM", delta_loss=None))
    cells = store.cells()
    as_json = json.loads(to_json(cells))
    assert [c["checkpoint"] for c in as_json] == ["c1", "c2"]
    assert as_json[0]["settings_json"] == {"bits": 4} and as_json[1]["error"] == "OOM"
    assert list(as_json[0]) == FIELDS
    rows = list(csv.DictReader(io.StringIO(to_csv(cells))))
    assert rows[0]["delta_loss"] == "0.25" and rows[1]["status"] == "failed" and rows[1]["delta_loss"] == ""


def test_an_older_database_gains_new_columns(tmp_path):
    con = sqlite3.connect(tmp_path / "qsens.sqlite")
    con.execute("CREATE TABLE cells (key TEXT PRIMARY KEY, status TEXT NOT NULL)")
    con.execute("INSERT INTO cells VALUES ('old', 'ok')")
    con.commit()
    con.close()
    store = ResultStore(tmp_path)
    assert store.done_keys() == {"old"}
    store.save(row("new"))
    assert len(store.cells()) == 2
