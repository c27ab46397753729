"""`qsens nightly`: suites run incrementally, then fit and board; a run record in each results DB and a JSONL log;
exit status 1 when any cell or step failed, 2 for an invalid config."""

import json
import textwrap

import pytest
import torch

from qsens.cli import main as cli_main
from qsens.store import ResultStore
from qsens.store.runs import read_runs


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """An untrained 1-layer Llama with a byte-level BPE tokenizer, and a text to score."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("nightly_model")
    text = "the quick brown fox jumps over the lazy dog and then it sleeps in the sun\n" * 60
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([text], trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>").save_pretrained(folder / "ck")
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=2,
                                 max_position_embeddings=64)).save_pretrained(folder / "ck")
    (folder / "eval.txt").write_text(text)
    return folder


def _suite(folder, name, model_dir, bits="[2, 8]", extra_ckpt=""):
    path = folder / f"{name}.yaml"
    path.write_text(textwrap.dedent(f"""\
        name: {name}
        device: cpu
        families:
          - name: tiny
            checkpoints:
              - {{path: {model_dir / 'ck'}, name: ck, n_params: 4096, tokens: 1000}}
        """) + extra_ckpt + textwrap.dedent(f"""\
        quantizers:
          - {{method: rtn, bits: {bits}, group_size: 16}}
        evals:
          - {{name: fox, path: {model_dir / 'eval.txt'}, protocol: {{context_length: 32}}}}
        bootstrap: {{samples: 100}}
        """))
    return path


@pytest.fixture
def fake_fit_and_board(monkeypatch):
    """Stand-ins for the fit job and the board builder, recording how the nightly calls them."""
    import qsens.analysis.fit
    import qsens.board.build

    calls = []
    monkeypatch.setattr(qsens.analysis.fit, "fit_results",
                        lambda results: calls.append(("fit", str(results))) or qsens.analysis.fit.FitRun(results))
    monkeypatch.setattr(qsens.board.build, "build_board",
                        lambda results, out: calls.append(("board", str(results), str(out))))
    return calls


def _config(folder, body):
    path = folder / "nightly.yaml"
    path.write_text(textwrap.dedent(body))
    return path


def test_nightly_runs_incrementally_and_records_each_run(tiny_model, tmp_path, fake_fit_and_board):
    _suite(tmp_path, "one", tiny_model)
    config = _config(tmp_path, """\
        suites:
          - {suite: one.yaml, results: results/one}
        board: {results: results, out: site}
        log: results/nightly.jsonl
    """)
    assert cli_main(["nightly", str(config)]) == 0
    assert cli_main(["nightly", str(config)]) == 0  # nothing new: every cell skipped
    runs = read_runs(tmp_path / "results/one")
    assert [(r["ok"], r["cells_computed"], r["cells_skipped"], r["cells_failed"]) for r in runs] == [(1, 2, 0, 0),
                                                                                                     (1, 0, 2, 0)]
    record = json.loads(runs[0]["record_json"])
    assert record["git_commit"] and record["torch_version"] == torch.__version__ and record["device"].startswith("cpu")
    assert record["cell_devices"] == [record["device"]] and record["started_at"] <= record["finished_at"]
    assert [s["name"].split()[0] for s in record["steps"]] == ["suite", "fit", "board"]
    log = [json.loads(line) for line in (tmp_path / "results/nightly.jsonl").read_text().splitlines()]
    assert len(log) == 2 and log[1]["cells_skipped"] == 2
    assert fake_fit_and_board[0] == ("fit", str(tmp_path / "results/one"))
    assert fake_fit_and_board[1] == ("board", str(tmp_path / "results"), str(tmp_path / "site"))


def test_nightly_fails_when_a_step_fails_but_runs_the_rest(tiny_model, tmp_path, monkeypatch):
    """A missing suite file, a suite with a failing cell and a failing fit each fail their own step; the other
    suite still runs, and the exit status is 1."""
    import qsens.analysis.fit

    def no_fit(results):
        raise qsens.analysis.fit.FitInputError(f"cannot fit {results}")

    monkeypatch.setattr(qsens.analysis.fit, "fit_results", no_fit)
    bad = tmp_path / "not-a-model"
    bad.mkdir()
    (bad / "config.json").write_text("{}")
    (bad / "model.safetensors").write_bytes(b"not a safetensors file")  # passes validate, fails to load
    _suite(tmp_path, "broken", tiny_model, extra_ckpt=f"      - {{path: {bad}, name: bad, n_params: 4096, tokens: 1}}\n")
    config = _config(tmp_path, """\
        suites:
          - {suite: missing.yaml}
          - {suite: broken.yaml, results: results/broken}
        log: nightly.jsonl
    """)
    assert cli_main(["nightly", str(config)]) == 1
    record = json.loads((tmp_path / "nightly.jsonl").read_text())
    steps = {s["name"]: s for s in record["steps"]}
    assert not steps["suite missing.yaml"]["ok"] and "file not found" in steps["suite missing.yaml"]["error"]
    broken = steps["suite broken.yaml"]
    assert not broken["ok"] and broken["details"]["computed"] == 2 and broken["details"]["failed"] == 2
    fit = steps[f"fit {tmp_path / 'results/broken'}"]
    assert not fit["ok"] and "FitInputError: cannot fit" in fit["error"]
    assert record["cells_failed"] == 2 and not record["ok"]
    assert len(ResultStore(tmp_path / "results/broken").cells()) == 4
    assert read_runs(tmp_path / "results/broken")[0]["ok"] == 0


def test_nightly_rejects_an_invalid_config(tmp_path, capsys):
    config = _config(tmp_path, """\
        suites:
          - {suite: one.yaml, executor: slurm}
        fitt: true
    """)
    assert cli_main(["nightly", str(config)]) == 2
    err = capsys.readouterr().err
    assert "fitt" in err and "executor" in err
