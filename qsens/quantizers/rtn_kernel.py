"""The RTN CUDA kernel (`cuda/`): JIT build, availability, and the Python entry points.

Equivalent to `rtn_reference.py` (beside this file): same codes, same scales/zeros, dequantized values
bit-for-bit (NaN payloads aside) -- the per-element math is `cuda/rtn_math.cuh`, which the CPU tests
compile with g++ and compare with the reference. Where the kernel cannot run (CPU tensor, no GPU, no nvcc,
build failure, a dtype other than float32/float16/bfloat16) these functions warn once and run the
reference instead; `kernel_status()` and `kernel_unavailable_reason(w)` say why. The quantizer (`rtn.py`) does
not rely on that fallback: it asks `kernel_unavailable_reason` per layer, refuses a forced `backend: cuda` that
cannot run on any layer, and records which layers ran which backend.

The build is cached under `$XDG_CACHE_HOME/qsens/torch_extensions/rtn-<hash>` (hash of the sources, torch
and CUDA versions), so only the first call on a machine compiles (about a minute).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from types import ModuleType

import torch

from qsens.quantizers.rtn_reference import check_rtn_args, rtn_fake_quantize, rtn_quantize

CUDA_DIR = Path(__file__).resolve().parents[2] / "cuda"
SOURCES = ("rtn_binding.cpp", "rtn_kernel.cu")
HEADERS = ("rtn_kernel.h", "rtn_math.cuh")
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Bit-exactness with the reference needs IEEE division, no FMA contraction and no flush-to-zero:
# never add --use_fast_math here.
NVCC_FLAGS = ["-O3", "-fmad=false", "-prec-div=true", "-prec-sqrt=true", "-ftz=false", "-lineinfo"]
CXX_FLAGS = ["-O2", "-ffp-contract=off"]


@dataclass(frozen=True)
class PackedRTN:
    """Packed result of `rtn_quantize_kernel` for a weight [rows, cols] with `n_groups` groups per row.

    packed: uint8 [rows, ceil(cols/8) * bits]; each run of 8 codes takes `bits` bytes, code j of the run in
        bits [j*bits, (j+1)*bits) of those bytes read as one little-endian integer (4 bits: low nibble
        first). Codes past `cols` (row padding) are 0. `unpack_codes` inverts it.
    scales, zeros: float32 [rows, n_groups], as `rtn_reference.RTNQuantized`.
    """

    packed: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor
    bits: int
    group_size: int
    symmetric: bool
    cols: int


def _source_hash() -> str:
    h = hashlib.sha256()
    for name in SOURCES + HEADERS:
        h.update((CUDA_DIR / name).read_bytes())
    h.update(f"{torch.__version__} {torch.version.cuda} {NVCC_FLAGS} {CXX_FLAGS}".encode())
    return h.hexdigest()[:16]


@lru_cache(maxsize=1)
def _load() -> tuple[ModuleType | None, str]:
    """(extension module, "ok") or (None, why not). Builds at most once per process."""
    if torch.version.cuda is None:
        return None, "this torch build has no CUDA support (CPU-only torch)"
    if not torch.cuda.is_available():
        return None, "no CUDA device visible (torch.cuda.is_available() is False)"
    from torch.utils import cpp_extension

    if cpp_extension.CUDA_HOME is None:
        return None, "CUDA toolkit (nvcc) not found: install it or set CUDA_HOME"
    from qsens.quantizers.isolation import qsens_cache_dir

    digest = _source_hash()
    build_dir = qsens_cache_dir("torch_extensions", f"rtn-{digest}")
    try:
        module = cpp_extension.load(
            name=f"qsens_rtn_{digest}",
            sources=[str(CUDA_DIR / s) for s in SOURCES],
            extra_include_paths=[str(CUDA_DIR)],
            extra_cflags=CXX_FLAGS,
            extra_cuda_cflags=NVCC_FLAGS,
            build_directory=str(build_dir),
            verbose=os.environ.get("QSENS_VERBOSE_BUILD") == "1",
        )
    except (RuntimeError, OSError, ImportError, subprocess.CalledProcessError) as exc:
        return None, (f"building the RTN kernel failed ({type(exc).__name__}: {exc}); "
                      "set QSENS_VERBOSE_BUILD=1 to see the compiler output")
    return module, "ok"


def kernel_status() -> tuple[bool, str]:
    """(True, "ok") when the CUDA kernel is built and loadable here, else (False, the reason)."""
    module, reason = _load()
    return module is not None, reason


def kernel_unavailable_reason(w: torch.Tensor) -> str | None:
    """None when the kernel can quantize weight `w` here, else why it cannot (device, dtype or build)."""
    module, reason = _kernel_for(w)
    return None if module is not None else reason


def _kernel_for(w: torch.Tensor) -> tuple[ModuleType | None, str]:
    if w.device.type != "cuda":
        return None, f"weight is on {w.device}, not CUDA"
    if w.dtype not in SUPPORTED_DTYPES:
        return None, f"dtype {w.dtype} is not one of float32/float16/bfloat16"
    return _load()


@lru_cache(maxsize=None)
def _warn_fallback(reason: str) -> None:
    warnings.warn(f"RTN CUDA kernel not used ({reason}); running the torch reference instead", stacklevel=3)


def _check(w: torch.Tensor, bits: int, group_size: int) -> None:
    check_rtn_args(bits, group_size)
    if w.dim() != 2:
        raise ValueError(f"expected a 2-D weight [rows, cols], got shape {tuple(w.shape)}")


def rtn_fake_quantize_kernel(w: torch.Tensor, bits: int, group_size: int, symmetric: bool) -> torch.Tensor:
    """Quantize-dequantize w [rows, cols] (float32/float16/bfloat16, CUDA): same shape and dtype.

    Equivalent to `rtn_reference.rtn_fake_quantize` (which runs instead where the kernel cannot).
    """
    _check(w, bits, group_size)
    module, reason = _kernel_for(w)
    if module is None:
        _warn_fallback(reason)
        return rtn_fake_quantize(w, bits, group_size, symmetric)
    return module.fake_quantize(w.contiguous(), bits, group_size, symmetric)


def rtn_quantize_kernel(w: torch.Tensor, bits: int, group_size: int, symmetric: bool) -> PackedRTN:
    """Packed codes + float32 scales/zeros of w [rows, cols]; layout in `PackedRTN`.

    Equivalent to `pack_codes(rtn_reference.rtn_quantize(...).codes, bits)` and its scales/zeros.
    """
    _check(w, bits, group_size)
    module, reason = _kernel_for(w)
    if module is None:
        _warn_fallback(reason)
        q = rtn_quantize(w, bits, group_size, symmetric)
        return PackedRTN(pack_codes(q.codes, bits), q.scales, q.zeros, bits, group_size, symmetric, w.shape[1])
    packed, scales, zeros = module.quantize(w.contiguous(), bits, group_size, symmetric)
    return PackedRTN(packed, scales, zeros, bits, group_size, symmetric, w.shape[1])


def _octet_bit_spans(bits: int):
    """For each code j of an octet and each byte k it touches: (j, k, shift of code j relative to byte k)."""
    for j in range(8):
        for k in range(j * bits // 8, (j * bits + bits - 1) // 8 + 1):
            yield j, k, j * bits - 8 * k


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """uint8 codes [rows, cols] (each < 2**bits) -> packed uint8 [rows, ceil(cols/8)*bits] (layout: `PackedRTN`)."""
    rows, cols = codes.shape
    n_oct = -(-cols // 8)
    c = torch.zeros(rows, n_oct * 8, dtype=torch.int32, device=codes.device)
    c[:, :cols] = codes.to(torch.int32)
    c = c.reshape(rows, n_oct, 8)
    out = torch.zeros(rows, n_oct, bits, dtype=torch.int32, device=codes.device)
    for j, k, shift in _octet_bit_spans(bits):
        part = c[..., j] << shift if shift >= 0 else c[..., j] >> -shift
        out[..., k] |= part & 0xFF
    return out.to(torch.uint8).reshape(rows, n_oct * bits)


def unpack_codes(packed: torch.Tensor, bits: int, cols: int) -> torch.Tensor:
    """packed uint8 [rows, ceil(cols/8)*bits] -> uint8 codes [rows, cols]; inverse of `pack_codes`."""
    rows = packed.shape[0]
    n_oct = -(-cols // 8)
    if packed.shape[1] != n_oct * bits:
        raise ValueError(f"packed has {packed.shape[1]} bytes per row, "
                         f"expected {n_oct * bits} for {cols} cols at {bits} bits")
    b = packed.reshape(rows, n_oct, bits).to(torch.int32)
    codes = torch.zeros(rows, n_oct, 8, dtype=torch.int32, device=packed.device)
    for j, k, shift in _octet_bit_spans(bits):
        codes[..., j] |= b[..., k] >> shift if shift >= 0 else b[..., k] << -shift
    codes &= (1 << bits) - 1
    return codes.reshape(rows, n_oct * 8)[:, :cols].to(torch.uint8)
