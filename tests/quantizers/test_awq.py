"""AWQ through gptqmodel on CPU: the model qsens scores computes what gptqmodel's own reloaded AWQ model computes
(so the rescaled norms came along with the dequantized codes), AWQ rescaled something, and bits are read from
the packed layers."""

from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("gptqmodel")

from qsens.quantizers import awq, rtn  # noqa: E402
from tiny_trained import heldout_loss  # noqa: E402

SETTINGS = awq.Settings(bits=4, group_size=32, calibration_samples=16, calibration_length=64, batch_size=8)


@pytest.fixture(scope="module")
def run(trained, fp_model):
    """(result, the library's reloaded model) of one AWQ quantization."""
    seen = {}
    original = awq._quantize_and_reload

    def recording(*args, **kwargs):
        loaded, logs = original(*args, **kwargs)
        seen["library_model"] = loaded.model
        return loaded, logs

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(awq, "_quantize_and_reload", recording)
        result = awq.quantize(trained.context(fp_model), SETTINGS)
    return result, seen["library_model"]


def test_scored_model_computes_what_gptqmodels_model_computes(run, trained, fp_model):
    result, library = run
    ids = trained.heldout[:4, :64]
    with torch.no_grad():
        ours = copy.deepcopy(result.model).half()(input_ids=ids).logits.float()  # the library's float16 activations
        theirs = library(input_ids=ids).logits.float()
        fp = fp_model(input_ids=ids).logits
    quant_effect = (ours - fp).abs().max()
    assert quant_effect > 0.05  # 4-bit quantization moved the logits ...
    assert (ours - theirs).abs().max() < 0.02 * quant_effect  # ... and ours moved them as the library's did


def test_awq_rescaled_the_norms(run):
    rescaled = run[0].details["rescaled"]
    assert {f"model.layers.{i}.{n}.weight" for i in (0, 1) for n in ("input_layernorm", "post_attention_layernorm")} \
        <= set(rescaled), rescaled


def test_effective_bits_and_record(run):
    result = run[0]
    assert result.effective_bits == pytest.approx(4 + (16 + 4) / 32)  # codes + float16 scale + 4-bit zero per group
    assert len(result.layers_quantized) == 14 and result.backend.startswith("gptqmodel-")
    assert result.details["calibration_shape"] == [16, 64] and result.details["library"]["gptqmodel"]


def test_awq_not_worse_than_rtn_on_the_same_grid(run, trained, fp_model, fp_loss):
    # AWQ's search includes s = 1 (no scaling) and no clipping, i.e. RTN's min/max asymmetric grid, per layer.
    r = rtn.quantize(trained.context(fp_model), rtn.Settings(bits=4, group_size=32, symmetric=False, backend="torch"))
    rtn_dl = heldout_loss(r.model, trained.heldout) - fp_loss
    awq_dl = heldout_loss(run[0].model, trained.heldout) - fp_loss
    assert awq_dl < 1.05 * rtn_dl, (awq_dl, rtn_dl)


def test_calibration_is_required(trained, fp_model):
    ctx = trained.context(fp_model)
    ctx.calibration = None
    with pytest.raises(ValueError, match="calibration"):
        awq.quantize(ctx, SETTINGS)


@pytest.mark.parametrize("kw", [dict(group_size=48), dict(bits=1), dict(dtype="float32"), dict(damp_percent=0.1)])
def test_invalid_settings_fail_at_validation(kw):
    with pytest.raises(ValueError):
        awq.Settings(**kw)


def test_validation_does_not_import_the_libraries():
    import subprocess
    import sys

    code = ("import sys; from qsens.quantizers import awq, hqq, torchao; "
            "awq.Settings(); hqq.Settings(bits=4); torchao.Settings(bits=4); "
            "assert not {'gptqmodel', 'hqq', 'torchao'} & set(sys.modules), sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
