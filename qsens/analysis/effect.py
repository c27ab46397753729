"""The overtraining effect as Markdown: Δloss per (eval, family), rows by size, training seed, then D, one column per
quantizer, with the paired smallest→largest-D check per size and seed (one training run)."""

from __future__ import annotations

from collections import defaultdict

from qsens.metrics.compare import paired_difference


def _fmt_ci(c: dict, name: str, digits: int = 4) -> str:
    v, lo, hi = c.get(name), c.get(f"{name}_ci_low"), c.get(f"{name}_ci_high")
    if v is None:
        return "-"
    return f"{v:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]" if lo is not None else f"{v:.{digits}f}"


def effect_markdown(cells: list[dict]) -> str:
    """Markdown tables of the overtraining effect: per (eval, family), rows by size then D; Δloss per quantizer.

    Followed by two checks per size: does the fp loss fall monotonically with D, and for each quantizer the
    paired difference Δloss(largest D) - Δloss(smallest D) on the same tokens, with its 95% interval.
    """
    from qsens.metrics.docinterval import THESE_DOCUMENTS_ONLY, eval_documents, scope_of

    ok = [c for c in cells if c["status"] == "ok"]
    out = []
    for ev in sorted({c["eval"] for c in ok}):
        n_docs = eval_documents(ok, ev)
        scope = (f"; {THESE_DOCUMENTS_ONLY}: {n_docs} document{'s' if n_docs > 1 else ''}"
                 if n_docs and scope_of(n_docs) == THESE_DOCUMENTS_ONLY else "")
        for fam in sorted({c["family"] for c in ok if c["eval"] == ev}):
            sub = [c for c in ok if c["eval"] == ev and c["family"] == fam]
            labels = sorted({c["quantizer"] for c in sub}, key=lambda q: (q.split("-")[0], len(q), q))
            seeded = len({c.get("train_seed") for c in sub}) > 1
            grid: dict[tuple, dict] = defaultdict(dict)
            for c in sub:
                grid[(c["n_params"], _seed(c), c["tokens"], c["checkpoint"])][c["quantizer"]] = c
            out.append(f"#### {fam} — eval `{ev}` (Δloss in nats/token, 95% block-bootstrap CI{scope})\n")
            out.append("| N |" + (" seed |" if seeded else "") + " D | D/N | fp loss | " + " | ".join(labels) + " |")
            out.append("|---" * (4 + seeded + len(labels)) + "|")
            for (n, seed, d, _), row in sorted(grid.items()):
                any_cell = next(iter(row.values()))
                out.append(f"| {n:,} |" + (f" {seed} |" if seeded else "") + f" {d / 1e6:.2f}M | {d / n:.0f} | "
                           f"{any_cell['fp_loss']:.4f} | "
                           + " | ".join(_fmt_ci(row[q], "delta_loss") if q in row else "-" for q in labels) + " |")
            out.append("")
            out += _effect_checks(grid, labels, seeded)
            out.append("")
    return "\n".join(out)


def _seed(c: dict) -> int:
    return -1 if c.get("train_seed") is None else int(c["train_seed"])


def _paired_growth(last: dict, first: dict) -> str:
    try:
        p = paired_difference(last, first, "delta_loss")
    except ValueError as exc:  # different tokens or cells stored before window sums: say so, never compare unpaired
        return f"(no paired comparison: {exc})"
    return f"(paired difference {p['difference']:+.4f} [{p['ci_low']:+.4f}, {p['ci_high']:+.4f}])"


def _effect_checks(grid: dict, labels: list[str], seeded: bool = False) -> list[str]:
    """Per size and training seed (one training run, D ascending): does the fp loss fall, and the paired growth."""
    lines = []
    for n, seed in sorted({k[:2] for k in grid}):
        rows = [grid[k] for k in sorted(grid) if k[:2] == (n, seed)]
        fp = [next(iter(r.values()))["fp_loss"] for r in rows]
        monotone = all(b < a for a, b in zip(fp, fp[1:]))
        grows = []
        for q in labels:
            first, last = rows[0].get(q), rows[-1].get(q)
            if first and last:
                grows.append(f"{q}: {first['delta_loss']:.4f} → {last['delta_loss']:.4f} {_paired_growth(last, first)}")
        lines.append(f"- N={n:,}" + (f", seed {seed}" if seeded else "") + ": fp loss falls monotonically with D: "
                     f"**{'yes' if monotone else 'no'}**; Δloss smallest→largest D: " + "; ".join(grows))
    return lines
