"""Fixtures shared by the quantizer tests: one tiny trained checkpoint per session and a QuantContext for it."""

from __future__ import annotations

import pytest
from tiny_trained import EVAL_LEN, EVAL_ROWS, Trained, build_tiny_checkpoint, heldout_loss


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> Trained:
    """A 2-layer, hidden-64 Llama trained for 300 steps on a synthetic text (about 15 s on 2 cores)."""
    info = build_tiny_checkpoint(tmp_path_factory.mktemp("tiny-llama") / "ckpt", steps=300)
    heldout = info["heldout_ids"][: EVAL_ROWS * EVAL_LEN].reshape(EVAL_ROWS, EVAL_LEN)
    return Trained(info["dir"], info["train_ids"], heldout)


@pytest.fixture(scope="session")
def fp_model(trained):
    return trained.load()


@pytest.fixture(scope="session")
def fp_loss(trained, fp_model) -> float:
    return heldout_loss(fp_model, trained.heldout)
