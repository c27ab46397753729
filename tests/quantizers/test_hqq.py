"""HQQ through the `hqq` package: the weights qsens scores are exactly hqq's own Quantizer.quantize +
Quantizer.dequantize of the same weight (with HQQLinear's float16 metadata), bits are read from what is stored,
and shapes hqq cannot group are refused up front."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("hqq")

from hqq.core.quantize import Quantizer  # noqa: E402

from qsens.quantizers import hqq  # noqa: E402
from tiny_trained import heldout_loss  # noqa: E402


@pytest.fixture(scope="module")
def quantized(trained, fp_model):
    ctx = trained.context(fp_model)
    return {b: hqq.quantize(ctx, hqq.Settings(bits=b, group_size=32)) for b in (3, 4, 8)}


def _functional_hqq(w: torch.Tensor, bits: int, group_size: int) -> torch.Tensor:
    """hqq's functional API on one weight, as hqq_base_quant_config configures it (axis 1, optimized zero,
    zero rounded at 4 bits), with the metadata held in float16 as HQQLinear holds it."""
    w_q, meta = Quantizer.quantize(w.detach().clone(), nbits=bits, channel_wise=True, group_size=group_size,
                                   optimize=True, round_zero=bits == 4, axis=1, device="cpu")
    meta = {**meta, "compute_dtype": torch.float16, "scale": meta["scale"].half(), "zero": meta["zero"].half()}
    return Quantizer.dequantize(w_q, meta).float()


@pytest.mark.parametrize("bits", [3, 4, 8])
def test_scored_weights_are_hqqs_functional_round_trip(quantized, fp_model, bits):
    result = quantized[bits]
    assert len(result.layers_quantized) == 14  # 2 layers x (q, k, v, o, gate, up, down); head skipped
    for name in result.layers_quantized:
        ref = _functional_hqq(fp_model.get_submodule(name).weight, bits, 32)
        assert torch.equal(result.model.get_submodule(name).weight, ref), name


def test_effective_bits_are_what_is_stored(quantized):
    # 4 and 8 bits pack exactly (2 codes per byte, 1 per byte); float16 scale + float16 zero per group of 32.
    assert quantized[4].effective_bits == pytest.approx(4 + 32 / 32)
    assert quantized[8].effective_bits == pytest.approx(8 + 32 / 32)
    # 3 bits: 10 codes per int32 (3.2 bits), each layer's rows padded up to a multiple of 10 groups' worth.
    assert 3.2 + 1.0 <= quantized[3].effective_bits < 3.4 + 1.0


def test_more_bits_less_damage(quantized, trained, fp_loss):
    dl = {b: heldout_loss(r.model, trained.heldout) - fp_loss for b, r in quantized.items()}
    assert abs(dl[8]) < 2e-3 and dl[3] > dl[4] > dl[8]


def test_recorded_provenance(quantized):
    r = quantized[4]
    assert r.backend.startswith("hqq-") and r.details["library"]["hqq"]
    assert r.details["quant_config"] == {"nbits": 4, "group_size": 32, "axis": 1, "optimize": True,
                                         "round_zero": True, "compute_dtype": "float16"}


def test_group_size_must_divide_every_input_width(trained, fp_model):
    with pytest.raises(ValueError, match=r"group_size 128 does not divide .*q_proj \(in_features 64\)"):
        hqq.quantize(trained.context(fp_model), hqq.Settings(bits=4, group_size=128))


@pytest.mark.parametrize("kw", [dict(bits=7), dict(bits=4, group_size=12), dict(bits=4, nbits=4)])
def test_invalid_settings_fail_at_validation(kw):
    with pytest.raises(ValueError):
        hqq.Settings(**kw)
