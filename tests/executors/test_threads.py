"""`qsens run`'s thread policy: one torch thread per checkpoint unless told otherwise, recorded with every cell
beside the matmul route of the process that computed it (qsens.blas)."""

import torch

import qsens.runner.loop
import qsens.runner.summary
from qsens import blas
from qsens.cli import main as cli_main
from qsens.runner.loop import RunSummary, run_suite
from qsens.store import ResultStore
from qsens.suites.load import load_suite


def _calls(monkeypatch) -> list[dict]:
    """What `qsens run` hands to run_suite and to blas.ensure, without running anything."""
    calls: list[dict] = []

    def fake_run_suite(suite, results, executor="local", progress=True, threads=1, **options):
        calls.append({"threads": threads, "executor": executor, **options})
        return RunSummary(planned_keys=(), skipped=0)

    monkeypatch.setattr(qsens.runner.loop, "run_suite", fake_run_suite)
    monkeypatch.setattr(qsens.runner.summary, "print_summary", lambda *a, **k: None)
    monkeypatch.setattr(blas, "ensure", lambda reexec=True: calls.append({"reexec": reexec}) or blas.route())
    return calls


def test_qsens_run_asks_for_one_thread_by_default(tiny_suite, tmp_path, monkeypatch, capsys):
    calls = _calls(monkeypatch)
    assert cli_main(["run", str(tiny_suite), "--results", str(tmp_path / "r"), "--no-progress"]) == 0
    # called in-process (argv given): the route is only reported, never a restart of pytest itself
    assert calls == [{"reexec": False}, {"threads": 1, "executor": "local"}]
    calls.clear()
    assert cli_main(["run", str(tiny_suite), "--results", str(tmp_path / "r"), "--threads", "3", "--no-progress"]) == 0
    assert calls[-1] == {"threads": 3, "executor": "local"}
    calls.clear()
    assert cli_main(["run", str(tiny_suite), "--threads", "0", "--no-progress"]) == 2
    assert calls == [] and "--threads must be >= 1, got 0" in capsys.readouterr().err
    calls.clear()  # a suite that does not load is refused before blas.ensure() could restart the process
    (tmp_path / "bad.yaml").write_text("name: [\n")
    assert cli_main(["run", str(tmp_path / "bad.yaml"), "--no-progress"]) == 2 and calls == []


def test_qsens_run_help_says_how_to_use_every_core(capsys):
    try:
        cli_main(["run", "--help"])
    except SystemExit:
        pass
    text = " ".join(capsys.readouterr().out.split())
    assert "--threads N" in text and "default: 1" in text
    assert "--executor ray" in text and "same --results" in text


def test_each_cell_records_the_threads_and_route_its_worker_ran_with(tiny_suite, tmp_path):
    before = torch.get_num_threads()
    summary = run_suite(load_suite(tiny_suite), tmp_path / "res", progress=False, threads=2)
    assert summary.computed == 6
    cells = ResultStore(tmp_path / "res").cells()
    assert {c["threads"] for c in cells} == {2}  # torch.get_num_threads() in the worker, read as it computed
    assert {c["blas_route"] for c in cells} == {blas.route()} and blas.route() in (blas.INTEL_PATH, blas.DEFAULT)
    assert torch.get_num_threads() == before  # the caller's setting is back after the job


def test_a_ray_worker_gets_the_drivers_preload_only_when_the_shim_is_loaded(monkeypatch):
    monkeypatch.setenv("LD_PRELOAD", "/x/mkl-intel-path-0123456789ab.so")
    monkeypatch.setattr(blas, "shim_loaded", lambda: True)
    assert blas.worker_env() == {"LD_PRELOAD": "/x/mkl-intel-path-0123456789ab.so"}
    monkeypatch.setattr(blas, "shim_loaded", lambda: False)
    assert blas.worker_env() == {}
