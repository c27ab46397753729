"""Figures for issue 12 on a results database: the bit-width exponent γ under three exclusion rules and two bits
axes, and the SD of the cosine − WSD D-exponent difference with paired vs independent bootstrap draws.

    PYTHONPATH=. python scripts/fit_measurements.py results/published/micro [--boot 1000]

Paired: both schedules' fits draw the same (N, D) units (qsens.fit, the default). Independent: the WSD fit draws
with another seed, as qsens did before. Cells need a `fit_group` shared by the two schedules (`qsens run
suites/micro.yaml --results DIR` sets it for cells already computed).
"""

from __future__ import annotations

import argparse

import numpy as np

from qsens.fit import groups
from qsens.fit.fitting import fit_law
from qsens.fit.laws import UNIFIED
from qsens.fit.pipeline import paired_draws
from qsens.store.cells import read_cells


def gamma_rows(cells: list[dict], ev: str, boot: int) -> None:
    print(f"γ (unified law, {ev}): rule, axis, schedule -> value [95% CI] (points used / excluded)")
    for axis in groups.BITS_AXES:
        for g, cs in groups.delta_groups(cells, per_bits=False, bits_axis=axis).items():
            if g.eval != ev:
                continue
            universe = groups.units([c for c in cells if c["eval"] == ev])
            for rule, keep, evidence in (("sign only (before)", None, False), ("interval excludes 0", None, True),
                                         ("2-4 bits, sign only", (2, 3, 4), False)):
                sub = [c for c in cs if keep is None or c["bits"] in keep]
                x, excluded, _ = groups.to_points(sub, "delta_loss", bits_axis=axis, exclude_no_evidence=evidence)
                r = fit_law(UNIFIED, x, n_boot=boot, seed=0, universe=universe, loo=False).params()["gamma"]
                print(f"  {rule:22s} {axis:9s} {g.schedule:7s} {r['value']:.2f} [{r['ci_low']:.2f}, {r['ci_high']:.2f}]"
                      f"  ({len(x)} / {len(excluded)})")


def schedule_sd(cells: list[dict], ev: str, boot: int) -> None:
    fits = {}
    for g, cs in groups.delta_groups(cells, per_bits=False).items():
        if g.eval == ev:
            x = groups.to_points(cs, "delta_loss")[0]
            universe = groups.units([c for c in cells if c["eval"] == ev])
            fits[g.schedule] = (x, universe)
    (xa, u), (xb, _) = fits["cosine"], fits["wsd"]
    a = fit_law(UNIFIED, xa, n_boot=boot, seed=0, universe=u, loo=False)
    j = UNIFIED.params.index(UNIFIED.d_exponent)
    for label, seed_b in (("paired", 0), ("independent", 12345)):
        b = fit_law(UNIFIED, xb, n_boot=boot, seed=seed_b, universe=u, loo=False)
        da, db = paired_draws(a, b)
        diff = da[:, j] - db[:, j]
        lo, hi = np.percentile(diff, a.percentiles())
        print(f"β cosine − WSD (unified, {ev}), {label:11s}: {a.theta[j] - b.theta[j]:.3f}, SD {diff.std(ddof=1):.3f}, "
              f"95% [{lo:.3f}, {hi:.3f}] over {len(diff)} draws")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("results")
    ap.add_argument("--boot", type=int, default=1000)
    ap.add_argument("--eval", default="heldout-novels")
    args = ap.parse_args()
    cells = read_cells(args.results, status="ok")
    gamma_rows(cells, args.eval, args.boot)
    schedule_sd(cells, args.eval, args.boot)


if __name__ == "__main__":
    main()
