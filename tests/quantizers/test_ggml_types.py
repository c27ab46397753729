"""GGUF types through the gguf package: the weights scored are the package's dequantization of the bytes it
produced, Q8_0/Q4_0 agree with a float64 re-derivation from llama.cpp's block formulas (ggml-quants.c
`quantize_row_q8_0_ref`, `quantize_row_q4_0_ref`), storage bits are those of the block structs, shapes the blocks
do not fit are refused up front (or stored as F16, as llama-quantize does). The fp16/bf16 cast floor: test_cast.py."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

gguf = pytest.importorskip("gguf")

from qsens.quantizers import ggml_types  # noqa: E402
from tiny_trained import heldout_loss  # noqa: E402

# Bytes per block of 32 weights, from ggml-common.h: block_q4_0 {ggml_half d; uint8 qs[16]}, q4_1 {d, m; qs[16]},
# q5_0 {d; qh[4]; qs[16]}, q5_1 {d, m; qh[4]; qs[16]}, q8_0 {d; int8 qs[32]}, mxfp4 {uint8 e; qs[16]}.
BLOCK_BYTES = {"Q4_0": 18, "Q4_1": 20, "Q5_0": 22, "Q5_1": 24, "Q8_0": 34, "MXFP4": 17}


@pytest.fixture(scope="module")
def results(trained, fp_model):
    ctx = trained.context(fp_model)
    return {t: ggml_types.quantize(ctx, ggml_types.Settings(type=t)) for t in BLOCK_BYTES}


@pytest.mark.parametrize("qtype", list(BLOCK_BYTES))
def test_weights_are_the_packages_dequantization_of_its_bytes(results, fp_model, qtype):
    result = results[qtype]
    kind = gguf.GGMLQuantizationType[qtype]
    for name in result.layers_quantized:
        w = fp_model.get_submodule(name).weight.detach().numpy()
        raw = gguf.quants.quantize(w, kind)
        assert raw.shape == (w.shape[0], w.shape[1] // 32 * BLOCK_BYTES[qtype])
        expected = gguf.quants.dequantize(raw, kind)
        assert np.array_equal(result.model.get_submodule(name).weight.detach().numpy(), expected), name
    assert result.effective_bits == pytest.approx(8 * BLOCK_BYTES[qtype] / 32)
    assert "lm_head" not in result.layers_quantized and result.backend.startswith("gguf-0.19")
    assert result.details["implementation"] == "gguf.quants (numpy)"


def _fp16(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float16).astype(np.float64)


def q8_0_reference(w: np.ndarray) -> np.ndarray:
    """llama.cpp Q8_0: d = amax / 127 (stored float16), q = round-half-away(x / d) in int8; x' = d_fp16 q."""
    blocks = w.astype(np.float64).reshape(-1, 32)
    d = np.abs(blocks).max(axis=1, keepdims=True) / 127
    q = np.where(d > 0, np.sign(blocks) * np.floor(np.abs(blocks) / np.where(d > 0, d, 1) + 0.5), 0)
    return (_fp16(d) * q).reshape(w.shape)


def q4_0_reference(w: np.ndarray) -> np.ndarray:
    """llama.cpp Q4_0: m = the signed value of largest magnitude, d = m / -8 (float16), q = min(15, trunc(x / d
    + 8.5)); x' = d_fp16 (q - 8)."""
    blocks = w.astype(np.float64).reshape(-1, 32)
    m = np.take_along_axis(blocks, np.abs(blocks).argmax(axis=1)[:, None], axis=1)
    d = m / -8
    q = np.clip(np.trunc(np.where(d != 0, blocks / np.where(d != 0, d, 1), 0) + 8.5), 0, 15)
    return (_fp16(d) * (q - 8)).reshape(w.shape)


@pytest.mark.parametrize("qtype,reference", [("Q8_0", q8_0_reference), ("Q4_0", q4_0_reference)])
def test_q8_0_and_q4_0_match_a_float64_rederivation(results, fp_model, qtype, reference):
    """Exact but for codes whose x / d lies within float32 rounding of a rounding boundary (there the float32
    reciprocal-multiply of ggml and this float64 division may round differently, by one code step)."""
    result, n_weights, n_off = results[qtype], 0, 0
    for name in result.layers_quantized:
        w = fp_model.get_submodule(name).weight.detach().numpy()
        got = result.model.get_submodule(name).weight.detach().numpy().astype(np.float64)
        ref = reference(w)
        step = np.repeat(np.abs(_fp16(np.abs(w.reshape(-1, 32)).max(1) / (127 if qtype == "Q8_0" else 8))), 32)
        diff = np.abs(got - ref).reshape(-1)
        assert (diff <= step * (1 + 1e-3) + 1e-12).all(), name  # never more than one code step
        n_weights, n_off = n_weights + diff.size, n_off + int((diff > 0).sum())
    assert n_off <= 1e-3 * n_weights, (n_off, n_weights)


def test_more_bits_cost_less_loss(results, trained, fp_loss):
    dl = {t: heldout_loss(results[t].model, trained.heldout) - fp_loss for t in ("Q4_0", "Q5_0", "Q8_0")}
    assert abs(dl["Q8_0"]) < dl["Q5_0"] < dl["Q4_0"], dl


def test_rows_the_blocks_do_not_fit_are_refused_by_name_or_stored_as_f16(trained, fp_model):
    ctx = trained.context(fp_model)
    narrow = torch.nn.Sequential(torch.nn.Linear(40, 8), torch.nn.Linear(8 * 4, 4))
    narrow_ctx = type(ctx)(narrow, None, torch.device("cpu"), 0)
    with pytest.raises(ValueError, match=r"0 \(row length 40\)") as err:
        ggml_types.quantize(narrow_ctx, ggml_types.Settings(type="Q4_0", skip=()))
    assert "1 (row length" not in str(err.value)
    result = ggml_types.quantize(narrow_ctx, ggml_types.Settings(type="Q4_0", skip=(), incompatible="f16"))
    w0 = narrow[0].weight.detach().numpy()
    assert np.array_equal(result.model[0].weight.detach().numpy(), w0.astype(np.float16).astype(np.float32))
    assert result.details["f16_fallback"] == ["0"]
    assert result.effective_bits == pytest.approx((40 * 8 * 16 + 4 * 18 * 8) / (40 * 8 + 32 * 4))


@pytest.mark.parametrize("kw,match", [
    (dict(type="Q4_K"), "dequantization only"),
    (dict(type="Q6_K"), "prequantized"),
    (dict(type="Q4_0", bits=8), "contradicts"),
    (dict(type="Q3_0"), "type"),
    (dict(type="Q8_0", group_size=32), "group_size"),
])
def test_bad_settings_are_refused(kw, match):
    with pytest.raises(ValidationError, match=match):
        ggml_types.Settings(**kw)


def test_settings_record_the_nominal_bits_and_block():
    s = ggml_types.Settings(type="Q5_1")
    assert (s.bits, s.group_size_value(), s.label()) == (5, 32, "gguf-q5_1")


def _suite(tmp_path, quantizer: str):
    from qsens.suites.load import load_suite

    repo = Path(__file__).resolve().parents[2]
    path = tmp_path / "suite.yaml"
    path.write_text(textwrap.dedent(f"""\
        name: gguf-entry
        device: cpu
        families:
          - name: h32
            n_params: 1
            checkpoints: [{{name: c, path: {repo}/checkpoints/gutenberg/h32/s0/wsd-f0.4/h32-s0-wsd-f0.4-d033.554M, tokens: 1}}]
        quantizers:
          - {quantizer}
        evals:
          - {{name: e, path: {repo}/tests/fixtures/llamacpp/eval.txt, preset: qsens, protocol: {{context_length: 32}}}}
        """))
    return load_suite(path)


def test_a_suite_entry_sweeps_types_with_a_skip_list(tmp_path):
    """Through the suite loader's strict JSON validation (a `skip` list once failed there) and its sweep."""
    suite = _suite(tmp_path, "{method: gguf, type: [Q4_0, Q8_0], skip: [lm_head, embed_out], incompatible: f16}")
    assert [(q.type, q.bits, q.skip) for q in suite.quantizers] == [("Q4_0", 4, ("lm_head", "embed_out")),
                                                                  ("Q8_0", 8, ("lm_head", "embed_out"))]


def test_a_k_quant_in_a_suite_is_refused_saying_why_and_what_to_do(tmp_path):
    from qsens.suites.load import SuiteError

    with pytest.raises(SuiteError) as err:
        _suite(tmp_path, "{method: gguf, type: [Q4_0, Q4_K]}")
    message = str(err.value)
    assert "quantizers[0]" in message and "Q4_K" in message
    assert "dequantization only" in message and "llama-quantize" in message and "prequantized" in message


def test_the_shipped_gguf_suite_plans_every_type_the_floor_and_llamacpps_files():
    from qsens.runner.plan import plan_cells
    from qsens.suites.load import load_suite

    cells = plan_cells(load_suite(Path(__file__).resolve().parents[2] / "suites/gguf.yaml"))
    labels = sorted({c.settings.label() for c in cells})
    assert labels == sorted([*(f"gguf-{t.lower()}-f16fb" for t in ggml_types.TYPE_BITS), "cast-float16",
                             "cast-bfloat16", *(f"pre-gguf-model-{t}.gguf@h32-s0-wsd-f0.4-d033.554M"
                                                for t in ("Q8_0", "Q4_0"))])
    assert len(cells) == len(labels) * 2  # one checkpoint, two evals (llama.cpp's chunking and qsens')
