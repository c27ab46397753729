"""The cooldown factorial of the ladder trainer: seeds, stable-phase checkpoints, cooldown fractions, resume."""

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

import qsens.testbed.ladder as ladder_module
from qsens.testbed.ladder import Ladder, train_ladder
from qsens.families.manifest import read_manifest
from qsens.testbed.spec import load_ladder_spec
from qsens.testbed.trainer import DataOrder, build_model, lr_at, make_optimizer, save_state, train_steps

from tests.conftest import write_tiny_spec

REPO = Path(__file__).resolve().parents[2]
PEAK, LOW, WARM, TPS = 0.01, 0.01 * 0.05, 8, 8 * 32
FACTORIAL = {
    "sizes:\n  - {name: h16, hidden: 16, layers: 1, heads: 2, mlp: 48}\n  - {name: h32, hidden: 32, layers: 1, heads: 2, mlp: 96}":
        "sizes:\n  - {name: h16, hidden: 16, layers: 1, heads: 2, mlp: 48, seeds: [0, 1]}",
    "budgets: [16384, 65536]": "budgets: [16384, 32768]",
    "schedules: [cosine]": "schedules: [cosine, wsd]\ncooldowns:\n  - {fraction: 0.25}\n"
                           "  - {fraction: 0.5, budgets: [32768]}\ncosine_budgets: [16384]",
}


def closed_form_lr(step: int, total: int, schedule: str, f: float = 0.0) -> float:
    """The schedules written out independently of `lr_at`: linear warmup over 8 steps, then cosine to LOW at the
    last step, or constant PEAK (stable), or constant until round((1 - f)·total) and linear to LOW at the last."""
    if step < WARM:
        return PEAK * (step + 1) / WARM
    if schedule == "cosine":
        return LOW + (PEAK - LOW) * (1 + np.cos(np.pi * (step - WARM) / (total - 1 - WARM))) / 2
    start = round((1 - f) * total)
    if schedule == "stable" or step < start:
        return PEAK
    return PEAK - (PEAK - LOW) * (step - start + 1) / (total - start)


def weights(manifest: Path, name: str) -> dict:
    c = next(c for c in read_manifest(manifest).checkpoints if c.name == name)
    return load_file(manifest.parent / c.path / "model.safetensors")


@pytest.fixture(scope="module")
def factorial(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("factorial")
    return train_ladder(write_tiny_spec(folder, **FACTORIAL), folder / "out", log=lambda m: None)


def test_the_factorial_saves_every_stable_branch_point_cooldown_and_cosine_for_every_seed(factorial):
    got = {(c.seed, c.schedule, c.steps) for c in read_manifest(factorial).checkpoints}
    # budgets of 64 and 128 steps; f = 0.25 at both branches at 48 and 96, f = 0.5 at 128 branches at 64
    per_seed = {("stable", 48), ("stable", 64), ("stable", 96), ("wsd-f0.25", 64), ("wsd-f0.25", 128),
                ("wsd-f0.5", 128), ("cosine", 64)}
    assert got == {(seed, s, n) for seed in (0, 1) for s, n in per_seed}
    for c in read_manifest(factorial).checkpoints:
        assert c.tokens == c.steps * TPS and c.name.startswith(f"h16-s{c.seed}-{c.schedule}-")
        assert c.extra["cooldown_fraction"] == {"stable": None, "cosine": None, "wsd-f0.25": 0.25,
                                                "wsd-f0.5": 0.5}[c.schedule]


def test_lr_recorded_at_every_checkpoint_is_the_closed_form_schedule(factorial):
    for c in read_manifest(factorial).checkpoints:
        total = c.extra["budget"] // TPS if c.extra["budget"] else c.steps
        f = c.extra["cooldown_fraction"] or 0.0
        assert c.lr_at_checkpoint == pytest.approx(closed_form_lr(c.steps - 1, total, c.schedule.split("-")[0], f))
    spec = load_ladder_spec(write_tiny_spec(factorial.parent.parent, **FACTORIAL))
    for total in (64, 128):
        for step in range(total):
            assert lr_at(step, total, spec, "cosine") == pytest.approx(closed_form_lr(step, total, "cosine"))
            assert lr_at(step, total, spec, "stable") == pytest.approx(closed_form_lr(step, total, "stable"))
            for f in (0.25, 0.5):
                assert lr_at(step, total, spec, "wsd", f) == pytest.approx(closed_form_lr(step, total, "wsd", f))


def test_a_cooldown_branch_equals_its_schedule_trained_alone_from_scratch(factorial):
    folder = factorial.parent.parent
    spec = load_ladder_spec(folder / "tiny.yaml")
    ladder = Ladder(spec, folder / "tiny.yaml", factorial.parent, log=lambda m: None)  # reuses tokenizer and stream
    eos = ladder.tokenizer.eos_token_id
    for name, steps, schedule, f in [("h16-s1-wsd-f0.5-d000.033M", 128, "wsd", 0.5),
                                     ("h16-s1-stable-d000.025M", 96, "stable", 0.0)]:
        model = build_model(spec.sizes[0], spec, len(ladder.tokenizer), eos, seed=1)
        opt = make_optimizer(model, spec)
        train_steps(model, opt, DataOrder(ladder.stream, spec, seed=1), range(steps),
                    lambda s: closed_form_lr(s, 128, schedule, f), folder / "alone.pt", lambda m: None, 1.0)
        saved = weights(factorial, name)
        alone = {k: v.numpy() for k, v in model.state_dict().items() if k in saved}
        assert alone.keys() == saved.keys()
        for k in saved:  # the branch ran on deep copies of the stable run's model and optimizer: identical arithmetic
            assert np.array_equal(saved[k], alone[k]), (name, k)


def test_seeds_change_initialisation_and_data_order(factorial):
    spec = load_ladder_spec(factorial.parent.parent / "tiny.yaml")
    a, b = (build_model(spec.sizes[0], spec, 300, 0, seed=s).state_dict() for s in (0, 1))
    assert not torch.equal(a["model.layers.0.mlp.up_proj.weight"], b["model.layers.0.mlp.up_proj.weight"])
    stream = np.arange(20_000) % 299 + 1
    s0, s1 = DataOrder(stream, spec, seed=0), DataOrder(stream, spec, seed=1)
    assert not torch.equal(s0.batch(0), s1.batch(0))
    # seed 1's first epoch is not seed 0's second (as default_rng(seed + e) would make it)
    assert not np.array_equal(s0._perm(1), s1._perm(0))
    assert sorted(s1._perm(0)) == list(range(s1.n_windows))
    w0, w1 = weights(factorial, "h16-s0-stable-d000.012M"), weights(factorial, "h16-s1-stable-d000.012M")
    assert not np.array_equal(w0["model.norm.weight"], w1["model.norm.weight"])


def test_an_interrupted_factorial_resumes_to_the_same_checkpoints(tmp_path, factorial, monkeypatch):
    real = ladder_module.train_steps
    crash_in = {"h16-s0-wsd-stable.pt", "h16-s1-wsd-f0.5-d000.033M.pt", "h16-s0-cosine-d000.016M.pt"}

    def crashing(model, opt, data, steps, lr_of, state_path, log, clip, **kw):
        if state_path.name in crash_in and len(steps) > 4:  # as if killed after a periodic save mid-run
            crash_in.remove(state_path.name)
            half = steps.start + len(steps) // 2
            real(model, opt, data, range(steps.start, half), lr_of, state_path, log, clip)
            save_state(state_path, model, opt, half)
            raise KeyboardInterrupt
        return real(model, opt, data, steps, lr_of, state_path, log, clip, **kw)

    monkeypatch.setattr(ladder_module, "train_steps", crashing)
    spec_path = write_tiny_spec(tmp_path, **FACTORIAL)
    out = tmp_path / "out"
    for _ in range(3):
        with pytest.raises(KeyboardInterrupt):
            train_ladder(spec_path, out, log=lambda m: None)
        assert list((out / "resume").glob("*.pt"))
        # the next session starts from a fresh clone: only what is committed survives, not the ignored .state/
        shutil.rmtree(out / ".state", ignore_errors=True)
        assert not subprocess.run(["git", "check-ignore", "-q", "--no-index",
                                   f"checkpoints/x/resume/{next((out / 'resume').glob('*.pt')).name}"],
                                  cwd=REPO).returncode == 0, "run states must not be git-ignored"
    resumed = train_ladder(spec_path, out, log=lambda m: None)
    assert not crash_in
    assert not list((out / "resume").glob("*")), "a finished run leaves no state behind"
    names = {c.name for c in read_manifest(factorial).checkpoints}
    assert {c.name for c in read_manifest(resumed).checkpoints} == names
    for name in names:
        a, b = weights(factorial, name), weights(resumed, name)
        assert all(np.array_equal(a[k], b[k]) for k in a), name


def test_a_budget_missing_from_budgets_is_an_error_naming_the_key(tmp_path):
    bad = dict(FACTORIAL)
    bad["schedules: [cosine]"] = bad["schedules: [cosine]"].replace("budgets: [32768]", "budgets: [99999]")
    with pytest.raises(ValueError, match=r"cooldowns\[1\]\.budgets: \[99999\] not in budgets"):
        load_ladder_spec(write_tiny_spec(tmp_path, **bad))


def test_the_gutenberg_suite_validates_on_a_factorial_manifest_and_cells_carry_the_training_seed(factorial, tmp_path):
    from qsens.runner.plan import identity_row, plan_cells
    from qsens.store.cells import COLUMN_NAMES
    from qsens.suites.load import load_suite

    repo = Path(__file__).resolve().parents[2]
    text = (repo / "suites/gutenberg.yaml").read_text().replace("../checkpoints/gutenberg/manifest.json", str(factorial))
    text = text.replace("../data/", f"{repo}/data/").replace("wsd-f0.1, wsd-f0.2, wsd-f0.4", "wsd-f0.25, wsd-f0.5")
    text = text.replace("context_length: 128", "context_length: 32")  # the tiny test models have 32 positions
    (tmp_path / "g.yaml").write_text(text)
    suite = load_suite(tmp_path / "g.yaml")
    rows = [identity_row(c, suite.name) for c in plan_cells(suite)]
    assert {(r["family"], r["schedule"]) for r in rows} == {("gutenberg-stable", "stable"), ("gutenberg-cosine", "cosine"),
                                                           ("gutenberg-cooled", "wsd-f0.25"), ("gutenberg-cooled", "wsd-f0.5")}
    seeds = {c.name: c.seed for c in read_manifest(factorial).checkpoints}
    assert all(r["train_seed"] == seeds[r["checkpoint"]] for r in rows) and {r["train_seed"] for r in rows} == {0, 1}
    assert "train_seed" in COLUMN_NAMES
    assert len(rows) == 14 * len(suite.quantizers) * 3


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_factorial_trains_on_cuda_like_on_the_cpu(factorial, tmp_path):
    """Same checkpoints, same recorded schedule, and weights equal to float rounding drift (CUDA kernels differ)."""
    cuda = train_ladder(write_tiny_spec(tmp_path, **FACTORIAL), tmp_path / "out", log=lambda m: None, device="cuda")
    cpu_ck = {c.name: c for c in read_manifest(factorial).checkpoints}
    cuda_ck = {c.name: c for c in read_manifest(cuda).checkpoints}
    assert cpu_ck.keys() == cuda_ck.keys()
    for name, c in cuda_ck.items():
        assert c.lr_at_checkpoint == cpu_ck[name].lr_at_checkpoint and c.extra["device"] == "cuda"
        a, b = weights(factorial, name), weights(cuda, name)
        assert max(float(np.max(np.abs(a[k] - b[k]))) for k in a) < 0.05, name
        assert abs(c.extra["final_train_loss"] - cpu_ck[name].extra["final_train_loss"]) < 0.05, name


def test_a_spec_edited_after_training_is_refused_not_silently_resumed(factorial, tmp_path):
    import shutil

    shutil.copytree(factorial.parent, tmp_path / "out", symlinks=True)
    spec = write_tiny_spec(tmp_path, **FACTORIAL, **{"peak_lr: 0.01": "peak_lr: 0.02"})
    with pytest.raises(ValueError, match=r"h16-s0-\S+ was trained under other settings"):
        train_ladder(spec, tmp_path / "out", log=lambda m: None)
    same = write_tiny_spec(tmp_path / "out", **FACTORIAL)  # an unchanged spec: everything is done, nothing trains
    assert train_ladder(same, tmp_path / "out", log=lambda m: None) == tmp_path / "out/manifest.json"


def test_a_stable_run_whose_state_was_lost_retrains_onto_its_committed_checkpoints_or_refuses(tmp_path, factorial):
    # first only the 16K budget; then the spec grows to the fixture's: the stable run's state is gone (a finished
    # run deletes it), so it retrains from step 0 and must pass through the stable checkpoint it committed before
    small = FACTORIAL | {"budgets: [16384, 65536]": "budgets: [16384]",
                         "schedules: [cosine]": "schedules: [cosine, wsd]\ncooldowns:\n  - {fraction: 0.25}\n"
                                                "cosine_budgets: [16384]"}
    runs = {}
    for name in ("exact", "tampered"):
        (tmp_path / name).mkdir()
        train_ladder(write_tiny_spec(tmp_path / name, **small), tmp_path / name / "out", log=lambda m: None)
        assert not list((tmp_path / name / "out" / "resume").glob("*.pt"))
        runs[name] = write_tiny_spec(tmp_path / name, **FACTORIAL)
    grown = train_ladder(runs["exact"], tmp_path / "exact" / "out", log=lambda m: None)
    names = {c.name for c in read_manifest(factorial).checkpoints}
    assert {c.name for c in read_manifest(grown).checkpoints} == names
    for name in names:
        a, b = weights(factorial, name), weights(grown, name)
        assert all(np.array_equal(a[k], b[k]) for k in a), name

    manifest = tmp_path / "tampered" / "out" / "manifest.json"
    stable = next(c for c in read_manifest(manifest).checkpoints if c.schedule == "stable" and c.seed == 0)
    file = manifest.parent / stable.path / "model.safetensors"
    tensors = load_file(file)
    key = sorted(tensors)[0]
    tensors[key] = (tensors[key].astype(np.float32) * 1.001).astype(tensors[key].dtype)
    from safetensors.numpy import save_file
    save_file(tensors, file, metadata={"format": "pt"})
    with pytest.raises(RuntimeError, match=f"{stable.name}: the retrained stable run differs"):
        train_ladder(runs["tampered"], tmp_path / "tampered" / "out", log=lambda m: None)
