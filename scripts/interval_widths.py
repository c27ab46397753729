"""Δloss interval widths on a shipped checkpoint: the old 1-window bootstrap against the block bootstrap.

    PYTHONPATH=. OMP_NUM_THREADS=1 python scripts/interval_widths.py [checkpoint-dir]

Held-out novels, qsens protocol (128-token windows, first 65,536 tokens, as suites/micro.yaml), RTN g8 asymmetric
at 2/3/4 bits. Prints per bit width: Δloss, the 95% interval resampling single windows (what qsens published
before the block bootstrap), the block bootstrap's interval and block length, and for reference the bootstrap
standard error with fixed blocks of 16 and 32 windows.
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from qsens.metrics.blocks import block_resample_counts
from qsens.metrics.paired import interval, sensitivity_metrics
from qsens.metrics.scoring import score_quantized, score_reference
from qsens.metrics.text import read_text
from qsens.metrics.windows import build_eval_tokens
from qsens.quantizers import rtn
from qsens.quantizers.base import QuantContext
from qsens.metrics.protocol import resolve_protocol

REPO = Path(__file__).resolve().parents[1]
ck = sys.argv[1] if len(sys.argv) > 1 else str(REPO / "checkpoints/micro/s64/cosine/s64-cosine-d008.000M")
cpu = torch.device("cpu")
tok = AutoTokenizer.from_pretrained(ck)


def load(**kw):
    return AutoModelForCausalLM.from_pretrained(ck, dtype=torch.float32, **kw).eval()


model = load()
proto = resolve_protocol("qsens", {"context_length": 128, "max_tokens": 65536})
tokens = build_eval_tokens(read_text(REPO / "data/eval/heldout-novels.txt.gz"), tok, proto)
ref = score_reference(model, tokens, cpu, 16, keep_logits=True)
w, W = tokens.window_index.numpy(), len(tokens.windows)
for bits in (2, 3, 4):
    ctx = QuantContext(fp_model=model, tokenizer=tok, device=cpu, seed=0, calibration=None,
                       checkpoint_dir=None)
    q = score_quantized(rtn.quantize(ctx, rtn.Settings(bits=bits, group_size=8, backend="torch")).model, tokens, ref,
                        cpu, 16)
    d = np.bincount(w, weights=q.nll - ref.nll, minlength=W)
    n = np.bincount(w, minlength=W).astype(float)
    old = np.random.default_rng(0).multinomial(W, np.full(W, 1.0 / W), size=1000)  # the old window bootstrap
    m = sensitivity_metrics(tokens, ref, q, bootstrap_samples=1000, seed=0)
    fixed = {b: float(((c @ d) / (c @ n)).std()) for b in (16, 32)
             for c in [block_resample_counts(tokens.window_docs(), b, 1000, 0)]}
    print(json.dumps(dict(bits=bits, delta_loss=m["delta_loss"], window_bootstrap_ci=interval((old @ d) / (old @ n), 0.95),
                          block_bootstrap_ci=[m["delta_loss_ci_low"], m["delta_loss_ci_high"]],
                          block_windows=m["bootstrap_block_windows"], block_tokens=m["bootstrap_block_tokens"],
                          se_fixed_block_16=fixed[16], se_fixed_block_32=fixed[32])))
