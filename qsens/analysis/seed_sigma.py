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

import numpy as np
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


TRAJECTORY_KEYS = ("size", "schedule", "quantizer", "eval")  # fixed along a seed's trajectory: one group each


def _trajectory_groups(cells: Iterable[Mapping], by: str | None) -> tuple[dict, dict]:
    """{level: {group: (Y (n_seeds, m) float64 log Δ, x (m,) float64 centred log D)}} over the D values every
    seed of the group has (a cell at a D some seed lacks is left out), and {level: cells left out}."""
    split: dict = defaultdict(lambda: defaultdict(dict))
    left_out: dict = defaultdict(int)
    for c in cells:
        level = c.get(by) if by else "all"
        if (c.get("status") != "ok" or c.get("train_seed") is None or not (c.get("delta_loss") or 0) > 0
                or not (c.get("tokens") or 0) > 0):
            left_out[level] += 1
            continue
        group = tuple(c.get(k) for k in TRAJECTORY_KEYS)
        split[level][group].setdefault(c["train_seed"], {})[float(c["tokens"])] = math.log(c["delta_loss"])
    out: dict = {}
    for level, groups in split.items():
        out[level] = {}
        for group, by_seed in groups.items():
            shared = set.intersection(*(set(v) for v in by_seed.values()))
            ds = sorted(shared)
            if len(by_seed) < 2 or len(ds) < 3:
                left_out[level] += sum(len(v) for v in by_seed.values())
                continue
            Y = np.array([[by_seed[s][d] for d in ds] for s in sorted(by_seed)])
            logd = np.log(ds)
            left_out[level] += sum(len(v) for v in by_seed.values()) - Y.size
            out[level][group] = (Y, logd - logd.mean())
    return out, left_out


def trajectory_noise(cells: Iterable[Mapping], by: str | None = "bits", confidence: float = 0.95) -> list[dict]:
    """Blinded decomposition of seed noise along trajectories: what a power calculation of a slope needs.

    Within a group (TRAJECTORY_KEYS fixed; seeds s = 1..n share the D values x_1..x_m, x = centred log D):

        log Δ_sj = a_j + u_s + v_s·x_j + ε_sj,   u_s ~ (0, τ_u²), v_s ~ (0, τ_v²), ε_sj ~ (0, σ²),

    a_j (the group's mean curve, with every contrast the design tests) is removed, never estimated or returned.
    With Z = Y − column means, each seed's row is fitted on [1, x]:
    - σ² = Σ residual² / Σ_g (n_g − 1)(m_g − 2)  (checkpoint noise around a seed's own line);
    - slope SD s_b: pooled SD of the per-seed OLS slopes around their group's mean, E s_b² = τ_v² + σ²/Sxx;
    - intercept SD s_a: the same for the per-seed mean log Δ, E s_a² = τ_u² + σ²/m;
    - τ_v² = s_b² − σ²·mean(1/Sxx), τ_u² = s_a² − σ²·mean(1/m): moment estimates, unbiased before they are
      truncated at 0; the interval of τ_v reported is [0 or the low end, sqrt(upper end of s_b² − low end of
      σ²·mean(1/Sxx))], conservative in the direction that costs power.
    Chi-square intervals (level `confidence`) on s_b², s_a² and σ² with their degrees of freedom.
    Returns one row per value of `by` (None: all pooled): {by: level, sigma, sigma_ci, df_sigma, slope_sd,
    slope_sd_ci, intercept_sd, intercept_sd_ci, df_seed, tau_slope, tau_slope_ci, tau_intercept, groups,
    seeds_per_group, budgets_per_group, cells, left_out}; SDs are None where no group qualifies
    (>= 2 seeds sharing >= 3 D values)."""
    grouped, left_out = _trajectory_groups(cells, by)
    tail = (1 - confidence) / 2
    out = []
    for level in sorted(set(grouped) | set(left_out), key=str):
        groups = grouped.get(level, {})
        rss = ssb = ssa = 0.0
        df_sigma = df_seed = 0
        inv_sxx, inv_m = [], []  # 1/Sxx and 1/m, once per seed degree of freedom (the weights of E s_b²)
        for Y, x in groups.values():
            n, m = Y.shape
            Z = Y - Y.mean(axis=0)
            sxx = float(x @ x)
            slopes = Z @ x / sxx  # (n,) per-seed slope deviations (x is centred)
            means = Z.mean(axis=1)  # (n,) per-seed intercept deviations at x̄
            resid = Z - means[:, None] - slopes[:, None] * x[None, :]
            rss += float((resid ** 2).sum())
            ssb += float(((slopes - slopes.mean()) ** 2).sum())
            ssa += float(((means - means.mean()) ** 2).sum())
            df_sigma += (n - 1) * (m - 2)
            df_seed += n - 1
            inv_sxx += [1 / sxx] * (n - 1)
            inv_m += [1 / m] * (n - 1)
        row = {(by or "pooled"): level, "sigma": None, "sigma_ci": None, "df_sigma": df_sigma,
               "slope_sd": None, "slope_sd_ci": None, "intercept_sd": None, "intercept_sd_ci": None,
               "df_seed": df_seed, "tau_slope": None, "tau_slope_ci": None, "tau_intercept": None,
               "groups": len(groups), "seeds_per_group": sorted({Y.shape[0] for Y, _ in groups.values()}),
               "budgets_per_group": sorted({Y.shape[1] for Y, _ in groups.values()}),
               "cells": sum(Y.size for Y, _ in groups.values()), "left_out": left_out.get(level, 0)}
        if df_sigma and df_seed:
            def ci(ss, df):
                return (math.sqrt(ss / stats.chi2.ppf(1 - tail, df)), math.sqrt(ss / stats.chi2.ppf(tail, df)))

            s2, b2, a2 = rss / df_sigma, ssb / df_seed, ssa / df_seed
            w_sxx, w_m = float(np.mean(inv_sxx)), float(np.mean(inv_m))
            sigma_ci = ci(rss, df_sigma)
            b_lo, b_hi = ci(ssb, df_seed)
            row.update(sigma=math.sqrt(s2), sigma_ci=sigma_ci, slope_sd=math.sqrt(b2),
                       slope_sd_ci=(b_lo, b_hi), intercept_sd=math.sqrt(a2), intercept_sd_ci=ci(ssa, df_seed),
                       tau_slope=math.sqrt(max(0.0, b2 - s2 * w_sxx)),
                       tau_slope_ci=(math.sqrt(max(0.0, b_lo ** 2 - s2 * w_sxx)),
                                     math.sqrt(max(0.0, b_hi ** 2 - sigma_ci[0] ** 2 * w_sxx))),
                       tau_intercept=math.sqrt(max(0.0, a2 - s2 * w_m)))
        out.append(row)
    return out
