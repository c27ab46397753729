"""Matplotlib (Agg) SVG plots of one family's stored cells and fits, written as files the pages link with <img>.

Separate files rather than inline SVG: matplotlib's element ids would collide between inline figures, and an
<img> cannot run script, whatever text a model name puts into a figure. Every plot is drawn from the cells and
fits alone. A plot that fails is reported on its page with the error, and the rest of the site still builds.

Log axes cannot show Δloss ≤ 0 (an 8-bit cell often measures a tiny negative Δloss): such points are drawn as
hollow down-triangles on the bottom edge, and the caption counts them.

Training seeds: where a series (schedule, N) has cells of several training seeds (`train_seed`), each budget D is
drawn as the arithmetic mean over its seeds, with a band from the smallest to the largest seed's value (the
range of the seeds, not an interval: three seeds give no useful resampled one) and every seed's value as a faint
dot; each cell's own eval interval is then not drawn, and the caption says so.

Fits: a fitted Δ curve is drawn past the measured range (×1.25 each side) with its bootstrap band only when the
fit fits; any other fit is drawn dashed over the measured budgets only, without a band, and the caption says why.
D* is marked only from a fit that fits beside an fp-loss fit that fits (qsens.fit.diagnostics.prediction_withheld).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from qsens.board import fits as fit_view
from qsens.board import pareto
from qsens.board.canvas import COLORS, attempt, finish, pyplot, safe, save
from qsens.board.fmt import human, num
from qsens.board.model import match_fit, slug
from qsens.fit import predict

def _series(cells: list[dict]) -> dict[tuple, list[dict]]:
    """Cells by (schedule, N), each list sorted by D."""
    out: dict[tuple, list[dict]] = defaultdict(list)
    for c in cells:
        out[(c.get("schedule"), c.get("n_params"))].append(c)
    return {k: sorted(v, key=lambda c: c.get("tokens") or 0)
            for k, v in sorted(out.items(), key=lambda kv: (str(kv[0][0]), kv[0][1] or 0))}


def _series_text(schedule, n) -> str:
    """A series' name for captions (HTML, escaped by the template)."""
    return f"N={human(n)}" + (f" {schedule}" if schedule else "")


def _series_label(schedule, n) -> str:
    """A series' name for a matplotlib legend."""
    return safe(_series_text(schedule, n))


def seed_summary(group: list[dict], column: str) -> list[dict]:
    """Per budget D of one series (cells sorted by D): {tokens, mean, low, high, values, n_seeds}: the mean of
    `column` over the D's cells (one per seed), their min and max, each value (float64), and how many seeds."""
    by_d: dict[int, list[dict]] = defaultdict(list)
    for c in group:
        by_d[c["tokens"]].append(c)
    out = []
    for d, cs in sorted(by_d.items()):
        v = np.array([c[column] for c in cs], dtype=float)
        out.append({"tokens": d, "mean": float(v.mean()), "low": float(v.min()), "high": float(v.max()),
                    "values": v, "n_seeds": len({c.get("train_seed") for c in cs})})
    return out


def _seeded(group: list[dict]) -> int:
    """How many training seeds a series has at its most replicated budget (1: draw cells as they are)."""
    per_d: dict = defaultdict(set)
    for c in group:
        per_d[c.get("tokens")].add(c.get("train_seed"))
    return max((len(s) for s in per_d.values()), default=1)


def _delta_seed_series(ax, group: list[dict], n, floor: float, color: str, label: str) -> tuple[np.ndarray, int, str]:
    """A series with several seeds (module doc): mean per D, min-max band, each seed as a dot. Returns (D/N of
    the budgets, points drawn on the bottom edge, caption note)."""
    rows = seed_summary(group, "delta_loss")
    x = np.array([r["tokens"] / n for r in rows])
    mean = np.array([r["mean"] for r in rows])
    pos = mean > 0
    ax.fill_between(x, np.maximum([r["low"] for r in rows], floor), np.maximum([r["high"] for r in rows], floor),
                    color=color, alpha=0.2, lw=0)
    dots = [(r["tokens"] / n, v) for r in rows for v in r["values"] if v > 0]
    if dots:
        ax.plot(*zip(*dots), ".", color=color, ms=3, alpha=0.45)
    seeds = max(r["n_seeds"] for r in rows)
    ax.plot(x[pos], mean[pos], "-o", color=color, ms=4, lw=1, label=f"{label} mean of {seeds} seeds")
    ax.plot(x[~pos], np.full((~pos).sum(), floor), "v", mfc="none", color=color, ms=6)
    return x, int((~pos).sum()), (f"{_series_text(group[0].get('schedule'), n)}: mean of {seeds} training seeds per "
                                  "(N, D), band: min–max over the seeds, dots: each seed (eval intervals not drawn)")


def delta_plot(cells: list[dict], fits: list[dict], title: str, path: Path) -> str:
    """Δloss vs D/N on log-log axes, one series per N (and schedule), with the fitted law and its band; a series
    with several training seeds as their mean and min-max band (module doc)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    pts = [c for c in cells if c.get("delta_loss") is not None and c.get("n_params") and c.get("tokens")]
    positive = [c["delta_loss"] for c in pts if c["delta_loss"] > 0]
    floor = min(positive) / 3 if positive else 1e-6
    notes, clipped = [], 0
    for i, ((schedule, n), group) in enumerate(_series(pts).items()):
        color = COLORS[i % len(COLORS)]
        if _seeded(group) > 1:
            x, edge, note = _delta_seed_series(ax, group, n, floor, color, _series_label(schedule, n))
            clipped += edge
            notes += [note] + _draw_fit(ax, fits, group[0], n, x, color)
            continue
        x = np.array([c["tokens"] / n for c in group])
        y = np.array([c["delta_loss"] for c in group])
        lo = np.array([c.get("delta_loss_ci_low") if c.get("delta_loss_ci_low") is not None else v
                       for c, v in zip(group, y)])
        hi = np.array([c.get("delta_loss_ci_high") if c.get("delta_loss_ci_high") is not None else v
                       for c, v in zip(group, y)])
        pos = y > 0
        clipped += int((~pos).sum())
        yerr = np.vstack([np.clip(y - np.maximum(lo, floor), 0, None), np.clip(hi - y, 0, None)])
        ax.errorbar(x[pos], y[pos], yerr=yerr[:, pos], fmt="o", color=color, ms=4, capsize=2,
                    label=_series_label(schedule, n))
        ax.plot(x[~pos], np.full((~pos).sum(), floor), "v", mfc="none", color=color, ms=6)
        notes += _draw_fit(ax, fits, group[0], n, x, color)
    ax.set_xscale("log")
    ax.set_yscale("log")
    finish(fig, ax, path, "D/N (training tokens per parameter)", "Δloss (nats/token)", title, legend_size=7)
    if clipped:
        notes.append(f"{clipped} point(s) with Δloss ≤ 0 drawn as ▽ on the bottom edge")
    return "; ".join(notes)


def fit_curve(fit: dict, cell: dict, d_over_n: np.ndarray):
    """The fit's (mean, low, high) Δloss at the cell's N and bits over D/N values (low/high None without stored
    bootstrap draws); None when qsens.fit cannot evaluate it (an insufficient fit)."""
    n = float(cell["n_params"])
    return predict(fit, np.full_like(d_over_n, n), d_over_n * n, fit_view.plot_bits(fit, cell))


def _draw_fit(ax, fits: list[dict], cell: dict, n, x: np.ndarray, color: str) -> list[str]:
    """The fitted law for this series, with its band, past the measured D/N range only when the fit fits (module
    doc); notes for the caption."""
    fit = match_fit(fits, cell)
    if fit is None:
        return []
    withheld = fit_view.prediction_withheld(fit, fits, with_fp=False)
    grid = np.geomspace(x.min(), x.max(), 60) if withheld else np.geomspace(x.min() / 1.25, x.max() * 1.25, 60)
    series = _series_text(cell.get("schedule"), n)
    pred = fit_curve(fit, cell, grid)
    if pred is None:
        return [f"{series}: fit {fit['law']} not drawn ({fit.get('verdict') or fit.get('status')})"]
    mean, lo, hi = pred
    label = f"{_series_label(cell.get('schedule'), n)} fit" + (f" ({safe(fit['verdict'])})" if withheld and
                                                                fit.get("verdict") else "")
    ax.plot(grid, mean, "--" if withheld else "-", color=color, lw=1 if withheld else 1.2, alpha=0.8, label=label)
    if lo is not None and hi is not None and not withheld:
        ax.fill_between(grid, lo, hi, color=color, alpha=0.15, lw=0)
    r2 = f", R² = {num(fit['r2'], 3)}" if fit.get("r2") is not None else ""
    if lo is None:
        band = "no band (no bootstrap refits stored)"
    else:
        band = "no band" if withheld else "band: 2.5-97.5 percentiles of the bootstrap refits"
    verdict = f"; verdict: {fit['verdict']}" if fit.get("verdict") else ""
    pooled = f" (pooled over bits, {fit.get('bits_axis')} P)" if fit_view.pooled(fit) else ""
    limited = f"; dashed over the measured budgets only, not extrapolated: {withheld}" if withheld else ""
    return [f"{series}: fit {fit['law']}{pooled}{r2}{verdict}; {band}{limited}"]


def _token_ticks(axis) -> None:
    """Label a log token axis at 1, 2 and 5 per decade as 250K, 1M, 20M (only those: matplotlib's default also
    labels the minor ticks of an axis spanning about one decade, and '3×10^6' beside '4×10^6' overlaps)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _pos: human(v)))
    axis.set_minor_formatter(NullFormatter())


def _ucurve_series(ax, group: list[dict], color: str, label: str) -> tuple[np.ndarray, np.ndarray, str | None]:
    """Full-precision and quantized loss of one series; with several seeds their means per D and the quantized
    loss's min-max band (module doc). Returns (D, quantized loss per D, caption note or None)."""
    if _seeded(group) > 1:
        fp, q = seed_summary(group, "fp_loss"), seed_summary(group, "q_loss")
        d = np.array([r["tokens"] for r in q], dtype=float)
        mean = np.array([r["mean"] for r in q])
        seeds = max(r["n_seeds"] for r in q)
        ax.plot(d, [r["mean"] for r in fp], "--", marker="o", mfc="none", color=color, ms=4, lw=1,
                label=f"{label} full precision, mean of {seeds} seeds")
        ax.fill_between(d, [r["low"] for r in q], [r["high"] for r in q], color=color, alpha=0.2, lw=0)
        ax.plot(d, mean, "-o", color=color, ms=4, label=f"{label} quantized, mean of {seeds} seeds")
        return d, mean, (f"{_series_text(group[0].get('schedule'), group[0].get('n_params'))}: mean of {seeds} "
                         "training seeds per D, band: min–max of the quantized loss over the seeds")
    d = np.array([c["tokens"] for c in group], dtype=float)
    q = np.array([c["q_loss"] for c in group])
    q_lo = np.array([c.get("q_loss_ci_low") if c.get("q_loss_ci_low") is not None else v for c, v in zip(group, q)])
    q_hi = np.array([c.get("q_loss_ci_high") if c.get("q_loss_ci_high") is not None else v for c, v in zip(group, q)])
    ax.plot(d, [c["fp_loss"] for c in group], "--", marker="o", mfc="none", color=color, ms=4, lw=1,
            label=f"{label} full precision")
    ax.errorbar(d, q, yerr=np.vstack([np.clip(q - q_lo, 0, None), np.clip(q_hi - q, 0, None)]), fmt="-o",
                color=color, ms=4, capsize=2, label=f"{label} quantized")
    return d, q, None


def ucurve_plot(cells: list[dict], fits: list[dict], title: str, path: Path) -> str:
    """Full-precision and post-quantization loss vs D per N: the U-curve, with D* (from a fit that fits beside an
    fp-loss fit that fits, else the lowest measured quantized loss when it lies inside the measured range)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    pts = [c for c in cells if c.get("q_loss") is not None and c.get("fp_loss") is not None and c.get("tokens")]
    notes, flat, withheld_notes = [], [], {}
    for i, ((schedule, n), group) in enumerate(_series(pts).items()):
        color = COLORS[i % len(COLORS)]
        label, text = _series_label(schedule, n), _series_text(schedule, n)
        d, q, note = _ucurve_series(ax, group, color, label)
        notes += [note] if note else []
        fit = match_fit(fits, group[0])
        star = fit_view.d_star_entry(fit, n, group[0].get("bits"))
        why = fit_view.prediction_withheld(fit, fits) if star is not None else None
        if why:
            withheld_notes.setdefault(why, []).append(text)
        if star is not None and not why and np.isfinite(star["d_star"]):
            ax.axvline(star["d_star"], color=color, ls=":", lw=1.2, label=f"{label} D* (fit) = {human(star['d_star'])}")
        elif len(q) >= 3 and 0 < int(np.argmin(q)) < len(q) - 1:
            k = int(np.argmin(q))
            ax.plot(d[k], q[k], "*", color=color, ms=12, label=f"{label} lowest quantized loss")
        else:
            flat.append(text)
    ax.set_xscale("log")
    _token_ticks(ax.xaxis)
    finish(fig, ax, path, "D (training tokens)", "loss (nats/token)", title, legend_size=6)
    notes += [f"D* of the fit not shown for {', '.join(series)}: {why}" for why, series in withheld_notes.items()]
    if flat:
        notes.append(f"no D* fit and no interior minimum of the quantized loss for {', '.join(flat)}")
    return "; ".join(notes)


def method_plot(heads: list[dict], title: str, path: Path) -> str:
    """Δloss per quantizer at one checkpoint (horizontal bars, log scale, CI whiskers)."""
    plt = pyplot()
    heads = sorted(heads, key=lambda c: (c.get("bits") or 0, str(c.get("method")), str(c.get("quantizer"))))
    fig, ax = plt.subplots(figsize=(6, 0.6 + 0.32 * len(heads)))
    y = np.arange(len(heads))
    vals = np.array([c["delta_loss"] for c in heads])
    positive = vals[vals > 0]
    floor = positive.min() / 3 if positive.size else 1e-6
    shown = np.maximum(vals, floor)
    lo = np.array([c.get("delta_loss_ci_low") if c.get("delta_loss_ci_low") is not None else v
                   for c, v in zip(heads, vals)])
    hi = np.array([c.get("delta_loss_ci_high") if c.get("delta_loss_ci_high") is not None else v
                   for c, v in zip(heads, vals)])
    xerr = np.vstack([np.clip(shown - np.maximum(lo, floor), 0, None), np.clip(hi - shown, 0, None)])
    methods = sorted({str(c.get("method")) for c in heads})  # one colour per method
    colors = [COLORS[methods.index(str(c.get("method"))) % len(COLORS)] for c in heads]
    ax.barh(y, shown, xerr=xerr, color=colors, alpha=0.8, capsize=2)
    ax.set_yticks(y, [safe(c.get("quantizer")) for c in heads])
    ax.set_xscale("log")
    ax.set_xlabel("Δloss (nats/token)")
    ax.set_title(safe(title))
    ax.grid(True, axis="x", which="both", alpha=0.25)
    save(fig, path)
    n_clip = int((vals <= 0).sum())
    return f"{n_clip} quantizer(s) with Δloss ≤ 0 drawn at the left edge" if n_clip else ""


def family_plots(family, cells: list[dict], fits: list[dict], site: Path) -> list[dict]:
    """Every plot of one family written under `site/plots/`; records {kind, title, file, caption, error}."""
    ok = [c for c in cells if c.get("status") == "ok"]
    by_group: dict[tuple, list[dict]] = defaultdict(list)
    for c in ok:
        by_group[(c.get("eval"), c.get("quantizer"))].append(c)
    out = []
    for (ev, quantizer), group in sorted(by_group.items(), key=lambda kv: tuple(map(str, kv[0]))):
        name = f"{family} · {ev} · {quantizer}"
        base = f"plots/{slug(family, ev, quantizer)}"
        out.append(attempt("delta", f"Δloss vs D/N — {name}", f"{base}-delta.svg", site,
                           lambda p, g=group, t=name: delta_plot(g, fits, t, p)))
        out.append(attempt("ucurve", f"Loss vs D (U-curve) — {name}", f"{base}-ucurve.svg", site,
                           lambda p, g=group, t=name: ucurve_plot(g, fits, t, p)))
    for ev in sorted({c.get("eval") for c in ok}, key=str):
        heads = _headline_per_quantizer([c for c in ok if c.get("eval") == ev and c.get("delta_loss") is not None])
        if len(heads) >= 2:
            title = f"Quantizers compared — {family} · {ev} · N={human(heads[0].get('n_params'))}, " \
                    f"D={human(heads[0].get('tokens'))}"
            out.append(attempt("methods", title, f"plots/{slug(family, ev)}-methods.svg", site,
                               lambda p, h=heads, t=title: method_plot(h, t, p)))
        out += _size_quality_plots(family, ev, heads, site)
    return out


def _size_quality_plots(family, ev, heads: list[dict], site: Path) -> list[dict]:
    """Δloss and KL against effective bits at the headline checkpoint (qsens.board.pareto), when two or more
    quantizer settings there have a size."""
    out = []
    for metric, column in (("delta_loss", "delta_loss"), ("kl", "kl_mean")):
        if len(pareto.sized_cells(heads, column)) >= 2:
            title = pareto.size_quality_title(family, ev, heads, metric)
            out.append(attempt(f"size-{metric}", title, f"plots/{slug(family, ev)}-size-{metric}.svg", site,
                               lambda p, h=heads, t=title, m=metric: pareto.size_quality_plot(h, m, t, p)))
    return out


def _headline_per_quantizer(cells: list[dict]) -> list[dict]:
    """Each quantizer's cell at the family's headline checkpoint (largest N, then D, measured by all)."""
    if not cells:
        return []
    n, d = max((c.get("n_params") or 0, c.get("tokens") or 0) for c in cells)
    return [c for c in cells if (c.get("n_params") or 0, c.get("tokens") or 0) == (n, d)]
