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
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Hoffmann et al. (2022), approach 3: a = 0.34. Used only when a ladder has exactly two sizes (see fixed_params).
CHINCHILLA_A_EXPONENT = 0.34


@dataclass(frozen=True)
class Points:
    """Fit inputs, one entry per point; all arrays have shape (m,).

    n: non-embedding parameters N; d: tokens D; p: bits P (NaN where unused); y: the fitted value (> 0);
    cluster: checkpoint identity (bootstrap resamples whole checkpoints); keys: the cell key(s) of each point."""

    n: np.ndarray
    d: np.ndarray
    p: np.ndarray
    y: np.ndarray
    cluster: np.ndarray
    keys: tuple[str, ...]

    def take(self, idx: np.ndarray) -> "Points":
        return Points(self.n[idx], self.d[idx], self.p[idx], self.y[idx], self.cluster[idx],
                      tuple(self.keys[i] for i in idx))

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True)
class Law:
    """One law: parameter names (in the order of theta) and whether it is linear in them after taking logs."""

    name: str
    params: tuple[str, ...]
    target: str  # "delta" (a degradation metric) or "fp" (full-precision loss)
    pooled_bits: bool  # fitted jointly across bit widths
    linear: bool
    formula: str
    exponents: tuple[str, ...] = ()  # the reported parameters a reader compares across fits (report, board)

    def log_predict(self, theta: np.ndarray, x: Points) -> np.ndarray:
        """log of the law at the points: shape (m,) for theta of shape (len(params),)."""
        if self.linear:
            return design(self, x) @ theta
        log_e, log_a, a, log_b, b = theta
        terms = np.stack([np.full(len(x), log_e), log_a - a * np.log(x.n), log_b - b * np.log(x.d)])
        return np.logaddexp.reduce(terms, axis=0)

    def log_jacobian(self, theta: np.ndarray, x: Points) -> np.ndarray:
        """d log_predict / d theta: shape (m, len(params))."""
        if self.linear:
            return design(self, x)
        log_e, log_a, a, log_b, b = theta
        log_n, log_d = np.log(x.n), np.log(x.d)
        terms = np.stack([np.full(len(x), log_e), log_a - a * log_n, log_b - b * log_d])
        w = np.exp(terms - np.logaddexp.reduce(terms, axis=0))  # each term's share of L, shape (3, m)
        return np.column_stack([w[0], w[1], -w[1] * log_n, w[2], -w[2] * log_d])

    def derived(self, theta: np.ndarray) -> dict[str, float]:
        """Parameters as reported (e.g. k = exp(log_k), γ_post = 1/λ), one float each."""
        v = dict(zip(self.params, map(float, theta)))
        if self.name == "kumar":
            lam = v["inv_gamma_post"]
            v["gamma_post"] = 1.0 / lam if lam != 0 else float("inf")
            v["C_T"] = float(np.exp(v["log_C_T"]))
        elif self.name == "chinchilla":
            v.update(E=float(np.exp(v["log_E"])), A=float(np.exp(v["log_A"])), B=float(np.exp(v["log_B"])))
        else:
            v["k"] = float(np.exp(v["log_k"]))
        return v


OUYANG = Law("ouyang", ("log_k", "alpha", "beta"), "delta", False, True, "k·D^β / N^α", ("alpha", "beta"))
UNIFIED = Law("unified", ("log_k", "alpha", "beta", "gamma"), "delta", True, True, "k·D^β / (N^α·P^γ)",
              ("alpha", "beta", "gamma"))
KUMAR = Law("kumar", ("log_C_T", "gamma_D", "gamma_N", "inv_gamma_post"), "delta", True, True,
            "C_T·D^γ_D / N^γ_N · exp(−P/γ_post)", ("gamma_N", "gamma_D", "gamma_post"))
CHINCHILLA = Law("chinchilla", ("log_E", "log_A", "a", "log_B", "b"), "fp", False, False, "E + A/N^a + B/D^b",
                 ("a", "b", "E"))
LAWS = {law.name: law for law in (OUYANG, UNIFIED, KUMAR, CHINCHILLA)}
DELTA_LAWS = (OUYANG, UNIFIED, KUMAR)


def design(law: Law, x: Points) -> np.ndarray:
    """Design matrix of a log-linear law: shape (m, len(law.params)), log y = design @ theta."""
    one, log_n, log_d = np.ones(len(x)), np.log(x.n), np.log(x.d)
    if law.name == "ouyang":
        return np.column_stack([one, -log_n, log_d])
    if law.name == "unified":
        return np.column_stack([one, -log_n, log_d, -np.log(x.p)])
    if law.name == "kumar":
        return np.column_stack([one, log_d, -log_n, -x.p])
    raise ValueError(f"{law.name} is not log-linear")


def fixed_params(law: Law, x: Points) -> dict[str, float]:
    """Parameters the data cannot identify, held at a stated value: the N exponent (0, or Chinchilla's A term
    dropped) when the points span one size; Chinchilla's `a` at Hoffmann et al.'s 0.34 when they span two."""
    sizes = len(np.unique(x.n))
    if law.target == "delta":
        n_exponent = "gamma_N" if law.name == "kumar" else "alpha"
        return {n_exponent: 0.0} if sizes < 2 else {}
    if sizes == 1:
        return {"log_A": -np.inf, "a": 0.0}  # A/N^a is absorbed into E: L = E + B/D^b for this one size
    return {"a": CHINCHILLA_A_EXPONENT} if sizes == 2 else {}


def degradation_scale(law: Law, theta: np.ndarray, n: float, bits: float) -> tuple[float, float]:
    """(K, β) with ΔL = K · D^β at fixed N and P for a degradation law's theta."""
    v = dict(zip(law.params, theta))
    if law.name == "kumar":
        return float(np.exp(v["log_C_T"] - v["gamma_N"] * np.log(n) - v["inv_gamma_post"] * bits)), v["gamma_D"]
    log_k = v["log_k"] - v["alpha"] * np.log(n) - (v["gamma"] * np.log(bits) if law.name == "unified" else 0.0)
    return float(np.exp(log_k)), v["beta"]


def predict_delta(law: Law, theta: np.ndarray, n, d, bits) -> np.ndarray:
    """Degradation at arrays n, d (broadcast together) and scalar bits."""
    n, d = np.broadcast_arrays(np.asarray(n, float), np.asarray(d, float))
    x = Points(n.ravel(), d.ravel(), np.full(n.size, float(bits or np.nan)), np.ones(n.size),
               np.zeros(n.size), ("",) * n.size)
    return np.exp(law.log_predict(np.asarray(theta, float), x)).reshape(n.shape)


def fp_loss(theta_fp: np.ndarray, n, d) -> np.ndarray:
    """Chinchilla full-precision loss E + A/N^a + B/D^b at arrays n, d."""
    log_e, log_a, a, log_b, b = theta_fp
    n, d = np.asarray(n, float), np.asarray(d, float)
    return np.exp(log_e) + np.exp(log_a - a * np.log(n)) + np.exp(log_b - b * np.log(d))


def d_star(theta_fp: np.ndarray, law: Law, theta_delta: np.ndarray, n: float, bits: float) -> float:
    """Closed-form D* minimising L(N, D) + ΔL(N, D, P) over D; +inf where L_q has no minimum (see module doc)."""
    _, _, _, log_b, b = theta_fp
    k, beta = degradation_scale(law, theta_delta, n, bits)
    if not (beta > 0 and b > 0 and np.isfinite(log_b) and k > 0):
        return float("inf")
    log_dstar = (np.log(b) + log_b - np.log(beta) - np.log(k)) / (beta + b)
    return float(np.exp(log_dstar)) if log_dstar < 700 else float("inf")


def quantized_loss(theta_fp: np.ndarray, law: Law, theta_delta: np.ndarray, n: float, d, bits: float) -> np.ndarray:
    """Post-quantization loss L + ΔL at scalar n and bits, array d."""
    return fp_loss(theta_fp, n, d) + predict_delta(law, theta_delta, n, d, bits)
