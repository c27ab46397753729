"""Training-seed replicates of the micro family (issue 21): same spec but the seeds, seed 0 untouched, new orders."""

from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from qsens.families.manifest import read_manifest
from qsens.testbed.ladder import train_ladder
from qsens.testbed.spec import load_ladder_spec
from qsens.testbed.trainer import DataOrder

from tests.conftest import write_tiny_spec

REPO = Path(__file__).resolve().parents[2]


def test_the_seeds_spec_is_the_micro_spec_but_for_its_seeds():
    micro, seeds = (load_ladder_spec(REPO / f"checkpoints/{n}.yaml") for n in ("micro", "micro-seeds"))
    assert seeds.seeds == [1, 2] and seeds.seed == micro.seed == 0
    different = {k for k in type(micro).model_fields if getattr(micro, k) != getattr(seeds, k)}
    assert different == {"name", "description", "seeds"}
    assert all(micro.fingerprint(s) == seeds.fingerprint(s) for s in micro.sizes)


def test_replicate_orders_repeat_no_epoch_of_the_original_or_of_each_other():
    spec = load_ladder_spec(REPO / "checkpoints/micro.yaml")
    stream = np.arange(40_000) % 1000 + 1
    original = DataOrder(stream, spec)  # seed 0's order: default_rng(0 + e)
    perms = {("original", e): original._perm(e) for e in range(4)}
    for seed in (1, 2):
        order = DataOrder(stream, spec, seed, replicate=True)
        perms |= {(seed, e): order._perm(e) for e in range(2)}
    keys = list(perms)
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            assert not np.array_equal(perms[a], perms[b]), (a, b)
    # the factorial rule [seed, e] would have repeated the original's second epoch (SeedSequence([1, 0]) == 1)
    assert np.array_equal(DataOrder(stream, spec, 1)._perm(0), original._perm(1))


@pytest.fixture(scope="module")
def replicated(tmp_path_factory):
    folder = tmp_path_factory.mktemp("replicated")
    spec = write_tiny_spec(folder, **{"seed: 0": "seed: 0\nseeds: [0, 1]", "budgets: [16384, 65536]": "budgets: [16384]",
                                      "schedules: [cosine]": "schedules: [cosine, wsd]"})
    alone = folder / "alone.yaml"
    alone.write_text(spec.read_text().replace("seeds: [0, 1]\n", ""))
    train_ladder(alone, folder / "alone", sizes=["h16"], log=lambda m: None)
    return train_ladder(spec, folder / "out", sizes=["h16"], log=lambda m: None), folder / "alone" / "manifest.json"


def test_seed_zero_keeps_its_names_and_weights_and_replicates_carry_their_seed(replicated):
    both, alone = (read_manifest(p) for p in replicated)
    names = {c.name: c for c in both.checkpoints}
    assert set(names) == {"h16-cosine-d000.016M", "h16-wsd-d000.016M", "h16-s1-cosine-d000.016M",
                          "h16-s1-wsd-d000.016M"}
    for c in alone.checkpoints:  # seed 0 trained beside seed 1 is bit-identical to seed 0 trained alone
        twin = names[c.name]
        assert (twin.path, twin.data_order) == (c.path, c.data_order)
        a, b = (load_file(p.parent / x.path / "model.safetensors") for p, x in zip(replicated[::-1], (c, twin)))
        assert all(np.array_equal(a[k], b[k]) for k in a)
    s1 = names["h16-s1-cosine-d000.016M"]
    assert s1.path == "h16/s1/cosine/h16-s1-cosine-d000.016M" and s1.seed == 1
    assert "default_rng([seed, e, 1])" in s1.data_order and s1.data_order == names["h16-s1-wsd-d000.016M"].data_order
    assert "spec_fingerprint" in s1.extra and "spec_fingerprint" not in names["h16-cosine-d000.016M"].extra
    w0 = load_file(replicated[0].parent / names["h16-cosine-d000.016M"].path / "model.safetensors")
    w1 = load_file(replicated[0].parent / s1.path / "model.safetensors")
    assert not np.array_equal(w0["model.norm.weight"], w1["model.norm.weight"])
