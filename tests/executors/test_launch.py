"""The executor contract (qsens.executors): the local launcher on stand-in jobs, and what executors may import."""

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from qsens.executors import Callbacks, Job, launcher
from qsens.executors.local import launch

REPO = Path(__file__).resolve().parents[2]


def _job(label: str, *keys: str) -> Job:
    return Job(label, tuple(SimpleNamespace(key=k, label=f"{label} {k}") for k in keys))


def test_local_launch_claims_each_job_just_before_it_runs_and_routes_rows():
    events = []
    claims = {"a": lambda job: job, "b": lambda job: job.only(["b2"]), "c": lambda job: None}

    def claim(job):
        events.append(("claim", job.label))
        return claims[job.label](job)

    def worker(job, started, finished):
        events.append(("run", job.keys))
        for key in job.keys:
            started({"key": key})
            finished({"key": key, "status": "ok"})

    callbacks = Callbacks(claim=claim, started=lambda row: events.append(("started", row["key"])),
                          finished=lambda row: events.append(("finished", row["key"])),
                          lost=lambda job, reason: events.append(("lost", job.keys)))
    launch([_job("a", "a1", "a2"), _job("b", "b1", "b2"), _job("c", "c1")], worker, callbacks, progress=False)
    assert events == [("claim", "a"), ("run", ("a1", "a2")), ("started", "a1"), ("finished", "a1"),
                      ("started", "a2"), ("finished", "a2"),
                      ("claim", "b"), ("run", ("b2",)), ("started", "b2"), ("finished", "b2"),
                      ("claim", "c")]


def test_a_job_narrows_to_the_keys_asked_in_its_own_order():
    job = _job("a", "x", "y", "z")
    assert job.only(["z", "x", "nope"]).keys == ("x", "z") and len(job.only([])) == 0


def test_an_unknown_executor_is_refused():
    with pytest.raises(ValueError, match="unknown executor 'slurm'; known: local, ray"):
        launcher("slurm")


def test_executors_import_nothing_of_the_runner():
    """Executors decide where jobs run, not what they compute: they never load the runner or what it plans from."""
    code = ("import sys, qsens.executors.local, qsens.executors.ray; "
            "print(sorted(m for m in sys.modules if m.startswith('qsens.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True).stdout
    # qsens.errors: the ground layer's error types and terminal-safe printing (no qsens imports of its own)
    assert out.strip() == "['qsens.errors', 'qsens.executors', 'qsens.executors.local', 'qsens.executors.ray']"
