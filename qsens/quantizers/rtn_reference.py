"""Round-to-nearest (RTN) weight quantization: the pure-torch reference.

This is the arithmetic that the CUDA kernel in `cuda/` must reproduce exactly (codes equal, dequantized
values bit-for-bit), so every step is spelled out and done in float32:

Groups run along the input dimension: a weight `w` of shape [rows, cols] is cut into groups of `group_size`
consecutive columns per row (the last group of a row is shorter when `cols % group_size != 0`);
`group_size=-1` means one group per row (per channel). With `maxq = 2**bits - 1`, per group:

asymmetric (min/max with an integer zero point; as GPTQ's `quant.py`, whose range always contains 0):
    lo = min(min(g), 0);  hi = max(max(g), 0)
    if lo == hi (all zeros): lo, hi = -1, +1
    scale = (hi - lo) / maxq
    zero  = round(-lo / scale)                        # an integer in [0, maxq]
    code  = clamp(round(w / scale) + zero, 0, maxq)
    deq   = scale * (code - zero)

symmetric (absmax, restricted range so that 0 is exact and the grid is symmetric, e.g. 4 bits: -7..7):
    qmax  = 2**(bits-1) - 1
    amax  = max(|g|);  if amax == 0: amax = qmax  (scale 1: all codes 0)
    scale = amax / qmax
    code  = clamp(round(w / scale), -qmax, qmax) + 2**(bits-1)    # stored unsigned, in [1, maxq]
    zero  = 2**(bits-1)
    deq   = scale * (code - zero)

`round` is round-half-to-even (torch.round, CUDA rintf). Divisions are IEEE float32 divisions (no
reciprocal-multiply: on CUDA, torch turns a division by a Python scalar into a multiply by its reciprocal, so
every divisor here is a tensor), and `scale * (code - zero)` is one float32 multiply of an exact integer, so a kernel
doing the same operations in the same order gets identical bits.

Non-finite weights: a group containing NaN or +-Inf gets scale = NaN, zero = 0, all codes 0 and all
dequantized values NaN, so a broken weight is never silently turned into a finite one. Callers that
quantize models reject non-finite outputs (`rtn.quantize` raises).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class RTNQuantized:
    """Result of `rtn_quantize` for a weight of shape [rows, cols] cut into `n_groups` groups per row.

    codes: uint8 [rows, cols], unsigned codes in [0, 2**bits - 1].
    scales: float32 [rows, n_groups].
    zeros: float32 [rows, n_groups], integer-valued zero points.
    """

    codes: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor
    bits: int
    group_size: int
    symmetric: bool


def check_rtn_args(bits: int, group_size: int) -> None:
    if not 2 <= bits <= 8:
        raise ValueError(f"bits must be in 2..8, got {bits}")
    if group_size != -1 and group_size < 1:
        raise ValueError(f"group_size must be -1 (per channel) or >= 1, got {group_size}")


def _grouped(w: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Pad [rows, cols] to [rows, n_groups, gs] (padding NaN-free copies of the group's first element).

    Returns (groups float32 [rows, n_groups, gs], valid bool [rows?=1, n_groups, gs], gs). Padding repeats
    an element of the same group, so min/max/absmax are unchanged by it.
    """
    rows, cols = w.shape
    gs = cols if group_size == -1 else group_size
    n_groups = -(-cols // gs)
    pad = n_groups * gs - cols
    w32 = w.to(torch.float32)
    if pad:
        last_group_first = w32[:, (n_groups - 1) * gs : (n_groups - 1) * gs + 1]
        w32 = torch.cat([w32, last_group_first.expand(rows, pad)], dim=1)
    valid = torch.ones(n_groups * gs, dtype=torch.bool, device=w.device)
    if pad:
        valid[cols:] = False
    return w32.reshape(rows, n_groups, gs), valid.reshape(1, n_groups, gs), gs


def rtn_quantize(w: torch.Tensor, bits: int, group_size: int, symmetric: bool) -> RTNQuantized:
    """Quantize a 2-D weight [rows, cols] (any float dtype) to integer codes, per-group scales and zeros."""
    check_rtn_args(bits, group_size)
    if w.dim() != 2:
        raise ValueError(f"expected a 2-D weight [rows, cols], got shape {tuple(w.shape)}")
    rows, cols = w.shape
    g, _, _ = _grouped(w, group_size)
    maxq = 2**bits - 1
    finite = torch.isfinite(g).all(dim=-1)  # [rows, n_groups]
    g_safe = torch.where(torch.isfinite(g), g, torch.zeros((), dtype=g.dtype, device=g.device))
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        amax = g_safe.abs().amax(dim=-1)
        amax = torch.where(amax == 0, torch.full_like(amax, float(qmax)), amax)
        scale = amax / torch.full_like(amax, float(qmax))
        zero = torch.full_like(scale, float(2 ** (bits - 1)))
        q = torch.clamp(torch.round(g_safe / scale[..., None]), -qmax, qmax) + zero[..., None]
    else:
        lo = torch.clamp(g_safe.amin(dim=-1), max=0.0)
        hi = torch.clamp(g_safe.amax(dim=-1), min=0.0)
        both_zero = lo == hi
        lo = torch.where(both_zero, torch.full_like(lo, -1.0), lo)
        hi = torch.where(both_zero, torch.full_like(hi, 1.0), hi)
        scale = (hi - lo) / torch.full_like(hi, float(maxq))
        zero = torch.round(-lo / scale)
        q = torch.clamp(torch.round(g_safe / scale[..., None]) + zero[..., None], 0, maxq)
    scale = torch.where(finite, scale, torch.full_like(scale, float("nan")))
    zero = torch.where(finite, zero, torch.zeros_like(zero))
    q = torch.where(finite[..., None], q, torch.zeros_like(q))
    codes = q.reshape(rows, -1)[:, :cols].to(torch.uint8)
    return RTNQuantized(codes, scale, zero, bits, group_size, symmetric)


def rtn_dequantize(qw: RTNQuantized, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Codes back to weights: [rows, cols] in `dtype` (computed in float32, then cast)."""
    rows, cols = qw.codes.shape
    gs = cols if qw.group_size == -1 else qw.group_size
    col_group = torch.arange(cols, device=qw.codes.device) // gs
    scale = qw.scales[:, col_group]
    zero = qw.zeros[:, col_group]
    return (scale * (qw.codes.to(torch.float32) - zero)).to(dtype)


def rtn_fake_quantize(w: torch.Tensor, bits: int, group_size: int, symmetric: bool) -> torch.Tensor:
    """Quantize-dequantize: same shape and dtype as `w`."""
    return rtn_dequantize(rtn_quantize(w, bits, group_size, symmetric), dtype=w.dtype)
