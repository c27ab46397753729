"""`fit_group` on a suite family: resolved onto checkpoints and cells, regrouping stored cells without recomputing,
and the shipped suites' use of it (all Pythia sizes of one data set in one group; `schedule` only ever a
learning-rate schedule)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from qsens.store import ResultStore
from qsens.suites.load import SuiteError, load_suite

SUITES = Path(__file__).resolve().parents[2] / "suites"
LR_SCHEDULES = {"cosine", "wsd", "linear", "linear-anneal", "constant"}


def _suite(tmp_path, fit_group_line: str):
    (tmp_path / "ck").mkdir()
    (tmp_path / "ck" / "config.json").write_text("{}")
    (tmp_path / "ck" / "model.safetensors").write_bytes(b"\0" * 8)  # validation checks weights exist, non-empty
    (tmp_path / "eval.txt").write_text("text\n" * 20)
    path = tmp_path / "suite.yaml"
    path.write_text(textwrap.dedent(f"""
        name: t
        families:
          - name: a
            {fit_group_line}
            checkpoints: [{{path: ck, n_params: 1000, tokens: 5000}}]
          - name: b
            checkpoints: [{{path: ck, n_params: 2000, tokens: 5000}}]
        quantizers: [{{method: rtn, bits: 4}}]
        evals: [{{name: e, path: eval.txt}}]
        """))
    return path


def test_fit_group_reaches_the_checkpoints_and_defaults_to_none(tmp_path):
    suite = load_suite(_suite(tmp_path, "fit_group: ladder"))
    assert {c.family: c.fit_group for c in suite.checkpoints} == {"a": "ladder", "b": None}


def test_a_bad_fit_group_names_its_key(tmp_path):
    with pytest.raises(SuiteError) as err:
        load_suite(_suite(tmp_path, "fit_group: 'two words'"))
    assert any(where.startswith("families[0].fit_group") for where, _ in err.value.problems), err.value.problems


def test_stored_cells_are_regrouped_without_recomputing(tmp_path):
    store = ResultStore(tmp_path)
    store.save({"key": "k", "family": "a", "checkpoint": "c", "status": "ok", "delta_loss": 0.5})
    store.set_fit_groups({"k": "ladder", "absent": "x"})
    (cell,) = store.cells()
    assert (cell["fit_group"], cell["delta_loss"], cell["attempts"]) == ("ladder", 0.5, 1)


def test_shipped_suites_group_sizes_and_keep_schedule_for_the_learning_rate():
    pythia = load_suite(SUITES / "pythia.yaml")
    groups = {}
    for c in pythia.checkpoints:
        groups.setdefault(c.fit_group, set()).add(c.n_params)
    assert set(groups) == {"pythia", "pythia-deduped"}
    assert len(groups["pythia"]) == 6 and len(groups["pythia-deduped"]) == 5
    olmo = load_suite(SUITES / "olmo.yaml")
    micro = load_suite(SUITES / "micro.yaml")
    for suite in (pythia, olmo, micro):
        assert {c.schedule for c in suite.checkpoints} <= LR_SCHEDULES
    assert {c.fit_group for c in micro.checkpoints} == {"micro"}
    assert {c.stage for c in olmo.checkpoints if c.schedule == "linear-anneal"} == {
        "stage2-ingredient1", "stage2-ingredient3"}
