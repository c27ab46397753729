"""Issue 21: seed-to-seed spread of log Δloss, micro family seed replicates against the published seed 0.

    PYTHONPATH=. OMP_NUM_THREADS=1 python scripts/seed_spread.py > seeds.jsonl

Scores every checkpoint of checkpoints/micro/seeds/manifest.json under RTN g8 asymmetric 2/3/4 bits on the
published heldout-novels protocol (first 65,536 tokens, as suites/micro.yaml) and pairs it with the published
seed-0 cell of the same size, schedule and budget. Prints one line per pair, then per bits the SD of log Δ between
seeds, sqrt(mean((log Δ_s - log Δ_0)^2) / 2) over pairs with both Δ > 0, beside the median eval-noise SD of log Δ
(the published interval's half-width / 1.96 / Δ).
"""

import json
import math
import sqlite3
from collections import defaultdict
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from qsens.families.manifest import read_manifest
from qsens.metrics.paired import sensitivity_metrics
from qsens.metrics.protocol import resolve_protocol
from qsens.metrics.scoring import score_together
from qsens.metrics.text import read_text
from qsens.metrics.windows import build_eval_tokens
from qsens.quantizers import rtn
from qsens.quantizers.base import QuantContext

REPO = Path(__file__).resolve().parents[1]
cpu = torch.device("cpu")
db = sqlite3.connect(REPO / "results/published/micro/qsens.sqlite")
published = {(s, sch, t, b): (d, lo, hi) for s, sch, t, b, d, lo, hi in db.execute(
    "select size, schedule, tokens, bits, delta_loss, delta_loss_ci_low, delta_loss_ci_high from cells "
    "where eval = 'heldout-novels' and status = 'ok'")}
manifest_path = REPO / "checkpoints/micro/seeds/manifest.json"
text = read_text(REPO / "data/eval/heldout-novels.txt.gz")
protocol = resolve_protocol("qsens", {"max_tokens": 65536})
tokens = None
pairs = defaultdict(list)
for ck in read_manifest(manifest_path).checkpoints:
    folder = manifest_path.parent / ck.path
    tok = AutoTokenizer.from_pretrained(folder)
    tokens = tokens or build_eval_tokens(text, tok, protocol)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    ctx = QuantContext(fp_model=model, tokenizer=tok, device=cpu, seed=0, calibration=None, checkpoint_dir=None)
    models = {b: rtn.quantize(ctx, rtn.Settings(bits=b, group_size=8, backend="torch")).model for b in (2, 3, 4)}
    ref, scores = score_together(model, models, tokens, cpu, 16, kl=False)
    for b, q in scores.items():
        m = sensitivity_metrics(tokens, ref, q, bootstrap_samples=400, seed=0)
        zero = published.get((ck.size, ck.schedule, ck.tokens, b))
        row = dict(checkpoint=ck.name, seed=ck.seed, bits=b, delta_loss=m["delta_loss"],
                   ci=[m["delta_loss_ci_low"], m["delta_loss_ci_high"]], seed0=zero)
        print(json.dumps(row), flush=True)
        if zero and zero[0] > 0 and m["delta_loss"] > 0:
            eval_sd = (zero[2] - zero[1]) / 2 / 1.96 / zero[0]
            pairs[b].append((math.log(m["delta_loss"]) - math.log(zero[0]), eval_sd))
    ref.close()
for b, v in sorted(pairs.items()):
    sd = math.sqrt(sum(d * d for d, _ in v) / len(v) / 2)
    noise = sorted(e for _, e in v)[len(v) // 2]
    print(json.dumps(dict(bits=b, pairs=len(v), seed_sd_log_delta=sd, median_eval_sd_log_delta=noise)))
