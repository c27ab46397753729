"""The fast training model against its references: HF LlamaForCausalLM (logits, loss curve) and float64 maths."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from qsens.testbed.fastllama import FastLlama, linear_cross_entropy
from qsens.testbed.spec import load_ladder_spec
from qsens.testbed.trainer import (DataOrder, as_hf, build_training_model, load_state, lr_at, make_optimizer,
                                   save_state, train_steps)

from qsens.metrics.text import read_text

from tests.conftest import REPO, write_tiny_spec

FAST = {"threads: 1": "threads: 1\ntrainer: fast"}


def _spec(tmp_path, fast: bool = True):
    return load_ladder_spec(write_tiny_spec(tmp_path, **(FAST if fast else {})))


def _data(spec, seed=3):
    """Bytes of a novel as token ids (< 256 of the 300-token vocabulary): text a model learns within a few steps."""
    text = read_text(REPO / "data/novels/Camilla.txt.gz")[seed * 20_000 : seed * 20_000 + 80_000]
    return DataOrder(np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64), spec)


def test_linear_cross_entropy_equals_the_float64_loss_and_gradients():
    """Chunked (3 chunks, the last one short), the fused function gives the float64 loss and both gradients."""
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(70, 16, generator=g)
    weight = torch.randn(50, 16, generator=g) * 0.5
    targets = torch.randint(0, 50, (70,), generator=g)
    h64, w64 = hidden.double().requires_grad_(), weight.double().requires_grad_()
    ref = F.cross_entropy(h64 @ w64.t(), targets)
    (ref * 3.0).backward()
    h32, w32 = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    loss = linear_cross_entropy(h32, w32, targets, chunk_rows=32)
    (loss * 3.0).backward()  # an upstream gradient other than 1 scales both
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)
    torch.testing.assert_close(h32.grad.double(), h64.grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(w32.grad.double(), w64.grad, rtol=1e-5, atol=1e-7)


def test_a_trained_fast_model_saves_as_an_hf_llama_with_the_same_logits(tmp_path):
    from transformers import AutoModelForCausalLM

    spec = _spec(tmp_path)
    model = build_training_model(spec.sizes[1], spec, 300, 0, seed=0)
    assert isinstance(model, FastLlama)
    opt = make_optimizer(model, spec)
    train_steps(model, opt, _data(spec), range(0, 5), lambda s: 1e-2, tmp_path / "s.pt", lambda m: None, 1.0)
    as_hf(model).save_pretrained(tmp_path / "ck", safe_serialization=True)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "ck", dtype=torch.float32).eval()
    ids = _data(spec, seed=9).batch(0)[:, :-1]
    with torch.no_grad():
        want = loaded(input_ids=ids).logits
        got = model.logits(ids)
    assert want.abs().max() > 1.0  # trained away from the near-zero logits of the initialisation
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()  # still tied


def test_the_fast_trainer_follows_the_hf_trainers_loss_curve_from_the_same_seed(tmp_path):
    """Same initial weights (copied from HF's init), same batches: per-step losses equal to rounding."""
    curves = {}
    for fast in (False, True):
        spec = _spec(tmp_path / str(fast), fast) if (tmp_path / str(fast)).mkdir() is None else None
        model = build_training_model(spec.sizes[1], spec, 300, 0, seed=4)
        opt = make_optimizer(model, spec)
        data, lr = _data(spec), (lambda s: 3e-3 * min(1.0, (s + 1) / 8))  # the gutenberg peak lr, warmed up
        curves[fast] = [train_steps(model, opt, data, range(s, s + 1), lr, tmp_path / "x.pt", lambda m: None, 1.0)[0]
                        for s in range(30)]
    hf, fast = np.array(curves[False]), np.array(curves[True])
    assert hf[-1] < hf[0] - 0.5  # it learned: the comparison is not of two flat curves
    assert np.max(np.abs(fast - hf)) < 2e-4, np.abs(fast - hf)


def test_a_resumed_fast_run_is_bit_identical_and_a_state_from_another_trainer_is_refused(tmp_path):
    spec = _spec(tmp_path)
    data, lr = _data(spec), (lambda s: lr_at(s, 12, spec, "cosine"))

    def fresh():
        model = build_training_model(spec.sizes[0], spec, 300, 0, seed=1)
        return model, make_optimizer(model, spec)

    whole, whole_opt = fresh()
    train_steps(whole, whole_opt, data, range(0, 12), lr, tmp_path / "a.pt", lambda m: None, 1.0)
    first, first_opt = fresh()
    train_steps(first, first_opt, data, range(0, 5), lr, tmp_path / "b.pt", lambda m: None, 1.0)
    save_state(tmp_path / "b.pt", first, first_opt, 5)
    resumed, resumed_opt = fresh()
    start = load_state(tmp_path / "b.pt", resumed, resumed_opt)
    train_steps(resumed, resumed_opt, data, range(start, 12), lr, tmp_path / "b.pt", lambda m: None, 1.0)
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    hf_spec = _spec(tmp_path / "hf", fast=False) if (tmp_path / "hf").mkdir() is None else None
    hf = build_training_model(hf_spec.sizes[0], hf_spec, 300, 0, seed=1)
    with pytest.raises(ValueError, match=r"b.pt: this run was started with \{'trainer': 'fast'.*'trainer': 'hf'"):
        load_state(tmp_path / "b.pt", hf, make_optimizer(hf, hf_spec))
