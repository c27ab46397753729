"""The CUDA kernel source itself, run on CPU threads (tests/cuda/emu), against the torch reference.

The host-math tests check the arithmetic; these check what only the kernel does: its two paths and how a
call picks one, thread/group/octet indexing, the warp reductions (shuffles), vector loads and stores of
fp32/fp16/bf16, packing stores, row padding and unaligned pointers. Real-GPU behaviour (timing, the CUDA
intrinsics themselves) is left to test_kernel_gpu.py.
"""

from __future__ import annotations

import pytest
import torch
from rtn_cases import assert_matches_reference, make_weight

from qsens.quantizers.rtn_kernel import unpack_codes
from qsens.quantizers.rtn_reference import rtn_fake_quantize, rtn_quantize

# (rows, cols, group_size, expected path): group path for contiguous power-of-two groups of 8..1024
# columns, row-wise path otherwise (vectorized when cols % 8 == 0 and gs % 8 == 0, scalar if not).
CASES = [
    (12, 256, 32, "group"), (9, 512, 64, "group"), (5, 1024, 128, "group"), (3, 1024, 256, "group"),
    (4, 1024, 512, "group"), (2, 2048, 1024, "group"), (7, 512, -1, "group"), (6, 64, 8, "group"),
    (9, 1027, 128, "row"), (16, 300, 100, "row"), (4, 2048, -1, "row"), (5, 96, 24, "row"), (3, 5, 32, "row"),
]


@pytest.mark.parametrize("symmetric", [False, True], ids=["asym", "sym"])
@pytest.mark.parametrize("bits", [2, 3, 4, 5, 8])
@pytest.mark.parametrize(("rows", "cols", "group_size", "path"), CASES)
def test_emulated_kernel_equals_reference(emulated_kernel, rows, cols, group_size, path, bits, symmetric):
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        w = make_weight(rows, cols, dtype, bits, symmetric, seed=bits * 31 + cols)
        deq = emulated_kernel.fake_quantize(w, bits, group_size, symmetric)
        assert emulated_kernel.uses_group_path(w, deq, group_size) == (path == "group")
        packed, scales, zeros = emulated_kernel.quantize(w, bits, group_size, symmetric)
        ref = rtn_quantize(w, bits, group_size, symmetric)
        what = f"emulated {dtype} {rows}x{cols} gs={group_size} bits={bits} sym={symmetric} ({path} path)"
        assert_matches_reference(unpack_codes(packed, bits, cols), scales, zeros, deq, ref,
                                 rtn_fake_quantize(w, bits, group_size, symmetric), what)
        padding = unpack_codes(packed, bits, -(-cols // 8) * 8)[:, cols:]
        assert (padding == 0).all(), f"{what}: row padding codes are not 0"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_emulated_unaligned_input_takes_row_path(emulated_kernel, dtype):
    base = make_weight(1, 16 * 256 + 1, dtype, 4, False).reshape(-1)
    w = base[1:].view(16, 256)  # one element past a 16-byte boundary
    deq = emulated_kernel.fake_quantize(w, 4, 128, False)
    assert not emulated_kernel.uses_group_path(w, deq, 128)
    packed, scales, zeros = emulated_kernel.quantize(w, 4, 128, False)
    ref = rtn_quantize(w, 4, 128, False)
    assert_matches_reference(unpack_codes(packed, 4, 256), scales, zeros, deq, ref, rtn_fake_quantize(w, 4, 128, False),
                             f"emulated unaligned {dtype}")
