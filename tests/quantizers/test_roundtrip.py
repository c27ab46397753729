"""The resolution floor's method: Linear weights rounded to fp16/bf16 and back, nothing else touched."""

import numpy as np
import pytest
import torch

from qsens.quantizers import method_module
from qsens.quantizers.base import QuantContext


def _model():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=False)
    return LlamaForCausalLM(cfg).eval()


@pytest.mark.parametrize("fmt, np_round", [("float16", lambda w: w.astype(np.float16).astype(np.float32)),
                                           ("bfloat16", None)])
def test_round_trip_is_the_cast_and_leaves_the_rest(fmt, np_round):
    fp = _model()
    module = method_module("roundtrip")
    settings = module.Settings(format=fmt)
    out = module.quantize(QuantContext(fp_model=fp, tokenizer=None, device=torch.device("cpu"), seed=0), settings)
    q = dict(out.model.named_parameters())
    for name, p in fp.named_parameters():
        w = p.detach()
        if name.endswith("proj.weight"):
            want = (torch.from_numpy(np_round(w.numpy())) if np_round
                    else w.to(torch.bfloat16).to(torch.float32))  # numpy has no bfloat16
            assert torch.equal(q[name], want) and not torch.equal(q[name], w)
        else:  # embeddings, norms and the head (skipped by default) stay as they were
            assert torch.equal(q[name], w)
    assert out.details["weights_changed"] > 0.9 * out.details["n_weights"]
    assert settings.label() == f"roundtrip-{fmt}" and out.effective_bits == 16.0
