"""Power of the schedule rule (docs/schedule-question.md; issue 20, item 2): simulate designs, apply the rule
(`qsens.analysis.schedule_rule.decide`, the one implementation), count verdicts.

    OMP_NUM_THREADS=1 python scripts/power_schedule.py --reps 200 --boot 200 --sigma 0.10 0.15 0.20

Simulated log Δ of a point (size N, seed s, arm a, D):

    c_N + κ·cooled + β_a·x + u_s + v_s·x + ε,    x = log D − log D̄,   ε ~ N(0, σ²) per checkpoint,

u_s ~ N(0, seed_sd²) and v_s ~ N(0, seed_slope_sd²) per trajectory (a seed's stable run and its cooldowns share
them; u_s cancels exactly from every slope and κ when all seeds of a size share the same D's, v_s does not),
and a cooldown's ε correlated (branch_rho) with the ε of the stable checkpoint it branched from.
Hypotheses: D (β_s = β_c = 0.5) and decay (β_s = 0, β_c = --decay-beta-c); κ = --kappa under both.
σ: the pilot's pooled seed SD of log Δ (scripts/pilot_sigma.py) once measured; the default grid brackets it.
--gate-null prints, instead of verdicts, the null distribution of the two fit-gate statistics (the largest
|β_upper − β_lower| and the largest |LOO log error| over the arms of a dataset, the power law being true) and
their 95/99% points: the calibration of the amended rule's tolerances (docs/schedule-question.md).
--calibrate SIGMA applies that calibration per design before the verdicts: tolerance = max(0.2, the null's 99th
percentile at SIGMA, rounded up to 0.01), the same tolerances then used at every --sigma (the rule fixes numbers,
not a function of the noise it will meet). The null draws of both truths are pooled: the gate statistics are
residuals of fits linear in x, so the true slopes cancel from them and both truths give one distribution.
--boot below the rule's 2,000 (e.g. 200) is for speed: percentile ends from 200 replicates are noisier, which
moves single verdicts but little the verdict rates.
The checkpoint gate is simulated by dropping whole (size, arm) groups (issue 20: h32's stable arm never passes).
"""

from __future__ import annotations

import argparse
import math
import time
from collections import Counter

import numpy as np

from qsens.analysis.schedule_rule import ARMS, D_BAR, Point, arm_gates, decide

N = {"h32": 47_392, "h48": 111_024, "h96": 443_232, "h192": 1_771_200}  # h192: 4 layers, MLP 512 (scaled as h96)
BUDGETS = [4.19e6, 8.39e6, 16.8e6, 33.6e6, 67.1e6, 134.2e6]
FACTORIAL = {8.39e6, 33.6e6, 134.2e6}  # the doc's stable arm also has checkpoints at 0.9·D and 0.6·D there

DESIGNS = {
    # the doc as written: 12 stable checkpoints per trajectory; h32's stable arm removed by the checkpoint gate
    "original": {"seeds": {"h32": 3, "h48": 3, "h96": 1}, "all_branches": True, "drop": {("h32", "stable")}},
    # the gate as the probes extrapolate it: h32 cooled also stays above 4.077 up to ~67M; h32 all out
    "original-h32out": {"seeds": {"h32": 3, "h48": 3, "h96": 1}, "all_branches": True,
                        "drop": {("h32", "stable"), ("h32", "cooled")}},
    "original-nogate": {"seeds": {"h32": 3, "h48": 3, "h96": 1}, "all_branches": True, "drop": set()},
    "h48x3+h96x3": {"seeds": {"h48": 3, "h96": 3}, "all_branches": False, "drop": set()},
    "h48x5+h96x5": {"seeds": {"h48": 5, "h96": 5}, "all_branches": False, "drop": set()},
    # half the training cost: the 134.2M budget dropped (80M instead of 160M tokens per trajectory)
    "h48x5+h96x5-to67M": {"seeds": {"h48": 5, "h96": 5}, "all_branches": False, "drop": set(),
                          "budgets": BUDGETS[:5]},
    "h48x6+h96x4-to67M": {"seeds": {"h48": 6, "h96": 4}, "all_branches": False, "drop": set(),
                          "budgets": BUDGETS[:5]},
    # the pilot's checkpoint gate (scripts/pilot_gate.py): h48 passes from 13.4M in its stable arm and from
    # 8.39M cooled; h96 (issue 20's probes) from ~3.6M stable. "gate_from": {(size, arm): smallest D kept}.
    "h48x5+h96x5-gated": {"seeds": {"h48": 5, "h96": 5}, "all_branches": False, "drop": set(),
                          "gate_from": {("h48", "stable"): 13.4e6, ("h48", "cooled"): 8.39e6,
                                        ("h96", "stable"): 3.6e6}},
    "h48x5+h96x5-from8M-gated": {"seeds": {"h48": 5, "h96": 5}, "all_branches": False, "drop": set(),
                                 "budgets": BUDGETS[1:],
                                 "gate_from": {("h48", "stable"): 13.4e6, ("h48", "cooled"): 8.39e6}},
    "h96x5+h192x5-to67M-gated": {"seeds": {"h96": 5, "h192": 5}, "all_branches": False, "drop": set(),
                                 "budgets": BUDGETS[:5], "gate_from": {("h96", "stable"): 3.6e6}},
}
# the amendment's candidates (docs/schedule-question.md, 2026-12-03): more seeds, h192 (gate assumed passed at
# every D: h128 passes below 3.35M), budgets to 67M or 134M
for _k in (6, 7, 8, 10):
    DESIGNS[f"h48x{_k}+h96x{_k}-gated"] = DESIGNS["h48x5+h96x5-gated"] | {"seeds": {"h48": _k, "h96": _k}}
# h48 costs 0.6x h96 per token: unbalanced seeds
for _a, _b in ((6, 4), (6, 5), (7, 4), (7, 5), (8, 4), (8, 5), (7, 6), (10, 5), (10, 6), (12, 6)):
    DESIGNS[f"h48x{_a}+h96x{_b}-gated"] = DESIGNS["h48x5+h96x5-gated"] | {"seeds": {"h48": _a, "h96": _b}}
for _a, _b in ((8, 4), (6, 5)):  # the widest affordable span, 16x in N (h192 gate assumed passed, as below)
    DESIGNS[f"h48x{_a}+h192x{_b}-gated"] = DESIGNS["h48x5+h96x5-gated"] | {
        "seeds": {"h48": _a, "h192": _b}, "gate_from": {("h48", "stable"): 13.4e6, ("h48", "cooled"): 8.39e6}}
for _k in (3, 4, 5, 6, 7, 8):
    DESIGNS[f"h96x{_k}+h192x{_k}-to67M-gated"] = DESIGNS["h96x5+h192x5-to67M-gated"] | {
        "seeds": {"h96": _k, "h192": _k}}
    DESIGNS[f"h96x{_k}+h192x{_k}-gated"] = DESIGNS["h96x5+h192x5-to67M-gated"] | {
        "seeds": {"h96": _k, "h192": _k}, "budgets": BUDGETS}


def trajectory(size: str, seed: int, spec: dict, beta_s: float, beta_c: float, args, rng) -> list[Point]:
    """One (size, seed)'s stable checkpoints and f = 0.2 cooldowns, simulated."""
    u, v = rng.normal(0, args.seed_sd), rng.normal(0, args.seed_slope_sd)
    c = -3.0 + 0.3 * math.log(N[size] / 1e5)  # any c_N: the rule has one intercept per size
    budgets = spec.get("budgets", BUDGETS)
    stable_d = sorted({0.8 * b for b in budgets} | ({f * b for b in FACTORIAL for f in (0.9, 0.6)}
                                                  if spec["all_branches"] and args.factorial_stable else set()))
    eps = {d: rng.normal(0, args.sigma) for d in stable_d}
    gate = spec.get("gate_from", {})
    pts = []
    if (size, "stable") not in spec["drop"]:
        for d in stable_d:
            if d < gate.get((size, "stable"), 0):
                continue
            x = math.log(d / D_BAR)
            pts.append(Point(size, N[size], seed, "stable", d, math.exp(c + beta_s * x + u + v * x + eps[d])))
    if (size, "cooled") not in spec["drop"]:
        for b in budgets:
            if b < gate.get((size, "cooled"), 0):
                continue
            x = math.log(b / D_BAR)
            e = args.branch_rho * eps[0.8 * b] + math.sqrt(1 - args.branch_rho ** 2) * rng.normal(0, args.sigma)
            pts.append(Point(size, N[size], seed, "cooled", b,
                             math.exp(c + args.kappa + beta_c * x + u + v * x + e)))
    return pts


def simulate(spec: dict, hypothesis: str, args, rng) -> list[Point]:
    beta_s, beta_c = (0.5, 0.5) if hypothesis == "D" else (0.0, args.decay_beta_c)
    return [p for size, k in spec["seeds"].items() for s in range(k)
            for p in trajectory(size, s, spec, beta_s, beta_c, args, rng)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--designs", nargs="+", default=list(DESIGNS), choices=list(DESIGNS))
    ap.add_argument("--sigma", nargs="+", type=float, default=[0.10, 0.15, 0.20])
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--boot", type=int, default=200, help="bootstrap replicates per dataset (the rule: 2000)")
    ap.add_argument("--loo-tol", type=float, default=0.2)
    ap.add_argument("--halves-tol", type=float, default=0.2)
    ap.add_argument("--gate-null", action="store_true", help="the gates' null distribution instead of verdicts")
    ap.add_argument("--calibrate", type=float, metavar="SIGMA",
                    help="per design, tolerances = max(0.2, the gate null's 99th percentile at SIGMA, both truths), "
                         "rounded up to 0.01, then used at every --sigma (overrides --loo-tol/--halves-tol)")
    ap.add_argument("--calibrate-reps", type=int, default=4000, help="datasets of the gate null for --calibrate")
    ap.add_argument("--kappa", type=float, default=math.log(1.2))
    ap.add_argument("--decay-beta-c", type=float, default=0.6)
    ap.add_argument("--seed-sd", type=float, default=0.10, help="per-trajectory intercept SD")
    ap.add_argument("--seed-slope-sd", type=float, default=0.0, help="per-trajectory slope SD")
    ap.add_argument("--branch-rho", type=float, default=0.0)
    ap.add_argument("--no-factorial-stable", dest="factorial_stable", action="store_false",
                    help="original designs: stable checkpoints at 0.8·D only (6, not the doc's 12)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    print(f"# reps {args.reps}, boot {args.boot}, halves_tol {args.halves_tol}, loo_tol {args.loo_tol}, kappa "
          f"{args.kappa:.3f}, decay beta_c {args.decay_beta_c}, seed_sd {args.seed_sd}, seed_slope_sd "
          f"{args.seed_slope_sd}, rho {args.branch_rho}")
    rng, sigmas = np.random.default_rng(args.seed), list(args.sigma)
    if args.gate_null:
        return gate_null(args, rng, sigmas)
    print("| design | sigma | truth | P(correct) | P(wrong) | P(inconclusive) | SE | top inconclusive reasons |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.designs:
        halves_tol, loo_tol = (calibrated_tolerances(name, args, rng) if args.calibrate is not None
                               else (args.halves_tol, args.loo_tol))
        for sigma in sigmas:
            args.sigma = sigma  # trajectory() reads the current σ
            for truth in ("D", "decay"):
                t0, verdicts, reasons = time.time(), Counter(), Counter()
                for r in range(args.reps):
                    out = decide(simulate(DESIGNS[name], truth, args, rng), n_boot=args.boot,
                                 loo_tol=loo_tol, halves_tol=halves_tol, seed=r)
                    verdicts[out["verdict"]] += 1
                    if out["reason"]:
                        reasons[out["reason"].split(" (")[0]] += 1
                n = args.reps
                p_ok, p_inc = verdicts[truth] / n, verdicts["inconclusive"] / n
                p_wrong = (n - verdicts[truth] - verdicts["inconclusive"]) / n
                se = math.sqrt(p_ok * (1 - p_ok) / n)  # binomial SE of P(correct)
                top = ", ".join(f"{k} {v / n:.2f}" for k, v in reasons.most_common(3))
                print(f"| {name} | {sigma:.3f} | {truth} | {p_ok:.3f} | {p_wrong:.3f} | {p_inc:.3f} | "
                      f"{se:.3f} | {top} |  <!-- {time.time() - t0:.0f}s -->", flush=True)


def gate_statistics(points: list[Point]) -> tuple[float, float]:
    """(largest |β_upper − β_lower|, largest |LOO log error|) over the arms: a gate passes iff its statistic is
    below its tolerance in every arm, so these are what a tolerance is compared with."""
    halves, loo = 0.0, 0.0
    for arm in ARMS:
        g = arm_gates([p for p in points if p.arm == arm], loo_tol=math.inf, halves_tol=math.inf)
        halves = max(halves, abs(g["beta_upper_half"] - g["beta_lower_half"]))
        loo = max(loo, max(abs(e) for e in g["loo_log_error"].values()))
    return halves, loo


def calibrated_tolerances(name: str, args, rng) -> tuple[float, float]:
    """(halves_tol, loo_tol) = max(0.2, q99 of the gate null of `name` at σ = args.calibrate, D and decay pooled),
    each rounded up to 0.01; printed as a comment row."""
    sigma, args.sigma = args.sigma, args.calibrate
    stats = np.array([gate_statistics(simulate(DESIGNS[name], truth, args, rng))
                      for truth in ("D", "decay") for _ in range(args.calibrate_reps)])
    args.sigma = sigma
    tols = [max(0.2, math.ceil(100 * q - 1e-9) / 100) for q in np.percentile(stats, 99, axis=0)]
    print(f"<!-- {name}: tolerances calibrated at sigma {args.calibrate}: halves_tol {tols[0]:.2f}, "
          f"loo_tol {tols[1]:.2f} ({2 * args.calibrate_reps} null datasets) -->", flush=True)
    return tols[0], tols[1]


def gate_null(args, rng, sigmas) -> None:
    print("| design | sigma | truth | halves q95 | halves q99 | LOO q95 | LOO q99 | P(fail) at tols |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.designs:
        for sigma in sigmas:
            args.sigma = sigma
            for truth in ("D", "decay"):
                stats = np.array([gate_statistics(simulate(DESIGNS[name], truth, args, rng))
                                  for _ in range(args.reps)])
                q = np.percentile(stats, [95, 99], axis=0)
                fail = np.mean((stats[:, 0] >= args.halves_tol) | (stats[:, 1] >= args.loo_tol))
                print(f"| {name} | {sigma:.3f} | {truth} | {q[0, 0]:.3f} | {q[1, 0]:.3f} | {q[0, 1]:.3f} | "
                      f"{q[1, 1]:.3f} | {fail:.3f} |", flush=True)


if __name__ == "__main__":
    main()
