"""The shipped real-family suites (Pythia, OLMo): token and parameter bookkeeping, and loading with the hub mocked.

No hub here: the suites are loaded with their eval text swapped for a local file, every N is recounted from the
architecture on the meta device (no weights), and a tiny model stands in for each repo in a fake HF cache so
transformers' own revision resolution runs offline.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from qsens.suites.config import CheckpointSpec, parse_revision
from qsens.suites.load import Checkpoint, load_suite

REPO = Path(__file__).resolve().parents[2]
PYTHIA_TOKENS_PER_STEP = 1024 * 2048  # sequences x context per step, every v1 Pythia model
PYTHIA_STEPS = {0, *(2**i for i in range(10)), *range(1000, 143001, 1000)}  # the public checkpoint schedule
# Pythia paper, Table 1 (non-embedding parameters); 14M from the same formula (recounted below)
PYTHIA_N = {"14m": 1_189_888, "70m": 18_915_328, "160m": 85_056_000, "410m": 302_311_424, "1b": 805_736_448,
            "1.4b": 1_208_602_624}
PYTHIA_SHAPE = {"14m": (128, 6, 4), "70m": (512, 6, 8), "160m": (768, 12, 12), "410m": (1024, 24, 16),
                "1b": (2048, 16, 8), "1.4b": (2048, 24, 16)}  # hidden size, layers, heads (the repos' config.json)


def load_shipped(name: str, tmp_path: Path, edit=None):
    """suites/<name>.yaml with its data files replaced by a local stand-in (bookkeeping does not read them)."""
    raw = yaml.safe_load((REPO / "suites" / f"{name}.yaml").read_text())
    (tmp_path / "text.txt").write_text("a few words of stand-in text\n" * 200)
    for ev in raw["evals"]:
        ev["path"] = "text.txt"
    if raw.get("calibration"):
        raw["calibration"]["path"] = "text.txt"
    if edit:
        edit(raw)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return load_suite(path)


def non_embedding_params(model: torch.nn.Module) -> int:
    embeddings = {id(m.weight): m.weight.numel() for m in (model.get_input_embeddings(), model.get_output_embeddings())}
    return sum(p.numel() for p in model.parameters()) - sum(embeddings.values())


@pytest.mark.parametrize("name", ["pythia", "olmo"])
def test_shipped_suites_point_at_the_project_data(name):
    raw = yaml.safe_load((REPO / "suites" / f"{name}.yaml").read_text())
    for path in [e["path"] for e in raw["evals"]] + [raw["calibration"]["path"]]:
        assert (REPO / "suites" / path).resolve().is_file(), f"{name}.yaml needs {path}"
    assert raw["calibration"]["path"] not in [e["path"] for e in raw["evals"]]  # never calibrate on the scored text


def test_pythia_bookkeeping(tmp_path):
    suite = load_shipped("pythia", tmp_path)
    by_family: dict[str, list[Checkpoint]] = {}
    for c in suite.checkpoints:
        by_family.setdefault(c.family, []).append(c)
    assert set(by_family) == {f"pythia-{s}" for s in PYTHIA_N} | {f"pythia-{s}-deduped" for s in PYTHIA_N if s != "14m"}
    for family, ckpts in by_family.items():
        size = family.removeprefix("pythia-").removesuffix("-deduped")
        assert len(ckpts) >= 8
        for c in ckpts:
            step = int(c.revision.removeprefix("step"))
            assert step in PYTHIA_STEPS, c.revision
            assert c.location == f"EleutherAI/{family}" and not c.is_local
            assert c.tokens == step * PYTHIA_TOKENS_PER_STEP and c.n_params == PYTHIA_N[size]
            assert c.schedule == "cosine"  # snapshots of one cosine run; deduped or not is the family
        assert max(c.tokens for c in ckpts) == 143000 * 2_097_152  # the final checkpoint, ~300B tokens
    assert all("embed_out" in q.skip for q in suite.quantizers)  # Pythia's output head is not `lm_head`


@pytest.mark.parametrize("size", sorted(PYTHIA_N))
def test_pythia_n_is_the_architectures_non_embedding_count(size):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    d, layers, heads = PYTHIA_SHAPE[size]
    with torch.device("meta"):
        model = GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=50304, hidden_size=d, num_hidden_layers=layers,
                                                 num_attention_heads=heads, intermediate_size=4 * d))
    assert non_embedding_params(model) == PYTHIA_N[size]


def test_olmo_bookkeeping(tmp_path):
    suite = load_shipped("olmo", tmp_path)
    olmo1 = [c for c in suite.checkpoints if c.family == "olmo-1b"]
    olmo2 = {c.revision: c for c in suite.checkpoints if c.family == "olmo-2-1b"}
    assert len(olmo1) >= 8 and all(c.location == "allenai/OLMo-1B-hf" for c in olmo1)
    for c in olmo1:  # D read from the name, which is about step x 2048 x 2048 rounded down to 1e9
        info = parse_revision(c.revision)
        assert c.tokens == info["tokens"]
        assert abs(c.tokens - info["step"] * 2048 * 2048) < 2e9 + 1e-3 * c.tokens
    tokens = sorted(c.tokens for c in olmo1)
    assert tokens[-1] == 3_094 * 10**9  # the final 3T checkpoint
    assert any(1.4e12 <= t <= 1.6e12 for t in tokens)  # ~1.5T (Springer et al.)
    assert any(t < 2.3e12 for t in tokens if t > 2e12) and any(2.3e12 < t < 2.6e12 for t in tokens)  # brackets 2.3T
    assert len(olmo2) >= 8
    assert olmo2["stage1-step40000-tokens84B"].tokens == 84 * 10**9
    for revision, c in olmo2.items():  # OLMo-2 1B: 512 x 4096 = 2,097,152 tokens per step; names round up
        info = parse_revision(revision)
        if revision.startswith("stage1-"):
            assert 0 <= c.tokens - info["step"] * 2_097_152 < 10**9
        else:  # stage 2 continues from the end of stage 1 (4001B): cumulative D given explicitly
            assert c.tokens == 4_001 * 10**9 + info["tokens"]


def test_olmo_n_is_the_architectures_non_embedding_count(tmp_path):
    from transformers import Olmo2Config, Olmo2ForCausalLM, OlmoConfig, OlmoForCausalLM

    suite = load_shipped("olmo", tmp_path)
    n = {c.family: c.n_params for c in suite.checkpoints}
    with torch.device("meta"):
        olmo1 = OlmoForCausalLM(OlmoConfig(vocab_size=50304, hidden_size=2048, intermediate_size=8192,
                                           num_hidden_layers=16, num_attention_heads=16, tie_word_embeddings=True))
        olmo2 = Olmo2ForCausalLM(Olmo2Config(vocab_size=100352, hidden_size=2048, intermediate_size=8192,
                                             num_hidden_layers=16, num_attention_heads=16, num_key_value_heads=16,
                                             tie_word_embeddings=False))
    assert non_embedding_params(olmo1) == n["olmo-1b"] == 2**30
    assert sum(p.numel() for p in olmo1.parameters()) == 1_176_764_416  # OLMo-1B's published total
    assert non_embedding_params(olmo2) == n["olmo-2-1b"]


@pytest.mark.parametrize("revision, expected", [
    ("step143000", {"step": 143000}),
    ("step20000-tokens83B", {"step": 20000, "tokens": 83 * 10**9}),
    ("stage1-step40000-tokens84B", {"step": 40000, "tokens": 84 * 10**9, "stage": "stage1"}),
    ("stage2-ingredient3-step23000-tokens49B", {"step": 23000, "tokens": 49 * 10**9, "stage": "stage2-ingredient3"}),
    ("main", {}), ("v1.0", {}), ("step12x", {}),
])
def test_revision_names(revision, expected):
    assert parse_revision(revision) == expected


def test_revision_tokens_and_stage_fill_the_checkpoint_unless_given():
    c = CheckpointSpec(revision="stage1-step40000-tokens84B")
    assert (c.tokens, c.stage) == (84 * 10**9, "stage1")
    c = CheckpointSpec(revision="step20000-tokens83B", tokens=5, stage="stable")
    assert (c.tokens, c.stage) == (5, "stable")
    with pytest.raises(ValueError, match="cumulative"):  # a stage-2 name counts only stage-2 tokens
        CheckpointSpec(revision="stage2-ingredient3-step23000-tokens49B")


# --- the hub mocked: a fake HF cache that transformers resolves offline -------------------------------------------

def _tiny_repo_files(folder: Path, kind: str) -> Path:
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, Olmo2Config, Olmo2ForCausalLM

    from qsens.testbed.ladder import byte_level_bpe

    byte_level_bpe(["a few words of stand-in text " * 40], 300).save_pretrained(folder)
    torch.manual_seed(0)
    shape = dict(vocab_size=300, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                 max_position_embeddings=128)
    model = GPTNeoXForCausalLM(GPTNeoXConfig(**shape)) if kind == "gpt_neox" else Olmo2ForCausalLM(Olmo2Config(**shape))
    model.save_pretrained(folder)
    return folder


def _fake_hub(cache: Path, repo: str, revisions: list[str], files: Path) -> None:
    """huggingface_hub's cache layout: refs/<revision> holds a commit; snapshots/<commit>/ the files."""
    repo_dir = cache / ("models--" + repo.replace("/", "--"))
    (repo_dir / "refs").mkdir(parents=True)
    for i, revision in enumerate(revisions):
        commit = f"{i:040x}"
        (repo_dir / "refs" / revision).write_text(commit)
        snap = repo_dir / "snapshots" / commit
        snap.mkdir(parents=True)
        for f in files.iterdir():
            (snap / f.name).write_bytes(f.read_bytes())


def test_real_families_run_from_a_mocked_hub(tmp_path):
    pythia = ("pythia-70m-deduped", ["step2000", "step4000"])
    olmo2 = ("olmo-2-1b", ["stage1-step40000-tokens84B", "stage2-ingredient3-step23852-tokens51B"])

    def shrink(raw):
        fams = {f["name"]: f for f in raw["families"]}
        raw["families"] = []
        for name, revisions in (pythia, olmo2):
            fam = fams[name]
            fam["checkpoints"] = [c for c in fam["checkpoints"] if c["revision"] in revisions]
            raw["families"].append(fam)
        raw["quantizers"] = [{"method": "rtn", "bits": 4, "group_size": 16, "skip": ["embed_out", "lm_head"]}]
        raw["evals"][0].update(preset="qsens", protocol={"context_length": 32})
        raw["bootstrap"] = {"samples": 100}

    raw = yaml.safe_load((REPO / "suites" / "pythia.yaml").read_text())
    olmo_raw = yaml.safe_load((REPO / "suites" / "olmo.yaml").read_text())
    raw["families"] += olmo_raw["families"]
    (tmp_path / "text.txt").write_text("a few words of stand-in text\n" * 200)
    raw["evals"][0]["path"] = "text.txt"
    raw["calibration"]["path"] = "text.txt"
    shrink(raw)
    suite_file = tmp_path / "real.yaml"
    suite_file.write_text(yaml.safe_dump(raw, sort_keys=False))

    cache = tmp_path / "hub"
    _fake_hub(cache, "EleutherAI/pythia-70m-deduped", pythia[1], _tiny_repo_files(tmp_path / "neox", "gpt_neox"))
    _fake_hub(cache, "allenai/OLMo-2-0425-1B", olmo2[1], _tiny_repo_files(tmp_path / "olmo2", "olmo2"))
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    run = subprocess.run([sys.executable, "-m", "qsens", "run", str(suite_file), "--results", str(tmp_path / "res"),
                          "--no-progress"], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    from qsens.store import ResultStore

    cells = {c["checkpoint"]: c for c in ResultStore(tmp_path / "res").cells()}
    assert set(cells) == set(pythia[1]) | set(olmo2[1]) and all(c["status"] == "ok" for c in cells.values())
    assert cells["step2000"]["tokens"] == 2000 * 2_097_152 and cells["step2000"]["n_params"] == 18_915_328
    assert cells["step2000"]["location"] == "EleutherAI/pythia-70m-deduped" and cells["step2000"]["revision"] == "step2000"
    assert cells["stage1-step40000-tokens84B"]["tokens"] == 84 * 10**9
    assert cells["stage2-ingredient3-step23852-tokens51B"]["tokens"] == 4_052 * 10**9
    assert cells["stage2-ingredient3-step23852-tokens51B"]["stage"] == "stage2-ingredient3"  # the covariate
    assert cells["stage1-step40000-tokens84B"]["stage"] == "stage1" and cells["step2000"]["stage"] is None


def test_stage_reaches_the_cells(tmp_path):
    from qsens.runner.plan import identity_row, plan_cells

    suite = load_shipped("olmo", tmp_path)
    stages = {c.checkpoint.revision: identity_row(c, suite.name)["stage"] for c in plan_cells(suite)}
    assert stages["stage1-step40000-tokens84B"] == "stage1"
    assert stages["stage2-ingredient3-step23852-tokens51B"] == "stage2-ingredient3"
    assert stages["step738020-tokens3094B"] is None
