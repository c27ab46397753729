"""The checkpoints a ladder spec will produce, the tokens it trains, and its cost from measured throughput.

    python scripts/ladder_plan.py checkpoints/gutenberg.yaml [throughput.jsonl]

throughput.jsonl: lines of scripts/ladder_throughput.py ({"size", "tokens_per_s", ...}); with it, hours per size.
Non-embedding N is the Llama count: per layer 4·h² (attention, as many KV heads as heads) + 3·h·mlp + 2·h (norms),
plus h for the final norm.
"""

from __future__ import annotations

import json
import sys

from qsens.testbed.spec import load_ladder_spec
from qsens.testbed.trainer import wsd_branch_step


def main() -> None:
    spec = load_ladder_spec(sys.argv[1])
    tput = {}
    if len(sys.argv) > 2:
        for line in open(sys.argv[2]):
            row = json.loads(line)
            tput.setdefault(row["size"], []).append(row["tokens_per_s"])
    tps = spec.tokens_per_step
    branches = {}
    for budget, f in spec.cooldown_plan():
        total = spec.steps_for(budget)
        branches.setdefault(wsd_branch_step(total, spec, f), []).append((budget, f, total))
    stable_steps = max(branches) if "wsd" in spec.schedules else 0
    cooldown_steps = sum(total - at for at, bs in branches.items() for _, _, total in bs)
    cosine_steps = sum(spec.steps_for(b) for b in spec.cosine_plan())
    per_run = (stable_steps + cooldown_steps + cosine_steps) * tps
    n_ckpt = len(branches) * spec.factorial + sum(map(len, branches.values())) + len(spec.cosine_plan())
    print(f"per (size, seed): {n_ckpt} checkpoints; trained tokens {per_run / 1e6:.1f}M = stable {stable_steps * tps / 1e6:.1f}M "
          f"+ cooldowns {cooldown_steps * tps / 1e6:.1f}M + cosine {cosine_steps * tps / 1e6:.1f}M")
    print("| size | N | seeds | D/N range | tokens trained | tokens/s (1 thread) | CPU hours |")
    print("|---|---|---|---|---|---|---|")
    total_h = 0.0
    for size in spec.sizes:
        h, m = size.hidden, size.mlp
        n = size.layers * (4 * h * h + 3 * h * m + 2 * h) + h
        seeds = spec.seeds_for(size)
        lo, hi = min(min(branches) * tps, min(spec.budgets)) / n, max(spec.budgets) / n
        rate = sum(tput[size.name]) / len(tput[size.name]) if size.name in tput else None
        hours = per_run * len(seeds) / rate / 3600 if rate else None
        total_h += hours or 0
        print(f"| {size.name} | {n:,} | {len(seeds)} | {lo:,.0f}–{hi:,.0f} | {per_run * len(seeds) / 1e6:,.0f}M | "
              f"{f'{rate:,.0f}' if rate else '?'} | {f'{hours:.1f}' if hours else '?'} |")
    print(f"total CPU hours (1 thread per process): {total_h:.1f}")


if __name__ == "__main__":
    main()
