"""Issue 21's closing table: Δloss interval widths of one checkpoint before → after whole documents, and the
shares of the variance a reader should attribute to documents and to training seeds.

    PYTHONPATH=. OMP_NUM_THREADS=1 python scripts/interval_shares.py OLD_RESULTS NEW_RESULTS [size schedule tokens]

Defaults: s64, cosine, 8M tokens (issue 12's cells). Per eval and bits (RTN 2/3/4/8, group 8): the old published
cell's Δ and 95% width (first 65,536 / 32,768 tokens, one seed); the new cell's (every token of every document,
seed 0) own width; the two-level width over documents (`qsens.metrics.docinterval`; 'these documents only' under 5
documents) and its between-document share; the same checkpoint's Δ under training seeds 0, 1, 2, the seed SD of Δ
and the seed share: var_seed / (var_seed + var_eval), var_eval = (own half-width / 1.96)^2 of seed 0's cell.
"""

import statistics
import sys

from qsens.metrics.docinterval import cell_document_interval
from qsens.store.cells import read_cells

old_dir, new_dir = sys.argv[1], sys.argv[2]
size, schedule, tokens = (sys.argv[3], sys.argv[4], float(sys.argv[5])) if len(sys.argv) > 5 else ("s64", "cosine", 8e6)


def pick(cells, **where):
    return [c for c in cells if c.get("method") == "rtn" and c.get("size") == size and c.get("schedule") == schedule
            and abs(c["tokens"] / tokens - 1) < 0.01 and all(c.get(k) == v for k, v in where.items())]


old, new = read_cells(old_dir, status="ok"), read_cells(new_dir, status="ok")
print("| eval | bits | old Δ [95%] | old width | new Δ (seed 0) | own width | over documents | between-doc share "
      "| Δ seeds 0/1/2 | seed SD | seed share |")
print("|---" * 11 + "|")
for ev in ("heldout-novels", "wikitext2"):
    for bits in (2, 3, 4, 8):
        o = pick(old, eval=ev, bits=bits)
        n = sorted(pick(new, eval=ev, bits=bits), key=lambda c: c.get("train_seed") or 0)
        if not n:
            continue
        n0 = n[0]
        own = n0["delta_loss_ci_high"] - n0["delta_loss_ci_low"]
        d = cell_document_interval(n0)
        docs = f"{d.ci_high - d.ci_low:.4g} ({d.scope}, {d.n_documents} docs)"
        share = "-" if d.between_share is None else f"{d.between_share:.2f}"
        deltas = [c["delta_loss"] for c in n]
        sd = statistics.stdev(deltas) if len(deltas) > 1 else float("nan")
        var_eval = (own / 2 / 1.96) ** 2
        old_text = (f"{o[0]['delta_loss']:.4g} [{o[0]['delta_loss_ci_low']:.4g}, {o[0]['delta_loss_ci_high']:.4g}] | "
                    f"{o[0]['delta_loss_ci_high'] - o[0]['delta_loss_ci_low']:.4g}") if o else "- | -"
        print(f"| {ev} | {bits} | {old_text} | {n0['delta_loss']:.4g} | {own:.4g} | {docs} | {share} | "
              f"{' / '.join(f'{x:.4g}' for x in deltas)} | {sd:.3g} | {sd ** 2 / (sd ** 2 + var_eval):.2f} |")
