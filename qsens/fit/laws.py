"""The scaling-law forms qsens fits, evaluated in log space, and the token budget D* at the bottom of the U-curve.

Degradation laws (y = Δloss or another degradation metric, N non-embedding parameters, D tokens, P bits):

    ouyang   y = k · D^β / N^α                       per bit width   (Ouyang et al. 2024, arXiv 2411.17691)
    unified  y = k · D^β / (N^α · P^γ)               bits pooled     (Ouyang et al. 2024, unified form)
    kumar    y = C_T · D^γ_D / N^γ_N · e^(−P/γ_post)  bits pooled  (Kumar et al. 2024, arXiv 2411.04330, δ_PTQ)

All three are linear in their parameters once logged, with Kumar's γ_post fitted as λ = 1/γ_post (so
log y = log C_T + γ_D log D − γ_N log N − λ P) and reported as γ_post = 1/λ.

Full-precision loss (Hoffmann et al. 2022, "Chinchilla" form), fitted on log L:

    chinchilla   L = E + A / N^a + B / D^b

D*: with a degradation law of the form ΔL = K(N, P) · D^β (all three are), the post-quantization loss
L_q(D) = E + A/N^a + B·D^(−b) + K·D^β has dL_q/dD = −b·B·D^(−b−1) + β·K·D^(β−1) = 0 at

    D* = (b · B / (β · K)) ^ (1 / (β + b))

a minimum when β > 0, b > 0, B > 0, K > 0 (L_q is then decreasing before D* and increasing after). Otherwise
L_q never turns up and there is no bottom.

A law is one `Law` subclass: its name, parameters, formula, reported exponents, D exponent, N exponent and (for a
log-linear law) its design matrix; everything else (fitting, bootstrap, diagnostics, D*, schedule comparison,
report, board) reads them from the law. Add it to LAWS (and DELTA_LAWS for a degradation law) to fit it by default.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

# Hoffmann et al. (2022), approach 3: a = 0.34. Used only when a ladder has exactly two sizes (Chinchilla.fixed_params).
CHINCHILLA_A_EXPONENT = 0.34
# Bounds of Chinchilla's nonlinear parameters (Chinchilla.bounds): the exponents a, b in [0, 2] (published values
# lie in 0.07-0.8: Kaplan et al. 2020, Hoffmann et al. 2022, Besiroglu et al. 2024), and the irreducible loss E
# between an entropy floor and the smallest loss observed. The floor is ENTROPY_FLOOR_BITS_PER_BYTE bits per byte
# of the scored text (converted with its measured bytes per token, pipeline.entropy_floor), below every estimate of
# the entropy of English (Shannon 1951: 0.6-1.3 bits/character) and below the lowest bits/byte any language model
# reaches on English benchmark text (~0.3 on WikiText); without byte counts it is E_FLOOR_WITHOUT_BYTES.
ENTROPY_FLOOR_BITS_PER_BYTE = 0.2
E_FLOOR_WITHOUT_BYTES = 1e-3  # nats/token, when the cells carry no byte counts
EXPONENT_RANGE = (0.0, 2.0)


@dataclass(frozen=True)
class Points:
    """Fit inputs, one entry per point; all arrays have shape (m,).

    n: non-embedding parameters N; d: tokens D; p: bits P (NaN where unused); y: the fitted value (> 0);
    cluster: checkpoint identity (bootstrap resamples whole checkpoints); keys: the cell key(s) of each point;
    replicate: str [m], the training seed of each point's checkpoint (qsens.fit.groups.replicate_id), or None
    (one seed): with several, the bootstrap resamples seeds too (qsens.fit.fitting, training seeds);
    noise: float64 [m], the eval noise of each point as an SD of log y (qsens.fit.noise.eval_sd; NaN where the cell
    has no interval), or None: what the misfit test compares the residuals with;
    doc_num, doc_den: float64 [m, a], each point's per-document sums of y's numerator and of its token counts (y =
    doc_num.sum(1) / doc_den.sum(1)), where every point was scored on the same a >= 5 documents, or None: with them
    the bootstrap resamples documents too (qsens.fit.fitting, documents)."""

    n: np.ndarray
    d: np.ndarray
    p: np.ndarray
    y: np.ndarray
    cluster: np.ndarray
    keys: tuple[str, ...]
    replicate: np.ndarray | None = None
    noise: np.ndarray | None = None
    doc_num: np.ndarray | None = None
    doc_den: np.ndarray | None = None

    def take(self, idx: np.ndarray) -> "Points":
        def rows(a):
            return None if a is None else a[idx]

        return Points(self.n[idx], self.d[idx], self.p[idx], self.y[idx], self.cluster[idx],
                      tuple(self.keys[i] for i in idx), rows(self.replicate), rows(self.noise), rows(self.doc_num),
                      rows(self.doc_den))

    def __len__(self) -> int:
        return len(self.y)

    @staticmethod
    def at(n, d, p) -> "Points":
        """Points at arrays n, d (same shape, flattened) and scalar p, for evaluating a law (y = 1)."""
        n, d = np.ravel(np.asarray(n, float)), np.ravel(np.asarray(d, float))
        return Points(n, d, np.full(n.size, float(p)), np.ones(n.size), np.zeros(n.size), ("",) * n.size)


class Law:
    """One law. A subclass sets the class attributes below and, if it is log-linear (the default), `design`;
    a nonlinear one sets linear = False and overrides log_predict, log_jacobian, starts and bounds.

    A parameter named log_X is fitted in logs and reported as X = exp(log_X) too (`derived`)."""

    name: str
    params: tuple[str, ...]  # the order of theta
    formula: str
    exponents: tuple[str, ...]  # the reported parameters a reader compares across fits (report, board)
    d_exponent: str  # the exponent of D: the one schedule comparisons compare, β in K·D^β for D*
    n_exponent: str | None  # held at 0 when the points span one size (None: the law has no N term)
    bits_exponent: str | None = None  # the reported bits exponent of a law pooled across bit widths
    target = "delta"  # "delta" (a degradation metric) or "fp" (full-precision loss)
    pooled_bits = False  # fitted jointly across bit widths (P an input); else one fit per bit width
    linear = True  # log y is design(x) @ theta

    def __repr__(self) -> str:
        return f"<law {self.name}: {self.formula}>"

    def design(self, x: Points) -> np.ndarray:
        """Design matrix of a log-linear law: shape (m, len(params)), log y = design @ theta."""
        raise ValueError(f"{self.name} is not log-linear")

    def log_predict(self, theta: np.ndarray, x: Points) -> np.ndarray:
        """log of the law at the points: shape (m,) for theta of shape (len(params),)."""
        return self.design(x) @ theta

    def log_jacobian(self, theta: np.ndarray, x: Points) -> np.ndarray:
        """d log_predict / d theta: shape (m, len(params))."""
        return self.design(x)

    def derived(self, theta: np.ndarray) -> dict[str, float]:
        """Parameters as reported (theta's, then e.g. k = exp(log_k)), one float each."""
        v = dict(zip(self.params, map(float, theta)))
        v.update(self.reported(v))
        return v

    def reported(self, v: dict[str, float]) -> dict[str, float]:
        """The reported parameters beyond theta's, from theta's {name: value}: X = exp(log_X)."""
        return {p[len("log_"):]: float(np.exp(v[p])) for p in self.params if p.startswith("log_")}

    def fixed_params(self, x: Points) -> dict[str, float]:
        """Parameters the data cannot identify, held at a stated value: the N exponent at 0 with one size."""
        one_size = len(np.unique(x.n)) < 2
        return {self.n_exponent: 0.0} if self.n_exponent and one_size else {}

    def starts(self, x: Points, fixed: dict[str, float]) -> list[np.ndarray]:
        """Initial free parameters: the ordinary least-squares solution on log y (deterministic)."""
        free_idx = [i for i, p in enumerate(self.params) if p not in fixed]
        X = self.design(x)
        offset = X @ np.array([fixed.get(p, 0.0) for p in self.params], dtype=float)
        sol, *_ = np.linalg.lstsq(X[:, free_idx], np.log(x.y) - offset, rcond=None)
        return [sol]

    def bounds(self, x: Points, fixed: dict[str, float], e_floor: float | None = None
               ) -> dict[str, tuple[float, float]]:
        """{free parameter: (low, high)}; {} when every parameter is free to take any value."""
        return {}

    def degradation_scale(self, theta: np.ndarray, n: float, bits: float) -> tuple[float, float]:
        """(K, β) with y = K · D^β at fixed N and P: log K is log y at D = 1, β the D exponent."""
        row = self.design(Points.at(n, 1.0, bits))[0]
        log_k = 0.0
        for name, column, value in zip(self.params, row, theta):
            if name != self.d_exponent:  # its column is log 1 = 0
                log_k += column * value
        return float(np.exp(log_k)), theta[self.params.index(self.d_exponent)]


class Ouyang(Law):
    name, formula = "ouyang", "k·D^β / N^α"
    params, exponents = ("log_k", "alpha", "beta"), ("alpha", "beta")
    d_exponent, n_exponent = "beta", "alpha"

    def design(self, x: Points) -> np.ndarray:
        return np.column_stack([np.ones(len(x)), -np.log(x.n), np.log(x.d)])


class Unified(Law):
    name, formula = "unified", "k·D^β / (N^α·P^γ)"
    params, exponents = ("log_k", "alpha", "beta", "gamma"), ("alpha", "beta", "gamma")
    d_exponent, n_exponent, bits_exponent = "beta", "alpha", "gamma"
    pooled_bits = True

    def design(self, x: Points) -> np.ndarray:
        return np.column_stack([np.ones(len(x)), -np.log(x.n), np.log(x.d), -np.log(x.p)])


class Kumar(Law):
    name, formula = "kumar", "C_T·D^γ_D / N^γ_N · exp(−P/γ_post)"
    params, exponents = ("log_C_T", "gamma_D", "gamma_N", "inv_gamma_post"), ("gamma_N", "gamma_D", "gamma_post")
    d_exponent, n_exponent, bits_exponent = "gamma_D", "gamma_N", "gamma_post"
    pooled_bits = True

    def design(self, x: Points) -> np.ndarray:
        return np.column_stack([np.ones(len(x)), np.log(x.d), -np.log(x.n), -x.p])

    def reported(self, v: dict[str, float]) -> dict[str, float]:
        lam = v["inv_gamma_post"]
        return {"gamma_post": 1.0 / lam if lam != 0 else float("inf"), **super().reported(v)}


class Chinchilla(Law):
    """The full-precision loss, fitted on log L = log(E + A/N^a + B/D^b) (nonlinear; bounded, see the constants)."""

    name, formula = "chinchilla", "E + A/N^a + B/D^b"
    params, exponents = ("log_E", "log_A", "a", "log_B", "b"), ("a", "b", "E")
    d_exponent, n_exponent = "b", "a"
    target, linear = "fp", False

    @staticmethod
    def _log_terms(theta: np.ndarray, x: Points) -> np.ndarray:
        """log E, log A/N^a, log B/D^b at the points: shape (3, m)."""
        log_e, log_a, a, log_b, b = theta
        return np.stack([np.full(len(x), log_e), log_a - a * np.log(x.n), log_b - b * np.log(x.d)])

    def log_predict(self, theta: np.ndarray, x: Points) -> np.ndarray:
        return np.logaddexp.reduce(self._log_terms(theta, x), axis=0)

    def log_jacobian(self, theta: np.ndarray, x: Points) -> np.ndarray:
        terms = self._log_terms(theta, x)
        w = np.exp(terms - np.logaddexp.reduce(terms, axis=0))  # each term's share of L, shape (3, m)
        log_n, log_d = np.log(x.n), np.log(x.d)
        return np.column_stack([w[0], w[1], -w[1] * log_n, w[2], -w[2] * log_d])

    def fixed_params(self, x: Points) -> dict[str, float]:
        """One size: the A term is dropped (A/N^a is absorbed into E: L = E + B/D^b for this one size); two
        sizes: a held at Hoffmann et al.'s CHINCHILLA_A_EXPONENT."""
        sizes = len(np.unique(x.n))
        if sizes == 1:
            return {"log_A": -np.inf, "a": 0.0}
        return {"a": CHINCHILLA_A_EXPONENT} if sizes == 2 else {}

    def starts(self, x: Points, fixed: dict[str, float]) -> list[np.ndarray]:
        """A small grid of starts (Hoffmann et al. 2022 also fit from a grid); deterministic."""
        free_idx = [i for i, p in enumerate(self.params) if p not in fixed]
        y_min, y_mean = float(x.y.min()), float(x.y.mean())
        starts = []
        for e_frac, a, b in itertools.product((0.5, 0.9), (0.3, 0.7), (0.3, 0.7)):
            e = e_frac * y_min  # clipped into the bounds by the fit
            a = fixed.get("a", a)
            log_a = np.log((y_mean - e) / 2) + a * np.median(np.log(x.n))
            log_b = np.log((y_mean - e) / 2) + b * np.median(np.log(x.d))
            full = dict(zip(self.params, (np.log(e), log_a, a, log_b, b)))
            starts.append(np.array([full[self.params[i]] for i in free_idx]))
        return starts

    def bounds(self, x: Points, fixed: dict[str, float], e_floor: float | None = None
               ) -> dict[str, tuple[float, float]]:
        """e_floor: the entropy floor of E in nats/token (None: E_FLOOR_WITHOUT_BYTES)."""
        floor = e_floor if e_floor and e_floor > 0 else E_FLOOR_WITHOUT_BYTES
        ceiling = max(float(x.y.min()), floor * (1 + 1e-6))
        out = {"log_E": (float(np.log(floor)), float(np.log(ceiling))), "a": EXPONENT_RANGE, "b": EXPONENT_RANGE,
               "log_A": (-np.inf, np.inf), "log_B": (-np.inf, np.inf)}
        return {p: out[p] for p in self.params if p not in fixed}

    def degradation_scale(self, theta: np.ndarray, n: float, bits: float) -> tuple[float, float]:
        raise ValueError("the Chinchilla law is a full-precision loss, not a degradation law")

    @staticmethod
    def loss(theta: np.ndarray, n, d) -> np.ndarray:
        """E + A/N^a + B/D^b at arrays n, d."""
        log_e, log_a, a, log_b, b = theta
        n, d = np.asarray(n, float), np.asarray(d, float)
        return np.exp(log_e) + np.exp(log_a - a * np.log(n)) + np.exp(log_b - b * np.log(d))

    @staticmethod
    def data_term(theta: np.ndarray) -> tuple[float, float]:
        """(log B, b) of the data term B/D^b, the one D* balances against the degradation."""
        _, _, _, log_b, b = theta
        return log_b, b


OUYANG, UNIFIED, KUMAR, CHINCHILLA = Ouyang(), Unified(), Kumar(), Chinchilla()
LAWS = {law.name: law for law in (OUYANG, UNIFIED, KUMAR, CHINCHILLA)}
DELTA_LAWS = (OUYANG, UNIFIED, KUMAR)


def predict_delta(law: Law, theta: np.ndarray, n, d, bits) -> np.ndarray:
    """Degradation at arrays n, d (broadcast together) and scalar bits."""
    n, d = np.broadcast_arrays(np.asarray(n, float), np.asarray(d, float))
    x = Points.at(n, d, bits or np.nan)
    return np.exp(law.log_predict(np.asarray(theta, float), x)).reshape(n.shape)


def d_star(theta_fp: np.ndarray, law: Law, theta_delta: np.ndarray, n: float, bits: float) -> float:
    """Closed-form D* minimising L(N, D) + ΔL(N, D, P) over D; +inf where L_q has no minimum (see module doc)."""
    log_b, b = CHINCHILLA.data_term(theta_fp)
    k, beta = law.degradation_scale(theta_delta, n, bits)
    if not (beta > 0 and b > 0 and np.isfinite(log_b) and k > 0):
        return float("inf")
    log_dstar = (np.log(b) + log_b - np.log(beta) - np.log(k)) / (beta + b)
    return float(np.exp(log_dstar)) if log_dstar < 700 else float("inf")


def quantized_loss(theta_fp: np.ndarray, law: Law, theta_delta: np.ndarray, n: float, d, bits: float) -> np.ndarray:
    """Post-quantization loss L + ΔL at scalar n and bits, array d."""
    return CHINCHILLA.loss(theta_fp, n, d) + predict_delta(law, theta_delta, n, d, bits)
