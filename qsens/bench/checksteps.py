"""What the GPU check's steps share (qsens.bench.gpucheck, qsens.bench.scalecheck): a command run under the check's
deadline, a suite file written for a step, and the figures of the cells a step stored."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


# perf_counter() time by which every command must end (--budget); None: each step's own limits only
DEADLINE: list[float | None] = [None]


def run_command(args: list[str], timeout: int, cwd: Path = REPO, env: dict | None = None) -> dict:
    """Run `args` (env added to os.environ) within `timeout` s and the check's DEADLINE: rc (124 when it timed
    out), seconds, the output's tail and the command line."""
    t0 = time.perf_counter()
    if DEADLINE[0] is not None:
        timeout = max(1, min(timeout, int(DEADLINE[0] - t0)))
    try:
        p = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                           env={**os.environ, **(env or {})})
        rc, out = p.returncode, (p.stdout + p.stderr)
    except subprocess.TimeoutExpired as exc:
        rc, out = 124, f"timed out after {timeout} s\n{(exc.stdout or b'')[-3000:]!r}"
    return {"rc": rc, "seconds": round(time.perf_counter() - t0, 1), "tail": out[-2500:], "command": " ".join(args)}


def write_suite(folder: Path, families: str, quantizers: str, evals: str, device: str, calibration: bool = True,
                extra: str = "") -> Path:
    """folder/suite.yaml from YAML fragments (`families`, `quantizers`, `evals`: indented list items), with GPTQ's
    calibration text when `calibration`, and 200 bootstrap samples."""
    body = (f"name: {folder.name}\nseed: 0\ndevice: {device}\n{extra}families:\n{families}quantizers:\n{quantizers}"
            f"evals:\n{evals}")
    if calibration:
        body += f"calibration: {{path: {REPO}/data/novels/TomJones.txt.gz}}\n"
    body += "bootstrap: {samples: 200}\n"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "suite.yaml").write_text(body)
    return folder / "suite.yaml"


def stored_cells(results: Path) -> list[dict]:
    """The cells a step's run stored in its results folder."""
    from qsens.store import ResultStore

    return ResultStore(results).cells()


def cell_figures(cells: list[dict], seconds: float) -> dict:
    """Counts, cells per hour over `seconds`, each ok cell's cost and numbers, and each other cell's error."""
    ok = [c for c in cells if c["status"] == "ok"]
    per = {c["quantizer"] + " @ " + c["checkpoint"]: {
        k: c.get(k) for k in ("device", "backend", "seconds", "peak_rss_bytes", "peak_gpu_bytes", "temp_disk_bytes",
                              "kl_mean", "delta_loss")} for c in ok}
    return {"cells": len(cells), "ok": len(ok),
            "cells_per_hour": round(len(ok) / seconds * 3600, 1) if seconds else None, "per_cell": per,
            "errors": {c["quantizer"]: (c["error"] or "")[:400] for c in cells if c["status"] != "ok"}}
