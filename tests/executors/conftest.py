"""A tiny two-checkpoint suite for executor and fault tests: seconds per run on two CPU cores.

The checkpoints are untrained 1-layer Llamas (different seeds) with a byte-level BPE tokenizer; the numbers they
give are meaningless but deterministic, which is all that comparing executors and surviving faults needs.
"""

import os
import random
import textwrap
from pathlib import Path

import pytest
import torch

WORDS = ("the of and to in a is that for it as was with be by on not he this are or his from at which but have "
         "an they you were her she there been one all we their has would when if so no will more what out up").split()


def make_text(n_words: int, seed: int) -> str:
    rng = random.Random(seed)
    lines = [" ".join(rng.choice(WORDS) for _ in range(12)) + "." for _ in range(n_words // 12)]
    return "\n".join(lines) + "\n"


def make_checkpoint(folder: Path, seed: int, text: str) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    from qsens.testbed.ladder import byte_level_bpe

    byte_level_bpe([text], 320).save_pretrained(folder)
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=320, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("tiny_ckpts")
    text = make_text(3000, seed=1)
    ckpts = {name: make_checkpoint(root / name, seed, text) for name, seed in (("a", 0), ("b", 1))}
    (root / "eval.txt").write_text(make_text(1500, seed=2))
    return {"root": root, **ckpts}


def write_suite(folder: Path, ckpts: dict, extra_checkpoints: str = "", name: str = "tiny",
                eval_words: int | None = None) -> Path:
    """A suite over checkpoints a and b (3 RTN settings x 1 eval = 6 cells), plus any `extra_checkpoints` lines;
    `eval_words` scores a longer text, whole, instead of the first 1024 tokens of the shared one."""
    path = folder / f"{name}.yaml"
    eval_path, limit = ckpts["root"] / "eval.txt", ", max_tokens: 1024"
    if eval_words:
        eval_path, limit = folder / f"{name}-eval.txt", ""
        eval_path.write_text(make_text(eval_words, seed=3))
    path.write_text(textwrap.dedent(f"""\
        name: {name}
        seed: 0
        device: cpu
        families:
          - name: tiny
            checkpoints:
              - {{path: {ckpts['a']}, name: a, n_params: 8192, tokens: 1000}}
              - {{path: {ckpts['b']}, name: b, n_params: 8192, tokens: 2000}}
        """) + extra_checkpoints + textwrap.dedent(f"""\
        quantizers:
          - {{method: rtn, bits: [2, 4, 8], group_size: 16}}
        evals:
          - {{name: words, path: {eval_path}, protocol: {{context_length: 32{limit}}}}}
        bootstrap: {{samples: 100}}
        """))
    return path


@pytest.fixture(scope="module")
def ray_env():
    """One local Ray instance per test module: 2 CPUs, auth off, its files in a short temporary dir."""
    ray = pytest.importorskip("ray")
    import shutil
    import tempfile

    old = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "disabled"
    temp = tempfile.mkdtemp(prefix="qr")  # short: Ray's socket paths must stay under 107 characters
    try:
        yield {"temp_dir": temp, "num_cpus": 2}
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)
        if old is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = old

@pytest.fixture
def tiny_suite(tmp_path, tiny_checkpoints):
    """Path of the 6-cell suite over checkpoints a and b; `tiny_suite.extra(lines)` writes a variant."""
    return write_suite(tmp_path, tiny_checkpoints)


@pytest.fixture
def suite_writer(tmp_path, tiny_checkpoints):
    return lambda extra="", name="tiny", eval_words=None: write_suite(tmp_path, tiny_checkpoints, extra, name, eval_words)
