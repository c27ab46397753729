"""What the board shows of a stored fit, derived from the one shape qsens.fit.pipeline.fit_group writes.

A fit record (qsens.store.fits.read_fits) has `law`, `metric`, `status` ("ok" or "insufficient"), the group it
pools (`fit_group`, `family` = its member families comma-joined, `schedule`, `eval`, `method`, `group_size`,
`settings`, `bits` (None: pooled over bit widths), `bits_axis`, `quantizer` (a pooled fit's label has `w*` for the
bits)), `params` {name: {value, ci_low, ci_high, fixed, ...}} (NaN bounds: no interval), `r2`, `diagnostics`,
`verdict`, `d_star` [{n_params, bits, d_star, d_star_ci_low, d_star_ci_high, verdict, ...}] and `draws`. The board
draws a fit with `qsens.fit.predict` and shows the law's exponents (`qsens.fit.laws.LAWS[law].exponents`).
"""

from __future__ import annotations

import math
from fnmatch import fnmatchcase

from qsens.fit.laws import LAWS

# The index rows and the Δloss plots show this metric; a fit of another metric is listed on its family page only.
DRAWN_METRIC = "delta_loss"


def _finite(x) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


def families(fit: dict) -> list[str]:
    """The member families of the fit's group."""
    return [f for f in str(fit.get("family") or "").split(",") if f]


def pooled(fit: dict) -> bool:
    """Fitted across bit widths (one law in P) rather than at one bit width."""
    return fit.get("bits") is None


def is_drawn(fit: dict) -> bool:
    """A degradation fit of the metric the index and the plots show (not the fp-loss fit beside it)."""
    law = LAWS.get(str(fit.get("law")))
    return law is not None and law.target == "delta" and fit.get("metric") == DRAWN_METRIC


def quantizer_matches(fit: dict, quantizer) -> bool:
    """A fit's quantizer label (None: any; `w*` in a pooled fit's: any bit width) covers `quantizer`."""
    label = fit.get("quantizer")
    return label is None or (quantizer is not None and fnmatchcase(str(quantizer), str(label)))


def exponents(fit: dict) -> list[dict]:
    """The law's exponents as [{name, value, lo, hi}] (None where not finite), in the law's order."""
    law, params = LAWS.get(str(fit.get("law"))), fit.get("params") or {}
    return [{"name": name, "value": _finite(params[name].get("value")), "lo": _finite(params[name].get("ci_low")),
             "hi": _finite(params[name].get("ci_high"))}
            for name in (law.exponents if law else ()) if name in params]


def param_items(fit: dict) -> list[tuple[str, dict]]:
    """(name, {value, ci_low, ci_high, fixed...}) of every stored parameter: the law's fitted ones in its order,
    then the derived ones (k = exp(log_k)...)."""
    law, params = LAWS.get(str(fit.get("law"))), fit.get("params") or {}
    order = [p for p in (law.params if law else ()) if p in params]
    return [(name, params[name]) for name in order + sorted(set(params) - set(order))]


def diagnostics(fit: dict) -> dict:
    """The diagnostics the board shows (qsens.fit.diagnostics): residual SD, the misfit test against the measured
    noise (reduced χ², its p-value, the excess SD with its interval, where the noise came from), curvature p-value,
    LOO RMS (log units), the training seeds and the reasons for the verdict; None each where the fit has none (an
    insufficient fit, or one stored before the noise test)."""
    diag = fit.get("diagnostics") or {}
    noise = diag.get("noise") or {}
    tested = bool(noise.get("available"))
    tau_ci = noise.get("tau_ci") or [None, None]
    return {"residual_sd": diag.get("residual_sd"), "curvature_p": (diag.get("curvature") or {}).get("p_value"),
            "loo_rms": diag.get("loo_rms"), "reasons": diag.get("reasons") or [],
            "reduced_chi2": noise.get("reduced_chi2") if tested else None,
            "chi2_p": noise.get("p_value") if tested else None, "excess_sd": noise.get("tau") if tested else None,
            "excess_lo": tau_ci[0] if tested else None, "excess_hi": tau_ci[1] if tested else None,
            "noise_source": noise.get("source") if tested else noise.get("why"), "seeds": seeds(fit)}


def seeds(fit: dict) -> int:
    """How many training seeds the fit's points carry (its bootstrap resampled them; 1 when none is recorded)."""
    noise = (fit.get("diagnostics") or {}).get("noise") or {}
    drawn = (fit.get("draws") or {}).get("seeds") or []
    return max(len(drawn), int(noise.get("n_seeds") or 1))


def prediction_withheld(fit: dict, fits: list[dict], with_fp: bool = True) -> str | None:
    """Why the board shows no D* (with_fp) or no Δ curve past the measured range (with_fp False) for this fit
    (None: it shows them); the rule is qsens.fit.diagnostics.prediction_withheld, with the fp-loss fit beside a
    D* looked up among `fits`."""
    from qsens.fit.diagnostics import prediction_withheld as rule

    fp = next((f for f in fits if f.get("key") and f.get("key") == fit.get("fp_fit_key")), None)
    return rule(fit, fp, with_fp)


def d_star_entry(fit: dict | None, n_params, bits) -> dict | None:
    """The fit's D* prediction for size N at nominal `bits` (a pipeline.d_star_table row), or None."""
    for entry in (fit or {}).get("d_star") or []:
        if entry["n_params"] == n_params and entry["bits"] == bits:
            return entry
    return None


def plot_bits(fit: dict, cell: dict):
    """P at which to evaluate the fit for this cell: its nominal bits, or its effective bits on that axis."""
    return cell.get("effective_bits") if fit.get("bits_axis") == "effective" else cell.get("bits")
