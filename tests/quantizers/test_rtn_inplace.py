"""The in-place, blocked RTN (what `rtn.quantize` runs on the torch backend) against the reference, bit for bit."""

import pytest
import torch

import qsens.quantizers.rtn_inplace as rtn_inplace
from qsens.quantizers.rtn_inplace import rtn_fake_quantize_
from qsens.quantizers.rtn_reference import rtn_fake_quantize


def bits_of(t: torch.Tensor) -> torch.Tensor:
    """The raw bit patterns (so -0.0 != +0.0 and NaN == NaN)."""
    return t.view({torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}[t.dtype])


def hostile_weight(rows: int, cols: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=gen) * torch.logspace(-3, 1, rows)[:, None]  # scales over 4 decades
    w[0] = 0.0                                           # an all-zero row: lo == hi
    w[1, : cols // 2] = -0.0                             # negative zeros
    w[2] = torch.randint(-8, 8, (cols,), generator=gen) * 0.25  # exact ties at every grid
    w[3] = 1.0                                           # a constant positive row (lo clamps to 0)
    w[4] = -torch.rand(cols, generator=gen)              # all negative (hi clamps to 0)
    return w.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("cols,group_size", [(96, 32), (100, 32), (24, 8), (64, 128), (72, -1), (130, 64)])
def test_equal_bits_to_the_reference(dtype, symmetric, cols, group_size, monkeypatch):
    monkeypatch.setattr(rtn_inplace, "BLOCK_ELEMENTS", 7 * cols)  # many blocks, a short last one
    for bits in (2, 3, 4, 8):
        w = hostile_weight(37, cols, dtype, seed=bits + cols)
        want = rtn_fake_quantize(w, bits, group_size, symmetric)
        got = rtn_fake_quantize_(w.clone(), bits, group_size, symmetric)
        assert got.dtype == dtype and got.shape == w.shape
        assert torch.equal(bits_of(got), bits_of(want)), (bits, dtype, symmetric, cols, group_size)


@pytest.mark.parametrize("symmetric", [False, True])
def test_non_finite_groups_keep_the_reference_semantics(symmetric, monkeypatch):
    monkeypatch.setattr(rtn_inplace, "BLOCK_ELEMENTS", 4 * 64)
    w = hostile_weight(16, 64, torch.float32, seed=3)
    w[5, 3], w[9, 40], w[13, 63] = float("nan"), float("inf"), -float("inf")
    want = rtn_fake_quantize(w, 4, 16, symmetric)
    got = rtn_fake_quantize_(w.clone(), 4, 16, symmetric)
    assert torch.equal(bits_of(got), bits_of(want))
    assert torch.isnan(got[5, :16]).all() and torch.isfinite(got[5, 16:]).all()  # only the broken group


def test_it_writes_over_its_argument_and_checks_it():
    w = torch.randn(8, 32)
    view = w[2:6]  # a view: the weight it belongs to changes there and only there
    before = w.clone()
    rtn_fake_quantize_(view, 3, 8, False)
    assert torch.equal(w[:2], before[:2]) and torch.equal(w[6:], before[6:])
    assert torch.equal(w[2:6], rtn_fake_quantize(before[2:6], 3, 8, False))
    with pytest.raises(ValueError, match="bits must be in 2..8"):
        rtn_fake_quantize_(w, 9, 8, False)
    with pytest.raises(ValueError, match="2-D weight"):
        rtn_fake_quantize_(w[0], 4, 8, False)
