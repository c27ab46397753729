"""The CUDA kernel against the torch reference, on a GPU (skipped elsewhere; the host tests cover the same
arithmetic on CPU). Run on a CUDA machine with: `pytest -m gpu tests/cuda` (README in cuda/).

The expected values are `rtn_reference` computed on the CPU: the reference's definition (IEEE divisions).
Every group size hits a specific path: 32/64/128/256/512/1024 the one-read group path (1, 2 and 4 octets
per thread), -1 on 1024 columns the group path per row, -1 on 4096 and ragged sizes the row-wise path
(vectorized when cols % 8 == 0, scalar otherwise), an offset pointer the unaligned fallback.
"""

from __future__ import annotations

import pytest
import torch
from rtn_cases import assert_matches_reference, make_weight

from qsens.quantizers import rtn_kernel
from qsens.quantizers.rtn_reference import rtn_fake_quantize, rtn_quantize

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(),
                       reason="needs a CUDA device (the host tests cover the math on CPU)"),
]

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
SHAPES_BY_GROUP = {  # shapes chosen so each group size reaches the path named in the module docstring
    32: ((24, 1024), (16, 300)), 64: ((24, 1024), (3, 5)), 128: ((24, 1024), (9, 1027)),
    256: ((24, 1024),), 512: ((24, 1024),), 1024: ((24, 2048),),
    -1: ((24, 1024), (9, 4096), (5, 1027)), 100: ((16, 300), (9, 1027)), 8: ((16, 300),), 1000: ((9, 1027),),
}


@pytest.fixture(scope="module")
def kernel_ready():
    ok, reason = rtn_kernel.kernel_status()
    if not ok:  # on a GPU machine a kernel that does not build is a failure, not a skip
        pytest.fail(f"RTN kernel unavailable on a CUDA machine: {reason}")


def _check(w: torch.Tensor, bits: int, group_size: int, symmetric: bool, what: str) -> None:
    ref = rtn_quantize(w.cpu(), bits, group_size, symmetric)
    ref_deq = rtn_fake_quantize(w.cpu(), bits, group_size, symmetric)
    deq = rtn_kernel.rtn_fake_quantize_kernel(w, bits, group_size, symmetric)
    q = rtn_kernel.rtn_quantize_kernel(w, bits, group_size, symmetric)
    assert deq.device == w.device and deq.dtype == w.dtype and q.packed.device == w.device
    codes = rtn_kernel.unpack_codes(q.packed, bits, w.shape[1])
    assert_matches_reference(codes, q.scales, q.zeros, deq, ref, ref_deq, what)


@pytest.mark.parametrize("symmetric", [False, True], ids=["asym", "sym"])
@pytest.mark.parametrize("group_size", list(SHAPES_BY_GROUP))
@pytest.mark.parametrize("bits", range(2, 9))
def test_kernel_equals_reference(kernel_ready, bits, group_size, symmetric):
    for dtype in DTYPES:
        for i, (rows, cols) in enumerate(SHAPES_BY_GROUP[group_size]):
            w = make_weight(rows, cols, dtype, bits, symmetric, seed=100 * bits + i).cuda()
            _check(w, bits, group_size, symmetric, f"{dtype} {rows}x{cols} bits={bits} gs={group_size} sym={symmetric}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_unaligned_and_noncontiguous_inputs(kernel_ready, dtype):
    base = make_weight(1, 64 * 256 + 1, dtype, 4, False).cuda().reshape(-1)
    unaligned = base[1:].view(64, 256)  # storage offset of one element: not 16-byte aligned
    assert unaligned.data_ptr() % 16 != 0
    _check(unaligned, 4, 128, False, f"{dtype} unaligned")
    transposed = make_weight(256, 64, dtype, 4, True).cuda().t()
    _check(transposed, 4, 32, True, f"{dtype} transposed")


def test_large_matrix_many_blocks(kernel_ready):
    w = (torch.randn(2048, 8192, generator=torch.Generator().manual_seed(0)) * 0.02).to(torch.float16).cuda()
    _check(w, 4, 128, False, "2048x8192 fp16 g128")
    _check(w, 3, -1, True, "2048x8192 fp16 per-row sym")


def test_nonfinite_inputs_documented_behaviour(kernel_ready):
    """A group with NaN/Inf: scale NaN, zero 0, codes 0, every value NaN; other groups unaffected."""
    w = torch.ones(2, 256, device="cuda", dtype=torch.float16)
    w[0, 5], w[1, 200] = float("nan"), float("-inf")
    deq = rtn_kernel.rtn_fake_quantize_kernel(w, 4, 128, False)
    q = rtn_kernel.rtn_quantize_kernel(w, 4, 128, False)
    assert torch.isnan(q.scales).cpu().tolist() == [[True, False], [False, True]]
    assert torch.isnan(deq[0, :128]).all() and torch.isnan(deq[1, 128:]).all()
    assert (deq[0, 128:] == 1).all() and (deq[1, :128] == 1).all()
    assert (rtn_kernel.unpack_codes(q.packed, 4, 256)[0, :128] == 0).all()


@pytest.mark.parametrize("shape", [(0, 128), (4, 0)])
def test_empty_weight(kernel_ready, shape):
    w = torch.empty(shape, device="cuda", dtype=torch.float16)
    assert rtn_kernel.rtn_fake_quantize_kernel(w, 4, 128, False).shape == shape


def test_binding_rejects_bad_inputs(kernel_ready):
    module, _ = rtn_kernel._load()
    w = torch.randn(8, 64, device="cuda")
    with pytest.raises(RuntimeError, match="CUDA tensor"):
        module.fake_quantize(w.cpu(), 4, 32, False)
    with pytest.raises(RuntimeError, match="2-D"):
        module.fake_quantize(w[None], 4, 32, False)
    with pytest.raises(RuntimeError, match="contiguous"):
        module.fake_quantize(w.t(), 4, 32, False)
    with pytest.raises(RuntimeError, match="float32, float16 or bfloat16"):
        module.fake_quantize(w.double(), 4, 32, False)
    with pytest.raises(RuntimeError, match="bits"):
        module.quantize(w, 9, 32, False)
    with pytest.raises(RuntimeError, match="group_size"):
        module.quantize(w, 4, 0, False)


def test_reference_on_cuda_matches_reference_on_cpu():
    """Regression: the reference once divided by Python ints, which torch's CUDA div turns into a reciprocal
    multiply (not an IEEE division), so `backend: torch` on CUDA disagreed with the CPU reference and the kernel."""
    w = make_weight(64, 1024, torch.float32, 4, False)
    assert torch.equal(rtn_quantize(w.cuda(), 4, 128, False).scales.cpu(), rtn_quantize(w, 4, 128, False).scales)
