"""Suite validation: typed config, sweeps, derived token counts, and errors that name file, key and what is allowed."""

import textwrap

import pytest

from qsens.suites.load import SuiteError, load_suite


@pytest.fixture
def folder(tmp_path):
    ck = tmp_path / "ck"
    ck.mkdir()
    (ck / "config.json").write_text("{}")
    (ck / "model.safetensors").write_bytes(b"weights")
    (tmp_path / "eval.txt").write_text("some text to score\n" * 20)
    (tmp_path / "calib.txt").write_text("training text\n" * 20)
    return tmp_path


def write(folder, body: str):
    path = folder / "suite.yaml"
    path.write_text(textwrap.dedent(body))
    return path


GOOD = """
name: t
families:
  - name: local
    checkpoints:
      - {path: ck, n_params: 1000, tokens: 5000}
  - name: pythia
    hub: EleutherAI/pythia-70m-deduped
    n_params: 18915328
    tokens_per_step: 2097152
    checkpoints:
      - {revision: step143000}
      - {revision: main, step: 1000}
quantizers:
  - {method: rtn, bits: [2, 3, 4, 8], group_size: [32, -1]}
evals:
  - {name: wiki, path: eval.txt, preset: gptq, protocol: {context_length: 64}}
"""


def test_good_suite_resolves_checkpoints_sweeps_and_protocol(folder):
    suite = load_suite(write(folder, GOOD))
    by_name = {c.name: c for c in suite.checkpoints}
    assert by_name["step143000"].tokens == 143000 * 2097152
    assert by_name["main"].tokens == 1000 * 2097152
    assert by_name["step143000"].revision == "step143000" and not by_name["step143000"].is_local
    assert by_name["ck"].is_local and by_name["ck"].location == str((folder / "ck").resolve())
    assert len(suite.quantizers) == 8
    assert {q.label() for q in suite.quantizers} >= {"rtn-w2-g32-asym", "rtn-w8-gch-asym"}
    proto = suite.evals[0].protocol
    assert (proto.context_length, proto.effective_stride, proto.joiner, proto.drop_last) == (64, 64, "\n\n", True)


@pytest.mark.parametrize("mutation,where,what", [
    (("quantizers:\n  - {method: rtn", "quantizers:\n  - {method: rtn, bitz: 3"), "quantizers[0].bitz", "unknown key"),
    (("bits: [2, 3, 4, 8]", "bits: [2, 9]"), "quantizers[0].bits", "less than or equal to 8"),
    (("method: rtn", "method: squeezellm"), "quantizers[0].method", "must be one of"),  # awq is one now
    (("group_size: [32, -1]", "group_size: 0"), "quantizers[0].group_size", "positive integer or -1"),
    (("name: t\n", "name: t\nseeed: 1\n"), "seeed", "unknown key"),
    (("path: eval.txt", "path: missing.txt"), "evals[0].path", "file not found"),
    (("context_length: 64", "context_length: 64, strid: 3"), "evals[0].protocol.strid", "unknown key"),
    (("context_length: 64", "context_length: 64, stride: 65"), "evals[0].protocol", "stride (65) must be <= context_length"),
    (("preset: gptq", "preset: gpt"), "evals[0].preset", "gptq"),
    (("{path: ck, n_params: 1000, tokens: 5000}", "{path: ck, tokens: 5000}"), "families[0]", "n_params missing"),
    (("{revision: main, step: 1000}", "{revision: main}"), "families[1]", "tokens"),
    (("{path: ck, n_params", "{path: nowhere, n_params"), "families[0].checkpoints[0].path", "folder not found"),
])
def test_bad_input_names_file_key_and_allowed_values(folder, mutation, where, what):
    old, new = mutation
    assert old in GOOD
    path = write(folder, GOOD.replace(old, new, 1))
    with pytest.raises(SuiteError) as err:
        load_suite(path)
    message = str(err.value)
    assert str(path) in message
    assert any(w.startswith(where) and what in m for w, m in err.value.problems), message


def test_every_problem_is_reported_at_once(folder):
    body = GOOD.replace("bits: [2, 3, 4, 8]", "bits: 1").replace("path: eval.txt", "path: nope.txt")
    with pytest.raises(SuiteError) as err:
        load_suite(write(folder, body))
    assert len(err.value.problems) == 2


def test_not_yaml_and_not_a_mapping(folder):
    with pytest.raises(SuiteError, match="not valid YAML"):
        load_suite(write(folder, "name: [unclosed"))
    with pytest.raises(SuiteError, match="must be a mapping"):
        load_suite(write(folder, "- a list"))
    with pytest.raises(SuiteError, match="file not found"):
        load_suite(folder / "absent.yaml")


def test_duplicate_settings_are_an_error(folder):
    body = GOOD.replace("  - {method: rtn, bits: [2, 3, 4, 8], group_size: [32, -1]}",
                        "  - {method: rtn, bits: 4, group_size: 32}\n  - {method: rtn, bits: 4, group_size: 32}")
    with pytest.raises(SuiteError, match="the same setting appears twice"):
        load_suite(write(folder, body))


def test_context_length_model_passes_the_up_front_positions_check(folder):
    """`context_length: model` (the lm-eval preset) is each checkpoint's own maximum, so it always fits; the
    up-front check compared the string with the checkpoint's limit and crashed (TypeError, exit 70)."""
    (folder / "ck" / "config.json").write_text('{"max_position_embeddings": 128}')
    suite = load_suite(write(folder, GOOD.replace("preset: gptq, protocol: {context_length: 64}", "preset: lm-eval")))
    assert suite.evals[0].protocol.context_length == "model"
    too_long = GOOD.replace("context_length: 64", "context_length: 256")  # a number is still checked
    with pytest.raises(SuiteError, match="256 exceeds max_position_embeddings 128"):
        load_suite(write(folder, too_long))
