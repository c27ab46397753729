"""A results folder's n-gram baselines (`baselines.json`): per scored token sequence (its `tokens_digest`), the
unigram and add-k bigram losses of the family's training text on exactly those targets and the checkpoint gate's
fp loss (`qsens.testbed.gates.suite_baselines` computes them; `python -m qsens.testbed.gates baselines SUITE
RESULTS` writes them). The README's findings read them to report growth past the bigram gate.
"""

from __future__ import annotations

import json
from pathlib import Path

FILE = "baselines.json"


def write(results_dir: Path, baselines: dict[str, dict]) -> Path:
    """Write {tokens digest: baselines} to results_dir/baselines.json (sorted keys, so a rerun changes no byte)."""
    path = Path(results_dir) / FILE
    path.write_text(json.dumps(baselines, indent=1, sort_keys=True) + "\n")
    return path


def read(results_dir: Path) -> dict[str, dict]:
    """{tokens digest: baselines} from results_dir/baselines.json; {} when there is none."""
    path = Path(results_dir) / FILE
    return json.loads(path.read_text()) if path.is_file() else {}
