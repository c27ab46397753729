"""scripts/gpu-check on a CPU machine: CUDA steps skipped cleanly, the report written, the exit status honest.

Reduced (CI): the env step and the skipped CUDA steps (what the other steps run is covered by
tests/testbed/test_standins.py, tests/bench/test_bench_score.py, tests/executors and the quantizer tests).
QSENS_HEAVY=full: every step, in its CPU form.
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
    skip = [] if FULL else ["micro", "standins", "ray", "score"]
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
        score = steps["score"]["figures"]["score"][0]
        assert score["loglik_qsens"] == pytest.approx(score["loglik_lmeval"], rel=1e-5)
        assert all(steps[s]["status"] == "ok" for s in ("micro", "standins", "ray", "score")), steps
    assert "| score |" in (tmp_path / "gc/REPORT.md").read_text()


def test_a_failing_step_fails_the_command(tmp_path, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("step exploded")

    monkeypatch.setattr(gpucheck, "score_step", boom)
    rc = gpucheck.main(["--out", str(tmp_path / "gc"), "--skip", "micro", "standins", "ray", "gpu-tests", "kernel"])
    report = json.loads((tmp_path / "gc/report.json").read_text())
    assert rc == 1 and report["overall"] == "failed"
    assert report["steps"]["score"] == {"status": "failed", "detail": "RuntimeError: step exploded",
                                        "seconds": report["steps"]["score"]["seconds"]}
