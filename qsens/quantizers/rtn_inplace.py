"""RTN fake quantization in place, in cache-sized blocks: `rtn_reference`'s arithmetic, bit for bit, faster.

The reference spells every step out as a whole-weight float32 temporary (about fifteen of them, plus the uint8
codes and two gathered [rows, cols] copies of the scales and zeros), which is clear but, on a CPU, costs ~45 ns
per weight at the Pythia-160M shape: nearly every operation streams a fresh buffer from memory. This module does
the same IEEE float32 operations in the same order, per block of rows small enough to stay in cache, writing the
result over the weight:

    asymmetric: t = w / scale; round; + zero; clamp to [0, maxq]; - zero; * scale
    symmetric:  t = w / scale; round; clamp to [-qmax, qmax]; + zero; - zero; * scale

(`+ zero; - zero` is exact on these integers but turns a -0.0 into +0.0 as the reference's uint8 round trip
does.) Skipping the codes is exact because a code is an integer below 256, so `float(code) - zero` is the same
float as `t - zero`. A block holding a non-finite weight goes to the reference, whose NaN semantics it keeps.
Columns that do not fill whole groups (`cols % group_size`) form one tail group per row: the reference pads that
group with copies of its own element, which changes neither its min nor its max, so its scale and zero are the
tail's own. Tested against `rtn_reference.rtn_fake_quantize` bit for bit (tests/quantizers/test_rtn_inplace.py).
"""

from __future__ import annotations

import torch

from qsens.quantizers.rtn_reference import check_rtn_args, rtn_fake_quantize

BLOCK_ELEMENTS = 1 << 17  # elements per block: 512 KB in float32, inside a core's L2 with its copy


def rtn_fake_quantize_(w: torch.Tensor, bits: int, group_size: int, symmetric: bool) -> torch.Tensor:
    """Overwrite a 2-D weight [rows, cols] (float32, float16 or bfloat16, any device) with its RTN
    quantize-dequantize; returns `w`. Equal bits to `rtn_fake_quantize(w, ...)`."""
    check_rtn_args(bits, group_size)
    if w.dim() != 2:
        raise ValueError(f"expected a 2-D weight [rows, cols], got shape {tuple(w.shape)}")
    rows, cols = w.shape
    gs = cols if group_size == -1 or group_size > cols else group_size
    full = cols // gs * gs
    spans = [(0, full, gs)] + ([(full, cols, cols - full)] if full < cols else [])
    with torch.no_grad():
        # scales and zeros of the whole weight first: a few small tensors, so the per-block work is 6 operations
        grids = [_grid(w[:, c0:c1].unflatten(1, (-1, width)), bits, symmetric) for c0, c1, width in spans]
        if any(grid is None for grid in grids):  # a non-finite weight: the reference, for its NaN semantics
            return w.copy_(rtn_fake_quantize(w, bits, group_size, symmetric))
        block_rows = max(1, BLOCK_ELEMENTS // cols)
        low, high = (-(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1) if symmetric else (0, 2**bits - 1)
        for r0 in range(0, rows, block_rows):
            r1 = min(rows, r0 + block_rows)
            for (c0, c1, width), (scale, zero) in zip(spans, grids):
                part = w[r0:r1, c0:c1].unflatten(1, (-1, width))
                t = part if part.dtype == torch.float32 else part.to(torch.float32)  # float32 in place, else a copy
                scale_b, zero_b = scale[r0:r1], zero[r0:r1]
                t.div_(scale_b).round_()
                if symmetric:
                    t.clamp_(low, high).add_(zero_b)
                else:
                    t.add_(zero_b).clamp_(low, high)
                t.sub_(zero_b).mul_(scale_b)
                if t is not part:
                    part.copy_(t)
    return w


def _grid(g: torch.Tensor, bits: int, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(scale, zero), float32 [rows, n, 1] each, of groups g [rows, n, width]; None if a group is not finite.

    min and max are taken in g's own dtype: converting to float32 is exact and monotonic, so it commutes with them.
    """
    lo, hi = g.amin(dim=-1).to(torch.float32), g.amax(dim=-1).to(torch.float32)  # NaN propagates, +-Inf shows
    if not bool(torch.isfinite(lo).all() and torch.isfinite(hi).all()):
        return None
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        amax = torch.maximum(-lo, hi)  # = max |g|, exactly
        amax = torch.where(amax == 0, torch.full_like(amax, float(qmax)), amax)
        scale = amax / torch.full_like(amax, float(qmax))
        zero = torch.full_like(scale, float(2 ** (bits - 1)))
    else:
        lo, hi = lo.clamp_(max=0.0), hi.clamp_(min=0.0)
        both_zero = lo == hi
        lo = torch.where(both_zero, torch.full_like(lo, -1.0), lo)
        hi = torch.where(both_zero, torch.full_like(hi, 1.0), hi)
        scale = (hi - lo) / torch.full_like(hi, float(2**bits - 1))
        zero = torch.round(-lo / scale)
    return scale[..., None], zero[..., None]
