"""The cell key covers the calibration text (methods that read it) and the quantizing library's version (methods
that use one): changing either recomputes exactly those cells; RTN's keys are as they were before both existed."""

from __future__ import annotations

import textwrap
from typing import ClassVar, Literal

import pytest

import qsens.quantizers
import qsens.runner.plan as plan
from qsens.quantizers import rtn
from qsens.runner.loop import run_suite
from qsens.store import ResultStore
from qsens.suites.load import load_suite

pytest.importorskip("hqq")


class Settings(rtn.Settings):
    """A calibration-reading method for this test: RTN's arithmetic, declared as needing calibration text."""

    needs_calibration: ClassVar[bool] = True
    method: Literal["calprobe"] = "calprobe"

    def label(self) -> str:
        return "calprobe-" + super().label()


quantize = rtn.quantize


@pytest.fixture
def suite_file(tmp_path, tiny_family, monkeypatch):
    monkeypatch.setitem(qsens.quantizers.REGISTRY, "calprobe", __name__)
    (tmp_path / "eval.txt").write_text("It was a dark and stormy night; the rain fell in torrents. " * 40)
    (tmp_path / "calib.txt").write_text("Call me Ishmael. Some years ago, never mind how long precisely. " * 40)
    path = tmp_path / "suite.yaml"
    path.write_text(textwrap.dedent(f"""
        name: keys
        seed: 0
        families:
          - name: tiny
            manifest: {tiny_family}
            select: {{names: [{load_names(tiny_family)[0]}]}}
        quantizers:
          - {{method: rtn, bits: 4, group_size: 16}}
          - {{method: hqq, bits: 4, group_size: 16}}
          - {{method: calprobe, bits: 4, group_size: 16}}
        evals:
          - {{name: storm, path: eval.txt, protocol: {{context_length: 32, max_tokens: 512}}}}
        calibration: {{path: calib.txt}}
        bootstrap: {{samples: 100}}
    """))
    return path


def load_names(manifest) -> list[str]:
    import json

    return [c["name"] for c in json.loads(manifest.read_text())["checkpoints"]]


def _keys(path) -> dict[str, str]:
    return {c.settings.method: c.key for c in plan.plan_cells(load_suite(path))}


def test_rtn_key_is_unchanged_by_the_new_inputs(suite_file):
    """RTN hashes neither input: its key equals the key computed without them (as before they were added)."""
    suite = load_suite(suite_file)
    cell = next(c for c in plan.plan_cells(suite) if c.settings.method == "rtn")
    spec = suite.spec
    old = plan.cell_key(plan.checkpoint_fingerprint(cell.checkpoint), cell.checkpoint, cell.settings, cell.eval,
                        seed=spec.seed, bootstrap=spec.bootstrap.model_dump(), metrics=list(spec.metrics))
    assert cell.key == old
    assert plan.quantizer_inputs(cell.settings, "anything") == {}


def test_changed_calibration_or_library_recomputes_exactly_those_cells(suite_file, tmp_path, monkeypatch):
    res = tmp_path / "res"
    first = run_suite(load_suite(suite_file), res, progress=False)
    assert first.computed == 3, [c["error"] for c in ResultStore(res).cells()]
    before = _keys(suite_file)
    assert run_suite(load_suite(suite_file), res, progress=False).computed == 0

    (tmp_path / "calib.txt").write_text("A different calibration text entirely, about whales. " * 40)
    after_calib = _keys(suite_file)
    assert [m for m in before if before[m] != after_calib[m]] == ["calprobe"]
    again = run_suite(load_suite(suite_file), res, progress=False)
    assert again.computed == 1 and again.skipped == 2

    real = plan.library_version
    monkeypatch.setattr(plan, "library_version", lambda d: "999.0" if d == "hqq" else real(d))
    after_lib = _keys(suite_file)
    assert [m for m in before if after_calib[m] != after_lib[m]] == ["hqq"]
    upgraded = run_suite(load_suite(suite_file), res, progress=False)
    assert upgraded.computed == 1 and upgraded.skipped == 2
    assert len(ResultStore(res).cells()) == 5  # old cells stay beside the new ones


def test_library_version_reads_installed_metadata():
    import hqq

    assert plan.library_version("hqq") == hqq.__version__
    assert plan.library_version("no-such-distribution-qsens") is None


def test_published_rtn_cells_keep_their_keys():
    """Every cell of the published micro suite (RTN and the cast floor) is planned with the key it was stored under."""
    from qsens.testbed.standins import REPO

    stored = {c["key"] for c in ResultStore(REPO / "results/published/micro", readonly=True).cells()}  # no migration
    planned = {c.key for c in plan.plan_cells(load_suite(REPO / "suites/micro-documents.yaml"))}
    assert planned and planned == stored
