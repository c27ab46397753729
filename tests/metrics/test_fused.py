"""The fused compare step (`qsens.metrics.fused`) against float64 log-softmaxes (scipy), eager and compiled: KL
from an 8-bit-like model (logit noise 1e-4, KL ~ 1e-8) to a 2-bit-like one (noise 2), at Pythia's V and an odd V,
with row counts that do not divide the eager chunk."""

import numpy as np
import pytest
import torch
from scipy.special import log_softmax

from qsens.metrics import fused


def _logits(n: int, V: int, noise: float, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, V, generator=g) * 3
    return z, z + torch.randn(n, V, generator=g) * noise, torch.randint(0, V, (n,), generator=g)


def _float64(z: torch.Tensor, z_q: torch.Tensor, t: torch.Tensor):
    lp, lq = log_softmax(z.double().numpy(), -1), log_softmax(z_q.double().numpy(), -1)
    rows = np.arange(t.numel())
    return -lp[rows, t.numpy()], -lq[rows, t.numpy()], (np.exp(lp) * (lp - lq)).sum(-1)


@pytest.fixture(params=["eager", "compiled"])
def ks(request, monkeypatch):
    monkeypatch.setenv("QSENS_KL_COMPILE_MIN", "0" if request.param == "compiled" else "-1")
    got = fused.kernels(1.0)
    assert got.compiled == (request.param == "compiled")
    return got


@pytest.mark.parametrize("V,n", [(50_304, 13), (1_031, 300)])
@pytest.mark.parametrize("noise", [1e-4, 1e-2, 2.0])
def test_losses_and_kl_match_float64(ks, V, n, noise):
    z, z_q, t = _logits(n, V, noise, seed=int(noise * 1e4) + V)
    fp_nll64, q_nll64, kl64 = _float64(z, z_q, t)
    fp = fused.fp_side(z, ks)
    nll, kl, argmax = fused.compare(fp, z_q, t, ks)
    # per-token losses: float32 logits, so float32 rounding of the log-sum-exp (|lse| ~ 10) at most
    np.testing.assert_allclose(fp.nll(t).numpy(), fp_nll64, rtol=0, atol=2e-6)
    np.testing.assert_allclose(nll.numpy(), q_nll64, rtol=0, atol=2e-6)
    # the difference that Δloss is made of, far tighter: the fp log-sum-exp cancels
    np.testing.assert_allclose(nll.numpy() - fp.nll(t).numpy(), q_nll64 - fp_nll64, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(kl.numpy(), kl64, rtol=2e-6, atol=0)  # measured <= 5e-7 relative
    assert torch.equal(argmax, z_q.argmax(-1)) and torch.equal(fp.argmax, z.argmax(-1))


@pytest.mark.parametrize("shift", [0.5, 7.0, -5.0])
@pytest.mark.parametrize("noise", [1e-4, 1e-2])
def test_a_row_shifted_as_a_whole_keeps_its_small_kl(ks, shift, noise):
    """Every quantized logit of a row shifted by the same amount (softmax ignores it): KL and losses still match
    float64. Uncentred sums (see the module docstring) were 0.3 to 3.6e3 relative off here; centred, measured
    <= 4.3e-6 (shift 7 or -5, noise 1e-4: float32 rounding of z_q - z, ulp ~1e-6 against e ~ 1e-4), so rtol 1e-5."""
    z, z_q, t = _logits(13, 50_304, noise, seed=11)
    z_q += shift
    _, q_nll64, kl64 = _float64(z, z_q, t)
    nll, kl, _ = fused.compare(fused.fp_side(z, ks), z_q, t, ks)
    np.testing.assert_allclose(kl.numpy(), kl64, rtol=1e-5, atol=0)
    np.testing.assert_allclose(nll.numpy(), q_nll64, rtol=0, atol=2e-6)


def test_a_logit_far_above_fp_takes_the_float64_forms(ks):
    """expm1 of a 100-nat logit gap overflows float32; those rows fall back to the direct float64 forms."""
    z, z_q, t = _logits(5, 4_099, 1e-3, seed=7)
    z_q[2, 17] = z[2, 17] + 100.0
    _, q_nll64, kl64 = _float64(z, z_q, t)
    nll, kl, _ = fused.compare(fused.fp_side(z, ks), z_q, t, ks)
    assert np.isfinite(kl.numpy()).all()
    np.testing.assert_allclose(kl.numpy(), kl64, rtol=2e-6)
    np.testing.assert_allclose(nll.numpy(), q_nll64, rtol=0, atol=2e-6)


def test_the_reference_form_is_float64_log_softmax():
    z, z_q, t = _logits(4, 257, 0.5, seed=3)
    _, q_nll64, kl64 = _float64(z, z_q, t)
    nll, kl, argmax = fused.compare_reference(z, z_q, t)
    np.testing.assert_allclose(kl.numpy(), kl64, rtol=1e-12)
    np.testing.assert_allclose(nll.numpy(), q_nll64, rtol=1e-12)
    assert torch.equal(argmax, z_q.argmax(-1))



def test_the_compile_threshold_decides_only_until_the_kernels_exist(monkeypatch):
    """A sweep under the threshold runs eager until some sweep of the process has compiled the kernels, and the
    compiled ones after; a negative threshold forces eager whatever was compiled."""
    monkeypatch.setattr(fused, "_COMPILED", {})
    monkeypatch.delenv("QSENS_KL_COMPILE_MIN", raising=False)
    assert fused.kernels(fused.COMPILE_MIN / 10) is fused.EAGER
    big = fused.kernels(fused.COMPILE_MIN)
    assert big.compiled
    assert fused.kernels(1.0) is big
    monkeypatch.setenv("QSENS_KL_COMPILE_MIN", "-1")
    assert fused.kernels(fused.COMPILE_MIN) is fused.EAGER
    monkeypatch.setattr(fused, "_COMPILED", {"kernels": big, "failed": True})
    monkeypatch.delenv("QSENS_KL_COMPILE_MIN")
    assert fused.kernels(fused.COMPILE_MIN) is fused.EAGER
