"""The compare step of a sweep, fused: per batch the fp side once (log-sum-exp, argmax), then per quantized model
its loss, KL(fp || q) and argmax, each one pass over the vocabulary with no [n, V] temporary.

Why: the unfused form (logsumexp, p = exp(z - lse), then e = z_q - z_fp, p e, expm1(e), float64 casts) made
three fresh [n, V] float32 buffers for the fp side and several per quantized model; at V = 50,304 and 1,024
scored tokens a batch each is 206 MB, much of its cost page faults. Measured on one thread of this project's
AMD EPYC (Zen 3) machine, 1,024 x 50,304 logits: fp side 0.81 s unfused, 0.20 s fused (compiled); fp side and
one quantized model 1.06 s unfused (compiled KL), 0.47 s fused; eager unfused KL 2.8 s.

Math, per row (token) with z = fp logits, z_q = quantized logits, both float32 [V]:
    fp side      m = max_v z_v,  s = sum_v exp(z_v - m) (float64 sum),  lse = m + log s  (float64)
    per model    p_v = exp(z_v - m) / s,  c = z_q,a - z_a at fp's argmax a,  e_v = z_q,v - z_v - c,
                 A = sum_v p_v e_v,   B = sum_v p_v (expm1(e_v) - e_v)   (B's terms are >= 0: no cancellation)
                 S = A + B = sum_v p_v expm1(e_v) = exp(lse_q - c - lse) - 1
                 KL(fp || q) = log1p(S) - A = B + (log1p(S) - S),   nll_q = lse + c + log1p(S) - z_q[target]
The centre c changes neither KL nor nll (softmax ignores a shift of a row), but it keeps e small: a quantized row
whose logits all sit c above fp's would otherwise make A ~ c and B ~ e^c - 1 - c, and their float32 rounding
swamps a small KL (uncentred, at logit noise 1e-4 a shift of 0.5 gave KL 190% off, of 7 over 100x; centred 6e-7
and 4e-6 relative).
expm1(e) - e is evaluated as e^2 (1/2 + e/6 + e^2/24 + e^3/120) for |e| < 0.1 (truncation < 3e-7 relative) and
directly beyond (cancellation < 1.2e-6 relative); terms float32, sums float64. Against float64 log-softmaxes the
KL is within 5e-7 relative per token from |e| ~ 1e-4 (an 8-bit model, KL ~ 1e-8) to |e| ~ 1 (tests/metrics).
Subtracting two float32 log-softmaxes instead would leave ~1e-7 absolute noise, as large as an 8-bit model's KL.

Kernels: `kernels(elements)` gives the two row functions either compiled by torch.compile (inductor fuses each
into one loop per row: no temporaries at all) or eager, run over row chunks of ~EAGER_CHUNK elements so that
every temporary is ~1 MB, reused from the heap and in cache. Compiling costs seconds once per process
(inductor's on-disk cache makes later processes cheaper); it is done when a sweep has at least
QSENS_KL_COMPILE_MIN elements (n_targets x V x (1 + quantized models); default COMPILE_MIN), never when negative,
always at 0; once compiled, every later sweep of the process uses them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import torch

EAGER_CHUNK = 1 << 18  # elements per eager row chunk: 1 MB float32 temporaries
# Eager costs ~40 ns per element (V = 1,024) to ~25 ns (V = 50,304) on one thread, compiled ~10: compiling (~5-10
# s cold, once per process) pays from ~2e8 elements, i.e. a micro checkpoint's sweep (98K tokens x 1,024 x 4).
COMPILE_MIN = 2e8
SERIES_BELOW = 0.1  # |e| under which expm1(e) - e is taken from its series

_COMPILED: dict[str, object] = {}


def fp_terms(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """float32 [r, V] -> (m float32 [r, 1] row max, s float64 [r, 1] sum of exp(z - m), argmax int64 [r])."""
    m = z.amax(-1, keepdim=True)
    return m, torch.exp(z - m).double().sum(-1, keepdim=True), z.argmax(-1)


def q_terms(z: torch.Tensor, m: torch.Tensor, inv_s: torch.Tensor, z_q: torch.Tensor, c: torch.Tensor
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(A, B) float64 [r] of the module docstring and argmax int64 [r] of z_q, from float32 z, z_q [r, V], the
    fp side's m [r, 1] and 1/s [r, 1] and the centre c [r, 1] (all float32)."""
    e = (z_q - z).sub_(c)
    p = torch.exp(z - m) * inv_s
    series = e * e * (0.5 + e * (1 / 6 + e * (1 / 24 + e * (1 / 120))))
    t = torch.where(e.abs() < SERIES_BELOW, series, torch.expm1(e) - e)
    return (p * e).double().sum(-1), (p * t).double().sum(-1), z_q.argmax(-1)


@dataclass(frozen=True)
class Kernels:
    fp: Callable
    q: Callable
    compiled: bool

    def rows(self, V: int) -> int:
        """Rows per chunk: the compiled kernels make no temporaries, so all rows at once."""
        return 1 << 30 if self.compiled else max(1, EAGER_CHUNK // max(V, 1))


EAGER = Kernels(fp_terms, q_terms, compiled=False)


def kernels(elements: float) -> Kernels:
    """The compiled kernels for a sweep of `elements` (see the module docstring), else the eager ones; eager also
    once compiling has failed in this process. Once compiled in this process they serve every later sweep, however
    small: the compile is paid, and eager is ~4x the cost per element (a micro suite's WikiText-2 sweeps, under
    the threshold, ran eager after its novels' sweeps had compiled them)."""
    threshold = float(os.environ.get("QSENS_KL_COMPILE_MIN", COMPILE_MIN))
    if threshold < 0 or _COMPILED.get("failed"):
        return EAGER
    if elements < threshold and "kernels" not in _COMPILED:
        return EAGER
    if "kernels" not in _COMPILED:
        _COMPILED["kernels"] = Kernels(torch.compile(fp_terms, dynamic=True), torch.compile(q_terms, dynamic=True),
                                       compiled=True)
    return _COMPILED["kernels"]


def _guarded(ks: Kernels, name: str, *args):
    """Run kernel `name` of `ks`; a compiler failure (no C++ toolchain) falls back to eager for the process."""
    if ks.compiled and _COMPILED.get("failed"):
        ks = EAGER
    try:
        return getattr(ks, name)(*args), ks
    except Exception:  # noqa: BLE001 - inductor raises many types; eager computes the same thing
        if not ks.compiled:
            raise
        _COMPILED["failed"] = True
        return getattr(EAGER, name)(*args), EAGER


@dataclass
class FpSide:
    """The fp side of one batch, shared by every quantized model. z: float32 [n, V]; m, inv_s: float32 [n, 1];
    lse: float64 [n]; argmax: int64 [n]."""

    z: torch.Tensor
    m: torch.Tensor
    inv_s: torch.Tensor
    lse: torch.Tensor
    argmax: torch.Tensor

    def nll(self, targets: torch.Tensor) -> torch.Tensor:
        """float64 [n] losses at int64 targets [n]."""
        return self.lse - _at(self.z, targets)


def _at(z: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return z.gather(1, targets[:, None].to(z.device))[:, 0].double()


def fp_side(z: torch.Tensor, ks: Kernels = EAGER) -> FpSide:
    """The fp side (module docstring) of float32 logits z [n, V]."""
    n, V = z.shape
    m = torch.empty(n, 1, dtype=z.dtype, device=z.device)
    s = torch.empty(n, 1, dtype=torch.float64, device=z.device)
    argmax = torch.empty(n, dtype=torch.int64, device=z.device)
    step = ks.rows(V)
    for a in range(0, n, step):
        (m[a : a + step], s[a : a + step], argmax[a : a + step]), ks = _guarded(ks, "fp", z[a : a + step])
    return FpSide(z, m, (1.0 / s).to(z.dtype), (m.double() + torch.log(s))[:, 0], argmax)


def compare(fp: FpSide, z_q: torch.Tensor, targets: torch.Tensor, ks: Kernels = EAGER
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """float64 [n] quantized losses and KL(fp || q), int64 [n] argmax of z_q, from float32 logits z_q [n, V]."""
    n, V = z_q.shape
    c = (z_q.gather(1, fp.argmax[:, None]) - fp.z.gather(1, fp.argmax[:, None]))  # the centre [n, 1] (docstring)
    A = torch.empty(n, dtype=torch.float64, device=z_q.device)
    B = torch.empty_like(A)
    argmax = torch.empty(n, dtype=torch.int64, device=z_q.device)
    step = ks.rows(V)
    for a in range(0, n, step):
        sl = slice(a, a + step)
        (A[sl], B[sl], argmax[sl]), ks = _guarded(ks, "q", fp.z[sl], fp.m[sl], fp.inv_s[sl], z_q[sl], c[sl])
    S = A + B
    log1p_s = torch.log1p(S)
    kl = B + (log1p_s - S)
    nll = fp.lse + c[:, 0].double() + log1p_s - _at(z_q, targets)
    bad = ~(torch.isfinite(kl) & torch.isfinite(nll))
    if bad.any():  # expm1 overflowed (a logit of q far above fp's): the direct float64 forms are safe there
        lp, lq = torch.log_softmax(fp.z[bad].double(), -1), torch.log_softmax(z_q[bad].double(), -1)
        kl[bad] = (lp.exp() * (lp - lq)).sum(-1)
        nll[bad] = -lq.gather(1, targets[bad.to(targets.device)][:, None].to(lq.device))[:, 0]
    return nll, kl, argmax


def compare_reference(z: torch.Tensor, z_q: torch.Tensor, targets: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`compare` in float64 log-softmaxes, the direct forms (slow; for tests): nll_q, KL(fp || q), argmax of z_q."""
    lp, lq = torch.log_softmax(z.double(), -1), torch.log_softmax(z_q.double(), -1)
    return -lq.gather(1, targets[:, None])[:, 0], (lp.exp() * (lp - lq)).sum(-1), z_q.argmax(-1)
