"""working_copy: the selected layers are the method's own, everything else is shared and never written."""

import hashlib

import pytest
import torch

from qsens.quantizers import method_module
from qsens.quantizers.layers import working_copy

# every method that builds its model through working_copy, at a setting each runs on the CPU
METHODS = {
    "rtn": {"method": "rtn", "bits": 3, "group_size": 32},
    "noise": {"method": "noise", "magnitude": 0.05},
    "cast": {"method": "cast", "dtype": "bfloat16", "scope": "linears"},
    "gguf": {"method": "gguf", "type": "Q4_0"},
    "hqq": {"method": "hqq", "bits": 4, "group_size": 32},
    "torchao": {"method": "torchao", "scheme": "intx", "bits": 4, "group_size": 32, "symmetric": False,
                "scale_dtype": "float16"},
    "bnb": {"method": "bnb", "quant_type": "nf4"},
}


def digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode() + t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("method", sorted(METHODS))
def test_no_method_writes_to_the_fp_model(method, trained, fp_model):
    before = digest(fp_model)
    module = method_module(method)
    result = module.quantize(trained.context(fp_model), module.Settings(**METHODS[method]))
    assert digest(fp_model) == before, f"{method} changed the full-precision model"
    fp_params = dict(fp_model.named_parameters())
    q_params = dict(result.model.named_parameters())
    assert q_params["model.embed_tokens.weight"].data_ptr() == fp_params["model.embed_tokens.weight"].data_ptr()


def test_selected_layers_are_copies_and_the_rest_is_shared(fp_model):
    model, layers = working_copy(fp_model, ("lm_head",))
    selected = {f"{name}.{p}" for name, _ in layers for p in ("weight", "bias")}
    fp = dict(fp_model.named_parameters())
    for name, p in model.named_parameters():
        assert (p.data_ptr() == fp[name].data_ptr()) == (name not in selected), name
        assert torch.equal(p, fp[name])
    assert layers and all(name.startswith("model.layers.") for name, _ in layers)


def test_a_dispatched_model_is_copied_whole(fp_model, monkeypatch):
    monkeypatch.setattr(fp_model, "hf_device_map", {"": "cpu"}, raising=False)
    model, _ = working_copy(fp_model, ("lm_head",))
    fp = dict(fp_model.named_parameters())
    assert all(p.data_ptr() != fp[name].data_ptr() for name, p in model.named_parameters())
