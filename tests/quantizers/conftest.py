"""Fixtures shared by the quantizer tests: one tiny trained checkpoint per session and a QuantContext for it.

Training it takes 15-35 s on a shared 2-core machine, which every quantizer test file would pay alone; so the
checkpoint is kept between runs in a cache folder keyed by the trainer's source and the torch / transformers
versions (any change there trains afresh): $QSENS_TEST_CACHE, else <temp dir>/qsens-test-cache-<uid>.
QSENS_TEST_CACHE=off trains it in the session's temp folder every time.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from tiny_trained import EVAL_LEN, EVAL_ROWS, Trained, build_tiny_checkpoint, heldout_loss

STEPS = 300


def _cache_key() -> str:
    import transformers

    source = (Path(__file__).parent / "tiny_trained.py").read_bytes()
    material = source + f"|steps={STEPS}|torch={torch.__version__}|transformers={transformers.__version__}".encode()
    return hashlib.sha256(material).hexdigest()[:16]


def _cached_checkpoint(tmp_path_factory) -> dict:
    """build_tiny_checkpoint's result, from the cache when it holds this key (built there atomically otherwise)."""
    root = os.environ.get("QSENS_TEST_CACHE") or str(Path(tempfile.gettempdir()) / f"qsens-test-cache-{os.getuid()}")
    if root == "off":
        return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny-llama") / "ckpt", steps=STEPS)
    final = Path(root) / f"tiny-llama-{_cache_key()}"
    if not (final / "ids.pt").is_file():
        final.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=final.name + ".", dir=final.parent))
        info = build_tiny_checkpoint(staging / "ckpt", steps=STEPS)
        torch.save({"train_ids": info["train_ids"], "heldout_ids": info["heldout_ids"]}, staging / "ids.pt")
        try:
            staging.rename(final)  # atomic; another session that got there first wins
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
    ids = torch.load(final / "ids.pt")
    return {"dir": final / "ckpt", **ids}


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> Trained:
    """A 2-layer, hidden-64 Llama trained for 300 steps on a synthetic text (cached between runs, see above)."""
    info = _cached_checkpoint(tmp_path_factory)
    heldout = info["heldout_ids"][: EVAL_ROWS * EVAL_LEN].reshape(EVAL_ROWS, EVAL_LEN)
    return Trained(info["dir"], info["train_ids"], heldout)


@pytest.fixture(scope="session")
def fp_model(trained):
    return trained.load()


@pytest.fixture(scope="session")
def fp_loss(trained, fp_model) -> float:
    return heldout_loss(fp_model, trained.heldout)
