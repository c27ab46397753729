"""Which code path torch's fp32 matmuls take on this CPU, and the one switch qsens makes: MKL's Intel path on AMD.

torch's CPU wheels link MKL statically and export its `mkl_serv_intel_cpu_true`. MKL runs its AVX-512 sgemm
kernels only where that function says the CPU is Intel, so on an AMD CPU with AVX-512 (Zen 4/5) every matmul takes
the AVX2 kernels: issue 20 measured 92 GFLOP/s single-thread sgemm as shipped against 193-210 GFLOP/s with the
function answering 1 (oneDNN, which torch also ships, reaches the same 200, but only behind its own linear op, not
behind `mm`/`bmm`/autograd). torch offers no setting that changes MKL's check (`MKL_ENABLE_INSTRUCTIONS` only
lowers the ISA; `MKL_DEBUG_CPU_TYPE` is gone since MKL 2020.1), so the switch is a one-line preloaded library,
`int mkl_serv_intel_cpu_true(void) { return 1; }`, built with the system C compiler at first use into the cache
folder and applied by re-executing the process with `LD_PRELOAD` (the dynamic loader resolves the symbol before
torch's MKL starts). Only rounding changes: the same products, other blocking.

Routes (`route()`, recorded with every training state and checkpoint): `mkl-intel-path` (MKL takes its Intel
path: the shim is loaded in this process, or the CPU is an Intel one, where MKL picks that path by itself) or
`default` (MKL's non-Intel path, or no MKL). The route names the code path, not the machine: h48 stable-run
checkpoints trained on a Zen 5 with the shim were retrained bit for bit on an Intel Xeon without it (2026-12-03,
checkpoints/gutenberg-amended/TRAINING.md), so a run may resume on either. `QSENS_BLAS` picks: `auto` (default: the shim on AMD CPUs, `shim_helps()`), `shim` (always,
e.g. to measure it), `off` (never). When the compiler or the loader fails, the route is `default` with a warning
(the fallback); a resumed run refuses a route other than the one it started with.

Layer: ground (no qsens imports); the trainer, the benchmarks and `qsens run`/`qsens nightly` use it, and
the runner records the route with every cell.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

ENV = "QSENS_BLAS"
CHOICES = ("auto", "shim", "off")
SHIM_SOURCE = "int mkl_serv_intel_cpu_true(void) { return 1; }\n"
INTEL_PATH, DEFAULT = "mkl-intel-path", "default"
_REEXEC_MARK = "QSENS_BLAS_REEXECUTED"  # set in the re-executed process: never loop


def cpu_features(cpuinfo: str | None = None) -> tuple[str, set[str]]:
    """(vendor id, flags) of the first CPU in /proc/cpuinfo (('', set()) where there is none, e.g. macOS)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return "", set()
    vendor, flags = "", set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "vendor_id" and not vendor:
            vendor = value.strip()
        elif key == "flags" and not flags:
            flags = set(value.split())
    return vendor, flags


def torch_uses_mkl() -> bool:
    import torch

    return bool(torch.backends.mkl.is_available())


def shim_helps(cpuinfo: str | None = None) -> bool:
    """True on AMD CPUs, where MKL takes its non-Intel path. With AVX-512 (Zen 4/5) that path skips the AVX-512
    kernels (issue 20: 92 vs 193-210 GFLOP/s); on an AVX2-only Zen 3 the Intel path's AVX2 kernels were still
    1.43x faster on h32's training GEMMs and equal on 1024^3 (`qsens bench train --compare-blas`, interleaved)."""
    vendor, _ = cpu_features(cpuinfo)
    return vendor == "AuthenticAMD"


def choice() -> str:
    value = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if value not in CHOICES:
        raise ValueError(f"environment variable {ENV}={value!r}: allowed values are {', '.join(CHOICES)}")
    return value


def wanted() -> bool:
    """Whether this process should run with the shim (QSENS_BLAS and the CPU), given torch uses MKL."""
    pick = choice()
    if pick == "off":
        return False
    return (pick == "shim" or shim_helps()) and sys.platform.startswith("linux") and torch_uses_mkl()


def cache_dir() -> Path:
    """`$XDG_CACHE_HOME/qsens/blas` (default `~/.cache/...`), the root quantizers.isolation.qsens_cache_dir uses."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "qsens" / "blas"


def shim_library(folder: Path | None = None) -> Path | None:
    """The compiled shim (built on first use, keyed by its source); None when no C compiler can build it."""
    folder = folder or cache_dir()
    lib = folder / f"mkl-intel-path-{hashlib.sha256(SHIM_SOURCE.encode()).hexdigest()[:12]}.so"
    if lib.is_file():
        return lib
    compiler = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    src, tmp = lib.with_suffix(f".{os.getpid()}.c"), lib.with_suffix(f".{os.getpid()}.tmp")
    src.write_text(SHIM_SOURCE)
    try:
        done = subprocess.run([compiler, "-O2", "-shared", "-fPIC", "-o", str(tmp), str(src)], capture_output=True,
                              text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return None
    finally:
        src.unlink(missing_ok=True)
    if done.returncode != 0:
        tmp.unlink(missing_ok=True)
        return None
    tmp.replace(lib)  # atomic: several processes may build it at once
    return lib


def shim_loaded() -> bool:
    """Whether a qsens shim library is mapped into this process."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return False
    return "mkl-intel-path-" in maps


def route() -> str:
    """The BLAS route of this process: 'mkl-intel-path' (the shim, or an Intel CPU: module doc) or 'default'."""
    return INTEL_PATH if shim_loaded() or native_intel_path() else DEFAULT


def native_intel_path(cpuinfo: str | None = None) -> bool:
    """Whether MKL takes its Intel path here without the shim: torch uses MKL and the CPU is an Intel one."""
    return cpu_features(cpuinfo)[0] == "GenuineIntel" and torch_uses_mkl()


def shim_env(base: dict[str, str] | None = None) -> dict[str, str] | None:
    """`base` (default os.environ) with the shim added to LD_PRELOAD, or None when it cannot be built."""
    lib = shim_library()
    if lib is None:
        return None
    env = dict(os.environ if base is None else base)
    env["LD_PRELOAD"] = " ".join([str(lib)] + [p for p in env.get("LD_PRELOAD", "").split() if p])
    return env


def plain_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """`base` (default os.environ) on the default route: the shim removed from LD_PRELOAD, QSENS_BLAS=off. A child
    of a re-executed process inherits its LD_PRELOAD, so a plain copy of the environment would still run the shim."""
    env = dict(os.environ if base is None else base)
    kept = [p for p in env.get("LD_PRELOAD", "").split() if "mkl-intel-path-" not in Path(p).name]
    if kept:
        env["LD_PRELOAD"] = " ".join(kept)
    else:
        env.pop("LD_PRELOAD", None)
    env.pop(_REEXEC_MARK, None)
    env[ENV] = "off"
    return env


def worker_env() -> dict[str, str]:
    """Environment variables that give a process started by someone else (a Ray worker, which its raylet starts)
    this process's route: its LD_PRELOAD when the shim is loaded here, else nothing. Where the shim's path does not
    exist (another node without this cache), the loader ignores it and that process reports 'default'."""
    preload = os.environ.get("LD_PRELOAD", "")
    return {"LD_PRELOAD": preload} if shim_loaded() and "mkl-intel-path-" in preload else {}


def ensure(reexec: bool = True) -> str:
    """Call first thing in a training, scoring or benchmark process: re-executes it (same interpreter, same
    `sys.orig_argv`) with the shim preloaded where `wanted()` and it is not loaded yet; returns the route this process
    runs with. `reexec=False` (the CLI called in-process, e.g. `qsens.cli.main([...])` from pytest or a notebook:
    a restart would rerun that program's whole command line) only reports the route, whatever it is."""
    if not reexec or not wanted() or shim_loaded():
        return route()
    env = shim_env() if not os.environ.get(_REEXEC_MARK) else None
    if env is None:
        warnings.warn("qsens.blas: MKL's Intel path wanted, but the shim could not be built or loaded (no C "
                      "compiler, or the loader ignored LD_PRELOAD); running on the default path", stacklevel=2)
        return route()
    env[_REEXEC_MARK] = "1"
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, list(sys.orig_argv), env)
    raise AssertionError("unreachable")  # pragma: no cover
