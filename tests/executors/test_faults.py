"""Faults: the driver killed mid-run, a checkpoint that will not load, NaN/Inf weights, a full disk on export.

Each test counts cells before and after the fault; the target is that nothing is lost beyond the cell in flight.
(A Ray worker killed mid-cell is in test_ray.py.)
"""

import errno
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from qsens.cli import main as cli_main
from qsens.runner.loop import run_suite
from qsens.store import ResultStore
from qsens.suites.load import load_suite

FULL = os.environ.get("QSENS_HEAVY") == "full"


def _statuses(results: Path) -> dict[str, str]:
    """Read-only snapshot of cell statuses, safe while another process writes (WAL)."""
    db = results / "qsens.sqlite"
    if not db.is_file():
        return {}
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return dict(con.execute("SELECT key, status FROM cells"))
    except sqlite3.OperationalError:  # table not created yet
        return {}
    finally:
        con.close()


def test_driver_killed_mid_run_keeps_every_finished_cell(suite_writer, tmp_path):
    """kill -9 the `qsens run` process once a cell is stored; the database stays intact, the finished cells
    are kept as they were, and the re-run computes only the rest (the one in flight at most is lost)."""
    suite = suite_writer(name="kill")
    text = suite.read_text().replace("bits: [2, 4, 8]", "bits: [2, 3, 4, 8]")  # 8 cells: time to kill after one
    suite.write_text(text)
    results = tmp_path / "res"
    cmd = [sys.executable, "-m", "qsens", "run", str(suite), "--results", str(results), "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=tmp_path)
    deadline = time.monotonic() + 1800  # a hang guard only: a loaded machine makes the wait longer, never wrong
    while time.monotonic() < deadline and proc.poll() is None:
        if "ok" in _statuses(results).values():
            break
        time.sleep(0.05)
    assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=600)
    proc.stderr.close()

    store = ResultStore(results)
    assert store.integrity_ok()
    before = {c["key"]: c for c in store.cells()}
    ok_before = {k for k, c in before.items() if c["status"] == "ok"}
    # claimed cells are 'running'; those with a started_at were being computed: at most one checkpoint's resident
    # group (its 4 quantizer settings x 1 eval, scored together and written one row at a time, so a kill can land
    # between two of its rows)
    in_flight = [k for k, c in before.items() if c["status"] == "running" and c["started_at"]]
    assert ok_before and len(in_flight) <= 4 and len({before[k]["checkpoint"] for k in in_flight}) <= 1

    summary = run_suite(load_suite(suite), results, progress=False)
    after = {c["key"]: c for c in store.cells()}
    assert store.integrity_ok()
    assert summary.planned == 8 and summary.skipped == len(ok_before) and summary.failed == 0
    assert all(c["status"] == "ok" for c in after.values()) and len(after) == 8
    for key in ok_before:  # kept exactly, not recomputed
        assert after[key]["finished_at"] == before[key]["finished_at"] and after[key]["attempts"] == 1
    for key in in_flight:
        assert after[key]["attempts"] == 2
    print(f"\ndriver kill: {len(ok_before)} ok before, {len(in_flight)} in flight, "
          f"{summary.computed} computed after, {8 - len(after)} lost")


def _broken_copy(src: Path, dst: Path, how: str) -> Path:
    shutil.copytree(src, dst)
    if how == "unloadable":
        (dst / "model.safetensors").write_bytes(b"not a safetensors file")
        return dst
    if how == "missing-layer":  # issue 25: the config says 2 layers, the weights hold 1
        config = json.loads((dst / "config.json").read_text())
        (dst / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 2}))
        return dst
    from safetensors.torch import load_file, save_file

    weights = load_file(dst / "model.safetensors")
    name = next(n for n in weights if "mlp.down_proj" in n)
    weights[name][0, 0] = float("nan") if how == "nan" else float("inf")
    save_file(weights, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


@pytest.mark.parametrize("executor, how", [
    ("local", "unloadable"), ("local", "nan"), ("local", "inf"), ("local", "missing-layer"),
    pytest.param("ray", "unloadable", marks=pytest.mark.heavy),  # reduced form: the Ray path once
    *[pytest.param("ray", how, marks=[pytest.mark.heavy, pytest.mark.skipif(not FULL, reason="QSENS_HEAVY=full")])
      for how in ("nan", "inf")],
])
def test_a_bad_checkpoint_fails_its_cells_and_the_run_goes_on(suite_writer, tiny_checkpoints, tmp_path, executor,
                                                              how, request):
    bad = _broken_copy(tiny_checkpoints["a"], tmp_path / f"bad-{how}", how)
    suite = suite_writer(f"      - {{path: {bad}, name: bad, n_params: 8192, tokens: 3000}}\n", name=f"bad{how}")
    options = request.getfixturevalue("ray_env") if executor == "ray" else {}
    summary = run_suite(load_suite(suite), tmp_path / "res", executor=executor, progress=False, **options)
    cells = ResultStore(tmp_path / "res").cells()
    assert len(cells) == 9 and summary.computed == 6 and summary.failed == 3
    for c in cells:
        if c["checkpoint"] == "bad":
            assert c["status"] == "failed" and c["delta_loss"] is None
            expected = {"unloadable": "loading checkpoint failed", "missing-layer": "model.layers.1."}.get(how, "non-finite")
            assert expected in c["error"], c["error"]
        else:
            assert c["status"] == "ok" and torch.isfinite(torch.tensor(c["delta_loss"]))


def test_export_on_a_full_disk_keeps_the_previous_export(tiny_suite, tmp_path, monkeypatch, capsys):
    """The export is written to a temporary file and renamed: a full disk mid-write leaves the last good export."""
    run_suite(load_suite(tiny_suite), tmp_path / "res", progress=False)
    out = tmp_path / "cells.json"
    assert cli_main(["export", "--results", str(tmp_path / "res"), "-o", str(out)]) == 0
    good = out.read_bytes()
    assert len(json.loads(good)) == 6

    real_write_text = Path.write_text

    def full_disk(self, data, *args, **kwargs):
        if self.name.startswith(out.name):  # half the bytes reach the disk, then it is full
            real_write_text(self, data[: len(data) // 2], *args, **kwargs)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        return real_write_text(self, data, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full_disk)
    assert cli_main(["export", "--results", str(tmp_path / "res"), "-o", str(out)]) == 3
    assert f"cannot write {out}: No space left on device" in capsys.readouterr().err
    assert out.read_bytes() == good  # the previous export is intact
    assert sorted(p.name for p in tmp_path.glob(out.name + "*")) == [out.name]  # no half-written .tmp left
    assert ResultStore(tmp_path / "res").integrity_ok() and len(ResultStore(tmp_path / "res").cells()) == 6
    print(f"\nexport on a full disk: leftovers {sorted(p.name for p in tmp_path.glob(out.name + '*'))}")
