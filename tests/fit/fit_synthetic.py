"""Synthetic cells drawn from known laws with multiplicative log-normal noise: the ground truth the fit tests
recover. Ladder: 5 sizes (N = 1e5 .. 1.6e6) × 8 token budgets per size (D/N = 5 .. 128), bits 2, 3, 4."""

from __future__ import annotations

import numpy as np

SIZES = (1.0e5, 2.0e5, 4.0e5, 8.0e5, 1.6e6)
RATIOS = (5, 8, 12, 20, 32, 50, 80, 128)
BITS = (2, 3, 4)

# True parameters: shapes of the papers' values; scales chosen so that Δloss spans ~1e-3 .. 1 and L ~ 2-4 here.
OUYANG_TRUE = {"log_k": np.log(0.005), "alpha": 0.25, "beta": 0.5}  # at one bit width
UNIFIED_TRUE = {"log_k": np.log(0.05), "alpha": 0.25, "beta": 0.5, "gamma": 3.0}
KUMAR_TRUE = {"log_C_T": np.log(0.15), "gamma_D": 0.5, "gamma_N": 0.25, "inv_gamma_post": 1 / 0.6}
CHINCHILLA_TRUE = {"log_E": np.log(1.7), "log_A": np.log(40.0), "a": 0.34, "log_B": np.log(40.0), "b": 0.28}


def ouyang(n, d, p, t):
    return np.exp(t["log_k"]) * d ** t["beta"] / n ** t["alpha"]


def unified(n, d, p, t):
    return np.exp(t["log_k"]) * d ** t["beta"] / (n ** t["alpha"] * p ** t["gamma"])


def kumar(n, d, p, t):
    return np.exp(t["log_C_T"]) * d ** t["gamma_D"] / n ** t["gamma_N"] * np.exp(-p * t["inv_gamma_post"])


def chinchilla(n, d, t):
    return np.exp(t["log_E"]) + np.exp(t["log_A"]) / n ** t["a"] + np.exp(t["log_B"]) / d ** t["b"]


def make_cells(delta_law, delta_true, seed, noise=0.05, fp_noise=0.003, bits=BITS, family="syn",
               schedule="cosine", sizes=SIZES, ratios=RATIOS, fit_group=None):
    """Cell dicts (export-contract fields) for every (size, ratio, bits); noise is the log-normal sigma."""
    rng = np.random.default_rng(seed)
    cells = []
    for n in sizes:
        for r in ratios:
            d = n * r
            fp = chinchilla(n, d, CHINCHILLA_TRUE) * np.exp(fp_noise * rng.standard_normal())
            for p in bits:
                dl = delta_law(n, d, p, delta_true) * np.exp(noise * rng.standard_normal())
                ckpt = f"n{int(n)}-d{int(d)}"
                cells.append({
                    "key": f"{family}-{ckpt}-w{p}", "family": family, "fit_group": fit_group,
                    "schedule": schedule, "checkpoint": ckpt, "effective_bits": p + 2.25,
                    "size": f"n{int(n)}", "eval": "heldout", "n_params": int(n), "tokens": int(d),
                    "method": "rtn", "bits": p, "group_size": 32, "quantizer": f"rtn-w{p}-g32-asym",
                    "fp_loss": float(fp), "q_loss": float(fp + dl), "delta_loss": float(dl), "status": "ok",
                })
    return cells
