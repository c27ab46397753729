"""Render the site model to HTML with Jinja2 (autoescape on for every template) and write the data exports."""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
from pathlib import Path

from qsens.board import fits as fit_view
from qsens.board import fmt
from qsens.board.model import PROVENANCE, family_page
from qsens.store.export import csv_safe, to_csv, to_json

HERE = Path(__file__).parent
# The leaderboard export, in column order: one row per index row (see qsens.board.model).
LEADERBOARD_FIELDS = [
    "suite", "family", "schedule", "eval", "method", "bits", "group_size", "quantizer", "checkpoint", "n_params",
    "tokens", "d_over_n", "delta_loss", "delta_loss_ci_low", "delta_loss_ci_high", "ppl_ratio", "ppl_ratio_ci_low",
    "ppl_ratio_ci_high", "kl_mean", "kl_mean_ci_low", "kl_mean_ci_high", "top1_agree", "top1_agree_ci_low",
    "top1_agree_ci_high", "fp_loss", "fp_loss_ci_low", "fp_loss_ci_high", "q_loss", "q_loss_ci_low", "q_loss_ci_high",
    "delta_loss_min", "delta_loss_max", "n_checkpoints", "n_ok", "n_failed", "fit_key", "fit_law", "fit_r2",
    "fit_pooled", "fit_exponents", "delta_loss_previous", "delta_loss_change", "delta_loss_changed_at",
    "delta_loss_change_significant", "n_seeds",
]


def environment():
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,  # every template, whatever its extension: names come from suites and model configs
        undefined=jinja2.StrictUndefined,  # a typo in a template fails the build instead of rendering blank
        trim_blocks=True, lstrip_blocks=True,
    )
    env.filters.update(num=fmt.num, human=fmt.human, sortval=fmt.sort_value, commit=fmt.commit,
                       fit_diagnostics=fit_view.diagnostics)
    env.filters["d_star_withheld"] = lambda fit, fits: fit_view.prediction_withheld(fit, fits)
    env.globals.update(column=fmt.column, values=fmt.values, formats=formats, param_formats=param_formats,
                       param_items=fit_view.param_items)
    env.tests["known"] = lambda x: isinstance(x, (int, float)) and not math.isnan(x)  # NaN: no interval
    return env


def formats(rows: list[dict], **sig: int) -> dict[str, fmt.Column]:
    """{key: the format of column `key` over `rows`} for each key given with its significant digits."""
    return {key: fmt.column(fmt.values(rows, key), digits) for key, digits in sig.items()}


def param_formats(fits: list[dict], sig: int = 3) -> dict[str, fmt.Column]:
    """{parameter name: one format for that parameter over `fits`} (a table column lists several parameters, of
    different magnitudes: each name keeps one format down the column)."""
    by_name: dict[str, list] = {}
    for f in fits:
        for name, p in (f.get("params") or {}).items():
            by_name.setdefault(name, []).append(p.get("value"))
    return {name: fmt.column(v, sig) for name, v in by_name.items()}


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def render_pages(site: dict, out: Path) -> None:
    """index.html, history.html and one page per family, plus the static script and style."""
    env = environment()
    _write(out / "index.html", env.get_template("index.html.j2").render(site=site, root=""))
    _write(out / "history.html", env.get_template("history.html.j2").render(site=site, root=""))
    family = env.get_template("family.html.j2")
    for fam in site["families"]:
        _write(out / family_page(fam["name"]), family.render(site=site, fam=fam, root="../",
                                                             provenance_fields=PROVENANCE))
    shutil.copytree(HERE / "static", out / "static", dirs_exist_ok=True)


def leaderboard_record(row: dict) -> dict:
    """One index row as an export record (flat; `fit_exponents` stays a list in JSON)."""
    change = row.get("change") or {}
    extra = {"delta_loss_previous": change.get("old"), "delta_loss_change": change.get("change"),
             "delta_loss_changed_at": change.get("at"), "delta_loss_change_significant": change.get("significant")}
    return {k: extra[k] if k in extra else row.get(k) for k in LEADERBOARD_FIELDS}


def leaderboard_json(site: dict) -> str:
    body = {"format": 1, "generated_at": site["generated_at"], "fields": LEADERBOARD_FIELDS,
            "rows": [leaderboard_record(r) for r in site["rows"]], "which_checkpoint": site["best"]}
    return json.dumps(body, indent=1, default=str) + "\n"


def leaderboard_csv(site: dict) -> str:
    """The rows of `leaderboard.json`; a list field is written as its JSON text, missing values as ''."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=LEADERBOARD_FIELDS, lineterminator="\n")
    writer.writeheader()
    for r in site["rows"]:
        rec = leaderboard_record(r)
        writer.writerow({k: csv_safe(json.dumps(v) if isinstance(v, (list, dict)) else v) for k, v in rec.items()})
    return buf.getvalue()


def write_data(site: dict, cells: list[dict], out: Path) -> None:
    """leaderboard.json/.csv (the index rows) and cells.json/.csv (every cell, qsens export's field contract)."""
    _write(out / "leaderboard.json", leaderboard_json(site))
    _write(out / "leaderboard.csv", leaderboard_csv(site))
    # per-window sums (a base64 blob per cell, for paired comparisons) would triple the published files and say
    # nothing to a reader; `qsens export` carries them. The column stays, empty, so the field contract holds.
    readable = [{k: v for k, v in c.items() if k != "window_sums"} for c in cells]
    _write(out / "cells.json", to_json(readable))
    _write(out / "cells.csv", to_csv(readable))
