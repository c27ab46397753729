"""Checkpoint loading from local folders and from Hub revisions, with the network replaced by an offline cache."""

import json
import os
import subprocess
import sys
import textwrap
from unittest import mock

import pytest
import torch

from qsens.families import loading
from qsens.suites.load import Checkpoint


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """An untrained 1-layer Llama with a byte-level tokenizer, saved as an HF folder."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from qsens.testbed.ladder import byte_level_bpe

    folder = tmp_path_factory.mktemp("tiny")
    byte_level_bpe(["hello world " * 50], 300).save_pretrained(folder)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=300, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    return folder


def fake_hub_cache(root, repo: str, revision: str, files_from) -> str:
    """Lay out `root` the way huggingface_hub caches `repo` at `revision` (refs -> commit -> snapshot)."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo_dir = root / ("models--" + repo.replace("/", "--"))
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / revision).write_text(commit)
    snap = repo_dir / "snapshots" / commit
    snap.mkdir(parents=True)
    for f in files_from.iterdir():
        (snap / f.name).write_bytes(f.read_bytes())
    return commit


def test_hub_revision_loads_through_transformers_with_the_network_off(tiny_checkpoint, tmp_path):
    fake_hub_cache(tmp_path / "hub", "EleutherAI/pythia-tiny", "step1000", tiny_checkpoint)
    script = textwrap.dedent(f"""
        import json, torch
        from qsens.families.loading import load_model, load_tokenizer
        from qsens.suites.load import Checkpoint
        ck = Checkpoint("pythia", "step1000", "EleutherAI/pythia-tiny", "step1000", n_params=1, tokens=1)
        model, tok = load_model(ck, torch.device("cpu")), load_tokenizer(ck)
        print(json.dumps({{"w": model.model.layers[0].mlp.down_proj.weight.sum().item(), "ids": tok("hello")["input_ids"]}}))
        missing = Checkpoint("pythia", "step2000", "EleutherAI/pythia-tiny", "step2000", n_params=1, tokens=1)
        try:
            load_model(missing, torch.device("cpu"))
        except OSError as exc:
            print("MISSING-OK", type(exc).__name__)
    """)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HOME": str(tmp_path / "home")}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    first, last = out.stdout.strip().splitlines()[0], out.stdout.strip().splitlines()[-1]
    from transformers import AutoModelForCausalLM, AutoTokenizer

    expected = AutoModelForCausalLM.from_pretrained(tiny_checkpoint).model.layers[0].mlp.down_proj.weight.sum().item()
    got = json.loads(first)
    assert got["w"] == pytest.approx(expected, abs=0)
    assert got["ids"] == AutoTokenizer.from_pretrained(tiny_checkpoint)("hello")["input_ids"]
    assert last.startswith("MISSING-OK")


def test_hub_loads_pass_revision_and_keep_remote_code_off():
    ck = Checkpoint("f", "step1", "org/model", "step1", n_params=1, tokens=1)
    with mock.patch("transformers.AutoModelForCausalLM.from_pretrained") as model_load, \
         mock.patch("transformers.AutoTokenizer.from_pretrained") as tok_load:
        model_load.return_value = (mock.MagicMock(), {"missing_keys": set(), "unexpected_keys": set()})
        loading.load_model(ck, torch.device("cpu"))
        loading.load_tokenizer(ck)
    for call in (model_load.call_args, tok_load.call_args):
        assert call.args == ("org/model",)
        assert call.kwargs["revision"] == "step1" and call.kwargs["trust_remote_code"] is False
    assert model_load.call_args.kwargs["output_loading_info"] is True  # what check_loading_info reads


def test_local_folder_loads_without_revision(tiny_checkpoint):
    ck = Checkpoint("f", "tiny", str(tiny_checkpoint), None, n_params=1, tokens=1)
    model = loading.load_model(ck, torch.device("cpu"))
    assert not model.training and next(model.parameters()).dtype == torch.float32
    assert loading.pretrained_kwargs(ck) == {"trust_remote_code": False}


def _with_config(src, dst, **change):
    import shutil

    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    (dst / "config.json").write_text(json.dumps({**cfg, **change}))
    return dst


@pytest.mark.parametrize("layers,what,named", [
    (2, "missing from the checkpoint (they would be random)", "model.layers.1."),  # config says 2, weights have 1
    (0, "have no place in the model", "model.layers.0."),  # config says 0 layers: the weights of layer 0 are extra
])
def test_missing_or_unexpected_weights_fail_the_load(tiny_checkpoint, tmp_path, layers, what, named):
    """Issue 25: a config of 3 layers over the weights of 2 loaded with layer 3 random and was scored 'ok'."""
    folder = _with_config(tiny_checkpoint, tmp_path / "ck", num_hidden_layers=layers)
    ckpt = Checkpoint("f", "c", str(folder), None, 10, 10)
    with pytest.raises(loading.WeightsMismatch) as info:
        loading.load_model(ckpt, torch.device("cpu"))
    assert what in str(info.value) and named in str(info.value) and str(folder) in str(info.value)


@pytest.fixture(scope="module")
def tied_checkpoint(tmp_path_factory):
    """The tiny Llama with tied embeddings: its weights file has no lm_head.weight."""
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("tied")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=300, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=True)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    return folder


def test_tied_embeddings_are_not_missing(tied_checkpoint):
    """A tied lm_head is not in the weights file (it is the embedding): a legitimate 'missing' key, loaded fine,
    and it shares the embedding's storage."""
    from safetensors import safe_open

    with safe_open(str(tied_checkpoint / "model.safetensors"), "pt") as f:
        assert "lm_head.weight" not in f.keys() and "model.embed_tokens.weight" in f.keys()
    model = loading.load_model(Checkpoint("f", "c", str(tied_checkpoint), None, 10, 10), torch.device("cpu"))
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


def test_an_untied_head_missing_from_the_weights_fails(tied_checkpoint, tmp_path):
    """The same file under a config that says the head is its own weight: lm_head.weight is really missing."""
    folder = _with_config(tied_checkpoint, tmp_path / "ck", tie_word_embeddings=False)
    with pytest.raises(loading.WeightsMismatch, match=r"lm_head\.weight"):
        loading.load_model(Checkpoint("f", "c", str(folder), None, 10, 10), torch.device("cpu"))
