"""A model spread over two "devices" (accelerate: CPU and disk offload) scores exactly as on one device, from a
suite's `placement`; bad placements are rejected naming the key; placement is not part of any cell's key."""

import textwrap

import numpy as np
import pytest
import torch

from qsens.families.checkpoint import Checkpoint
from qsens.families.loading import load_model
from qsens.families.placement import Placement
from qsens.metrics.protocol import Protocol
from qsens.metrics.scoring import score_together
from qsens.metrics.windows import build_eval_tokens
from qsens.suites.load import SuiteError, load_suite
from qsens.testbed.standins import REPO

MICRO = REPO / "checkpoints/micro/s64/cosine/s64-cosine-d008.000M"
# the micro model is Llama-shaped: its second block goes to disk (weights read back per forward), the rest on CPU
TWO_DEVICES = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk", "model.norm": "cpu",
               "model.rotary_emb": "cpu", "lm_head": "cpu"}


def _ckpt(placement=None) -> Checkpoint:
    return Checkpoint("micro", "s64", str(MICRO), None, 1, 1, placement=placement)


def test_a_two_device_map_scores_as_one_device(tmp_path):
    pytest.importorskip("accelerate")
    from transformers import AutoTokenizer

    single = load_model(_ckpt(), torch.device("cpu"))
    placed = load_model(_ckpt(Placement(device_map=TWO_DEVICES, offload_folder=str(tmp_path))), torch.device("cpu"))
    assert placed.hf_device_map["model.layers.1"] == "disk"
    assert next(placed.model.layers[1].parameters()).device.type == "meta"  # really offloaded
    tok = AutoTokenizer.from_pretrained(MICRO)
    text = (REPO / "README.md").read_text()[:6000]
    tokens = build_eval_tokens(text, tok, Protocol(context_length=64, max_tokens=1500))
    noisy = load_model(_ckpt(), torch.device("cpu"))  # a stand-in quantized model: every weight perturbed
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in noisy.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.01)
    ref1, out1 = score_together(single, {"q": noisy}, tokens, torch.device("cpu"), batch_size=4)
    ref2, out2 = score_together(placed, {"q": noisy}, tokens, torch.device("cpu"), batch_size=4)
    np.testing.assert_allclose(ref2.nll, ref1.nll, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(out2["q"].kl, out1["q"].kl, rtol=1e-4, atol=1e-9)
    assert out1["q"].kl.mean() > 1e-4 and (out2["q"].agree == out1["q"].agree).mean() > 0.999


def _suite(tmp_path, placement: str) -> str:
    (tmp_path / "eval.txt").write_text("some text " * 200)
    body = textwrap.dedent(f"""
        name: placed
        {placement}
        families:
          - name: micro
            manifest: {REPO / "checkpoints/micro/manifest.json"}
            select: {{size: [s64], schedule: [cosine], names: [s64-cosine-d008.000M]}}
        quantizers:
          - {{method: rtn, bits: 4, group_size: 8}}
        evals:
          - {{name: t, path: eval.txt, protocol: {{context_length: 64}}}}
    """)
    (tmp_path / "suite.yaml").write_text(body)
    return str(tmp_path / "suite.yaml")


def test_suite_placement_reaches_the_checkpoints_and_not_the_keys(tmp_path):
    from qsens.runner.plan import plan_cells

    plain = load_suite(_suite(tmp_path, ""))
    placed = load_suite(_suite(tmp_path, "placement: {device_map: auto, max_memory: {cpu: 2GiB}, "
                                         "offload_folder: off}"))
    (ck,) = placed.checkpoints
    assert ck.placement.from_pretrained_kwargs() == {"device_map": "auto", "max_memory": {"cpu": "2GiB"},
                                                     "offload_folder": str((tmp_path / "off").resolve())}
    assert [c.key for c in plan_cells(placed)] == [c.key for c in plan_cells(plain)]


@pytest.mark.parametrize("placement,what", [
    ("placement: {device_map: {model.layers.0: gpu7}}", "gpu7"),
    ("placement: {device_map: {model.layers.0: disk}}", "offload_folder"),
    ("placement: {device_map: auto, max_memory: {cpu: lots}}", "lots"),
    ("placement: {device_map: everywhere}", "placement.device_map"),
    ("placement: {device_map: auto, memory: 1}", "memory"),
])
def test_bad_placements_name_the_key(tmp_path, placement, what):
    with pytest.raises(SuiteError) as err:
        load_suite(_suite(tmp_path, placement))
    assert "placement" in str(err.value) and what in str(err.value)
