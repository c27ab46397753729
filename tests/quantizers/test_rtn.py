"""RTN against an independent float64 implementation written from the definition, not from rtn_reference.py.

float64 and float32 can round a value that sits within float32 rounding of a half-step (w/scale = k + 1/2)
to different neighbours, so codes are compared exactly everywhere except at such near-ties, where the two
dequantized values must still be adjacent grid points. Exact ties (constructed so that float32 represents
them exactly) must round half to even in both.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qsens.quantizers import rtn
from qsens.quantizers.rtn_reference import rtn_dequantize, rtn_fake_quantize, rtn_quantize
from tiny_trained import heldout_loss

NEAR_TIE = 1e-4  # |frac(w/scale) - 1/2| below this counts as a near-tie (float32 relative error ~6e-8 per op)


def rtn64(w: np.ndarray, bits: int, group_size: int, symmetric: bool):
    """Float64 RTN from the definition: (codes, dequantized, w/scale before rounding, zero point before rounding)."""
    rows, cols = w.shape
    gs = cols if group_size == -1 else group_size
    codes = np.zeros((rows, cols), np.int64)
    deq = np.zeros((rows, cols), np.float64)
    pre = np.zeros((rows, cols), np.float64)
    zpre = np.zeros((rows, cols), np.float64)
    maxq = 2**bits - 1
    for r in range(rows):
        for g0 in range(0, cols, gs):
            g = w[r, g0 : g0 + gs].astype(np.float64)
            if symmetric:
                qmax = 2 ** (bits - 1) - 1
                amax = np.abs(g).max()
                scale = (amax if amax > 0 else qmax) / qmax
                zero = zero_unrounded = 2 ** (bits - 1)
                x = g / scale
                q = np.clip(np.round(x), -qmax, qmax) + zero
            else:
                lo, hi = min(g.min(), 0.0), max(g.max(), 0.0)
                if lo == hi:
                    lo, hi = -1.0, 1.0
                scale = (hi - lo) / maxq
                zero_unrounded = -lo / scale
                zero = np.round(zero_unrounded)
                x = g / scale
                q = np.clip(np.round(x) + zero, 0, maxq)
            codes[r, g0 : g0 + gs] = q
            deq[r, g0 : g0 + gs] = scale * (q - zero)
            pre[r, g0 : g0 + gs] = x
            zpre[r, g0 : g0 + gs] = zero_unrounded
    return codes, deq, pre, zpre


def near_tie(x: np.ndarray) -> np.ndarray:
    return np.abs(np.abs(x - np.floor(x)) - 0.5) < NEAR_TIE


def assert_matches_float64(w: torch.Tensor, bits: int, group_size: int, symmetric: bool) -> None:
    qw = rtn_quantize(w, bits, group_size, symmetric)
    ours_codes = qw.codes.numpy().astype(np.int64)
    ours_deq = rtn_dequantize(qw).numpy().astype(np.float64)
    codes, deq, pre, zpre = rtn64(w.numpy(), bits, group_size, symmetric)
    # A near-tie zero point (e.g. an all-zero group: -lo/scale = 7.5 at 4 bits) shifts codes and zero together,
    # leaving the dequantized value unchanged; a near-tie w/scale may round either way.
    exact = ~near_tie(pre)
    np.testing.assert_allclose(ours_deq[exact], deq[exact], rtol=1e-6, atol=1e-7)
    same_zero = exact & ~near_tie(zpre)
    np.testing.assert_array_equal(ours_codes[same_zero], codes[same_zero])
    assert (np.abs(ours_codes - codes)[~same_zero] <= 1).all()


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("shape,group_size", [((16, 64), 32), ((7, 45), 32), ((5, 33), 16), ((9, 17), -1), ((3, 100), 7)])
def test_rtn_reference_matches_float64(bits, symmetric, shape, group_size):
    gen = torch.Generator().manual_seed(bits * 100 + shape[1])
    w = torch.randn(shape, generator=gen) * 0.05
    w[0, :3] += 0.4  # an outlier in the first group
    assert_matches_float64(w, bits, group_size, symmetric)


@pytest.mark.parametrize("symmetric", [True, False])
def test_constant_and_zero_groups(symmetric):
    w = torch.zeros(4, 64)
    w[1] = 0.3  # constant positive row
    w[2] = -0.7  # constant negative row
    w[3, 32:] = 1e-3  # second group constant, first group all zero
    assert_matches_float64(w, 4, 32, symmetric)
    deq = rtn_fake_quantize(w, 4, 32, symmetric)
    assert torch.equal(deq[0], torch.zeros(64)), "an all-zero group must stay exactly zero"
    # A constant group is representable: its value is the range end (asym) or the absmax (sym) on the grid.
    torch.testing.assert_close(deq[1], w[1])
    torch.testing.assert_close(deq[2], w[2])


def test_exact_ties_round_half_to_even():
    # 4-bit symmetric, amax = 7/8 -> scale = 1/8 exactly; w = (k + 1/2)/8 are exact float32 ties.
    k = torch.arange(-7, 7, dtype=torch.float32)
    w = torch.cat([torch.tensor([7 / 8]), (k + 0.5) / 8]).reshape(1, -1)
    qw = rtn_quantize(w, 4, -1, True)
    expected = np.clip(np.round(w.numpy().astype(np.float64) * 8), -7, 7) + 8  # numpy rounds half to even
    np.testing.assert_array_equal(qw.codes.numpy(), expected)
    assert qw.codes[0, 1 + 7].item() == 8 and qw.codes[0, 1 + 8].item() == 10  # 0.5 -> 0, 1.5 -> 2


def test_model_rtn_w4_sym_g32_agrees_with_float64(trained, fp_model, fp_loss):
    """The issue's cross-check: RTN at 4-bit symmetric group 32, model level, against the float64 definition."""
    result = rtn.quantize(trained.context(fp_model), rtn.Settings(bits=4, group_size=32, symmetric=True, backend="torch"))
    fp_layers = dict(fp_model.named_modules())
    assert result.layers_quantized and all(not n.startswith("lm_head") for n in result.layers_quantized)
    for name in result.layers_quantized:
        w = fp_layers[name].weight.detach()
        _, deq, pre, _ = rtn64(w.numpy(), 4, 32, True)
        got = result.model.get_submodule(name).weight.detach().numpy().astype(np.float64)
        exact = ~near_tie(pre)
        np.testing.assert_allclose(got[exact], deq[exact], rtol=1e-6, atol=1e-7)
    assert result.effective_bits == pytest.approx(4 + 16 / 32)
    assert heldout_loss(result.model, trained.heldout) > fp_loss  # a trained model loses something at 4 bits


def test_fallback_policy_records_what_ran(trained, fp_model, monkeypatch):
    """One policy (rtn.py): auto runs the kernel where it can and records the layers that ran the reference;
    a forced 'cuda' refuses, naming the layer, instead of silently running the reference on it."""
    from qsens.quantizers import rtn_kernel

    # Pretend the model is on a CUDA device with a built kernel, and that the kernel refuses the MLP layers
    # (as it would a dtype it does not support); the "kernel" itself is the reference here.
    monkeypatch.setattr(rtn, "resolve_backend", lambda requested, device: "torch" if requested == "torch" else "cuda")
    refused = lambda w: "dtype torch.float64 is not supported" if w.shape[0] != w.shape[1] else None
    monkeypatch.setattr(rtn_kernel, "kernel_unavailable_reason", refused)
    monkeypatch.setattr(rtn_kernel, "rtn_fake_quantize_kernel", rtn_fake_quantize)
    ctx = trained.context(fp_model)

    result = rtn.quantize(ctx, rtn.Settings(bits=4, group_size=32, backend="auto"))
    modules = dict(fp_model.named_modules())
    n_refused = sum(refused(modules[n].weight) is not None for n in result.layers_quantized)
    assert 0 < n_refused < len(result.layers_quantized)
    assert result.backend == (f"cuda+torch ({n_refused} of {len(result.layers_quantized)} layers on torch: "
                              "dtype torch.float64 is not supported)")
    reference = rtn.quantize(ctx, rtn.Settings(bits=4, group_size=32, backend="torch"))
    assert reference.backend == "torch"
    for name in result.layers_quantized:
        assert torch.equal(result.model.get_submodule(name).weight, reference.model.get_submodule(name).weight)

    with pytest.raises(RuntimeError, match=r"forced but the kernel cannot take layer .*mlp"):
        rtn.quantize(ctx, rtn.Settings(bits=4, group_size=32, backend="cuda"))
