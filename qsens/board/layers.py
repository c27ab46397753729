"""The board's layer-set plots (issue 23): per (family, size, quantizer, eval) a heat map of Δloss over layer sets
× D, and per (family, quantizer, eval) the D exponent of each set with its interval, one colour per size.

Statistics come from `qsens.metrics.layer_stats`; drawing uses the board's matplotlib setup (`qsens.board.plots`).
Heat-map colour is log Δloss; a cell whose Δ ≤ 0 cannot be placed on a log scale and is drawn grey with '≤0';
a dot marks a cell whose 95% interval excludes 0. Whole-model cells of a layer-swept quantizer appear as the
heat map's first row, so the parts can be read against the whole.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from qsens.metrics.layer_stats import WHOLE, Series, d_exponent, layer_series, set_label
from qsens.board.fmt import human
from qsens.board.model import slug
from qsens.board.canvas import COLORS, attempt, pyplot, safe, save


def is_layer_cell(cell: dict) -> bool:
    """A cell that quantized one layer set (its label carries '@set')."""
    return "@" in str(cell.get("quantizer") or "")


def heatmap(series: Series, title: str, path: Path) -> str:
    """Sets (rows) × D (columns), colour log Δloss, a dot where the interval excludes 0."""
    plt = pyplot()
    from matplotlib.colors import LogNorm

    sets, budgets = series.sets, series.budgets
    delta = np.full((len(sets), len(budgets)), np.nan)
    resolved = np.zeros_like(delta, dtype=bool)
    for j, d in enumerate(budgets):
        for i, s in enumerate(sets):
            c = series.cells[d].get(s)
            if c is not None and c.get("delta_loss") is not None:
                delta[i, j] = c["delta_loss"]
                lo, hi = c.get("delta_loss_ci_low"), c.get("delta_loss_ci_high")
                resolved[i, j] = lo is not None and hi is not None and (lo > 0 or hi < 0)
    positive = delta[np.isfinite(delta) & (delta > 0)]
    fig, ax = plt.subplots(figsize=(6.4, 0.9 + 0.34 * len(sets)))
    shown = np.where(delta > 0, delta, np.nan)
    norm = LogNorm(vmin=positive.min(), vmax=positive.max()) if positive.size else None
    image = ax.imshow(np.ma.masked_invalid(shown), aspect="auto", cmap="magma_r", norm=norm)
    ax.set_facecolor("#d9d9d9")  # Δ ≤ 0 (masked) shows the background
    for i, j in zip(*np.nonzero(np.isfinite(delta) & (delta <= 0))):
        ax.text(j, i, "≤0", ha="center", va="center", fontsize=7, color="#444")
    rows, cols = np.nonzero(resolved & (delta > 0))
    ax.plot(cols, rows, "o", ms=3.5, mfc="white", mec="black", mew=0.6, ls="none")
    ax.set_xticks(range(len(budgets)), [human(d) for d in budgets])
    ax.set_yticks(range(len(sets)), [safe(set_label(s)) for s in sets])
    ax.axhline(0.5, color="white", lw=2) if sets and sets[0] == WHOLE else None
    ax.set_xlabel("D (training tokens);  ○ = the 95% interval excludes 0")
    ax.set_title(safe(title), fontsize=9)
    if norm is not None:
        fig.colorbar(image, ax=ax, label="Δloss (nats/token, log scale)", fraction=0.05, pad=0.02)
    save(fig, path)
    n_nonpos = int((np.isfinite(delta) & (delta <= 0)).sum())
    return (f"{len(sets)} sets × {len(budgets)} budgets; dot: the cell's 95% block-bootstrap interval excludes 0"
            + (f"; {n_nonpos} cell(s) with Δloss ≤ 0 shown grey" if n_nonpos else ""))


def exponent_plot(group: list[Series], title: str, path: Path) -> str:
    """γ (Δ ∝ D^γ) per set with its 95% interval, one colour per size; sets without one are listed."""
    plt = pyplot()
    sets = sorted({s for series in group for s in series.sets}, key=lambda s: _set_rank(s))
    fig, ax = plt.subplots(figsize=(6.4, 1.0 + 0.34 * len(sets)))
    missing, unresolved, offsets = [], [], np.linspace(-0.25, 0.25, len(group)) if len(group) > 1 else [0.0]
    for k, series in enumerate(group):
        for i, s in enumerate(sets):
            e = d_exponent(series, s) if s in series.sets else None
            if e is None:
                missing.append(f"{set_label(s)} ({series.size})")
                continue
            color, label = COLORS[k % len(COLORS)], safe(f"{series.size} (N={human(series.n_params)})")
            if not (math.isfinite(e["ci_low"]) and math.isfinite(e["ci_high"])):
                unresolved.append(f"{set_label(s)} ({series.size})")
                ax.plot(e["estimate"], i + offsets[k], "o", mfc="none", ms=5, color=color, label=label)
                continue
            ax.errorbar(e["estimate"], i + offsets[k], xerr=[[e["estimate"] - e["ci_low"]], [e["ci_high"] -
                        e["estimate"]]], fmt="o", ms=4, capsize=2, color=color, label=label)
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    ax.legend(unique.values(), unique.keys(), fontsize=7, loc="best")
    ax.set_yticks(range(len(sets)), [safe(set_label(s)) for s in sets])
    ax.invert_yaxis()
    ax.axvline(0, color="#888", lw=0.8)
    ax.set_xlabel("D exponent γ of Δloss ∝ D^γ (95% interval)")
    ax.set_title(safe(title), fontsize=9)
    ax.grid(True, axis="x", alpha=0.25)
    save(fig, path)
    note = "fitted over the budgets whose Δloss interval lies above 0 (at least three)"
    note += f"; hollow: interval unresolved (Δ within noise of 0 in the redraws): {', '.join(unresolved)}" \
        if unresolved else ""
    return note + (f"; no exponent (fewer than three such budgets): {', '.join(missing)}" if missing else "")


def _set_rank(name: str) -> tuple:
    from qsens.metrics.layer_stats import set_order

    return set_order(name)


def layer_plots(family, cells: list[dict], site: Path) -> list[dict]:
    """Every layer-set plot of one family under `site/plots/`; records as `qsens.board.plots.family_plots`."""
    out, by_quantizer = [], {}
    for series in layer_series(cells):
        name = f"{family} · {series.size} · {series.schedule or '—'} · {series.eval} · {series.quantizer}"
        rel = f"plots/{slug(family, series.eval, series.quantizer, series.size)}-layers.svg"
        out.append(attempt("layers", f"Which layers break first: Δloss by layer set and D — {name}", rel, site,
                           lambda p, s=series, t=name: heatmap(s, t, p)))
        by_quantizer.setdefault((series.eval, series.quantizer), []).append(series)
    for (ev, quantizer), group in by_quantizer.items():
        name = f"{family} · {ev} · {quantizer}"
        rel = f"plots/{slug(family, ev, quantizer)}-layer-exponents.svg"
        out.append(attempt("layer-exponents", f"D exponent of each layer set's Δloss — {name}", rel, site,
                           lambda p, g=group, t=name: exponent_plot(g, t, p)))
    return out
