"""The cast floor (qsens.quantizers.cast, from dd10f4a): every parameter, or only the selected Linear weights
(`scope: linears`, the resolution floor of issue 21 for quantizers that touch Linear weights only), rounded to
float16/bfloat16 once and back; expected values from numpy's float16 cast and bfloat16's bit layout.

The first test is dd10f4a's (there it sits in tests/quantizers/test_ggml_types.py, behind the gguf package)."""

from __future__ import annotations

import numpy as np
import pytest

from qsens.quantizers import cast, method_module


@pytest.mark.parametrize("dtype,np_round", [("float16", lambda w: w.astype(np.float16).astype(np.float32)),
                                            ("bfloat16", None)])
def test_cast_floor_rounds_every_parameter_once(trained, fp_model, dtype, np_round):
    result = cast.quantize(trained.context(fp_model), cast.Settings(dtype=dtype))
    held = dict(result.model.named_parameters())
    assert sorted(held) == sorted(n for n, _ in fp_model.named_parameters()) == sorted(result.layers_quantized)
    for name, p in fp_model.named_parameters():
        w, got = p.detach().numpy(), held[name].detach().numpy()
        if np_round is not None:
            assert np.array_equal(got, np_round(w)), name
        else:  # bfloat16 keeps 8 significant bits: relative error at most 2^-8 (half a unit of the 8th bit)
            assert (np.abs(got - w) <= np.abs(w) * 2.0**-8 + 1e-30).all(), name
            assert (got.view(np.uint32) & 0xFFFF == 0).all(), name  # the low 16 bits are gone
    assert result.effective_bits == 16.0


def _bf16_nearest_even(w: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 -> float32 by bit arithmetic (round to nearest, ties to even; finite inputs)."""
    u = w.astype(np.float32).view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000
    return u.astype(np.uint32).view(np.float32)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_linears_scope_rounds_the_selected_linear_weights_and_nothing_else(trained, fp_model, dtype):
    result = method_module("cast").quantize(trained.context(fp_model), cast.Settings(dtype=dtype, scope="linears"))
    held = dict(result.model.named_parameters())
    linears = {f"{n}.weight" for n, m in fp_model.named_modules()
               if type(m).__name__ == "Linear" and n != "lm_head"}  # skip's default is ("lm_head",)
    assert linears and sorted(result.layers_quantized) == sorted(linears)
    want_round = (lambda w: w.astype(np.float16).astype(np.float32)) if dtype == "float16" else _bf16_nearest_even
    for name, p in fp_model.named_parameters():
        w, got = p.detach().numpy(), held[name].detach().numpy()
        if name in linears:
            assert np.array_equal(got, want_round(w)) and not np.array_equal(got, w), name
        else:  # embeddings, norms and the (skipped) head are untouched
            assert np.array_equal(got, w), name
    s = cast.Settings(dtype=dtype, scope="linears")
    assert (s.label(), s.bits, result.effective_bits) == (f"cast-{dtype}-linears", 16, 16.0)


def test_the_old_roundtrip_method_is_gone_and_bad_settings_are_refused():
    with pytest.raises(KeyError, match="cast"):
        method_module("roundtrip")
    with pytest.raises(ValueError):
        cast.Settings(scope="embeddings")
    with pytest.raises(ValueError):
        cast.Settings(dtype="float8")
