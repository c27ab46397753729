"""Gaussian weight-noise probe: the noise has the requested scale, is reproducible per seed_index, independent
across seeds and tensors, leaves the global RNG alone, and costs more loss as its magnitude grows."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from qsens.quantizers import noise
from tiny_trained import heldout_loss


def perturb(trained, fp_model, **kw):
    return noise.quantize(trained.context(fp_model), noise.Settings(**kw))


def test_noise_std_is_magnitude_times_tensor_std(trained, fp_model):
    result = perturb(trained, fp_model, magnitude=0.2)
    fp = dict(fp_model.named_modules())
    for name in result.layers_quantized:
        w = fp[name].weight.detach()
        delta = result.model.get_submodule(name).weight.detach() - w
        # 4096+ draws per tensor: the sample std is within 5% of the target with probability > 1 - 1e-6
        assert float(delta.std()) == pytest.approx(0.2 * float(w.std()), rel=0.05), name
        assert abs(float(delta.mean())) < 0.2 * float(w.std()) * 5 / delta.numel() ** 0.5
    assert result.details["rel_weight_error"] == pytest.approx(0.2, rel=0.05)  # weights are near zero-mean
    assert result.effective_bits == 32.0 and noise.Settings(magnitude=0.2).bits == 16


def test_init_std_reference_uses_initializer_range(trained, fp_model):
    result = perturb(trained, fp_model, magnitude=0.5, reference="init_std")
    name = result.layers_quantized[0]
    delta = result.model.get_submodule(name).weight.detach() - fp_model.get_submodule(name).weight.detach()
    assert float(delta.std()) == pytest.approx(0.5 * fp_model.config.initializer_range, rel=0.05)


def test_reproducible_per_seed_index_and_independent_across_seeds(trained, fp_model):
    a = perturb(trained, fp_model, magnitude=0.1, seed_index=0)
    b = perturb(trained, fp_model, magnitude=0.1, seed_index=0)
    c = perturb(trained, fp_model, magnitude=0.1, seed_index=1)
    name, other = a.layers_quantized[0], a.layers_quantized[1]
    w = lambda r, n: r.model.get_submodule(n).weight.detach()  # noqa: E731
    fp = lambda n: fp_model.get_submodule(n).weight.detach()  # noqa: E731
    assert torch.equal(w(a, name), w(b, name))
    za, zc = (w(a, name) - fp(name)).flatten(), (w(c, name) - fp(name)).flatten()
    assert abs(float(torch.corrcoef(torch.stack([za, zc]))[0, 1])) < 0.1
    # same shape tensors (q_proj, k_proj) get different draws
    zo = (w(a, other) - fp(other)).flatten()
    assert abs(float(torch.corrcoef(torch.stack([za, zo]))[0, 1])) < 0.1


def test_leaves_global_rng_and_fp_model_alone(trained, fp_model):
    before = random.getstate(), np.random.get_state()[1].copy(), torch.random.get_rng_state().clone()
    ref = {k: v.clone() for k, v in fp_model.state_dict().items()}
    perturb(trained, fp_model, magnitude=0.3, seed_index=2)
    assert random.getstate() == before[0] and np.array_equal(np.random.get_state()[1], before[1])
    assert torch.equal(torch.random.get_rng_state(), before[2])
    assert all(torch.equal(v, ref[k]) for k, v in fp_model.state_dict().items())


def test_loss_grows_with_magnitude(trained, fp_model, fp_loss):
    """Averaged over two seeds, as the suite does: Δloss increases with the relative noise std."""
    def mean_dl(m: float) -> float:
        return float(np.mean([heldout_loss(perturb(trained, fp_model, magnitude=m, seed_index=s).model,
                                           trained.heldout) - fp_loss for s in (0, 1)]))

    dls = [mean_dl(m) for m in (0.02, 0.1, 0.3)]
    assert 0 < dls[0] < dls[1] < dls[2], dls


@pytest.mark.parametrize("kw,where", [
    (dict(magnitude=0.0), "magnitude"),
    (dict(magnitude=-0.1), "magnitude"),
    (dict(magnitude=float("nan")), "magnitude"),
    (dict(magnitude=0.1, bits=4), "bits"),
    (dict(magnitude=0.1, seed_index=-1), "seed_index"),
    (dict(magnitude=0.1, reference="weight_std"), "reference"),
    (dict(magnitude=0.1, seeds=3), "seeds"),
])
def test_invalid_settings_fail_at_validation(kw, where):
    with pytest.raises(ValueError, match=where):
        noise.Settings(**kw)


def test_labels_distinguish_seeds_and_references():
    labels = {noise.Settings(magnitude=m, seed_index=s, reference=r).label()
              for m in (0.05, 0.1) for s in (0, 1) for r in ("tensor_std", "init_std")}
    assert len(labels) == 8
