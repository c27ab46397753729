"""Seed-to-seed noise of log Δ, pooled, for a blinded pilot (issue 20): the one number a power calculation needs.

Cells are grouped by everything that is fixed across training seeds (size, schedule, tokens, quantizer, eval);
within a group only the seed varies. The pooled SD is the one-way ANOVA residual SD,

    sigma^2 = sum_g sum_i (x_gi - mean_g)^2 / sum_g (n_g - 1),   x = log Δloss,

with a chi-square interval on its sum_g (n_g - 1) degrees of freedom. Nothing here returns a group's mean or any
contrast between groups (stable vs cooled, one D vs another): a pilot read through this module stays blind to the
question it is sizing (docs/schedule-question.md).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping

from scipy import stats

GROUP_KEYS = ("size", "schedule", "tokens", "quantizer", "eval")


def pooled_seed_sd(cells: Iterable[Mapping], by: str | None = "bits", confidence: float = 0.95) -> list[dict]:
    """Pooled within-group SD of log Δloss over training seeds, one row per value of `by` (None: all pooled).

    cells: store rows (`status`, `train_seed`, `delta_loss` and the GROUP_KEYS). Rows not ok, without a seed, or
    with Δ <= 0 (log undefined) are left out and counted. Each row: {by: value, sd, ci_low, ci_high, df, groups,
    cells, left_out}; sd is None where no group has two seeds."""
    split: dict = defaultdict(lambda: defaultdict(list))
    left_out: dict = defaultdict(int)
    for c in cells:
        level = c.get(by) if by else "all"
        if c.get("status") != "ok" or c.get("train_seed") is None or not (c.get("delta_loss") or 0) > 0:
            left_out[level] += 1
            continue
        split[level][tuple(c.get(k) for k in GROUP_KEYS)].append(math.log(c["delta_loss"]))
    out = []
    for level in sorted(set(split) | set(left_out), key=str):
        groups = [g for g in split[level].values() if len(g) >= 2]
        ss = sum(sum((x - sum(g) / len(g)) ** 2 for x in g) for g in groups)
        df = sum(len(g) - 1 for g in groups)
        row = {(by or "pooled"): level, "sd": None, "ci_low": None, "ci_high": None, "df": df,
               "groups": len(groups), "cells": sum(len(g) for g in groups), "left_out": left_out[level]}
        if df:
            tail = (1 - confidence) / 2
            row.update(sd=math.sqrt(ss / df), ci_low=math.sqrt(ss / stats.chi2.ppf(1 - tail, df)),
                       ci_high=math.sqrt(ss / stats.chi2.ppf(tail, df)))
        out.append(row)
    return out
