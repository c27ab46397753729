"""Fixtures shared across the test tree."""

from __future__ import annotations

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
