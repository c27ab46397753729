"""Training throughput of every size of a ladder spec, on random tokens of the spec's vocabulary.

    OMP_NUM_THREADS=1 python scripts/ladder_throughput.py checkpoints/gutenberg.yaml --steps 30 [--device cuda]

Times `steps` optimizer steps (after 3 untimed warm-up steps) with the real trainer (`train_steps`), so the
figure is what `qsens family train` gets per process. Prints one line per size: N, tokens/s, s/step.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from qsens.testbed.spec import load_ladder_spec
from qsens.testbed.trainer import DataOrder, build_model, make_optimizer, non_embedding_params, train_steps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("spec")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--sizes", default=None)
    args = ap.parse_args()
    spec = load_ladder_spec(args.spec)
    torch.set_num_threads(spec.threads or torch.get_num_threads())
    data = DataOrder(np.random.default_rng(0).integers(1, spec.vocab_size, 2_000_000), spec, seed=0)
    for size in spec.sizes:
        if args.sizes and size.name not in args.sizes.split(","):
            continue
        model = build_model(size, spec, spec.vocab_size, 0, seed=0, device=args.device)
        opt = make_optimizer(model, spec)
        train_steps(model, opt, data, range(0, 3), lambda s: 1e-3, None, lambda m: None, 1.0, save_every_s=1e9)
        if args.device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        train_steps(model, opt, data, range(3, 3 + args.steps), lambda s: 1e-3, None, lambda m: None, 1.0,
                    save_every_s=1e9)
        if args.device == "cuda":
            torch.cuda.synchronize()
        secs = (time.perf_counter() - t0) / args.steps
        print(json.dumps({"size": size.name, "n_params": non_embedding_params(model), "device": args.device,
                          "threads": torch.get_num_threads(), "s_per_step": round(secs, 5),
                          "tokens_per_s": round(spec.tokens_per_step / secs)}), flush=True)


if __name__ == "__main__":
    main()
