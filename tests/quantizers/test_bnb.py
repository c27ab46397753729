"""bitsandbytes NF4/FP4 on CPU: the layers qsens builds hold exactly what bitsandbytes' functional API produces,
NF4 agrees with a float64 NF4 written from the QLoRA definition, and settings are recorded as they ran."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

bnb_lib = pytest.importorskip("bitsandbytes")

import bitsandbytes.functional as F  # noqa: E402
from scipy.stats import norm  # noqa: E402

from qsens.quantizers import bnb  # noqa: E402
from tiny_trained import heldout_loss  # noqa: E402


def nf4_code_book() -> np.ndarray:
    """NF4 from its definition (Dettmers et al. 2023, QLoRA, Sec. 3 and bitsandbytes' `create_normal_map`):
    8 positive and 7 negative quantiles of N(0, 1) at evenly spaced probabilities between 1/2 and
    offset = 0.9677 (= 1/2 (1/(2*15) + 1/(2*16)) away from 1), an exact zero, scaled so the extremes are +-1."""
    offset = 0.9677083
    pos = norm.ppf(np.linspace(offset, 0.5, 9)[:-1])
    neg = -norm.ppf(np.linspace(offset, 0.5, 8)[:-1])
    values = np.sort(np.concatenate([pos, [0.0], neg]))
    return values / np.abs(values).max()


def nf4_dequantized64(w: np.ndarray, blocksize: int) -> tuple[np.ndarray, np.ndarray]:
    """Float64 NF4 round trip of a weight: absmax per `blocksize` consecutive row-major values, nearest code.
    Returns (dequantized, distance of each normalized value to its nearest decision midpoint)."""
    code = nf4_code_book()
    flat = w.astype(np.float64).reshape(-1)
    pad = (-flat.size) % blocksize
    blocks = np.concatenate([flat, np.zeros(pad)]).reshape(-1, blocksize)
    absmax = np.abs(blocks).max(axis=1, keepdims=True)
    x = blocks / np.where(absmax == 0, 1, absmax)
    idx = np.abs(x[..., None] - code).argmin(axis=-1)
    deq = (code[idx] * absmax).reshape(-1)[: flat.size].reshape(w.shape)
    mids = (code[1:] + code[:-1]) / 2
    margin = np.abs(x[..., None] - mids).min(axis=-1).reshape(-1)[: flat.size].reshape(w.shape)
    return deq, margin


def test_nf4_code_book_matches_bitsandbytes():
    np.testing.assert_allclose(F.get_4bit_type("nf4", device="cpu").numpy(), nf4_code_book(), atol=2e-7)


@pytest.fixture(scope="module")
def quantized(trained, fp_model):
    ctx = trained.context(fp_model)
    return {s.label(): (s, bnb.quantize(ctx, s)) for s in (
        bnb.Settings(quant_type="nf4", blocksize=64),
        bnb.Settings(quant_type="nf4", blocksize=64, double_quant=True),
        bnb.Settings(quant_type="fp4", blocksize=32),
    )}


def _layer_weights(result):
    """{layer: (Linear4bit, dequantized weight)}, read through bitsandbytes' own dequantize_4bit."""
    out = {}
    for name in result.layers_quantized:
        module = result.model.get_submodule(name)
        out[name] = (module, F.dequantize_4bit(module.weight.data, module.weight.quant_state))
    return out


def test_layers_match_functional_api(quantized, fp_model):
    """Each layer holds exactly dequantize_4bit(quantize_4bit(W)) with the requested settings."""
    fp = dict(fp_model.named_modules())
    for label, (s, result) in quantized.items():
        for name, (module, deq) in _layer_weights(result).items():
            q, state = F.quantize_4bit(fp[name].weight.data, blocksize=s.blocksize, compress_statistics=s.double_quant,
                                       quant_type=s.quant_type)
            assert torch.equal(deq, F.dequantize_4bit(q, state)), (label, name)
            assert isinstance(module, bnb_lib.nn.Linear4bit)


def test_nf4_matches_float64_definition(quantized, fp_model):
    _, result = quantized["bnb-nf4-b64-float32"]
    fp = dict(fp_model.named_modules())
    for name, (_, deq) in _layer_weights(result).items():
        w = fp[name].weight.detach().numpy()
        ref, margin = nf4_dequantized64(w, 64)
        clear = margin > 1e-6  # values within float32 rounding of a decision midpoint may go either way
        assert clear.mean() > 0.999
        np.testing.assert_allclose(deq.numpy()[clear], ref[clear], rtol=1e-6, atol=1e-8)


def test_forward_is_dequantized_weight_times_input(quantized):
    _, result = quantized["bnb-nf4-b64-float32"]
    name = result.layers_quantized[0]
    module, deq = _layer_weights(result)[name]
    x = torch.randn(5, module.in_features, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(module(x), x @ deq.T, rtol=1e-5, atol=1e-6)


def test_records_what_ran_and_effective_bits(quantized, fp_model):
    n_layers = sum(isinstance(m, torch.nn.Linear) and n != "lm_head" for n, m in fp_model.named_modules())
    for label, (s, result) in quantized.items():
        assert result.details["ran"] == [{"quant_type": s.quant_type, "blocksize": s.blocksize,
                                          "double_quant": s.double_quant, "compute_dtype": s.compute_dtype}]
        assert len(result.layers_quantized) == n_layers
        assert result.backend.startswith(f"bitsandbytes-{bnb_lib.__version__}")
    # 4-bit codes + one float32 absmax per block; double quantization: uint8 absmax + float32 absmax per 256 blocks
    assert quantized["bnb-nf4-b64-float32"][1].effective_bits == pytest.approx(4 + 32 / 64)
    assert quantized["bnb-fp4-b32-float32"][1].effective_bits == pytest.approx(4 + 32 / 32)
    dq = quantized["bnb-nf4-b64-dq-float32"][1].effective_bits
    assert 4 + 8 / 64 < dq < 4 + 8 / 64 + 0.01


def test_nf4_costs_little_and_double_quant_changes_little(quantized, trained, fp_loss):
    nf4 = heldout_loss(quantized["bnb-nf4-b64-float32"][1].model, trained.heldout) - fp_loss
    nf4_dq = heldout_loss(quantized["bnb-nf4-b64-dq-float32"][1].model, trained.heldout) - fp_loss
    assert 0 < nf4 < 0.1
    assert nf4_dq == pytest.approx(nf4, abs=0.01)


def test_preserves_global_rng(trained, fp_model):
    before = random.getstate(), np.random.get_state()[1].copy(), torch.random.get_rng_state().clone()
    bnb.quantize(trained.context(fp_model), bnb.Settings(quant_type="fp4"))
    assert random.getstate() == before[0] and np.array_equal(np.random.get_state()[1], before[1])
    assert torch.equal(torch.random.get_rng_state(), before[2])


@pytest.mark.parametrize("kw,where", [
    (dict(bits=3, quant_type="nf4"), "bits"),
    (dict(bits=8, quant_type="fp4"), "bits"),
    (dict(quant_type="int4"), "quant_type"),
    (dict(blocksize=48), "blocksize"),
    (dict(compute_dtype="float64"), "compute_dtype"),
])
def test_invalid_settings_fail_at_validation(kw, where):
    with pytest.raises(ValueError, match=where):
        bnb.Settings(**kw)
