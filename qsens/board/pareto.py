"""Quality against size: Δloss (or KL) against effective bits per weight for every quantizer measured at one
checkpoint, with the Pareto front (no other setting is both smaller and better) marked.

x is the bits each method stores per quantized weight, scales and zeros included (the cells' `effective_bits`,
read by each quantizer from what it stored). The noise probe is left out: its weights stay floating point, so it
has no size to compare (its `effective_bits` is the dtype's). The front is computed on the point estimates; the
whiskers show how far each point's interval reaches, so a front point whose interval overlaps a neighbour's
is not shown to be better than it.
"""

from __future__ import annotations

import numpy as np

from qsens.board.canvas import COLORS, finish, pyplot, safe
from qsens.board.fmt import human

METRICS = {"delta_loss": ("Δloss (nats/token)", "delta_loss"), "kl": ("KL(fp ‖ quantized) (nats/token)", "kl_mean")}
NOT_SIZED = {"noise"}  # methods whose weights stay floating point
MARKERS = "osD^vP*Xh<>"


def pareto_front(bits: list[float], values: list[float]) -> list[int]:
    """Indices of the points no other point dominates (fewer or equal bits and lower or equal value, one of them
    strictly), in increasing bits. O(n log n): sweep by bits, keep a point if it beats the best value so far."""
    order = sorted(range(len(bits)), key=lambda i: (bits[i], values[i]))
    front, best = [], float("inf")
    for i in order:
        if values[i] < best:
            front.append(i)
            best = values[i]
    return front


def sized_cells(cells: list[dict], column: str) -> list[dict]:
    """The cells a size-quality plot can place: a quantizer with effective bits and the metric measured."""
    return [c for c in cells if c.get("method") not in NOT_SIZED and c.get("effective_bits") is not None
            and c.get(column) is not None]


def size_quality_plot(cells: list[dict], metric: str, title: str, path) -> str:
    """One point per quantizer setting at (effective bits, metric) with its interval, a colour and marker per
    method, the Pareto front joined by a step line. Log y; values ≤ 0 are drawn as ▽ on the bottom edge."""

    ylabel, column = METRICS[metric]
    pts = sized_cells(cells, column)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    x = np.array([c["effective_bits"] for c in pts], dtype=float)
    y = np.array([c[column] for c in pts], dtype=float)
    positive = y[y > 0]
    floor = positive.min() / 3 if positive.size else 1e-6
    lo = np.array([c.get(f"{column}_ci_low") if c.get(f"{column}_ci_low") is not None else v for c, v in zip(pts, y)])
    hi = np.array([c.get(f"{column}_ci_high") if c.get(f"{column}_ci_high") is not None else v for c, v in zip(pts, y)])
    shown = np.maximum(y, floor)
    methods = sorted({str(c["method"]) for c in pts})
    for k, method in enumerate(methods):
        sel = np.array([str(c["method"]) == method for c in pts])
        yerr = np.vstack([np.clip(shown - np.maximum(lo, floor), 0, None), np.clip(hi - shown, 0, None)])[:, sel]
        ax.errorbar(x[sel], shown[sel], yerr=yerr, fmt=MARKERS[k % len(MARKERS)], color=COLORS[k % len(COLORS)],
                    ms=5, capsize=2, label=safe(method), mfc="none" if (y[sel] <= 0).all() else None)
    front = pareto_front(list(x), list(y))
    if front:
        fx, fy = x[front], shown[front]
        ax.step(np.concatenate([fx, [x.max()]]), np.concatenate([fy, [fy[-1]]]), where="post", color="black",
                lw=1, alpha=0.6, label="Pareto front")
        ax.plot(fx, fy, "o", ms=10, mfc="none", mec="black", mew=1)
    ax.set_yscale("log")
    finish(fig, ax, path, "effective bits per weight (scales and zeros included)", ylabel, title, legend_size=7)
    names = ", ".join(safe(pts[i].get("quantizer")) for i in front)
    notes = [f"Pareto front (point estimates): {names}"] if front else []
    if (y <= 0).any():
        notes.append(f"{int((y <= 0).sum())} setting(s) with {column} ≤ 0 drawn at the bottom edge")
    left_out = sorted({str(c.get("method")) for c in cells if c.get("method") in NOT_SIZED})
    if left_out:
        notes.append(f"not drawn: {', '.join(left_out)} (weights stay floating point: no size to compare)")
    return "; ".join(notes)


def size_quality_title(family: str, ev: str, heads: list[dict], metric: str) -> str:
    return (f"{'Δloss' if metric == 'delta_loss' else 'KL'} vs size — {family} · {ev} · "
            f"N={human(heads[0].get('n_params'))}, D={human(heads[0].get('tokens'))}")
