"""Issue 16's file-system faults and hostile names: a read-only results folder, a results path that is a file, a
full disk mid-run, console markup in a checkpoint name. Each ends in one message and a documented exit status
(3: the results cannot be read or written), never a traceback; readers work on a read-only folder."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from qsens.cli import main as cli_main
from qsens.store import ResultStore

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "board"))
from board_synthetic import make_results, small_cells  # noqa: E402


def _unprivileged() -> list[str]:
    """A command prefix under which file permissions hold: root keeps its uid (its Python lives in /root) but
    loses the capabilities that bypass permission bits."""
    if os.geteuid() != 0:
        return []
    if not shutil.which("setpriv"):
        pytest.skip("running as root without setpriv: cannot make a folder read-only for this process")
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner"]


@pytest.fixture
def readonly_results():
    root = Path(tempfile.mkdtemp(prefix="qsens-ro-"))
    results = make_results(root / "res", cells=small_cells())
    for p in results.iterdir():
        p.chmod(0o444)
    results.chmod(0o555)
    yield root, results
    results.chmod(0o755)
    shutil.rmtree(root)


def test_a_read_only_results_folder(readonly_results, tiny_suite):
    root, results = readonly_results
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    def qsens(*args):
        proc = subprocess.run([*_unprivileged(), sys.executable, "-m", "qsens", *args], capture_output=True,
                              text=True, cwd=root, env=env, timeout=300)
        assert "Traceback" not in proc.stderr, proc.stderr
        return proc

    for args in (["report", "--results", str(results)], ["export", "--results", str(results), "--format", "csv"],
                 ["fit", "--results", str(results), "--no-store", "--bootstrap", "0", "--law", "ouyang"],
                 ["board", "--results", str(results), "--out", str(root / "site")]):
        proc = qsens(*args)
        assert proc.returncode == 0, (args, proc.stderr)  # reading needs no write access
    for args in (["fit", "--results", str(results), "--bootstrap", "0", "--law", "ouyang"],
                 ["run", str(tiny_suite), "--results", str(results), "--no-progress"]):
        proc = qsens(*args)
        assert proc.returncode == 3 and "readonly database" in proc.stderr, (args, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_a_results_path_that_is_a_file(tiny_suite, tmp_path, capsys):
    target = tmp_path / "results.txt"
    target.write_text("not a folder")
    assert cli_main(["run", str(tiny_suite), "--results", str(target), "--no-progress"]) == 3
    assert "is a file, not a folder" in capsys.readouterr().err and target.read_text() == "not a folder"


def test_a_full_disk_mid_run_ends_in_a_message_and_keeps_the_store(tiny_suite, tmp_path, monkeypatch, capsys):
    results = tmp_path / "res"
    real, calls = ResultStore._upsert, []

    def upsert(con, row):
        if row.get("status") == "ok":
            calls.append(row["key"])
            if len(calls) == 2:  # the second finished cell hits a full disk
                raise sqlite3.OperationalError("database or disk is full")
        return real(con, row)

    monkeypatch.setattr(ResultStore, "_upsert", staticmethod(upsert))
    assert cli_main(["run", str(tiny_suite), "--results", str(results), "--no-progress"]) == 3
    err = capsys.readouterr().err
    assert "database or disk is full" in err and "Traceback" not in err and str(results) in err
    store = ResultStore(results)
    assert store.integrity_ok() and [c["key"] for c in store.cells("ok")] == calls[:1]


def test_console_markup_in_a_checkpoint_name_is_printed_as_data(suite_writer, tmp_path, capsys):
    suite = suite_writer(name="markup")
    suite.write_text(suite.read_text().replace("name: a,", "name: 'x[/red] [bold]<b>',"))
    assert cli_main(["run", str(suite), "--results", str(tmp_path / "res"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "x[/red] [bold]<b>" in out
