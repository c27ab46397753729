"""CI compiles the kernel even without a GPU, so a broken kernel fails CI.

* `cuda/rtn_kernel.cu` (plain CUDA, no torch headers) is compiled with nvcc to SASS for sm_80 and sm_90,
  with the flags the JIT build uses (`rtn_kernel.NVCC_FLAGS`) and the half/bfloat16 macros torch adds.
* Its PTX is checked for what bit-exactness needs: only IEEE divisions (div.rn.f32, never div.approx/full),
  round-half-even (cvt.rni.f32.f32), no fused multiply-add in the quantization math.
* The fast (group) path must not spill registers: a spill would cost bandwidth on every element.
* The binding `cuda/rtn_binding.cpp` is parsed by g++ against torch's headers (-fsyntax-only). CPU torch
  lacks one generated CUDA header (`c10/cuda/impl/cuda_cmake_macros.h`); an empty stand-in is enough to
  parse the declarations the binding uses.

Skipped, with the reason, when nvcc (or g++) is absent. One nvcc run (its PTX kept for the PTX checks) and one g++ run.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest

from qsens.quantizers.rtn_kernel import CUDA_DIR, NVCC_FLAGS

ARCHS = ("80", "90")
TORCH_NVCC_DEFINES = ["-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__",
                      "-D__CUDA_NO_BFLOAT16_CONVERSIONS__", "-D__CUDA_NO_HALF2_OPERATORS__"]


def _nvcc() -> str:
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc not found on PATH: the kernel compile check needs the CUDA toolkit")
    return nvcc


def _cuda_include(nvcc: str) -> Path:
    """The toolkit's include directory, as nvcc itself reports it (`--dryrun` prints TOP=...)."""
    out = subprocess.run([nvcc, "--dryrun", "-x", "cu", "-c", "-", "-o", "/dev/null"], input="",
                         capture_output=True, text=True).stderr
    top = re.search(r"^#\$ TOP=(\S+)", out, re.M)
    assert top, f"cannot find the CUDA toolkit root in nvcc --dryrun output:\n{out}"
    return Path(top.group(1)).resolve() / "include"


def _run(cmd: list[str]) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(cmd)}\nfailed:\n{proc.stderr[-6000:]}"
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> Path:
    """nvcc -c for every arch in ARCHS with the intermediate files kept; returns the folder holding ptxas'
    resource report (-Xptxas -v) as ptxas.log and the PTX of each arch (rtn_kernel.compute_XX.ptx: the PTX
    `nvcc --ptx -arch=compute_XX` writes, byte-identical with nvcc 13.0; one compile instead of two saves ~3 of
    ~19 CPU-seconds)."""
    folder = tmp_path_factory.mktemp("nvcc")
    gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in ARCHS]
    log = _run([_nvcc(), "-c", str(CUDA_DIR / "rtn_kernel.cu"), "-o", str(folder / "rtn_kernel.o"), "-std=c++20",
                *NVCC_FLAGS, *TORCH_NVCC_DEFINES, *gencode, "-Xptxas", "-v", "--keep", "--keep-dir", str(folder)])
    (folder / "ptxas.log").write_text(log)
    return folder


@pytest.fixture(scope="module")
def sass_log(compiled) -> str:
    return (compiled / "ptxas.log").read_text()


@pytest.fixture(scope="module")
def ptx(compiled) -> str:
    path = compiled / f"rtn_kernel.compute_{ARCHS[-1]}.ptx"
    assert path.is_file(), f"nvcc --keep left no {path.name}: {sorted(p.name for p in compiled.iterdir())}"
    return path.read_text()


def test_kernel_compiles_for_sm80_and_sm90(sass_log):
    for arch in ARCHS:
        assert f"for 'sm_{arch}'" in sass_log, f"no code generated for sm_{arch}"


def test_group_path_does_not_spill(sass_log):
    reports = re.findall(r"Compiling entry function '(\S+)' for '(sm_\d+)'.*?(\d+) bytes spill stores", sass_log, re.S)
    group = [(name, arch, int(n)) for name, arch, n in reports if "group_kernel" in name]
    assert len(group) == 3 * 3 * 2 * len(ARCHS), "expected 3 dtypes x 3 chunk counts x 2 modes per arch"
    assert all(n == 0 for _, _, n in group), [g for g in group if g[2]]


def test_ptx_uses_ieee_division_and_round_half_even(ptx):
    assert "div.rn.f32" in ptx
    assert not re.search(r"div\.(approx|full)\.", ptx), "approximate division: was fast-math enabled?"
    assert "cvt.rni.f32.f32" in ptx, "rintf (round half to even) not found"
    assert "fma.rn.f32" not in ptx, "a multiply-add was contracted: build with -fmad=false"


@pytest.fixture(scope="module", autouse=True)
def binding_parse(tmp_path_factory):
    """g++ -fsyntax-only of the binding, started before the nvcc compile so that the two run side by side (each
    is single-threaded; CI has 2 cores): yields (command, process) or None without g++; the test waits for it."""
    gxx = shutil.which("g++")
    if gxx is None:
        yield None
        return
    from torch.utils.cpp_extension import include_paths

    folder = tmp_path_factory.mktemp("binding")
    shim = folder / "c10" / "cuda" / "impl"
    shim.mkdir(parents=True)
    (shim / "cuda_cmake_macros.h").write_text("// stand-in for the header CPU torch does not ship\n")
    includes = [f"-I{p}" for p in include_paths()] + [f"-I{sysconfig.get_paths()['include']}", f"-I{folder}",
                                                      f"-I{_cuda_include(_nvcc())}", f"-I{CUDA_DIR}"]
    cmd = [gxx, "-fsyntax-only", "-std=c++20", "-Wall", "-Werror=return-type", *includes,
           "-DTORCH_EXTENSION_NAME=qsens_rtn_syntax", str(CUDA_DIR / "rtn_binding.cpp")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        yield cmd, proc
    finally:
        if proc.poll() is None:  # a run that deselected the test below
            proc.kill()
        proc.communicate()


def test_binding_parses_against_torch_headers(binding_parse):
    if binding_parse is None:
        pytest.skip("g++ not found")
    cmd, proc = binding_parse
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, f"{' '.join(cmd)}\nfailed:\n{err[-6000:]}"
