"""Fixtures shared across the test tree."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TINY_SPEC = """
name: tiny
seed: 0
train_text: [{novels}/Camilla.txt.gz, {novels}/TomJones.txt.gz]
max_train_chars: 300000
vocab_size: 300
sequence_length: 32
batch_size: 8
sizes:
  - {{name: h16, hidden: 16, layers: 1, heads: 2, mlp: 48}}
  - {{name: h32, hidden: 32, layers: 1, heads: 2, mlp: 96}}
budgets: [16384, 65536]
schedules: [cosine]
optim: {{peak_lr: 0.01, warmup_steps: 8}}
threads: 1
device: cpu
"""


# A burner spins until its parent (this pytest) is gone, so a killed session leaves none behind.
_BURNER = "import os\nparent = os.getppid()\nwhile os.getppid() == parent:\n    pass\n"


def pytest_addoption(parser):
    parser.addoption("--under-load", type=int, nargs="?", const=4, default=0, metavar="N",
                     help="run the tests beside N CPU-burning processes (default 4, nice 0), started before collection "
                          "and stopped at the end: a test that depends on how fast the machine is fails here")


def pytest_configure(config):
    n = config.getoption("--under-load")
    if n and not hasattr(config, "_qsens_burners"):
        config._qsens_burners = [subprocess.Popen([sys.executable, "-c", _BURNER]) for _ in range(n)]


def pytest_unconfigure(config):
    for proc in getattr(config, "_qsens_burners", []):
        proc.kill()
        proc.wait()


def pytest_terminal_summary(terminalreporter, config):
    burners = getattr(config, "_qsens_burners", [])
    if burners:
        import resource

        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
        # the burners are still running (not reaped), so the children's time is the tests' subprocesses only
        used = sum(resource.getrusage(who).ru_utime + resource.getrusage(who).ru_stime
                   for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
        terminalreporter.write_line(f"under load: {len(burners)} CPU-burning processes beside the tests on "
                                    f"{os.cpu_count()} CPUs; load average (1, 5, 15 min) at the end: {load}; "
                                    f"the tests used {used:.0f} CPU-seconds")


def write_tiny_spec(folder: Path, **replace: str) -> Path:
    body = TINY_SPEC.format(novels=REPO / "data/novels")
    for old, new in replace.items():
        body = body.replace(old, new)
    path = folder / "tiny.yaml"
    path.write_text(textwrap.dedent(body))
    return path


@pytest.fixture(scope="session")
def tiny_family(tmp_path_factory) -> Path:
    """A tiny Llama family trained by the real trainer in a few seconds: 2 sizes x 2 budgets, cosine.

    Returns the manifest path. The models learn enough (loss well below uniform) for quantization to matter.
    """
    from qsens.testbed.ladder import train_ladder

    folder = tmp_path_factory.mktemp("tiny-family")
    return train_ladder(write_tiny_spec(folder), folder / "out", log=lambda msg: None)
