"""Issue 20: the checkpoint gate on the gutenberg pilot's checkpoints, from full-precision losses only.

    python scripts/pilot_gate.py checkpoints/gutenberg-pilot.yaml checkpoints/gutenberg-pilot \
        results/gutenberg-pilot suites/gutenberg-pilot.yaml heldout-gutenberg

Prints, per checkpoint (stable and cooled), its fp loss on the eval, the eval's add-k bigram and unigram losses
(`qsens.testbed.gates.ngram_baselines` on exactly the scored targets) and whether it passes the gate (fp loss at
least 0.3 nats/token below the bigram). It reads `fp_loss` and nothing else of the cells: no Δ, so the blinded
pilot stays blind (scripts/pilot_sigma.py is its only other reader).
"""

import json
import sys
from pathlib import Path

from qsens.metrics.windows import build_eval_tokens
from qsens.store import ResultStore
from qsens.suites.load import load_suite
from qsens.testbed.gates import checkpoint_gate, ngram_baselines, scored_pairs
from qsens.testbed.ladder import Ladder
from qsens.testbed.spec import load_ladder_spec

if len(sys.argv) != 6:
    sys.exit("usage: python scripts/pilot_gate.py SPEC FAMILY_DIR RESULTS SUITE EVAL")
spec, family, results, suite_path = map(Path, sys.argv[1:5])
eval_name = sys.argv[5]
ladder = Ladder(load_ladder_spec(spec), spec, family, log=lambda m: None)
ev = next(e for e in load_suite(suite_path).evals if e.name == eval_name)
prev, targets = scored_pairs(build_eval_tokens(ev.read(), ladder.tokenizer, ev.protocol))
base = ngram_baselines(ladder.stream, len(ladder.tokenizer), prev, targets)
rows = {c["checkpoint"]: (c["schedule"], c["tokens"], c["train_seed"], c["fp_loss"])
        for c in ResultStore(results).cells("ok") if c["eval"] == eval_name}
gate = checkpoint_gate({k: v[3] for k, v in rows.items()}, base["bigram"])
print(json.dumps({"eval": eval_name, "scored_targets": int(len(targets)), "baselines": base,
                  "threshold": gate["threshold"], "failed": gate["failed"]}))
for name, (schedule, tokens, seed, fp) in sorted(rows.items(), key=lambda kv: (kv[1][0], kv[1][1], kv[1][2])):
    print(json.dumps({"checkpoint": name, "schedule": schedule, "tokens": tokens, "seed": seed,
                      "fp_loss": round(fp, 4), "margin": round(base["bigram"] - fp, 4),
                      "passes": name not in gate["failed"]}))
