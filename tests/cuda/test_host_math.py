"""The kernel's arithmetic (`cuda/rtn_math.cuh`, compiled for the host by g++) against the torch reference.

Same header the CUDA kernel includes, so a difference here is a kernel bug caught without a GPU. Expected
values are `rtn_reference.py` on the CPU (IEEE float32 divisions, round-half-to-even): codes must be equal,
scales and dequantized values bit-for-bit (any NaN matches any NaN).
"""

from __future__ import annotations

import pytest
import torch
from rtn_cases import assert_matches_reference, make_weight

from qsens.quantizers.rtn_kernel import pack_codes, unpack_codes
from qsens.quantizers.rtn_reference import rtn_fake_quantize, rtn_quantize

GROUP_SIZES = (32, 64, 128, -1, 100, 8, 1, 1000)  # 100: ragged last group; 1000 > cols for some shapes
SHAPES = ((16, 300), (9, 1027), (3, 5))  # odd column counts: rows end mid-octet and mid-group
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@pytest.mark.parametrize("symmetric", [False, True], ids=["asym", "sym"])
@pytest.mark.parametrize("group_size", GROUP_SIZES)
@pytest.mark.parametrize("bits", range(2, 9))
def test_header_math_equals_reference(host_rtn, bits, group_size, symmetric):
    for dtype in DTYPES:
        for i, (rows, cols) in enumerate(SHAPES):
            w = make_weight(rows, cols, dtype, bits, symmetric, seed=1000 * bits + i)
            deq, packed, scales, zeros = host_rtn.quantize(w, bits, group_size, symmetric)
            ref = rtn_quantize(w, bits, group_size, symmetric)
            what = f"{dtype} {rows}x{cols} bits={bits} gs={group_size} sym={symmetric}"
            codes = unpack_codes(packed, bits, cols)
            ref_deq = rtn_fake_quantize(w, bits, group_size, symmetric)
            assert_matches_reference(codes, scales, zeros, deq, ref, ref_deq, what)
            assert torch.equal(pack_codes(ref.codes, bits), packed), f"{what}: Python packer disagrees with header"


def test_ties_round_half_to_even(host_rtn):
    """x/scale = k + 1/2 exactly: 0.5 -> 0, 1.5 -> 2, 2.5 -> 2, -0.5 -> -0, -1.5 -> -2 (torch.round's rule)."""
    # symmetric 4 bits, amax 7 -> scale exactly 1; zero point 8
    w = torch.tensor([[7.0, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 3.5]])
    deq, packed, _, _ = host_rtn.quantize(w, 4, -1, True)
    assert unpack_codes(packed, 4, 8).tolist() == [[15, 8, 10, 10, 8, 6, 6, 12]]
    assert deq.tolist() == [[7.0, 0.0, 2.0, 2.0, 0.0, -2.0, -2.0, 4.0]]


def test_nonfinite_group_is_nan_with_zero_codes(host_rtn):
    """Documented behaviour: a group with NaN/Inf gets scale NaN, zero 0, codes 0, all values NaN; others untouched."""
    w = torch.ones(2, 64)
    w[0, 3] = float("inf")
    w[1, 40] = float("nan")
    deq, packed, scales, zeros = host_rtn.quantize(w, 4, 32, False)
    codes = unpack_codes(packed, 4, 64)
    assert torch.isnan(scales).tolist() == [[True, False], [False, True]]
    assert zeros[0, 0] == 0 and zeros[1, 1] == 0
    assert (codes[0, :32] == 0).all() and (codes[1, 32:] == 0).all()
    assert torch.isnan(deq[0, :32]).all() and torch.isnan(deq[1, 32:]).all()
    assert torch.isfinite(deq[0, 32:]).all() and torch.isfinite(deq[1, :32]).all()


@pytest.mark.parametrize("bits", range(2, 9))
def test_pack_layout(bits):
    """Eight codes take `bits` bytes, code j in bits [j*bits, (j+1)*bits), little-endian; rows pad with 0."""
    gen = torch.Generator().manual_seed(bits)
    codes = torch.randint(0, 2**bits, (3, 13), generator=gen, dtype=torch.uint8)
    packed = pack_codes(codes, bits)
    assert packed.shape == (3, 2 * bits)
    for r in range(3):
        stream = int.from_bytes(bytes(packed[r, :bits].tolist()), "little")
        assert [(stream >> (j * bits)) & (2**bits - 1) for j in range(8)] == codes[r, :8].tolist()
        tail = int.from_bytes(bytes(packed[r, bits:].tolist()), "little")
        assert tail >> (5 * bits) == 0  # the row pads its last octet (cols 13..15) with zero codes
    assert torch.equal(unpack_codes(packed, bits, 13), codes)
    if bits == 4:  # the usual layout: low nibble first
        assert packed[0, 0] == codes[0, 0] | (codes[0, 1] << 4)
