"""A model spread over two "devices" (accelerate: CPU and disk offload) scores exactly as on one device, loaded
directly and from a suite's `placement`, fp and quantized models alike; bad placements are refused naming the key
and the value; placement is not part of any cell's key."""

import json
import textwrap

import numpy as np
import pytest
import torch

from qsens.families.checkpoint import Checkpoint
from qsens.families.loading import load_model
from qsens.families.placed import bytes_by_device, is_placed, onloaded, place_like
from qsens.families.placement import DEFAULT_SHARE, Placement, amount_bytes, device_key
from qsens.metrics.protocol import Protocol
from qsens.metrics.resources import model_bytes
from qsens.metrics.scoring import score_together
from qsens.metrics.windows import build_eval_tokens
from qsens.quantizers import rtn
from qsens.quantizers.base import QuantContext
from qsens.suites.load import SuiteError, load_suite
from qsens.testbed.standins import REPO

pytest.importorskip("accelerate")

MICRO = REPO / "checkpoints/micro/s64/cosine/s64-cosine-d008.000M"
# the micro model is Llama-shaped: its second block goes to disk (weights read back per forward), the rest on CPU
TWO_DEVICES = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk", "model.norm": "cpu",
               "model.rotary_emb": "cpu", "lm_head": "cpu"}
CPU = torch.device("cpu")


def _ckpt(placement=None, dtype="float32") -> Checkpoint:
    return Checkpoint("micro", "s64", str(MICRO), None, 1, 1, dtype=dtype, placement=placement)


def _tokens(max_tokens=1500):
    from transformers import AutoTokenizer

    text = (REPO / "README.md").read_text()[:8000]
    return build_eval_tokens(text, AutoTokenizer.from_pretrained(MICRO), Protocol(context_length=64,
                                                                                  max_tokens=max_tokens))


@pytest.mark.parametrize("device_map", [TWO_DEVICES, {"": "disk"}], ids=["cpu+disk", "all-on-disk"])
def test_a_two_device_map_scores_as_one_device(tmp_path, device_map):
    single = load_model(_ckpt(), CPU)
    fp = load_model(_ckpt(Placement(device_map=device_map, offload_folder=str(tmp_path))), CPU)
    assert is_placed(fp) and not is_placed(single)
    assert {p.device.type for p in fp.model.layers[1].parameters()} == {"meta"}  # really offloaded
    on = bytes_by_device(fp)
    assert sum(on.values()) == model_bytes(single)  # every weight counted once, where it lies
    assert on["disk"] == model_bytes(single.model.layers[1] if "" not in device_map else single)

    settings = rtn.Settings(bits=3, group_size=16)
    q_single = rtn.quantize(QuantContext(single, None, CPU, 0), settings).model
    with onloaded(fp):  # the method copies real weights where fp's lie on disk
        q_placed = rtn.quantize(QuantContext(fp, None, CPU, 0), settings).model
    assert {p.device.type for p in fp.model.layers[1].parameters()} == {"meta"}  # fp offloaded again
    q_placed = place_like(q_placed, fp, str(tmp_path))
    assert q_placed.hf_device_map == fp.hf_device_map
    assert {p.device.type for p in q_placed.model.layers[1].parameters()} == {"meta"}  # ids go to its main device

    tokens = _tokens()
    ref1, out1 = score_together(single, {"q": q_single}, tokens, CPU, batch_size=4)
    ref2, out2 = score_together(fp, {"q": q_placed}, tokens, CPU, batch_size=4)
    # the same kernels on the same inputs: equal to the last bit, not merely close
    np.testing.assert_array_equal(ref2.nll, ref1.nll)
    np.testing.assert_array_equal(out2["q"].nll, out1["q"].nll)
    np.testing.assert_array_equal(out2["q"].kl, out1["q"].kl)
    np.testing.assert_array_equal(out2["q"].agree, out1["q"].agree)
    assert out1["q"].kl.mean() > 1e-3  # 3-bit RTN really changed the model, so equality says something


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_model_scored_as_float64_of_its_own_logits(dtype):
    """A bf16/fp16 micro model, fp and RTN 4-bit: every loss and KL equals float64 computed from the very same
    half-precision logits (the model's own rounding is measured, the scoring adds none of its own)."""
    fp = load_model(_ckpt(dtype=dtype), CPU)
    assert next(fp.parameters()).dtype == getattr(torch, dtype)
    q = rtn.quantize(QuantContext(fp, None, CPU, 0), rtn.Settings(bits=4, group_size=16)).model
    tokens = _tokens(600)
    # one window per batch, as the reference below runs them: a half-precision matmul's rounding may depend on
    # how many rows it multiplies, and that is the model's arithmetic, not the scoring's
    ref, out = score_together(fp, {"q": q}, tokens, CPU, batch_size=1)
    nll_fp, nll_q, kl, half_err = [], [], [], []
    start = 0
    with torch.inference_mode():
        for inp, first, n in tokens.windows:
            zf, zq = (m(input_ids=inp[None]).logits[0, first:first + n] for m in (fp, q))
            lp, lq = torch.log_softmax(zf.double(), -1), torch.log_softmax(zq.double(), -1)
            t, start = tokens.targets[start:start + n], start + n
            nll_fp.append(-lp[torch.arange(n), t])
            nll_q.append(-lq[torch.arange(n), t])
            kl.append((lp.exp() * (lp - lq)).sum(-1))
            half_err.append((torch.log_softmax(zf, -1).double() - lp).abs().max())
    # losses from a float32 log-sum-exp: ~1e-7 of lse (~10 here) absolute, 500x below half precision's error
    np.testing.assert_allclose(ref.nll, torch.cat(nll_fp).numpy(), rtol=1e-6, atol=2e-6)
    np.testing.assert_allclose(out["q"].nll, torch.cat(nll_q).numpy(), rtol=1e-6, atol=2e-6)
    np.testing.assert_allclose(out["q"].kl, torch.cat(kl).numpy(), rtol=1e-4, atol=1e-9)
    assert max(half_err) > 1e-3  # a log-softmax in the model's dtype would be visibly off: the check can fail


def _suite(tmp_path, placement: str = "", quantizers: str = "{method: rtn, bits: [3, 8], group_size: 16}",
           checkpoint_placement: str = "") -> str:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "eval.txt").write_text((REPO / "README.md").read_text()[:12000])
    body = textwrap.dedent(f"""
        name: placed
        {placement}
        families:
          - name: micro
            manifest: {REPO / "checkpoints/micro/manifest.json"}
            select: {{size: [s64], schedule: [cosine], names: [s64-cosine-d008.000M]}}
          - name: micro-path
            n_params: 1
            checkpoints:
              - {{path: {MICRO}, tokens: 8000000 {checkpoint_placement}}}
        quantizers:
          - {quantizers}
          - {{method: noise, magnitude: 0.05}}
        evals:
          - {{name: t, path: eval.txt, protocol: {{context_length: 64, max_tokens: 2000}}}}
        bootstrap: {{samples: 100}}
    """)
    (tmp_path / "suite.yaml").write_text(body)
    return str(tmp_path / "suite.yaml")


def test_a_placed_suite_computes_the_single_device_numbers(tmp_path):
    """A suite's `device_map: auto` with a CPU budget of 80% of the micro model (accelerate then keeps the tied
    embedding and head on CPU and the blocks on disk); its cells (RTN 3/8-bit, noise) equal the unplaced
    suite's, and keep their keys."""
    from qsens.runner.loop import run_suite
    from qsens.runner.plan import plan_cells
    from qsens.store import ResultStore

    budget = int(0.8 * model_bytes(load_model(_ckpt(), CPU)))
    plain = load_suite(_suite(tmp_path / "a"))
    placed = load_suite(_suite(tmp_path / "b", f"placement: {{device_map: auto, max_memory: {{cpu: {budget}}}, "
                                               "offload_folder: offload}"))
    assert [c.key for c in plan_cells(placed)] == [c.key for c in plan_cells(plain)]
    run_suite(plain, tmp_path / "a/res", progress=False)
    run_suite(placed, tmp_path / "b/res", progress=False)
    rows = {}
    for name in ("a", "b"):
        cells = ResultStore(tmp_path / name / "res").cells()
        assert cells and all(c["status"] == "ok" for c in cells), [c["error"] for c in cells]
        rows[name] = {c["key"]: c for c in cells}
    assert rows["a"].keys() == rows["b"].keys() and len(rows["a"]) == 6
    for key, a in rows["a"].items():
        b = rows["b"][key]
        for field in ("fp_loss", "q_loss", "delta_loss", "kl_mean", "top1_agree"):
            assert b[field] == a[field], (field, a[field], b[field])
        where = json.loads(b["details_json"])["placement"]
        assert where["modules"]["disk"] >= 1 and where["modules"]["cpu"] >= 1 and where["bytes"]["cpu"] <= budget
        assert "placement" not in json.loads(a["details_json"])
    assert not list((tmp_path / "b/offload").glob("qsens-offload-*"))  # quantized copies' disk folders are removed
    resolved = json.loads((tmp_path / "b/res/suite.resolved.json").read_text())
    assert resolved["checkpoints"][0]["placement"]["max_memory"] == {"cpu": budget}


def test_placement_precedence_and_folder(tmp_path):
    suite = load_suite(_suite(tmp_path, "placement: {device_map: auto, max_memory: {cpu: 2GiB}, offload_folder: offload}",
                              checkpoint_placement=", placement: {device_map: sequential}"))
    by_family = {c.family: c.placement for c in suite.checkpoints}
    assert by_family["micro"].from_pretrained_kwargs() == {
        "device_map": "auto", "max_memory": {"cpu": 2 * 2**30}, "offload_folder": str((tmp_path / "offload").resolve())}
    assert by_family["micro-path"].device_map == "sequential"  # the checkpoint's own placement wins


def test_placement_values():
    assert amount_bytes("1.5GiB") == 3 * 2**29 and amount_bytes("500 MB") == 500 * 10**6 and amount_bytes(7) == 7
    assert [device_key(d) for d in ("0", "cuda:1", 2, "cpu", "disk")] == [0, 1, 2, "cpu", "disk"]
    # no max_memory: DEFAULT_SHARE of each device's free memory, so a quantized copy fits beside the fp model
    kw = Placement(device_map="balanced").from_pretrained_kwargs(free={0: 1000, 1: 2000, "cpu": 10_000})
    assert kw == {"device_map": "balanced", "max_memory": {0: 450, 1: 900, "cpu": 4500}} and DEFAULT_SHARE == 0.45
    kw = Placement(device_map={"a": "0", "b": "cuda:1", "c": "disk"}, offload_folder="/o").from_pretrained_kwargs()
    assert kw == {"device_map": {"a": 0, "b": 1, "c": "disk"}, "offload_folder": "/o"}


@pytest.mark.parametrize("placement,what", [
    ("placement: {device_map: {model.layers.0: gpu7}}", "gpu7"),
    ("placement: {device_map: {model.layers.0: disk}}", "offload_folder"),
    ("placement: {device_map: {}}", "at least one module"),
    ("placement: {device_map: auto, max_memory: {cpu: lots}}", "'lots'"),
    ("placement: {device_map: auto, max_memory: {cpu: 0}}", "positive"),
    ("placement: {device_map: auto, max_memory: {disk: 1GiB}}", "'disk'"),
    ("placement: {device_map: {lm_head: 0}, max_memory: {'0': 1GiB}}", "explicit device_map"),
    ("placement: {device_map: auto, max_memory: {0: 1GiB}}", "keys must be strings (got 0)"),  # YAML: quote '0'
    ("placement: {device_map: auto, max_memory: {'cuda:x': 1GiB}}", "'cuda:x'"),
    ("placement: {device_map: everywhere}", "everywhere"),
    ("placement: {device_map: auto, memory: 1}", "memory"),
])
def test_bad_placements_name_the_key_and_value(tmp_path, placement, what):
    with pytest.raises(SuiteError) as err:
        load_suite(_suite(tmp_path, placement))
    assert "placement" in str(err.value) and what in str(err.value), str(err.value)


def test_untested_methods_are_refused_on_a_placed_checkpoint(tmp_path):
    with pytest.raises(SuiteError) as err:
        load_suite(_suite(tmp_path, "placement: {device_map: auto}",
                          quantizers="{method: bnb, quant_type: nf4, blocksize: 64}"))
    assert "'bnb' is not supported on a placed checkpoint" in str(err.value) and "rtn, noise, cast" in str(err.value)


def test_a_placed_group_needs_room_on_every_device(monkeypatch):
    """One more quantized copy stays resident only while every device of the map has twice its share free (one for
    the copy, one for the next method's working copy); the first always does."""
    from qsens.families import placed
    from qsens.runner.checkpoint import LoadedCheckpoint

    state = object.__new__(LoadedCheckpoint)  # only what room_for_another reads
    state.placed, state.bytes_by_device = True, {"cuda:0": 100, "cpu": 300, "disk": 50}
    state.ckpt = _ckpt(Placement(device_map="auto", offload_folder="/scratch"))
    free = {"cuda:0": 201, "cpu": 601, "disk": 101}
    monkeypatch.setattr(placed, "free_bytes", lambda d, folder: free[d] if folder == "/scratch" else 0)
    assert state.room_for_another(0) and state.room_for_another(1)
    for device in free:
        monkeypatch.setitem(free, device, free[device] - 2)  # one device short is enough to say no
        assert state.room_for_another(0) and not state.room_for_another(1), device
        monkeypatch.setitem(free, device, free[device] + 2)
