"""The README's per-layer findings (issue 23), derived from a layer-sweep results folder like the main claims
(`qsens.analysis.claims`), in their own block between `<!-- layers:begin -->` and `<!-- layers:end -->` so that
regenerating one block never touches the other. `qsens report --results DIR --layer-claims [--readme README.md]`
prints or rewrites it; tests/analysis/test_layer_claims.py re-derives it from results/published/micro-layers.

Per series (family = schedule, size, quantizer; one eval): does the whole model's Δloss grow from the smallest to
the largest D (paired interval above 0); which block and which kind of linear carries the largest share of that
growth, with the share's paired interval; and whether the parts add up to the whole (additivity over the blocks
and over the kinds, at the largest D).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from qsens.analysis import claims
from qsens.analysis.claims import Claim
from qsens.metrics.layer_stats import WHOLE, layer_series, set_label, summarize

BEGIN, END = "<!-- layers:begin -->", "<!-- layers:end -->"


def _count(k: int, n: int) -> str:
    return f"all {n}" if k == n else f"{k} of {n}"


def _ci(r: dict | None, digits: int = 2) -> str:
    if r is None:
        return "—"
    return f"{r['estimate']:.{digits}f} [{r['ci_low']:.{digits}f}, {r['ci_high']:.{digits}f}]"


def series_rows(cells: list[dict], ev: str) -> list[dict]:
    """One row per series of eval `ev`: the statistics the claims and the table state."""
    rows = []
    for series in layer_series(cells):
        if series.eval != ev:
            continue
        summary = summarize(series)
        sets = summary["sets"]
        top = {}
        for prefix in ("block:", "kind:"):
            shares = [(s, e["growth_share"]) for s, e in sets.items() if s.startswith(prefix) and e["growth_share"]]
            top[prefix] = max(shares, key=lambda kv: kv[1]["estimate"]) if shares else (None, None)
            top[prefix + "even"] = 1.0 / len(shares) if shares else None  # each set's share under an even split
        last = summary["additivity"].get(summary["largest_d"], {})
        rows.append({"schedule": series.schedule, "size": series.size, "quantizer": series.quantizer,
                     "family": series.family, "whole_growth": (sets.get(WHOLE) or {}).get("growth"),
                     "top_block": top["block:"], "top_kind": top["kind:"],
                     "top_block_even": top["block:even"], "top_kind_even": top["kind:even"],
                     "additivity_blocks": last.get("blocks"), "additivity_kinds": last.get("kinds")})
    return rows


def _grows(rows: list[dict]) -> Claim:
    n = len(rows)
    k = sum(1 for r in rows if r["whole_growth"] and r["whole_growth"]["ci_low"] > 0)
    return Claim("whole_grows", f"Quantizing the whole model, Δloss grows from the smallest to the largest D "
                                f"(paired interval above 0) in {_count(k, n)} series (schedule × size × bit width).",
                 holds=n > 0 and k > 0, numbers={"k": k, "n": n})


def _carrier(rows: list[dict], key: str, what: str) -> Claim:
    """The set that most often carries the largest share of the whole model's growth of Δ."""
    tops = [r[key] for r in rows if r[key][0] is not None]
    if not tops:
        return Claim(f"{key}_carrier", f"No series has a {what} share of the growth.", holds=False)
    winner, wins = Counter(s for s, _ in tops).most_common(1)[0]
    shares = sorted(r["estimate"] for s, r in tops if s == winner)
    evens = [r[f"{key}_even"] for r in rows if r[key][0] == winner]
    resolved = sum(1 for r in rows if r[key][0] == winner and r[key][1]["ci_low"] > r[f"{key}_even"])
    even = f"1/{round(1 / evens[0])}" if len(set(evens)) == 1 else "1/(number of sets)"
    text = (f"Of the {what}s, {set_label(winner)} carries the largest share of that growth in {_count(wins, len(tops))} "
            f"series (its share {shares[0]:.2f} to {shares[-1]:.2f} of the whole model's growth; interval above an "
            f"even split, {even}, in {_count(resolved, wins)}).")
    return Claim(f"{key}_carrier", text, holds=wins * 2 > len(tops),
                 numbers={"winner": winner, "wins": wins, "n": len(tops), "resolved": resolved})


def _interaction(rows: list[dict], key: str, what: str) -> Claim:
    checks = [r[key] for r in rows if r[key] is not None]
    more = sum(1 for c in checks if c["interact"] and c["estimate"] > 0)
    less = sum(1 for c in checks if c["interact"] and c["estimate"] < 0)
    n = len(checks)
    text = (f"Summed over the {what}, the parts' Δloss at the largest D differs from the whole model's (paired "
            f"interval excludes 0) in {_count(more + less, n)} series: more than the whole in {more}, less in {less}.")
    return Claim(f"{key}", text, holds=n > 0, numbers={"more": more, "less": less, "n": n})


def layer_claims(rows: list[dict]) -> list[Claim]:
    """The claims of `series_rows(cells, ev)`."""
    return [_grows(rows), _carrier(rows, "top_block", "block"), _carrier(rows, "top_kind", "kind"),
            _interaction(rows, "additivity_blocks", "blocks"), _interaction(rows, "additivity_kinds", "kinds")]


def table(rows: list[dict]) -> str:
    lines = ["| schedule | size | quantizer | whole-model growth of Δloss | block with the largest share of it "
             "| kind with the largest share | Σ blocks − whole at largest D | Σ kinds − whole at largest D |",
             "|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (str(r["schedule"]), r["size"], r["quantizer"])):
        (b, bs), (k, ks) = r["top_block"], r["top_kind"]
        lines.append(f"| {r['schedule']} | {r['size']} | {r['quantizer']} | {_ci(r['whole_growth'], 4)} | "
                     f"{set_label(b) if b else '—'}: {_ci(bs)} | {set_label(k) if k else '—'}: {_ci(ks)} | "
                     f"{_ci(r['additivity_blocks'], 4)} | {_ci(r['additivity_kinds'], 4)} |")
    return "\n".join(lines)


def layer_claims_markdown(results_dir: str | Path, ev: str = "heldout-novels", label: str | None = None) -> str:
    from qsens.store.cells import read_cells

    rows = series_rows(read_cells(results_dir), ev)
    found = layer_claims(rows)
    where = label or str(results_dir)
    out = [f"Derived from `{where}` (eval `{ev}`) by `qsens report --results {where} --layer-claims`; "
           "95% block-bootstrap intervals, paired on the same tokens. Shares are of the growth of the whole "
           "model's Δloss from the smallest to the largest D.", ""]
    out += [f"- {c.text}" for c in found]
    out += ["", table(rows), ""]
    return "\n".join(out)


def replace_block(readme: str, block: str) -> str:
    return claims.replace_block(readme, block, BEGIN, END)


def readme_block(readme: str) -> str:
    return claims.readme_block(readme, BEGIN, END)
