"""The site as data: leaderboard rows, the "which checkpoint" table, family pages and history, from cells and fits.

Nothing here formats HTML; templates render this model and `leaderboard.json`/`.csv` export its rows.

Index rows are one per suite × family × schedule × eval × quantizer (a quantizer label is method + bits + group
size + symmetry, so rows are finer than method × bits, and the page filters on each). A family has many
checkpoints; a row shows its *headline* checkpoint, the largest N and then the largest D with an ok cell (the
most-trained model of the largest size, the one people deploy), the Δloss range over all its checkpoints, how many
training seeds its checkpoints carry (`n_seeds`; the headline is one seed's cell), and the best-matching fit's
exponents. Every checkpoint's cells are on the family page.
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict

from qsens.board import fits as fit_view
from qsens.board.history import TRACKED, cell_id

# Metrics shown with their CIs on the index, in column order: (column, heading, better direction).
INDEX_METRICS = (("delta_loss", "Δloss", "lower"), ("ppl_ratio", "PPL ratio", "lower"),
                 ("kl_mean", "KL", "lower"), ("top1_agree", "top-1 agree", "higher"))
ROW_KEY = ("suite", "family", "schedule", "eval", "quantizer")
PROVENANCE = ("git_commit", "qsens_version", "torch_version", "transformers_version", "python_version", "device",
              "hostname", "seed", "started_at", "finished_at", "blas_route", "threads")


def slug(*parts) -> str:
    """A file-name-safe, collision-free name: readable ASCII from `parts` plus a short hash of them."""
    text = "|".join("" if p is None else str(p) for p in parts)
    readable = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")[:48] or "x"
    return f"{readable}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def family_page(family) -> str:
    return f"family/{slug(family)}.html"


def d_over_n(cell: dict) -> float | None:
    n, d = cell.get("n_params"), cell.get("tokens")
    return d / n if n and d else None


def n_seeds(cells: list[dict]) -> int:
    """How many training seeds the cells' checkpoints carry (`train_seed`; 1 when none is recorded)."""
    return max(1, len({c.get("train_seed") for c in cells if c.get("train_seed") is not None}))


def headline(cells: list[dict]) -> dict | None:
    """The ok cell of the largest N, then largest D (None if no cell is ok)."""
    ok = [c for c in cells if c.get("status") == "ok"]
    return max(ok, key=lambda c: (c.get("n_params") or 0, c.get("tokens") or 0), default=None)


def match_fit(fits: list[dict], row: dict) -> dict | None:
    """The Δloss fit drawn for a row's group (board.fits): a fit of one of its member families with the row's
    schedule, eval, method, group size and quantizer (a fit column left empty matches any value), at the row's bit
    width or pooled. The most specific wins: an ok fit before an insufficient one, per-bit before pooled, nominal
    bits before effective (the table's bits column is nominal), then the newest."""
    def fits_row(f):
        same = all(f.get(k) in (None, row.get(k)) for k in ("schedule", "eval", "method", "group_size"))
        return (fit_view.is_drawn(f) and row["family"] in fit_view.families(f) and same
                and fit_view.quantizer_matches(f, row.get("quantizer"))
                and (fit_view.pooled(f) or f.get("bits") == row.get("bits")))

    def specificity(f):
        named = sum(f.get(k) is not None for k in ("schedule", "eval", "quantizer", "group_size"))
        return (f.get("status") == "ok", not fit_view.pooled(f), named, f.get("bits_axis") != "effective",
                str(f.get("created_at") or ""), f.get("r2") or -1)

    return max((f for f in fits if fits_row(f)), key=specificity, default=None)


def _metric_fields(cell: dict | None) -> dict:
    out = {}
    for m in TRACKED:
        for suffix in ("", "_ci_low", "_ci_high"):
            out[m + suffix] = cell.get(m + suffix) if cell else None
    return out


def _row_change(cell: dict | None, changes: dict) -> dict | None:
    """The headline cell's most recent Δloss change, if the history has one."""
    if cell is None:
        return None
    c = changes.get((cell_id(cell), "delta_loss"))
    return {k: c[k] for k in ("at", "since", "old", "new", "change", "significant")} if c else None


def leaderboard_rows(cells: list[dict], fits: list[dict], changes: dict) -> list[dict]:
    """One row per suite × family × schedule × eval × quantizer (see module docstring)."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for c in cells:
        if c.get("status") in ("ok", "failed"):
            groups[tuple(c.get(k) for k in ROW_KEY)].append(c)
    rows = []
    for key, group in groups.items():
        head, first = headline(group), group[0]
        deltas = [c["delta_loss"] for c in group if c.get("status") == "ok" and c.get("delta_loss") is not None]
        row = {**dict(zip(ROW_KEY, key)), "method": first.get("method"), "bits": first.get("bits"),
               "group_size": first.get("group_size"), "n_checkpoints": len({c.get("checkpoint") for c in group}),
               "n_ok": sum(c["status"] == "ok" for c in group), "n_failed": sum(c["status"] == "failed" for c in group),
               "n_seeds": n_seeds(group),
               "checkpoint": head and head.get("checkpoint"), "n_params": head and head.get("n_params"),
               "tokens": head and head.get("tokens"), "d_over_n": head and d_over_n(head), **_metric_fields(head),
               "delta_loss_min": min(deltas, default=None), "delta_loss_max": max(deltas, default=None)}
        fit = match_fit(fits, row)
        row.update({"fit_key": fit and fit["key"], "fit_law": fit and fit["law"], "fit_r2": fit and fit["r2"],
                    "fit_pooled": fit and fit_view.pooled(fit), "fit_exponents": fit_view.exponents(fit) if fit else [],
                    "fit_verdict": fit and fit.get("verdict"),
                    "family_page": family_page(row["family"]), "change": _row_change(head, changes)})
        row["id"] = slug(*key)
        rows.append(row)
    rows.sort(key=lambda r: tuple(str(r.get(k) or "") for k in ("family", "schedule", "eval", "method"))
              + (r.get("bits") or 0, str(r.get("quantizer"))))
    return rows


def _clearly_below(best: dict, runner: dict) -> tuple[bool | None, str | None]:
    """Whether best's q_loss is below runner's beyond noise. Scored on the same tokens (one tokenizer, eval and
    protocol) the two are paired: the block-bootstrap interval of the per-window difference must exclude 0, which
    counts the shared difficulty of the text once. Otherwise only the two intervals can be compared (disjoint)."""
    from qsens.metrics.compare import paired_difference

    try:
        diff = paired_difference(runner, best, "q_loss")
        return bool(diff["ci_low"] > 0), "paired"
    except ValueError:  # different tokens, or cells stored before per-window sums were kept
        pass
    if best.get("q_loss_ci_high") is None or runner.get("q_loss_ci_low") is None:
        return None, None
    return bool(best["q_loss_ci_high"] < runner["q_loss_ci_low"]), "intervals"


def best_checkpoints(cells: list[dict]) -> list[dict]:
    """Per family × eval × bit width: the checkpoint (and quantizer) with the lowest post-quantization loss.

    Losses on different eval texts are not comparable, so eval is part of the group. `clear` says whether the
    winner's loss is below the runner-up's beyond noise (see `_clearly_below`; `clear_by` names the test).
    """
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for c in cells:
        if c.get("status") == "ok" and c.get("q_loss") is not None:
            groups[(c.get("family"), c.get("eval"), c.get("bits"))].append(c)
    out = []
    for (family, ev, bits), group in groups.items():
        ranked = sorted(group, key=lambda c: c["q_loss"])
        best, runner = ranked[0], next((c for c in ranked[1:] if c.get("checkpoint") != ranked[0].get("checkpoint")),
                                       None)
        clear, clear_by = _clearly_below(best, runner) if runner else (None, None)
        out.append({"family": family, "eval": ev, "bits": bits, "checkpoint": best.get("checkpoint"),
                    "schedule": best.get("schedule"), "quantizer": best.get("quantizer"),
                    "n_params": best.get("n_params"), "tokens": best.get("tokens"), "d_over_n": d_over_n(best),
                    "q_loss": best["q_loss"], "q_loss_ci_low": best.get("q_loss_ci_low"),
                    "q_loss_ci_high": best.get("q_loss_ci_high"), "fp_loss": best.get("fp_loss"),
                    "delta_loss": best.get("delta_loss"), "n_candidates": len(group),
                    "runner_up": runner and runner.get("checkpoint"), "runner_up_q_loss": runner and runner["q_loss"],
                    "clear": clear, "clear_by": clear_by, "family_page": family_page(family)})
    out.sort(key=lambda r: (str(r["family"]), str(r["eval"]), r["bits"] or 0))
    return out


def _provenance_summary(cells: list[dict]) -> dict:
    """Distinct values of each provenance field over a family's cells (usually one each)."""
    return {k: sorted({str(c[k]) for c in cells if c.get(k) is not None}) for k in PROVENANCE
            if k not in ("started_at", "finished_at", "seed")}


def seed_siblings(cells: list[dict]) -> dict[str, set[str]]:
    """{family: itself and the families holding its other training seeds}: same fit group (not None) and
    schedules, training seeds disjoint from its own (a suite names one manifest per family, so the micro family's
    seeds 1-2, trained after seed 0, are families of their own). Their cells are plotted together: one series per
    (schedule, N) with a seed band. One pass over the cells."""
    profiles: dict = defaultdict(lambda: (set(), set(), set()))
    for c in cells:
        groups, schedules, seeds = profiles[c.get("family")]
        groups.add(c.get("fit_group"))
        schedules.add(c.get("schedule"))
        seeds.add(c.get("train_seed"))

    def joins(a, b) -> bool:
        (ga, sa, da), (gb, sb, db) = profiles[a], profiles[b]
        return (len(ga) == 1 and None not in ga and ga == gb and sa == sb and None not in da | db
                and not da & db)

    return {f: {f} | {o for o in profiles if o != f and joins(f, o)} for f in profiles}


def eval_scopes(cells: list[dict]) -> list[dict]:
    """Per eval of `cells`: how many documents its cells score and what their intervals cover
    (`qsens.metrics.docinterval.scope_of`); documents 0 where no cell keeps window sums."""
    from qsens.metrics.docinterval import eval_documents, scope_of

    out = []
    for ev in sorted({c.get("eval") for c in cells if c.get("eval")}):
        n = eval_documents(cells, ev)
        out.append({"eval": ev, "documents": n, "scope": scope_of(n) if n else None})
    return out


def family_model(name, cells: list[dict], fits: list[dict], changes: dict, plots: list[dict]) -> dict:
    """One family's page: every cell with settings and provenance, its failures, fits and plots."""
    views = []
    for c in cells:
        change = changes.get((cell_id(c), "delta_loss"))
        views.append({**c, "d_over_n": d_over_n(c), "cell_id": cell_id(c),
                      "change": change and {k: change[k] for k in ("at", "old", "new", "change", "significant")}})
    dates = sorted(c["finished_at"] for c in cells if c.get("finished_at"))
    return {"name": name, "page": family_page(name), "cells": views,
            "failed": [v for v in views if v.get("status") == "failed"],
            "running": [v for v in views if v.get("status") == "running"],
            "fits": [f for f in fits if name in fit_view.families(f)], "plots": plots, "n_seeds": n_seeds(cells),
            "provenance": _provenance_summary(cells), "evals": eval_scopes(cells), "first_date": dates[0] if dates else None,
            "last_date": dates[-1] if dates else None,
            "checkpoints": sorted({(c.get("n_params") or 0, c.get("tokens") or 0, str(c.get("checkpoint")))
                                   for c in cells})}


def filter_values(rows: list[dict]) -> dict[str, list]:
    """The distinct values each index filter offers."""
    def distinct(k):
        vals = {r.get(k) for r in rows if r.get(k) is not None}
        return sorted(vals, key=lambda v: (not isinstance(v, (int, float)), v if isinstance(v, (int, float)) else 0,
                                           str(v)))
    return {k: distinct(k) for k in ("family", "method", "bits", "eval", "schedule", "suite")}


def code_provenance(cells: list[dict]) -> dict[str, list[str]]:
    """The code the numbers were computed with, as the cells record it: distinct qsens versions and commits (a
    commit marked '+dirty' ran with uncommitted changes; the page says so). The site shows this, not the checkout
    that renders it, so a rebuild from other code changes no number's provenance and no byte."""
    return {k: sorted({str(c[k]) for c in cells if c.get(k)}) for k in ("qsens_version", "git_commit")}


def site_model(data, changes: dict, plots: dict, history: dict, generated_at: str) -> dict:
    """The whole site as one dict: what the templates render and what `site.json` records."""
    from qsens import __version__

    rows = leaderboard_rows(data.cells, data.fits, changes)
    by_family: dict = defaultdict(list)
    for c in data.cells:
        by_family[c.get("family")].append(c)
    families, siblings = [], seed_siblings(data.cells)
    for name in sorted(by_family, key=str):
        fam = family_model(name, by_family[name], data.fits, changes, plots.get(name, []))
        fam["plotted_with"] = [{"name": f, "page": family_page(f)} for f in sorted(siblings[name] - {name}, key=str)]
        drawn = [p for p in fam["plots"] if p["file"]]
        fam["preview"] = next((p for p in drawn if p["kind"] == "methods"), drawn[0] if drawn else None)
        families.append(fam)
    levels = {s.get("spec", {}).get("bootstrap", {}).get("confidence") for s in data.suites.values()}
    statuses = [c.get("status") for c in data.cells]
    return {"generated_at": generated_at, "qsens_version": __version__, "sources": data.sources,
            "code": code_provenance(data.cells),
            "confidence_text": f"{next(iter(levels)):.0%} " if len(levels) == 1 and None not in levels else "",
            "counts": {s: statuses.count(s) for s in ("ok", "failed", "running")},
            "metrics": INDEX_METRICS, "rows": rows, "filters": filter_values(rows), "best": best_checkpoints(data.cells),
            "families": families, "evals": eval_scopes(data.cells), "fits_count": len(data.fits), "history": history,
            "runs": data.runs}
