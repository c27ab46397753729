"""The findings block's sentences on what its numbers rest on (issue 21): which documents an eval's intervals cover,
how much training seeds scatter, which cells are too small to resolve, and the n-gram gate the growth factors
pass. `qsens.analysis.claims` assembles them into the README block; each returns a `Claim` whose numbers the
tests check against an independent count.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

from qsens.analysis.claim import LOW_BITS, Claim, series, span


def documents(cells: list[dict]) -> Claim:
    """What each eval's intervals cover: its documents, and where there are enough of them to resample
    (`qsens.metrics.docinterval`), the two-level interval's width against the cell's own and the between-document
    share, on the largest budget of each seed-0 (family, size) at 2/3/4 bits."""
    from qsens.metrics.docinterval import (MIN_DOCUMENTS, THESE_DOCUMENTS_ONLY, cell_document_interval,
                                           eval_documents, scope_of)

    parts, numbers = [], {}
    for ev in sorted({c["eval"] for c in cells}):
        sub = [c for c in cells if c["eval"] == ev and c.get("window_sums")]
        if not sub:
            continue
        n_docs = eval_documents(sub, ev)
        n_tokens = int(sub[0].get("n_tokens") or 0)
        if scope_of(n_docs) == THESE_DOCUMENTS_ONLY:
            parts.append(f"`{ev}`: {n_docs} document{'s' if n_docs > 1 else ''}, {n_tokens:,} tokens, every "
                         f"interval *{THESE_DOCUMENTS_ONLY}* (fewer than {MIN_DOCUMENTS} cannot estimate a "
                         f"between-document variance; another text may differ by more than the interval)")
            numbers[ev] = {"documents": n_docs}
            continue
        last = [s[-1] for (fam, _, _, bits, seed), s in series(sub).items() if bits in LOW_BITS and seed in (None, 0)]
        ratios, shares = [], []
        for c in last:
            d = cell_document_interval(c)
            own = c["delta_loss_ci_high"] - c["delta_loss_ci_low"]
            if own > 0:
                ratios.append((d.ci_high - d.ci_low) / own)
            shares.append(d.between_share)
        ratios.sort()
        shares.sort()
        parts.append(f"`{ev}`: {n_docs} documents, {n_tokens:,} tokens; resampling documents, then blocks within "
                     f"them, gives intervals {span(ratios)}× as wide as the cells' own (median "
                     f"{ratios[len(ratios) // 2]:.2f}×; the largest budget of each seed-0 family and size at 2/3/4 "
                     f"bits, {len(last)} cells), with a between-document share of the variance of "
                     f"{span(shares)}: the cells' own block intervals already span its documents")
        numbers[ev] = {"documents": n_docs, "width_ratio": (ratios[0], ratios[-1]), "share": (shares[0], shares[-1])}
    text = "**What the intervals cover**: " + "; ".join(parts) + "."
    return Claim("documents", text, True, numbers)


def seeds(cells: list[dict], gate_loss: dict[str, float] | None = None) -> Claim:
    """Seed-to-seed SD of log Δloss per bits and eval (`qsens.analysis.seed_sigma.pooled_seed_sd`), where cells
    carry more than one training seed: over RTN cells whose Δ interval excludes 0, and over those past the bigram
    gate (gate_loss as `growth`'s), where early checkpoints' near-zero Δs do not dominate."""
    from qsens.analysis.seed_sigma import pooled_seed_sd

    n_seeds = len({c.get("train_seed") for c in cells if c.get("train_seed") is not None})
    if n_seeds < 2:
        return Claim("seeds", "**Training seeds**: one training seed per checkpoint; no interval contains training "
                     "noise.", True, {"seeds": n_seeds})

    def sds(sub: list[dict]) -> list[dict]:
        return [r for r in pooled_seed_sd(sub, by="bits") if r["sd"] is not None]

    def worded(rows: list[dict]) -> str:
        return ", ".join(f"{r['bits']}-bit {r['sd']:.2f} [{r['ci_low']:.2f}, {r['ci_high']:.2f}]" for r in rows)

    parts, numbers = [], {}
    for ev in sorted({c["eval"] for c in cells}):
        resolved = [c for c in cells if c["eval"] == ev and c.get("method") == "rtn" and c["delta_loss_ci_low"] > 0]
        past = [c for c in resolved if gate_loss and c["fp_loss"] <= gate_loss.get(c.get("tokens_digest"), -math.inf)]
        rows, rows_past = sds(resolved), sds(past)
        numbers[ev] = {"resolved": {r["bits"]: (r["sd"], r["ci_low"], r["ci_high"], r["df"]) for r in rows},
                       "past_gate": {r["bits"]: (r["sd"], r["ci_low"], r["ci_high"], r["df"]) for r in rows_past}}
        parts.append(f"`{ev}`: {worded(rows)}" + (f"; past the bigram gate {worded(rows_past)}" if rows_past else
                                                  "; no checkpoints of two seeds past the bigram gate" if gate_loss
                                                  else ""))
    text = (f"**Training seeds** ({n_seeds} training seeds, each a whole trajectory): the seed-to-seed SD of "
            f"log Δloss, pooled within size, schedule and budget (95% χ² intervals; RTN cells whose interval "
            f"excludes 0), is " + "; ".join(parts) + ". Early checkpoints, whose Δ is near 0, scatter most. The fits "
            "resample seeds, whole trajectories, before checkpoints.")
    return Claim("seeds", text, True, numbers)


def within_floor(fits: list[dict]) -> set[tuple]:
    """{(eval, checkpoint, bits)} of the cells the fits left out as within the resolution floor (their Δ interval
    excludes 0 but the paired test against the fp16 floor does not; qsens.fit.groups.UNRESOLVED), read from the
    exclusions every stored fit records, so no paired test is repeated here."""
    from qsens.fit.groups import UNRESOLVED

    return {(f["eval"], e["checkpoint"], e["bits"]) for f in fits if f["status"] == "ok"
            for e in f.get("excluded") or [] if e.get("reason") == UNRESOLVED}


def resolution(cells: list[dict], fits: list[dict]) -> Claim:
    """How many quantized cells carry no resolved Δ: non-positive, interval including 0, within the floor."""
    rtn = [c for c in cells if c.get("bits") is not None]
    nonpositive = sum(c["delta_loss"] <= 0 for c in rtn)
    includes = sum(c["delta_loss"] > 0 and c["delta_loss_ci_low"] <= 0 for c in rtn)
    floor = within_floor(fits)
    by_bits: dict = defaultdict(int)
    for ev, ck, bits in floor:
        by_bits[bits] += 1
    floored = (f"{len(floor)} more (" + ", ".join(f"{n} at {b} bits" for b, n in sorted(by_bits.items()))
               + ") have an interval excluding 0 that a paired test cannot tell from the fp16 resolution floor's "
               "(`qsens.analysis.resolution`; marked † in the table)") if floor else \
        "none more is within the fp16 resolution floor (`qsens.analysis.resolution`)"
    text = (f"**Resolution**: of {len(rtn)} quantized cells, {nonpositive} have Δloss ≤ 0 and {includes} a positive "
            f"Δloss whose interval includes 0; {floored}. Every fit leaves these out, each with its reason, and "
            f"the counts above test differences, never single unresolved cells.")
    return Claim("resolution", text, True, {"cells": len(rtn), "nonpositive": nonpositive, "includes_zero": includes,
                                            "within_floor": len(floor)})


def scope_note(cells: list[dict], ev: str) -> str:
    from qsens.metrics.docinterval import THESE_DOCUMENTS_ONLY, eval_documents, scope_of

    n = eval_documents(cells, ev)
    return f", *{THESE_DOCUMENTS_ONLY}* ({n} document{'s' if n > 1 else ''})" \
        if n and scope_of(n) == THESE_DOCUMENTS_ONLY else ""


def gate_losses(results_dir: str | Path) -> dict[str, float] | None:
    """{tokens digest: fp loss of the bigram gate} from the results folder's n-gram baselines; None without them."""
    from qsens.store.baselines import read

    stored = read(Path(results_dir))
    return {digest: b["gate_loss"] for digest, b in stored.items()} if stored else None
