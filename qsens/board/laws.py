"""Evaluate a stored fit on a grid of (N, D) for plotting, with a band.

The fit package owns the laws. If it exposes `qsens.fit.predict(fit_row, n_params, tokens, bits)` returning
`(mean, low, high)` arrays, the board uses it (that is the intended contract). Until then, the board draws the
one family of laws it knows, the Ouyang et al. (2024) form ΔqLoss = k · D^β / (N^α · P^γ) and its special cases
(any of α, β, γ absent counts as 0), with a conservative band: the envelope over the corners of the parameters'
confidence intervals. A law it cannot evaluate is not drawn (the plot says so).
"""

from __future__ import annotations

import importlib
import itertools

import numpy as np

_SCALE_NAMES = ("k", "A", "a0", "scale", "coef", "c0", "log_k")


def _fit_predictor():
    try:
        module = importlib.import_module("qsens.fit")
    except Exception:  # noqa: BLE001 - a broken fit package must not break the board
        return None
    return getattr(module, "predict", None)


def _param_table(fit: dict) -> dict[str, dict]:
    return {p["name"]: p for p in fit.get("params", []) if p.get("value") is not None}


def _builtin(fit: dict, n, d, bits):
    """k · D^β / (N^α · P^γ) with the corner envelope as band; None if the fit has no such parameters."""
    table = _param_table(fit)
    scale = next((s for s in _SCALE_NAMES if s in table), None)
    if scale is None or not {"alpha", "beta", "gamma"} & set(table):
        return None
    if scale != "log_k" and table[scale]["value"] <= 0:
        return None
    names = [k for k in ("alpha", "beta", "gamma") if k in table] + [scale]

    def evaluate(v: dict[str, float]) -> np.ndarray:
        log_k = v[scale] if scale == "log_k" else np.log(v[scale])
        return np.exp(log_k + v.get("beta", 0.0) * np.log(d) - v.get("alpha", 0.0) * np.log(n)
                      - v.get("gamma", 0.0) * np.log(bits or 1))

    mean = evaluate({k: table[k]["value"] for k in names})
    corners = [evaluate(dict(zip(names, choice)))
               for choice in itertools.product(*[(table[k].get("lo"), table[k].get("hi")) for k in names])
               if None not in choice and (scale == "log_k" or choice[-1] > 0)]
    if not corners or mean is None:
        return mean, None, None
    return mean, np.min(corners, axis=0), np.max(corners, axis=0)


def predict(fit: dict, n, d, bits):
    """(mean, low, high) of the fitted Δloss at arrays n, d (low/high may be None); None if not drawable."""
    n, d = np.asarray(n, dtype=float), np.asarray(d, dtype=float)
    hook = _fit_predictor()
    if hook is not None:
        try:
            out = hook(fit.get("raw", fit), n, d, bits)
            if out is not None:
                mean, lo, hi = out if isinstance(out, tuple) else (out, None, None)
                return np.asarray(mean, float), lo if lo is None else np.asarray(lo, float), \
                    hi if hi is None else np.asarray(hi, float)
        except Exception:  # noqa: BLE001 - fall back to the built-in form
            pass
    try:
        return _builtin(fit, n, d, bits)
    except (KeyError, ValueError, FloatingPointError):
        return None
