"""Layer sets: how a set is named and matched, how a suite sweeps and checks it, and that any method honouring
`skip` quantizes exactly the set (qsens.quantizers.layer_sets, qsens.suites.layer_sweeps)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch

from qsens.quantizers import layer_sets, method_module, rtn, selected
from qsens.quantizers.base import QuantContext, QuantResult
from qsens.suites.load import SuiteError, load_suite

ROOT = Path(__file__).resolve().parents[2]
MICRO = ROOT / "checkpoints" / "micro" / "s24" / "cosine" / "s24-cosine-d008.000M"
NAMES = [f"model.layers.{b}.{k}" for b in (0, 1) for k in
         ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
          "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")]


def test_block_and_kind_of_a_name():
    assert layer_sets.block_and_kind("model.layers.12.mlp.down_proj") == (12, "mlp.down_proj")
    assert layer_sets.block_and_kind("gpt_neox.layers.3.attention.dense") == (3, "attention.dense")
    assert layer_sets.block_and_kind("lm_head") == (None, "lm_head")


def test_keywords_expand_to_one_set_per_block_and_per_kind():
    assert layer_sets.expand("each_block", NAMES) == ["block:0", "block:1"]
    kinds = layer_sets.expand("each_kind", NAMES)
    assert len(kinds) == 7 and kinds[0] == "kind:self_attn.q_proj"
    assert layer_sets.expand(["all", "each_block"], NAMES) == [None, "block:0", "block:1"]
    # a list of plain names is one set; a list holding a list sweeps each
    assert layer_sets.expand([NAMES[0], NAMES[3]], NAMES) == ["names:" + ",".join(sorted([NAMES[0], NAMES[3]]))]
    assert layer_sets.expand([[NAMES[0]], "block:1"], NAMES) == [f"names:{NAMES[0]}", "block:1"]
    # the sets of each keyword partition the names: every name in exactly one set
    for keyword in ("each_block", "each_kind"):
        held = [n for s in layer_sets.expand(keyword, NAMES) for n in layer_sets.members(s, NAMES)]
        assert sorted(held) == sorted(NAMES)


def test_unknown_tensor_names_are_refused_with_the_valid_ones():
    with pytest.raises(ValueError) as exc:
        layer_sets.expand(["model.layers.0.mlp.up_proj", "model.layers.7.mlp.up_proj"], NAMES)
    assert "model.layers.7.mlp.up_proj" in str(exc.value)
    assert all(n in str(exc.value) for n in NAMES)  # the list of valid names
    with pytest.raises(ValueError, match="selects no Linear"):
        layer_sets.expand("kind:mlp.nonexistent", NAMES)
    with pytest.raises(ValueError, match="block:<i>"):
        rtn.Settings(bits=3, layers="everything")


def test_whole_model_settings_dump_as_before_and_sets_are_in_label_and_dump():
    """Cell keys hash the settings' dump: a whole-model setting must dump without `layers` (published keys
    unchanged), a layer set with it (a set is its own cell)."""
    whole = rtn.Settings(bits=3, group_size=8)
    assert whole.model_dump(mode="json") == {"method": "rtn", "bits": 3, "skip": ["lm_head"], "group_size": 8,
                                             "symmetric": False, "backend": "auto"}
    part = rtn.Settings(bits=3, group_size=8, layers="block:1")
    assert part.model_dump(mode="json")["layers"] == "block:1"
    assert part.label() == "rtn-w3-g8-asym@block1" and whole.label() == "rtn-w3-g8-asym"
    assert method_module("noise").Settings(bits=16, magnitude=0.1, layers="kind:mlp.up_proj").label().endswith(
        "@mlp.up_proj")


def _suite(tmp_path: Path, layers: str) -> Path:
    (tmp_path / "eval.txt").write_text("It was a truth universally acknowledged. " * 40)
    path = tmp_path / "suite.yaml"
    path.write_text(textwrap.dedent(f"""\
        name: layer-sets
        families:
          - name: micro
            n_params: 15096
            checkpoints: [{{path: {MICRO}, tokens: 8000000}}]
        quantizers:
          - {{method: rtn, bits: 3, group_size: 8, layers: {layers}}}
        evals:
          - {{name: text, path: eval.txt, preset: qsens, protocol: {{context_length: 64}}}}
        """))
    return path


def test_a_suite_sweeps_layer_sets_and_refuses_unknown_names(tmp_path):
    suite = load_suite(_suite(tmp_path, "[all, each_block, each_kind]"))
    assert [q.layers for q in suite.quantizers] == [None, "block:0", "block:1"] + \
        [f"kind:{k}" for k in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                               "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")]
    with pytest.raises(SuiteError) as exc:
        load_suite(_suite(tmp_path, "[model.layers.2.mlp.up_proj]"))
    where, what = exc.value.problems[0]
    assert where == "quantizers[0].layers" and "model.layers.2.mlp.up_proj" in what and NAMES[-1] in what


def test_only_the_set_is_quantized_by_every_method_that_honours_skip():
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(MICRO).eval()
    ctx = QuantContext(model, None, torch.device("cpu"), 0)
    fp = {n: p.detach().clone() for n, p in model.named_parameters()}
    for settings in (rtn.Settings(bits=3, group_size=8, layers="kind:mlp.down_proj"),
                     method_module("noise").Settings(bits=16, magnitude=0.1, layers="block:0")):
        result = selected.quantize_selected(method_module(settings.method), ctx, settings)
        changed = sorted(n.removesuffix(".weight") for n, p in result.model.named_parameters()
                         if not torch.equal(p, fp[n]))
        assert changed == sorted(layer_sets.members(settings.layers, NAMES))
        assert result.details["layer_set"] == settings.layers


def test_a_method_that_ignores_skip_is_caught():
    class IgnoresSkip:
        @staticmethod
        def quantize(ctx, settings):
            return QuantResult(ctx.fp_model, 3.0, list(NAMES), 0.0, 0, "torch")

    model = torch.nn.Module()
    model.model = torch.nn.Module()
    model.model.layers = torch.nn.ModuleList(
        torch.nn.ModuleDict({"mlp": torch.nn.ModuleDict({"up_proj": torch.nn.Linear(2, 2)})}) for _ in range(2))
    ctx = QuantContext(model, None, torch.device("cpu"), 0)
    with pytest.raises(ValueError, match="does not honour `skip`"):
        selected.quantize_selected(IgnoresSkip, ctx, rtn.Settings(bits=3, layers="block:0"))
    assert json.dumps(selected.restricted(rtn.Settings(bits=3, layers="block:0"),
                                            ["model.layers.0.mlp.up_proj", "model.layers.1.mlp.up_proj"])[1]) == \
        '["model.layers.0.mlp.up_proj"]'


@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_a_method_that_quantizes_whole_blocks_refuses_a_layer_set(tmp_path, method):
    path = _suite(tmp_path, "each_block")
    path.write_text(path.read_text().replace("{method: rtn, bits: 3, group_size: 8,", f"{{method: {method}, bits: 4,"))
    with pytest.raises(SuiteError) as exc:
        load_suite(path)
    assert any(where == "quantizers[0].layers" and f"{method} cannot quantize a layer set" in what
               for where, what in exc.value.problems)
