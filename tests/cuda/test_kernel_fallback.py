"""Where the CUDA kernel cannot run, `rtn_kernel` says why and runs the reference (same API, same bits)."""

from __future__ import annotations

import pytest
import torch
from rtn_cases import make_weight

from qsens.quantizers import rtn_kernel
from qsens.quantizers.rtn_reference import rtn_fake_quantize, rtn_quantize


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU status message")
def test_status_explains_why_not_available():
    ok, reason = rtn_kernel.kernel_status()
    assert not ok and ("CUDA" in reason or "cuda" in reason)


def test_cpu_weight_falls_back_to_reference_with_a_warning():
    w = make_weight(8, 300, torch.bfloat16, 4, False)
    with pytest.warns(UserWarning, match="running the torch reference"):
        deq = rtn_kernel.rtn_fake_quantize_kernel(w, 4, 128, False)
    assert torch.equal(deq.isnan(), rtn_fake_quantize(w, 4, 128, False).isnan())
    assert torch.equal(deq.nan_to_num(), rtn_fake_quantize(w, 4, 128, False).nan_to_num())
    q = rtn_kernel.rtn_quantize_kernel(w, 3, -1, True)
    assert torch.equal(rtn_kernel.unpack_codes(q.packed, 3, 300), rtn_quantize(w, 3, -1, True).codes)


def test_arguments_checked_before_dispatch():
    with pytest.raises(ValueError, match="bits"):
        rtn_kernel.rtn_fake_quantize_kernel(torch.zeros(2, 8), 9, 8, False)
    with pytest.raises(ValueError, match="2-D"):
        rtn_kernel.rtn_fake_quantize_kernel(torch.zeros(2, 8, 8), 4, 8, False)
    with pytest.raises(ValueError, match="bytes per row"):
        rtn_kernel.unpack_codes(torch.zeros(2, 3, dtype=torch.uint8), 4, 8)
