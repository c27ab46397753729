"""torchao weight-only int8 / intx through `quantize_`: every Linear qsens quantizes computes exactly what
`quantize_` gives on a plain copy of that Linear, bits are read from the stored tensors, and shapes torchao
cannot group are refused up front."""

from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("torchao")

from qsens.quantizers import torchao as ao  # noqa: E402

SETTINGS = {
    "int8": ao.Settings(scheme="int8", bits=8, group_size=-1, symmetric=True, scale_dtype="float32"),
    "int4-g32-asym": ao.Settings(scheme="intx", bits=4, group_size=32, symmetric=False, scale_dtype="float16"),
    "int4-g32-sym": ao.Settings(scheme="intx", bits=4, group_size=32, symmetric=True, scale_dtype="float16"),
}


@pytest.fixture(scope="module")
def quantized(trained, fp_model):
    return {k: ao.quantize(trained.context(fp_model), s) for k, s in SETTINGS.items()}


@pytest.mark.parametrize("which", list(SETTINGS))
def test_each_layer_is_quantize_on_a_plain_linear(quantized, fp_model, which):
    from torchao.quantization import quantize_

    result = quantized[which]
    assert len(result.layers_quantized) == 14
    x = torch.randn(5, 192, generator=torch.Generator().manual_seed(1))
    for name in result.layers_quantized:
        plain = copy.deepcopy(fp_model.get_submodule(name))
        quantize_(torch.nn.Sequential(plain), ao.ao_config(SETTINGS[which]))
        ours = result.model.get_submodule(name)
        xi = x[:, : plain.in_features]
        with torch.no_grad():
            assert torch.equal(ours(xi), plain(xi)), name
            assert not torch.equal(ours(xi), fp_model.get_submodule(name)(xi)), name  # it did quantize


def test_effective_bits(quantized):
    # int8 per row, float32 scale: 8 + 32 / in_features averaged over the layers' weights (64 or 192 inputs)
    n64, n192 = 2 * (4 * 64 * 64 + 2 * 64 * 192), 2 * 64 * 192  # q,k,v,o,gate,up read 64; down reads 192
    assert quantized["int8"].effective_bits == pytest.approx(8 + 32 * (n64 / 64 + n192 / 192) / (n64 + n192))
    assert quantized["int4-g32-asym"].effective_bits == pytest.approx(4 + (16 + 8) / 32)  # fp16 scale, int8 zero
    assert quantized["int4-g32-sym"].effective_bits == pytest.approx(4 + 16 / 32)
    assert quantized["int4-g32-asym"].details["memory_bits_per_weight"] == pytest.approx(8 + (16 + 8) / 32)


def test_group_size_must_divide_every_input_width(trained, fp_model):
    with pytest.raises(ValueError, match=r"group_size 128 does not divide .*q_proj \(in_features 64\)"):
        ao.quantize(trained.context(fp_model), ao.Settings(bits=4, group_size=128))


@pytest.mark.parametrize("kw,match", [
    (dict(scheme="int8", bits=4), "bits must be 8"),
    (dict(scheme="int8", bits=8), "symmetric only"),
    (dict(bits=9), "less than or equal"),
    (dict(bits=4, group_size=0), "group_size"),
    (dict(bits=4, granularity="group"), "Extra inputs"),
])
def test_invalid_settings_fail_at_validation(kw, match):
    with pytest.raises(ValueError, match=match):
        ao.Settings(**kw)
