"""What a stretch of work costs in memory and temp disk: peak RSS, peak GPU memory, peak temp-folder bytes.

Peak RSS is Linux's VmHWM, reset by writing 5 to /proc/self/clear_refs (so it measures this stretch, not the
process's whole life); elsewhere it falls back to the lifetime peak of getrusage. Temp disk: while the block
runs, `tempfile.tempdir` points at a fresh folder whose size a thread samples every `poll_s` seconds, so every
temp file written through `tempfile` (qsens', gptqmodel's save/reload) is counted at its peak.
"""

from __future__ import annotations

import contextlib
import os
import resource
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch


@dataclass
class Usage:
    """Peaks over one block, in bytes; gpu is None when no CUDA device was in use."""

    peak_rss_bytes: int = 0
    peak_gpu_bytes: int | None = None
    temp_disk_bytes: int = 0

    def as_row(self) -> dict:
        return {"peak_rss_bytes": self.peak_rss_bytes, "peak_gpu_bytes": self.peak_gpu_bytes,
                "temp_disk_bytes": self.temp_disk_bytes}


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark for this process; False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _proc_kib_field(path: str, field: str) -> int | None:
    """Bytes of a `field:  N kB` line of a /proc file (Linux), or None where there is none."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def peak_rss_bytes() -> int:
    """This process's peak resident set since the last reset (VmHWM), or its lifetime peak."""
    hwm = _proc_kib_field("/proc/self/status", "VmHWM")
    if hwm is not None:
        return hwm
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024


def folder_bytes(path: str | Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, f)).st_blocks * 512
    return total


def available_bytes(device: torch.device) -> int:
    """Memory that more resident models may take: free CUDA memory, or the host's MemAvailable."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    available = _proc_kib_field("/proc/meminfo", "MemAvailable")
    if available is not None:
        return available
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def model_bytes(model: torch.nn.Module) -> int:
    """Bytes of a model's parameters and buffers (shared tensors counted once)."""
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


@contextlib.contextmanager
def measured(device: torch.device, poll_s: float = 0.25) -> Iterator[Usage]:
    """Measure the block's peaks; the Usage it yields is filled in when the block ends."""
    usage = Usage()
    reset_peak_rss()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    saved = tempfile.tempdir
    stop = threading.Event()
    with tempfile.TemporaryDirectory(prefix="qsens-cell-tmp-") as root:
        peak = [0]

        def watch() -> None:
            while not stop.wait(poll_s):
                peak[0] = max(peak[0], folder_bytes(root))

        thread = threading.Thread(target=watch, daemon=True)
        tempfile.tempdir = root
        thread.start()
        try:
            yield usage
        finally:
            peak[0] = max(peak[0], folder_bytes(root))
            stop.set()
            thread.join()
            tempfile.tempdir = saved
            usage.temp_disk_bytes = peak[0]
            usage.peak_rss_bytes = peak_rss_bytes()
            if device.type == "cuda":
                usage.peak_gpu_bytes = int(torch.cuda.max_memory_allocated(device))
