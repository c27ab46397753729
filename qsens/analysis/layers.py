"""The "which layers break first" tables of `qsens report`: per (family, size, schedule, quantizer, eval), one row per
layer set with its Δloss and KL at the smallest and largest D, the paired growth between them, the share of the
whole model's Δ and of its growth that the set carries, and its D exponent; then the additivity checks.
Statistics: `qsens.metrics.layer_stats`."""

from __future__ import annotations

import math

from qsens.metrics.layer_stats import WHOLE, layer_series, set_label, summarize


def _ci(r: dict | None, digits: int = 4, signed: bool = False) -> str:
    if r is None:
        return "—"
    f = f"{{:{'+' if signed else ''}.{digits}f}}"
    lo, hi = r["ci_low"], r["ci_high"]
    bounds = f"[{f.format(lo)}, {f.format(hi)}]" if math.isfinite(lo) and math.isfinite(hi) else "[unresolved]"
    return f"{f.format(r['estimate'])} {bounds}"


def _cell(delta: dict | None, name: str) -> str:
    if not delta or delta.get(name) is None:
        return "—"
    lo, hi = delta.get(f"{name}_ci_low"), delta.get(f"{name}_ci_high")
    return f"{delta[name]:.4f} [{lo:.4f}, {hi:.4f}]" if lo is not None else f"{delta[name]:.4f}"


def series_markdown(summary: dict) -> list[str]:
    s = summary["series"]
    first, last = s.budgets[0], s.budgets[-1]
    out = [f"#### {s.family} · {s.size} · {s.schedule or '—'} · {s.quantizer} · eval `{s.eval}` — which layers "
           f"break first (D {first / 1e6:.2f}M → {last / 1e6:.2f}M; 95% intervals, paired on the same tokens)\n",
           "| set | Δloss at smallest D | Δloss at largest D | KL at largest D | growth Δ(last) − Δ(first) | "
           "share of whole Δ at largest D | share of whole growth | D exponent γ (Δ ∝ D^γ) |",
           "|---|---|---|---|---|---|---|---|"]
    ranked = sorted(summary["sets"].items(),
                    key=lambda kv: (kv[0] != WHOLE, -((kv[1]["delta"].get(last) or {}).get("delta_loss") or -1e9)))
    for name, e in ranked:
        out.append(f"| {set_label(name)} | {_cell(e['delta'].get(first), 'delta_loss')} | "
                   f"{_cell(e['delta'].get(last), 'delta_loss')} | {_cell(e['delta'].get(last), 'kl_mean')} | "
                   f"{_ci(e['growth'], signed=True)} | {_ci(e['share'].get(last), 3)} | "
                   f"{_ci(e['growth_share'], 3)} | {_ci(e['exponent'], 3)} |")
    out.append("")
    out += additivity_lines(summary)
    out.append("")
    return out


def additivity_lines(summary: dict) -> list[str]:
    """One line per partition: at how many budgets the layers interact, and the interaction at the largest D."""
    by_partition: dict[str, list] = {}
    for d, checks in sorted(summary["additivity"].items()):
        for name, r in checks.items():
            if r is not None:
                by_partition.setdefault(name, []).append((d, r))
    lines = []
    for name, rows in by_partition.items():
        n_interact = sum(r["interact"] for _, r in rows)
        d, r = rows[-1]
        verdict = "additive (interval holds 0)" if not r["interact"] else (
            "parts add to more than the whole" if r["estimate"] > 0 else "parts add to less than the whole")
        lines.append(f"- additivity over the {name}: layers interact (Σ parts − whole excludes 0) at "
                     f"{n_interact} of {len(rows)} budgets; at D {d / 1e6:.2f}M Σ parts {r['sum_of_parts']:.4f} vs "
                     f"whole {r['whole']:.4f}: Σ − whole {_ci(r, signed=True)}, {verdict}")
    return lines


def layers_markdown(cells: list[dict]) -> str:
    """Every series with layer-set cells, as Markdown; '' when the folder holds none."""
    out = []
    for series in layer_series(cells):
        if len(series.budgets) >= 1:
            out += series_markdown(summarize(series))
    return "\n".join(out)
