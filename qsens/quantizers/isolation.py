"""Keep a quantization library's side effects inside the call that uses it.

Libraries we drive change process state: gptqmodel sets environment variables at import (PYTORCH_ALLOC_CONF,
CUDA_DEVICE_ORDER; its tokenizer helper sets HF_HOME when unset), writes `./logs` under the current
directory, compiles a C++ helper into `~/.cache/gptqmodel`, and has drawn from the global RNG (gptqmodel
issue 2602). `contained` runs a block with the RNG state saved and restored, the working directory moved to a
scratch folder, and the environment restored afterwards, so a suite run leaves the user's tree, the repo and
the caller's random streams as they were. `captured_output` keeps a library's console output (gptqmodel
prints per-module progress bars that no setting turns off) out of the suite's own progress display.
"""

from __future__ import annotations

import contextlib
import os
import random
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np
import torch


def user_cache_root() -> Path:
    """`$XDG_CACHE_HOME`, default `~/.cache` (where qsens and Hugging Face keep their caches)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")


def qsens_cache_dir(*parts: str) -> Path:
    """`$XDG_CACHE_HOME/qsens/...` (default `~/.cache/qsens/...`), created on demand."""
    path = user_cache_root().joinpath("qsens", *parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Restore python `random`, numpy's global and torch's CPU (and CUDA) generators on exit."""
    py_state, np_state, cpu_state = random.getstate(), np.random.get_state(), torch.random.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.random.set_rng_state(cpu_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)


@contextlib.contextmanager
def restored_environ(defaults: dict[str, str] | None = None) -> Iterator[None]:
    """Set `defaults` where unset, run the block, then put os.environ back exactly as it was."""
    saved = dict(os.environ)
    for key, value in (defaults or {}).items():
        os.environ.setdefault(key, value)
    try:
        yield
    finally:
        for key in set(os.environ) - set(saved):
            del os.environ[key]
        for key, value in saved.items():
            if os.environ.get(key) != value:
                os.environ[key] = value


@contextlib.contextmanager
def contained(env_defaults: dict[str, str] | None = None) -> Iterator[Path]:
    """RNG, environment and working directory restored on exit; yields a scratch folder that is then deleted.

    The block runs with the scratch folder as its working directory, so files a library writes relative to
    the cwd (gptqmodel's `./logs`) land there and disappear with it.
    """
    cwd = os.getcwd()
    torch_threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory(prefix="qsens-quant-") as scratch, preserved_rng(), restored_environ(env_defaults):
        os.chdir(scratch)
        try:
            yield Path(scratch)
        finally:
            os.chdir(cwd)
            torch.set_num_threads(torch_threads)


@contextlib.contextmanager
def captured_output(log_path: Path) -> Iterator[None]:
    """Send everything written to file descriptors 1 and 2 (Python prints, progress bars, compiler output) to
    `log_path` while the block runs. If the block raises, the log's last lines are attached to the exception."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log_path, "ab") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        except BaseException as exc:
            sys.stdout.flush()
            sys.stderr.flush()
            tail = Path(log_path).read_bytes()[-3000:].decode("utf-8", "replace")
            exc.add_note(f"last output of the quantization library:\n{tail}")
            raise
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
