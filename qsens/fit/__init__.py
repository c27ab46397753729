"""Scaling-law fits of quantization degradation against pretraining tokens D and parameters N.

    laws.py      the laws, one `Law` subclass each (Ouyang per-bit and unified, Kumar δ_PTQ, Chinchilla fp loss:
                 formula, parameters, exponents, design or log-prediction, bounds), and closed-form D*
    fitting.py   robust log-space least squares, paired bootstrap over (N, D) units, leave-one-out on the largest D
    batched.py   the bootstrap's and jackknife's refits of a log-linear law, solved together (Newton, numpy)
    groups.py    which cells are fitted together (fit groups, bits axes); exclusion by evidence
    diagnostics.py  does the law fit: residual SD, curvature in D, local exponents, LOO error; the verdict
    pipeline.py  every law on every group, D* per (N, bits), paired schedule comparison
    report.py    the text summary `qsens fit` prints

`predict(fit_row, n, d, bits)` evaluates a stored fit for the board: (mean, low, high) arrays. The fits are stored
by qsens.store.fits; this package computes and never touches a database.
"""

from __future__ import annotations

import json

import numpy as np


def predict(fit_row: dict, n, d, bits):
    """A stored degradation fit at arrays n, d (broadcast) and scalar bits: (mean, low, high), the band being
    the 2.5-97.5 percentiles over the stored bootstrap refits (None, None without them). None if the row is
    not a degradation fit qsens.fit knows."""
    from qsens.fit.laws import LAWS, predict_delta

    law = LAWS.get(str(fit_row.get("law")))
    params = fit_row.get("params")
    params = json.loads(params) if isinstance(params, str) else params
    if law is None or law.target != "delta" or not params:
        return None
    if bits is None and law.pooled_bits:  # P is an input of the law
        return None
    theta = np.array([params[p]["value"] for p in law.params], dtype=float)
    mean = predict_delta(law, theta, n, d, bits)
    draws = fit_row.get("draws")
    draws = json.loads(draws) if isinstance(draws, str) else draws
    if not draws or not draws.get("values"):
        return mean, None, None
    curves = np.stack([predict_delta(law, np.asarray(t, float), n, d, bits) for t in draws["values"]])
    low, high = np.percentile(curves, [2.5, 97.5], axis=0)
    return mean, low, high
