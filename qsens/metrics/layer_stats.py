"""Which layers break first as D grows: the statistics of layer-set cells (the report is qsens.analysis.layers,
the plots qsens.board.layers; both read these).

A layer-set cell quantizes one set of a checkpoint's Linear modules (`QuantSettings.layers`: one block, one kind,
named tensors) and is scored, like every cell, against the checkpoint's own full-precision pass; a whole-model
cell of the same method and settings (no `layers`) is the reference. Everything here is paired on the stored
per-window sums (`window_sums`, same `tokens_digest`), with the cells' own block bootstrap
(`qsens.metrics.paired.block_bootstrap`):

    growth     Δ(set, largest D) - Δ(set, smallest D) of one size and schedule, paired over the same tokens
    share      Δ(set) / Δ(whole model) of one checkpoint: a ratio of per-window Δ sums
    additivity Σ_sets Δ(set) - Δ(whole) over a partition of the whole model's layers (the blocks, or the kinds):
               0 when layers do not interact; its interval excluding 0 says they do (> 0: damage of the parts
               alone adds up to more than the whole, < 0: less)
    exponent   γ of Δ ∝ D^γ along a size's budgets whose Δ interval lies above 0: the OLS slope of log Δ on
               log D, its interval the wider of the OLS t-interval (scatter about the power law) and the spread
               of slopes refitted on Δs drawn within each cell's own interval (measurement noise); None with
               fewer than three such budgets. (One training seed per checkpoint in the micro family: nothing to
               resample over seeds.)
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
from scipy import stats

from qsens.metrics.compare import decode_window_sums, paired_difference
from qsens.metrics.paired import block_bootstrap, interval, min_block_windows

WHOLE = "whole"  # the set name of whole-model cells
CONFIDENCE = 0.95
SAMPLES = 1000


def layer_set_of(cell: dict) -> str:
    """The cell's layer set ('block:0', 'kind:mlp.up_proj', ...) or WHOLE."""
    settings = cell.get("settings_json") or {}
    if isinstance(settings, str):
        settings = json.loads(settings)
    return settings.get("layers") or WHOLE


def base_quantizer(cell: dict) -> str:
    """The quantizer label without its layer set ('rtn-w3-g8-asym@block0' -> 'rtn-w3-g8-asym')."""
    return cell["quantizer"].split("@", 1)[0]


def set_layers(cell: dict) -> list[str]:
    """The module names the cell quantized (details_json['layers'])."""
    details = cell.get("details_json") or {}
    if isinstance(details, str):
        details = json.loads(details)
    return list(details.get("layers") or [])


def set_order(name: str) -> tuple:
    """WHOLE first, then blocks by index, then kinds (attention before MLP, as in a block), then name lists."""
    head, _, body = name.partition(":")
    kinds = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    if name == WHOLE:
        return (0, 0, "")
    if head == "block":
        return (1, int(body), "")
    if head == "kind":
        last = body.rsplit(".", 1)[-1]
        return (2, kinds.index(last) if last in kinds else len(kinds), body)
    return (3, 0, body)


def set_label(name: str) -> str:
    """'block:0' -> 'block 0', 'kind:mlp.down_proj' -> 'mlp.down_proj', WHOLE -> 'whole model'."""
    head, _, body = name.partition(":")
    return {"block": f"block {body}", "kind": body, "names": body}.get(head, "whole model") if name != WHOLE \
        else "whole model"


@dataclass
class Series:
    """One (family, size, schedule, base quantizer, eval): its cells by checkpoint D, then by set."""

    family: str
    size: str
    schedule: str | None
    quantizer: str
    eval: str
    n_params: int
    cells: dict[int, dict[str, dict]] = field(default_factory=dict)  # D -> set -> cell

    @property
    def budgets(self) -> list[int]:
        return sorted(self.cells)

    @property
    def sets(self) -> list[str]:
        return sorted({s for row in self.cells.values() for s in row}, key=set_order)


def layer_series(cells: list[dict]) -> list[Series]:
    """Every series that holds at least one layer-set cell (ok cells only), in a stable order."""
    ok = [c for c in cells if c.get("status") == "ok" and c.get("tokens") is not None]
    layered = {(c["family"], c.get("size") or str(c["n_params"]), base_quantizer(c), c["eval"])
               for c in ok if layer_set_of(c) != WHOLE}
    out: dict[tuple, Series] = {}
    for c in ok:
        key = (c["family"], c.get("size") or str(c["n_params"]), base_quantizer(c), c["eval"])
        if key not in layered:
            continue
        s = out.setdefault(key, Series(key[0], key[1], c.get("schedule"), key[2], key[3], c["n_params"]))
        s.cells.setdefault(c["tokens"], {})[layer_set_of(c)] = c
    return [out[k] for k in sorted(out, key=lambda k: (k[0], out[k].n_params, k[2], k[3]))]


def _ratio_of_sums(num_of, den_of, cells: list[dict], seed: int) -> dict | None:
    """sum(num)/sum(den) over the windows of cells scored on the same tokens, with its block-bootstrap interval.
    num_of, den_of: functions of the decoded window sums (a list, one per cell) -> float64 [W]."""
    if any(not c.get("window_sums") for c in cells) or len({c.get("tokens_digest") for c in cells}) != 1:
        return None
    sums = [decode_window_sums(c["window_sums"]) for c in cells]
    n = sums[0]["n_tokens"]
    num, den = num_of(sums), den_of(sums)
    ratio, block = block_bootstrap(num / n, sums[0]["doc"], SAMPLES, CONFIDENCE, seed,
                                   min_block_windows(n.sum(), n.size))
    est, reps = ratio(num, den)
    lo, hi = interval(reps, CONFIDENCE)
    return {"estimate": est, "ci_low": lo, "ci_high": hi, "block_windows": block}


def share(part: dict, whole: dict) -> dict | None:
    """Δ(part) / Δ(whole) of one checkpoint with its paired interval (None when not paired)."""
    return _ratio_of_sums(lambda s: s[0]["delta_nll"], lambda s: s[1]["delta_nll"], [part, whole], seed=1)


def additivity(parts: list[dict], whole: dict) -> dict | None:
    """Σ Δ(part) - Δ(whole), per token, with its paired interval; `interact` when the interval excludes 0."""
    cells = [*parts, whole]
    r = _ratio_of_sums(lambda s: sum(x["delta_nll"] for x in s[:-1]) - s[-1]["delta_nll"],
                       lambda s: s[0]["n_tokens"], cells, seed=2)
    if r is None:
        return None
    r["sum_of_parts"] = float(sum(p["delta_loss"] for p in parts))
    r["whole"] = float(whole["delta_loss"])
    r["interact"] = not (r["ci_low"] <= 0.0 <= r["ci_high"])
    return r


def partitions(row: dict[str, dict]) -> dict[str, list[str]]:
    """The partitions of the whole model's layers among a checkpoint's sets: 'blocks' and/or 'kinds', each only
    when its sets quantized disjoint layers whose union is exactly the whole model's."""
    if WHOLE not in row:
        return {}
    whole = sorted(set_layers(row[WHOLE]))
    out = {}
    for name, prefix in (("blocks", "block:"), ("kinds", "kind:")):
        sets = [s for s in row if s.startswith(prefix)]
        layers = [n for s in sets for n in set_layers(row[s])]
        if sets and whole and sorted(layers) == whole:
            out[name] = sorted(sets, key=set_order)
    return out


def growth(series: Series, layer_set: str) -> dict | None:
    """Δ(largest D) - Δ(smallest D) of one set, paired; None with fewer than two budgets or unpaired cells."""
    have = [d for d in series.budgets if layer_set in series.cells[d]]
    if len(have) < 2:
        return None
    first, last = series.cells[have[0]][layer_set], series.cells[have[-1]][layer_set]
    try:
        p = paired_difference(last, first, "delta_loss", samples=SAMPLES, confidence=CONFIDENCE)
    except ValueError:
        return None
    return {"estimate": p["difference"], "ci_low": p["ci_low"], "ci_high": p["ci_high"],
            "first": first["delta_loss"], "last": last["delta_loss"], "d_first": have[0], "d_last": have[-1]}


def growth_share(series: Series, layer_set: str) -> dict | None:
    """The set's share of the whole model's growth of Δ from the smallest to the largest D,
    (Δset(last) - Δset(first)) / (Δwhole(last) - Δwhole(first)), paired over the four cells' windows."""
    have = [d for d in series.budgets if layer_set in series.cells[d] and WHOLE in series.cells[d]]
    if len(have) < 2:
        return None
    first, last = series.cells[have[0]], series.cells[have[-1]]
    cells = [last[layer_set], first[layer_set], last[WHOLE], first[WHOLE]]
    return _ratio_of_sums(lambda s: s[0]["delta_nll"] - s[1]["delta_nll"],
                          lambda s: s[2]["delta_nll"] - s[3]["delta_nll"], cells, seed=3)


def d_exponent(series: Series, layer_set: str, draws: int = 2000, seed: int = 0) -> dict | None:
    """γ of Δ ∝ D^γ along the series' budgets for one set (see the module docstring), over the budgets whose Δ
    interval lies above 0 (a power law has no meaning through damage within noise of 0); None with fewer than
    three such budgets. `points` says how many were used, `d_min` the smallest D among them."""
    rows = [(d, series.cells[d][layer_set]) for d in series.budgets if layer_set in series.cells[d]
            and (series.cells[d][layer_set].get("delta_loss_ci_low") or 0) > 0]
    if len(rows) < 3:
        return None
    x = np.log([float(d) for d, _ in rows])
    y = np.array([c["delta_loss"] for _, c in rows])
    fit = stats.linregress(x, np.log(y))
    t = stats.t.ppf(0.5 + CONFIDENCE / 2, len(rows) - 2)
    lo, hi = fit.slope - t * fit.stderr, fit.slope + t * fit.stderr
    z = stats.norm.ppf(0.5 + CONFIDENCE / 2)
    se = np.array([(c["delta_loss_ci_high"] - c["delta_loss_ci_low"]) / (2 * z) for _, c in rows])
    sample = np.random.default_rng(seed).normal(y, se, size=(draws, y.size))
    positive = (sample > 0).all(axis=1)
    noise = None
    if positive.mean() >= 0.95:  # else the draws' slopes are those of the few draws that stay positive
        xc = x - x.mean()
        slopes = (np.log(sample[positive]) * xc).sum(axis=1) / (xc**2).sum()
        noise = interval(slopes, CONFIDENCE)
        lo, hi = min(lo, noise[0]), max(hi, noise[1])
    else:
        lo, hi = -math.inf, math.inf  # Δ is within noise of 0 somewhere: the exponent is not resolved
    return {"estimate": float(fit.slope), "ci_low": float(lo), "ci_high": float(hi), "points": len(rows),
            "d_min": rows[0][0],
            "ols_ci": (float(fit.slope - t * fit.stderr), float(fit.slope + t * fit.stderr)), "noise_ci": noise}


def summarize(series: Series) -> dict:
    """Every statistic of one series: per set its growth, exponent and shares; per checkpoint the additivity
    checks. Plain data for the report, the board and the README claims."""
    last = series.budgets[-1]
    sets = {}
    for s in series.sets:
        entry = {"growth": growth(series, s), "exponent": d_exponent(series, s), "share": {}, "delta": {}}
        for d in series.budgets:
            cell = series.cells[d].get(s)
            if cell is None:
                continue
            entry["delta"][d] = {k: cell.get(k) for k in ("delta_loss", "delta_loss_ci_low", "delta_loss_ci_high",
                                                          "kl_mean", "kl_mean_ci_low", "kl_mean_ci_high")}
            whole = series.cells[d].get(WHOLE)
            if s != WHOLE and whole is not None:
                entry["share"][d] = share(cell, whole)
        sets[s] = entry
    for s, entry in sets.items():
        entry["growth_share"] = growth_share(series, s) if s != WHOLE else None
    checks = defaultdict(dict)
    for d in series.budgets:
        row = series.cells[d]
        for name, members in partitions(row).items():
            checks[d][name] = additivity([row[s] for s in members], row[WHOLE])
    return {"series": series, "sets": sets, "additivity": dict(checks), "largest_d": last}
