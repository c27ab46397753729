"""Coverage trials for tests/fit/test_recovery.py: one seeded synthetic data set per trial, fitted with bootstrap
intervals, run in worker processes (module-level functions, so that spawned workers can import them)."""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from functools import partial

import numpy as np

import fit_synthetic as S
from qsens.fit.fitting import fit_law
from qsens.fit.groups import delta_groups, to_points, units
from qsens.fit.laws import CHINCHILLA, KUMAR, OUYANG, UNIFIED, Law, Points
from qsens.fit.pipeline import compare_schedules, fit_group

# name: (law, generator of the degradation data, true parameters, metric fitted, bit widths)
CASES = {
    "ouyang": (OUYANG, S.ouyang, S.OUYANG_TRUE, "delta_loss", (4,)),
    "unified": (UNIFIED, S.unified, S.UNIFIED_TRUE, "delta_loss", S.BITS),
    "kumar": (KUMAR, S.kumar, S.KUMAR_TRUE, "delta_loss", S.BITS),
    "chinchilla": (CHINCHILLA, S.unified, S.CHINCHILLA_TRUE, "fp_loss", (4,)),
}


def case_points(name: str, seed: int, **noise) -> tuple[Law, dict[str, float], Points]:
    """(law, its true parameters, the points it is fitted to) for one seeded data set of CASES[name]; noise:
    make_cells' noise/fp_noise overrides."""
    law, generator, truth, metric, bits = CASES[name]
    delta_truth = truth if law.target == "delta" else S.UNIFIED_TRUE  # the fp fit ignores the Δloss draws
    cells = S.make_cells(generator, delta_truth, seed=seed, bits=bits, **noise)
    points, excluded, _ = to_points(cells, metric, with_bits=law.target == "delta")
    assert not excluded
    return law, truth, points


def law_trial(seed: int, name: str, n_boot: int) -> dict[str, bool]:
    """Whether each fitted parameter's interval holds its true value, for the data set of this seed."""
    law, truth, points = case_points(name, seed)
    params = fit_law(law, points, n_boot=n_boot, seed=seed, loo=False).params()
    return {p: bool(params[p]["ci_low"] <= truth[p] <= params[p]["ci_high"]) for p in law.params}


def schedule_trial(seed: int, n_boot: int) -> dict[str, bool]:
    """Two schedules of one fit group with the same unified law (independent noise): whether the interval of the
    difference of their D exponents (paired draws) holds 0."""
    cosine = S.make_cells(S.unified, S.UNIFIED_TRUE, seed=seed, family="c", schedule="cosine", fit_group="syn")
    wsd = S.make_cells(S.unified, S.UNIFIED_TRUE, seed=10**6 + seed, family="w", schedule="wsd", fit_group="syn")
    universe = units(cosine + wsd)
    fits = [fit_group(UNIFIED, group, cells, "delta_loss", n_boot, seed, universe)  # no fp-loss fits needed
            for group, cells in delta_groups(cosine + wsd, per_bits=False).items()]
    [row] = compare_schedules(fits)
    return {"beta difference": bool(row["ci_low"] <= 0 <= row["ci_high"])}


def point_fit(seed: int, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(theta, sandwich standard errors) of the fit without bootstrap to the data set of this seed."""
    law, _, points = case_points(name, seed)
    fit = fit_law(law, points, n_boot=0, loo=False)
    return fit.theta, fit.se


def in_workers(trial, seeds: range, **kwargs) -> list:
    """trial(seed, **kwargs) for every seed, in order, in up to 2 spawned processes (CI has 2 cores)."""
    workers = min(2, os.cpu_count() or 1)
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(partial(trial, **kwargs), seeds, chunksize=max(1, len(seeds) // (4 * workers))))


def coverage(trial, seeds: range, **kwargs) -> dict[str, float]:
    """Fraction of seeds whose interval holds the truth, per parameter (trials in_workers)."""
    hits = in_workers(trial, seeds, **kwargs)
    return {p: float(np.mean([h[p] for h in hits])) for p in hits[0]}
