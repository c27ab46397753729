"""Fixtures for the CUDA kernel tests, built with g++ and loaded with ctypes: the host harness
(`cuda/rtn_host.cpp` + `cuda/rtn_math.cuh`) and the emulated kernel (`cuda/rtn_kernel.cu` itself on CPU
coroutine "lanes", see `emu/emu_cuda.h`).

The harness has no torch headers, so it builds in about a second on a 2-core CI machine (a
`torch.utils.cpp_extension` build of the same code takes ~30 s, most of it parsing torch's headers); it is
cached by a hash of its sources and flags under `$XDG_CACHE_HOME/qsens/host_harness/`.
"""

from __future__ import annotations

import ctypes
import hashlib
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from qsens.quantizers.isolation import qsens_cache_dir
from qsens.quantizers.rtn_kernel import CUDA_DIR

# -ffp-contract=off: no FMA contraction; no -ffast-math: IEEE division and NaN/Inf semantics (the kernel is
# built with the matching nvcc flags, see rtn_kernel.NVCC_FLAGS).
HOST_FLAGS = ["-O2", "-ffp-contract=off", "-fno-fast-math", "-std=c++17", "-shared", "-fPIC"]
HOST_SOURCES = ("rtn_host.cpp", "rtn_math.cuh")


def build_host_harness() -> Path:
    """Compile the harness if its cached build is missing; returns the shared library's path."""
    gxx = shutil.which("g++")
    if gxx is None:
        pytest.skip("g++ not found: cannot build the host harness")
    h = hashlib.sha256(" ".join(HOST_FLAGS).encode())
    for name in HOST_SOURCES:
        h.update((CUDA_DIR / name).read_bytes())
    lib = qsens_cache_dir("host_harness") / f"rtn_host-{h.hexdigest()[:16]}.so"
    if not lib.exists():
        tmp = lib.with_suffix(f".tmp{id(h)}.so")
        subprocess.run([gxx, *HOST_FLAGS, f"-I{CUDA_DIR}", str(CUDA_DIR / "rtn_host.cpp"), "-o", str(tmp)],
                       check=True, capture_output=True, text=True)
        tmp.replace(lib)  # atomic: concurrent test runs never load a half-written library
    return lib


class HostRTN:
    """The header math on the CPU. Inputs/outputs are torch tensors; shapes as `rtn_reference`."""

    def __init__(self, lib_path: Path) -> None:
        self.lib = ctypes.CDLL(str(lib_path))
        f = self.lib.rtn_host_quantize
        f.restype = ctypes.c_int
        f.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_int, ctypes.c_int,
                      ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]

    def quantize(self, w: torch.Tensor, bits: int, group_size: int, symmetric: bool):
        """w [rows, cols] any float dtype -> (deq in w.dtype, packed uint8, scales f32, zeros f32)."""
        rows, cols = w.shape
        w32 = w.detach().to("cpu", torch.float32).contiguous()  # exact for fp16/bf16
        gs = cols if group_size == -1 else group_size
        n_groups = -(-cols // gs)
        deq = torch.empty(rows, cols, dtype=torch.float32)
        packed = torch.empty(rows, -(-cols // 8) * bits, dtype=torch.uint8)
        scales = torch.empty(rows, n_groups, dtype=torch.float32)
        zeros = torch.empty(rows, n_groups, dtype=torch.float32)
        rc = self.lib.rtn_host_quantize(w32.data_ptr(), rows, cols, group_size, bits, int(symmetric),
                                        deq.data_ptr(), packed.data_ptr(), scales.data_ptr(), zeros.data_ptr())
        assert rc == 0, "rtn_host_quantize rejected its arguments"
        # float32 -> w.dtype rounds to nearest even, as the kernel's __float2half_rn / __float2bfloat16_rn
        return deq.to(w.dtype), packed, scales, zeros


@pytest.fixture(scope="session")
def host_rtn() -> HostRTN:
    return HostRTN(build_host_harness())



# ---- the kernel itself, emulated on the CPU ----------------------------------------------------------------
EMU_DIR = Path(__file__).parent / "emu"
EMU_FLAGS = ["-O1", "-ffp-contract=off", "-fno-fast-math", "-std=c++20", "-shared", "-fPIC",
             "-Wno-unknown-pragmas"]
_LAUNCH = re.compile(r"(\w+<[^<>;]*>)<<<([^>]*)>>>\(([^;]*)\);", re.S)


def emulated_kernel_source() -> str:
    """cuda/rtn_kernel.cu with CUDA headers dropped and `k<<<g, b, s, st>>>(args);` as an emu_launch call."""
    src = (CUDA_DIR / "rtn_kernel.cu").read_text()
    src = re.sub(r"^#include <cuda\w*\.h>\n", "", src, flags=re.M)
    src, n = _LAUNCH.subn(lambda m: f"emu_launch({m[2]}, [&] {{ {m[1]}({m[3]}); }});", src)
    assert n >= 4, f"expected the kernel's launches to rewrite, found {n}"
    return src


def build_emulated_kernel() -> Path:
    gxx = shutil.which("g++")
    if gxx is None:
        pytest.skip("g++ not found: cannot build the emulated kernel")
    src = emulated_kernel_source()
    h = hashlib.sha256((" ".join(EMU_FLAGS) + src).encode())
    for path in (EMU_DIR / "emu_cuda.h", EMU_DIR / "emu_main.cpp", CUDA_DIR / "rtn_math.cuh", CUDA_DIR / "rtn_kernel.h"):
        h.update(path.read_bytes())
    out_dir = qsens_cache_dir("host_harness", f"emu-{h.hexdigest()[:16]}")
    lib = out_dir / "rtn_emu.so"
    if not lib.exists():
        (out_dir / "rtn_kernel_emu.inc").write_text(src)
        tmp = out_dir / f"rtn_emu.tmp{id(h)}.so"
        subprocess.run([gxx, *EMU_FLAGS, f"-I{out_dir}", f"-I{EMU_DIR}", f"-I{CUDA_DIR}", str(EMU_DIR / "emu_main.cpp"),
                        "-o", str(tmp)], check=True, capture_output=True, text=True)
        tmp.replace(lib)
    return lib


class EmulatedKernel:
    """cuda/rtn_kernel.cu's kernels run on CPU threads (emu/emu_cuda.h); same outputs as the binding."""

    DTYPES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}

    def __init__(self, lib_path: Path) -> None:
        self.lib = ctypes.CDLL(str(lib_path))
        p, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
        self.lib.rtn_emu_launch.argtypes = [p, i32, i64, i64, i64, i32, i32, p, p, p, p]
        self.lib.rtn_emu_uses_group_path.argtypes = [p, p, i64, i64]

    def uses_group_path(self, w: torch.Tensor, deq: torch.Tensor | None, group_size: int) -> bool:
        return bool(self.lib.rtn_emu_uses_group_path(w.data_ptr(), deq.data_ptr() if deq is not None else None,
                                                     w.shape[1], group_size))

    def fake_quantize(self, w: torch.Tensor, bits: int, group_size: int, symmetric: bool) -> torch.Tensor:
        deq = torch.empty_like(w)
        rows, cols = w.shape
        gs = cols if group_size == -1 else group_size
        scratch = torch.full((2, rows, -(-cols // gs)), 12345.0)  # garbage the row-wise path must overwrite
        rc = self.lib.rtn_emu_launch(w.data_ptr(), self.DTYPES[w.dtype], rows, cols, group_size, bits, int(symmetric),
                                     deq.data_ptr(), None, scratch[0].data_ptr(), scratch[1].data_ptr())
        assert rc == 0
        return deq

    def quantize(self, w: torch.Tensor, bits: int, group_size: int, symmetric: bool):
        rows, cols = w.shape
        gs = cols if group_size == -1 else group_size
        packed = torch.full((rows, -(-cols // 8) * bits), 0xA5, dtype=torch.uint8)  # every byte must be written
        scales = torch.full((rows, -(-cols // gs)), 12345.0)
        zeros = torch.full((rows, -(-cols // gs)), 12345.0)
        rc = self.lib.rtn_emu_launch(w.data_ptr(), self.DTYPES[w.dtype], rows, cols, group_size, bits, int(symmetric),
                                     None, packed.data_ptr(), scales.data_ptr(), zeros.data_ptr())
        assert rc == 0
        return packed, scales, zeros


@pytest.fixture(scope="session")
def emulated_kernel() -> EmulatedKernel:
    return EmulatedKernel(build_emulated_kernel())
