"""Test weights for the RTN kernel and the comparison used by both the host (CPU) and the GPU tests.

`make_weight` builds a [rows, cols] weight whose rows cycle through the cases the arithmetic must get right:
random normals of varied magnitude, exact ties (x/scale exactly k + 1/2, and -lo/scale exactly z + 1/2, so
round-half-to-even decides), constant groups, all-zero groups (including -0.0), tiny (subnormal) and huge
(|w| near float32 max, where hi - lo overflows to +inf) values, and NaN/+Inf/-Inf sprinkled into some groups.
"""

from __future__ import annotations

import torch

from qsens.quantizers.rtn_reference import RTNQuantized

KINDS = ("randn", "ties", "zero_tie", "constant", "zeros", "tiny", "huge", "nonfinite")


def _tie_row(cols: int, bits: int, symmetric: bool, zero_tie: bool, gen: torch.Generator) -> torch.Tensor:
    """A row where every group has an exact power-of-two scale and values at exact half steps."""
    scale = 2.0 ** -int(torch.randint(2, 6, (1,), generator=gen))
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        lo_step, hi_step = -qmax, qmax  # amax = qmax * scale  ->  scale = amax / qmax exactly
    else:
        maxq = 2**bits - 1
        z = int(torch.randint(0, maxq, (1,), generator=gen))
        half = 0.5 if zero_tie else 0.0  # -lo/scale = z + 1/2: the zero point itself is a tie
        lo_step, hi_step = -(z + half), maxq - z - half
    steps = torch.randint(int(lo_step), int(hi_step), (cols,), generator=gen).to(torch.float32) + 0.5
    row = steps.clamp(lo_step, hi_step) * scale
    row[0::16] = lo_step * scale  # pin each group's min and max (groups are >= 8 wide or get 1-2 pins)
    row[1::16] = hi_step * scale
    return row


def make_weight(rows: int, cols: int, dtype: torch.dtype, bits: int, symmetric: bool, seed: int = 0) -> torch.Tensor:
    """[rows, cols] in `dtype`; row r is of kind KINDS[r % len(KINDS)] (tiny/huge only in float32)."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.empty(rows, cols, dtype=torch.float32)
    for r in range(rows):
        kind = KINDS[r % len(KINDS)]
        if kind in ("tiny", "huge") and dtype != torch.float32:
            kind = "randn"
        if kind == "randn":
            w[r] = torch.randn(cols, generator=gen) * 10.0 ** float(torch.randint(-3, 3, (1,), generator=gen))
        elif kind in ("ties", "zero_tie"):
            w[r] = _tie_row(cols, bits, symmetric, kind == "zero_tie", gen)
        elif kind == "constant":
            w[r] = float(torch.randn(1, generator=gen))
        elif kind == "zeros":
            w[r] = 0.0
            w[r, 1::3] = -0.0
        elif kind == "tiny":
            w[r] = torch.randn(cols, generator=gen) * 1e-39
        elif kind == "huge":
            w[r] = torch.randn(cols, generator=gen).sign() * 3.0e38
        else:  # nonfinite: NaN, +Inf, -Inf at a few places, the rest random
            w[r] = torch.randn(cols, generator=gen)
            idx = torch.randint(0, cols, (3,), generator=gen)
            w[r, idx[0]], w[r, idx[1]], w[r, idx[2]] = float("nan"), float("inf"), float("-inf")
    return w.to(dtype)


def assert_same_bits(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    """Equal bit patterns, except that any NaN matches any NaN (payloads are unspecified)."""
    assert actual.shape == expected.shape and actual.dtype == expected.dtype, f"{what}: shape/dtype differ"
    a, e = actual.cpu(), expected.cpu()
    nan_a, nan_e = torch.isnan(a), torch.isnan(e)
    assert torch.equal(nan_a, nan_e), f"{what}: NaN positions differ"
    int_dtype = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}[a.dtype]
    differ = (a.view(int_dtype) != e.view(int_dtype)) & ~nan_a
    if differ.any():
        i = differ.nonzero()[0].tolist()
        raise AssertionError(f"{what}: {int(differ.sum())} values differ, first at {i}: {a[tuple(i)]} vs {e[tuple(i)]}")


def assert_matches_reference(codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, deq: torch.Tensor,
                             ref: RTNQuantized, ref_deq: torch.Tensor, what: str) -> None:
    """Codes equal, scales and dequantized values bit-for-bit, zero points equal in value.

    Zero points compare by value: the sign of a zero zero-point (-0.0 vs 0.0) depends on which of several
    equal minima a reduction returns, and never changes a code or a dequantized value.
    """
    differ = codes.cpu() != ref.codes.cpu()
    assert not differ.any(), f"{what}: codes differ at {differ.nonzero()[:5].tolist()}"
    assert_same_bits(scales, ref.scales, f"{what} scales")
    assert torch.equal(zeros.cpu(), ref.zeros.cpu()), f"{what}: zero points differ"
    assert_same_bits(deq, ref_deq, f"{what} dequantized")
