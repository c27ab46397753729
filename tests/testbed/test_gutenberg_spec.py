"""The gutenberg family's spec meets issue 13's design before anything is trained; its manifest, once there, too."""

from pathlib import Path

import numpy as np
import pytest

from qsens.families.manifest import read_manifest
from qsens.testbed.spec import load_ladder_spec
from qsens.testbed.trainer import build_model, non_embedding_params

REPO = Path(__file__).resolve().parents[2]
SPEC = REPO / "checkpoints/gutenberg.yaml"
MANIFEST = REPO / "checkpoints/gutenberg/manifest.json"


def test_the_spec_meets_the_issue_13_design():
    spec = load_ladder_spec(SPEC)
    assert 2048 <= spec.vocab_size <= 4096 and all(s.layers >= 4 for s in spec.sizes)
    n = {s.name: non_embedding_params(build_model(s, spec, spec.vocab_size, 0)) for s in spec.sizes}
    by_n = sorted(spec.sizes, key=lambda s: n[s.name])
    assert len(by_n) >= 3 and n[by_n[-1].name] >= 8 * n[by_n[0].name]
    budgets = sorted(spec.budgets)
    assert len(budgets) >= 6 and spec.steps_for(budgets[0]) >= 1000
    ratios = np.diff(np.log(budgets))
    assert np.allclose(ratios, ratios[0])  # log-spaced
    assert all(budgets[-1] / n[s.name] >= 1000 for s in by_n[:2]) and budgets[-1] / n[by_n[-1].name] >= 300
    plan = spec.cooldown_plan()
    assert {b for b, f in plan if f == 0.2} == set(budgets)
    for f in (0.1, 0.4):
        assert len({b for b, g in plan if g == f}) >= 3
    assert len(spec.cosine_plan()) >= 3 and spec.factorial
    assert all(len(spec.seeds_for(s)) >= 3 for s in by_n[:2])
    # under 4 epochs: 3.0 bytes/token measured for this tokenizer; the text must hold a quarter of the largest D
    text_bytes = sum(int(line.split("\t")[7]) for line in (REPO / "data/gutenberg/books.tsv").read_text().splitlines()[1:]
                     if line.startswith("train\t"))
    assert budgets[-1] / (text_bytes / 3.0) < 3.5


@pytest.mark.skipif(not MANIFEST.is_file(), reason="the gutenberg family is not trained in this checkout")
def test_shipped_gutenberg_checkpoints_are_what_the_spec_says():
    spec = load_ladder_spec(SPEC)
    for c in read_manifest(MANIFEST).checkpoints:
        assert c.seed in spec.seeds_for(next(s for s in spec.sizes if s.name == c.size))
        assert c.tokens == c.steps * spec.tokens_per_step and c.epochs < 4
        if c.schedule == "stable":
            assert c.lr_at_checkpoint == pytest.approx(spec.optim.peak_lr)
        else:
            assert c.lr_at_checkpoint == pytest.approx(spec.optim.peak_lr * spec.optim.min_lr_ratio)
        assert (MANIFEST.parent / c.path / "model.safetensors").is_file()
