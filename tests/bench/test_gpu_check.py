"""scripts/gpu-check on a CPU machine: CUDA steps skipped cleanly, the report written, the exit status honest.

Reduced (CI): the env step and the skipped CUDA steps (what the other steps run is covered by
tests/testbed/test_standins.py, tests/bench/test_bench_score.py, tests/executors and the quantizer tests), and
issue 24's placed step at tiny shapes. QSENS_HEAVY=full: every step, in its CPU form.
"""

import json
import os
import subprocess
import sys

import pytest
import torch

from qsens.bench import gpucheck

FULL = os.environ.get("QSENS_HEAVY") == "full"
REPO = gpucheck.REPO


@pytest.mark.heavy
@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU form; the GPU machine runs the full command")
def test_cpu_run_skips_cuda_steps_and_writes_the_report(tmp_path):
    skip = [] if FULL else ["micro", "standins", "ray", "placed", "cells-1b", "score"]
    run = subprocess.run([str(REPO / "scripts/gpu-check"), "--out", str(tmp_path / "gc"), "--skip", *skip],
                         capture_output=True, text=True, timeout=900, env={**os.environ, "PYTHON": sys.executable})
    report = json.loads((tmp_path / "gc/report.json").read_text())
    steps = report["steps"]
    assert steps["gpu-tests"]["status"] == steps["kernel"]["status"] == "skipped", steps
    assert steps["gpu-tests"]["detail"] == "needs CUDA"
    failed = {k: v.get("detail") or v.get("tail", "")[-500:] for k, v in steps.items() if v["status"] == "failed"}
    env_missing = steps["env"]["figures"]["missing"]
    assert not failed or set(failed) == {"env"} and env_missing, failed
    assert run.returncode == (1 if failed else 0), run.stdout[-2000:]
    if FULL:
        assert all(f["loglik_equal"] for f in steps["score"]["figures"]["float32"])
        assert all(steps[s]["status"] == "ok" for s in ("micro", "standins", "ray", "placed", "cells-1b", "score")), steps
    assert "| score |" in (tmp_path / "gc/REPORT.md").read_text()


def test_a_failing_step_fails_the_command(tmp_path, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("step exploded")

    monkeypatch.setattr(gpucheck, "score_step", boom)
    rc = gpucheck.main(["--out", str(tmp_path / "gc"), "--only", "env", "score"])
    report = json.loads((tmp_path / "gc/report.json").read_text())
    assert rc == 1 and report["overall"] == "failed"
    assert report["steps"]["score"] == {"status": "failed", "detail": "RuntimeError: step exploded",
                                        "seconds": report["steps"]["score"]["seconds"]}


def test_only_budget_and_unknown_steps(tmp_path, monkeypatch, capsys):
    ran = []
    monkeypatch.setattr(gpucheck, "env_step", lambda cuda: ran.append("env") or {"status": "ok"})
    rc = gpucheck.main(["--out", str(tmp_path / "a"), "--only", "env", "--budget", "300"])
    steps = json.loads((tmp_path / "a/report.json").read_text())["steps"]
    assert rc == 0 and ran == ["env"] and steps["env"]["status"] == "ok"
    assert {k: v["detail"] for k, v in steps.items() if k != "env"} == {k: "--only" for k in steps if k != "env"}
    # a budget already spent: what was asked for is not started, and that is a failure, not a pass
    rc = gpucheck.main(["--out", str(tmp_path / "b"), "--only", "env", "--budget", "1"])
    steps = json.loads((tmp_path / "b/report.json").read_text())["steps"]
    assert rc == 1 and steps["env"] == {"status": "failed", "detail": "not started: --budget 1 s spent"}
    assert ran == ["env"]
    with pytest.raises(SystemExit):
        gpucheck.main(["--out", str(tmp_path / "c"), "--only", "plaecd"])
    assert "unknown step(s) plaecd" in capsys.readouterr().err


def _bench_score_has_dtype() -> bool:
    """Whether this checkout's `qsens bench score` takes --dtype (fc302c4, branch i24-speed)."""
    import argparse

    from qsens.cli.bench import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return "--dtype" in sub.choices["score"]._option_string_actions


@pytest.mark.heavy
def test_the_scale_plan_runs_at_tiny_shapes(tmp_path):
    """The issue-24 steps end to end in their reduced form (tiny GPT-NeoX stand-ins, CPU + disk as the two
    devices): the placed 410M-shape run computes the one-device numbers bit for bit, on two devices. Full form:
    also cells/hour at 1B shape and the fraction-of-peak bench in float32 and bfloat16 (where the bench has
    --dtype)."""
    only = ["placed"] + (["cells-1b"] + (["score"] if _bench_score_has_dtype() else []) if FULL else [])
    run = subprocess.run([str(REPO / "scripts/gpu-check"), "--out", str(tmp_path / "gc"), "--reduced",
                          "--only", *only], capture_output=True, text=True, timeout=900,
                         env={**os.environ, "PYTHON": sys.executable, "GPTQMODEL_CPU_WORKERS": "2"})
    steps = json.loads((tmp_path / "gc/report.json").read_text())["steps"]
    assert run.returncode == 0 and all(steps[s]["status"] == "ok" for s in only), {
        s: steps[s].get("detail") or steps[s].get("tail", "")[-800:] for s in only}
    placed = steps["placed"]["figures"]
    assert placed["map"]["modules"]["cpu"] >= 1 and placed["map"]["modules"]["disk"] >= 1
    assert placed["differences"] and all(d == {"fp_loss": 0.0, "q_loss": 0.0, "kl_rel": 0.0}
                                         for d in placed["differences"].values())
    if "cells-1b" in only:
        cells = steps["cells-1b"]["figures"]
        assert cells["ok"] == cells["cells"] == 4 and cells["cells_per_hour"] > 0
    if "score" in only:
        for dtype in ("float32", "bfloat16"):
            (fig,) = steps["score"]["figures"][dtype]
            assert fig["loglik_equal"] and 0 < fig["fp_share_of_peak"] < 1.5, fig
