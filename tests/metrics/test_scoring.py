"""Scoring at a real vocabulary (V = 50,304): KL against float64, and memory that does not grow with T."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy.special import log_softmax

from qsens.metrics.resources import peak_rss_bytes, reset_peak_rss
from qsens.metrics.scoring import kl_divergence, score_quantized, score_together
from qsens.metrics.windows import build_eval_tokens
from qsens.metrics.protocol import Protocol

from tests.metrics.test_windows import CharTokenizer

V = 50_304  # Pythia's padded vocabulary
ALPHABET = list("abcdefgh ijk\n")


class TableModel(torch.nn.Module):
    """logits[b, j] = table[input_ids[b, j]] (a bigram model); the table is float32 [128, V]."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = table

    def forward(self, input_ids):
        return SimpleNamespace(logits=self.table[input_ids])


def _tables(seed: int, noise: float) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    fp = torch.randn(128, V, generator=g) * 3
    return fp, fp + torch.randn(128, V, generator=g) * noise


def _tokens(n_chars: int, seed: int = 0):
    text = "".join(np.random.default_rng(seed).choice(ALPHABET, size=n_chars))
    return text, build_eval_tokens(text, CharTokenizer(), Protocol(context_length=64, stride=64))


@pytest.mark.parametrize("noise,compiled", [(1e-3, False), (1.0, False), (1e-3, True)])
def test_kl_matches_float64_at_real_vocab(noise, compiled, monkeypatch):
    """KL ~1e-6 (an 8-bit model) to ~1 (2-bit), by the eager kernel and by the torch.compile'd one."""
    monkeypatch.setenv("QSENS_KL_COMPILE_MIN", "0" if compiled else "-1")
    fp, q = _tables(1, noise)
    text, tokens = _tokens(500)
    ref, out = score_together(TableModel(fp), {"q": TableModel(q)}, tokens, torch.device("cpu"), batch_size=3)
    ids = np.array([ord(c) for c in text])
    t = np.array([i for i in range(1, len(ids)) if i % 64 != 0])  # non-overlapping windows of 64
    lp = log_softmax(fp.double().numpy()[ids[t - 1]], axis=-1)
    lq = log_softmax(q.double().numpy()[ids[t - 1]], axis=-1)
    kl64 = (np.exp(lp) * (lp - lq)).sum(-1)
    kl = out["q"].kl
    assert kl.shape == kl64.shape
    assert kl.mean() == pytest.approx(kl64.mean(), rel=1e-4)
    np.testing.assert_allclose(kl, kl64, rtol=1e-3, atol=1e-9)
    np.testing.assert_allclose(ref.nll, -lp[np.arange(t.size), ids[t]], rtol=1e-6)
    np.testing.assert_allclose(out["q"].nll, -lq[np.arange(t.size), ids[t]], rtol=1e-6)
    # the one-model entry point gives the same numbers
    one = score_quantized(TableModel(q), tokens, ref, torch.device("cpu"), batch_size=5)
    np.testing.assert_allclose(one.kl, kl, rtol=1e-9, atol=1e-15)
    if compiled:
        from qsens.metrics import fused

        assert "kernels" in fused._COMPILED and not fused._COMPILED.get("failed")  # the compiled kernels did run


def test_a_failing_quantized_model_does_not_stop_the_others():
    fp, q = _tables(2, 0.1)

    class Broken(torch.nn.Module):
        def forward(self, input_ids):
            raise RuntimeError("boom")

    _, tokens = _tokens(400)
    _, out = score_together(TableModel(fp), {"ok": TableModel(q), "bad": Broken()}, tokens, torch.device("cpu"))
    assert isinstance(out["bad"], RuntimeError) and out["ok"].kl.shape == (tokens.n_targets,)


def _peak_for(n_chars: int, fp: torch.Tensor, q: torch.Tensor) -> int:
    _, tokens = _tokens(n_chars, seed=3)
    reset_peak_rss()
    base = peak_rss_bytes()
    score_together(TableModel(fp), {"a": TableModel(q)}, tokens, torch.device("cpu"))
    return peak_rss_bytes() - base


def test_peak_memory_does_not_grow_with_the_eval_length():
    """4x the tokens (fp logits [T, V] float32 would be 0.12 vs 0.48 GB): the peak above baseline stays put."""
    if not reset_peak_rss():
        pytest.skip("needs Linux /proc/self/clear_refs to reset the peak RSS")
    fp, q = _tables(4, 0.1)
    small, large = _peak_for(600, fp, q), _peak_for(2_400, fp, q)
    stored_growth = (2_400 - 600) * V * 4  # what keeping fp logits would add
    assert large - small < 0.05 * stored_growth, (small, large)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_models_are_scored_in_float32_and_float64(dtype):
    """A bf16/fp16 model's logits are upcast before any softmax: losses and KL equal float64 computed from the
    very same half-precision logits (a half-precision log-softmax would be off by ~1e-2)."""
    g = torch.Generator().manual_seed(5)
    vocab = 4096
    fp = (torch.randn(128, vocab, generator=g) * 3).to(dtype)
    q = (fp.float() + torch.randn(128, vocab, generator=g) * 0.05).to(dtype)
    text, tokens = _tokens(300)
    ref, out = score_together(TableModel(fp), {"q": TableModel(q)}, tokens, torch.device("cpu"), batch_size=4)
    ids = np.array([ord(c) for c in text])
    t = np.array([i for i in range(1, len(ids)) if i % 64 != 0])
    lp = log_softmax(fp.double().numpy()[ids[t - 1]], axis=-1)
    lq = log_softmax(q.double().numpy()[ids[t - 1]], axis=-1)
    np.testing.assert_allclose(ref.nll, -lp[np.arange(t.size), ids[t]], rtol=1e-6)
    np.testing.assert_allclose(out["q"].nll, -lq[np.arange(t.size), ids[t]], rtol=1e-6)
    np.testing.assert_allclose(out["q"].kl, (np.exp(lp) * (lp - lq)).sum(-1), rtol=1e-4, atol=1e-9)
    lp, lq = log_softmax(fp.double().numpy(), axis=-1), log_softmax(q.double().numpy(), axis=-1)
    np.testing.assert_allclose(kl_divergence(fp, q).numpy(), (np.exp(lp) * (lp - lq)).sum(-1), rtol=1e-4, atol=1e-9)
