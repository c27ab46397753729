"""The amended gutenberg family's specs (docs/schedule-question.md, "Amendment, 2026-12-03") meet issue 20's
constraints before anything is trained, and the seed-0 spec can share the primary spec's folder."""

from pathlib import Path

import numpy as np

from qsens.testbed.spec import load_ladder_spec
from qsens.testbed.trainer import build_model, non_embedding_params, wsd_branch_step

REPO = Path(__file__).resolve().parents[2]
PRIMARY = load_ladder_spec(REPO / "checkpoints/gutenberg-amended.yaml")
SEED0 = load_ladder_spec(REPO / "checkpoints/gutenberg-amended-seed0.yaml")


def test_the_primary_spec_meets_issue_20s_amendment():
    n = {s.name: non_embedding_params(build_model(s, PRIMARY, PRIMARY.vocab_size, 0)) for s in PRIMARY.sizes}
    # the amendment's sizes and seeds; N as the design doc counts it (111,024 and 443,232; h32 dropped)
    assert n == {"h48": 111_024, "h96": 443_232}
    assert max(n.values()) / min(n.values()) >= 3.5
    assert {s.name: PRIMARY.seeds_for(s) for s in PRIMARY.sizes} == {"h48": list(range(8)), "h96": list(range(4))}
    budgets = sorted(PRIMARY.budgets)
    assert budgets[-1] / budgets[0] >= 16 and np.allclose(np.diff(np.log(budgets)), np.log(2))
    # primary trajectories only: f = 0.2 at every budget, no cosine, no other fraction
    assert PRIMARY.cooldown_plan() == [(b, 0.2) for b in budgets] and PRIMARY.cosine_plan() == []


def test_the_seed0_spec_is_the_primary_seed_0_plus_the_secondary_settings():
    assert {s.name: SEED0.seeds_for(s) for s in SEED0.sizes} == {"h48": [0], "h96": [0]}
    assert SEED0.name == PRIMARY.name  # one manifest, one family
    for s in PRIMARY.sizes:  # same data, model, optimizer, storage: checkpoints of both specs share one folder
        assert SEED0.fingerprint(next(t for t in SEED0.sizes if t.name == s.name)) == PRIMARY.fingerprint(s)
    assert set(PRIMARY.cooldown_plan()) < set(SEED0.cooldown_plan())
    assert {f for _, f in SEED0.cooldown_plan()} == {0.1, 0.2, 0.4} and len(SEED0.cosine_plan()) == 3
    # the order the specs' comments prescribe, seed 0 from SEED0 first: its stable run passes every primary branch
    # point; its f = 0.4 branch at 8.39M (0.6 x 2,048 steps) lies before the primary stable run's end, so a stable
    # run trained from PRIMARY first could not branch it.
    def branch(spec):
        return sorted({wsd_branch_step(spec.steps_for(b), spec, f) for b, f in spec.cooldown_plan()})

    assert set(branch(PRIMARY)) < set(branch(SEED0))
    assert branch(SEED0)[1] == round(0.6 * 2048) and branch(SEED0)[1] < branch(PRIMARY)[-1]


def test_the_suite_scores_every_committed_checkpoint_in_its_arm_with_the_primary_setting():
    """suites/gutenberg-amended.yaml against the committed manifest, read as plain JSON: every checkpoint in
    exactly one family by its schedule; the rule's primary setting (RTN 3-bit g8) and the five books as documents."""
    import json

    from qsens.suites.load import load_suite

    suite = load_suite(REPO / "suites/gutenberg-amended.yaml")
    manifest = json.loads((REPO / "checkpoints/gutenberg-amended/manifest.json").read_text())["checkpoints"]
    arm = {"stable": "amended-stable", "cosine": "amended-cosine"}
    want = {c["name"]: arm.get(c["schedule"], "amended-cooled") for c in manifest}
    assert all(c["schedule"] in ("stable", "cosine", "wsd-f0.1", "wsd-f0.2", "wsd-f0.4") for c in manifest)
    assert {c.name: c.family for c in suite.checkpoints} == want
    assert {c.train_seed for c in suite.checkpoints} == {c["seed"] for c in manifest}
    assert "rtn-w3-g8-asym" in {q.label() for q in suite.quantizers}
    books = {p.name for p in (REPO / "data/eval/heldout-gutenberg").iterdir() if p.name.endswith(".txt.gz")}
    (heldout,) = [ev for ev in suite.evals if ev.name == "heldout-gutenberg"]
    assert len(books) == 5 and {p.name for p in heldout.documents} == books
