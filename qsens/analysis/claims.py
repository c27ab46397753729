"""The README's findings, derived from a results database: every sentence is a predicate evaluated on the cells
and fits, worded by what the data show, with its numbers.

`claims(results_dir)` returns the claims; `claims_markdown(results_dir)` the Markdown block the README holds between
`<!-- claims:begin -->` and `<!-- claims:end -->` (`qsens report --results DIR --claims [--readme README.md]`
prints or rewrites it). tests/analysis/test_readme_claims.py re-derives the block from results/published/micro and fails when the
README differs or a claim does not hold, so a claim cannot outlive its data.

A claim's wording is chosen from the counts it reports ("at every size" only when every size does, otherwise
"at k of n"); `holds` is the predicate the sentence asserts, checked again by the test.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from pathlib import Path

from qsens.analysis.claim import LOW_BITS, Claim, series, span
from qsens.analysis.evidence import documents, gate_losses, resolution, scope_note, seeds, within_floor
from qsens.fit.laws import DELTA_LAWS, LAWS

BEGIN, END = "<!-- claims:begin -->", "<!-- claims:end -->"
OUYANG_GAMMA = 5.4967  # Ouyang et al. 2024 (arXiv 2411.17691), unified law's bit-width exponent
OUYANG_BETA = 0.5251


def _ok(cells: list[dict]) -> list[dict]:
    return [c for c in cells if c.get("status", "ok") == "ok" and c.get("n_params") and c.get("tokens")]


def _every(k: int, n: int, what: str) -> str:
    return f"every {what} ({n} of {n})" if k == n else f"{k} of {n} {what}"


def fp_monotone(cells: list[dict]) -> Claim:
    """Full-precision loss falls with D, per eval: counts of (family, size) series that fall strictly."""
    per_eval = defaultdict(lambda: [0, 0])
    bits = min(c["bits"] for c in cells if c.get("bits") is not None)
    for (fam, ev, n, _, _), s in series([c for c in cells if c.get("bits") == bits]).items():
        fp = [c["fp_loss"] for c in s]
        per_eval[ev][0] += all(b < a for a, b in zip(fp, fp[1:]))
        per_eval[ev][1] += 1
    parts = [f"`{ev}`: {k} of {n} (family, size, seed) series" for ev, (k, n) in sorted(per_eval.items())]
    text = "**Full-precision loss falls monotonically with D** in " + "; ".join(parts) + "."
    return Claim("fp_monotone", text, True, {ev: tuple(v) for ev, v in per_eval.items()})


def growth(cells: list[dict], gate_loss: dict[str, float] | None = None) -> Claim:
    """Δloss at the largest budget above the smallest, by a paired test on the same tokens
    (`qsens.analysis.tested.growth_tested`); the smallest budget's Δ sign; growth factors over all checkpoints and
    past the bigram gate. gate_loss: as growth_tested's (`qsens.store.baselines`), None: not stored."""
    from qsens.analysis.tested import growth_tested

    low = [c for c in cells if c.get("bits") in LOW_BITS]
    by_run = series(low)
    total = len(by_run)
    nonpositive = sum(s[0]["delta_loss"] <= 0 for s in by_run.values())
    no_evidence = sum(s[0]["delta_loss_ci_low"] <= 0 <= s[0]["delta_loss_ci_high"] for s in by_run.values())
    if not all(c.get("window_sums") and c.get("tokens_digest") for c in low):
        return Claim("growth", "**Low-bit Δloss grows with D/N at fixed N**: not tested (cells stored without "
                     "window sums, so no paired test; recompute them).", True, {"total": total})
    tested = growth_tested(low, gate_loss=gate_loss)
    count, factors, past = tested["count"], tested["factors"], tested["factors_past_gate"]
    both = sum(s[0]["delta_loss_ci_low"] > 0 and s[-1]["delta_loss_ci_low"] > 0 for s in by_run.values())
    ratio_text = (f"; where both budgets' intervals exclude 0 ({both} series) the ratio largest/smallest is "
                  f"{factors[0]:,.0f}× to {factors[1]:,.0f}×" if factors else "")
    if gate_loss is None:
        gate_text = (" Past the bigram gate: not reported (no n-gram baselines stored with these results: "
                     "`python -m qsens.testbed.gates baselines SUITE RESULTS`).")
    elif past:
        gate_text = (f" Counting only checkpoints past the bigram gate (full-precision loss ≥ 0.3 nats/token below "
                     f"an add-k bigram of the family's training text on the same tokens, `qsens.testbed.gates`; "
                     f"below it Δ mostly measures the climb from unigram to language model), the ratio is "
                     f"{past[0]:,.1f}× to {past[1]:,.1f}× in the {tested['series_past_gate']} series with two or more "
                     f"such checkpoints and both ends resolved.")
    else:
        gate_text = " No series has two checkpoints past the bigram gate with both ends resolved."
    text = (f"**Low-bit Δloss grows with D/N at fixed N**: the largest budget's Δloss is above the smallest "
            f"budget's in {count.text('(family, eval, size, seed, 2/3/4-bit) series')}. At the smallest "
            f"budget Δloss is ≤ 0 in {nonpositive} of {total} series and its interval includes 0 in {no_evidence}, "
            f"so no growth factor exists there{ratio_text}.{gate_text}")
    return Claim("growth", text, count.total == total, {
        "resolved": count.resolved, "unresolved": count.unresolved, "against": count.against, "total": total,
        "point": count.point, "nonpositive": nonpositive, "no_evidence": no_evidence, "ratios": factors,
        "ratios_past_gate": past, "series_past_gate": tested["series_past_gate"]})


def u_curve(cells: list[dict], ev: str) -> Claim:
    """Quantized loss (fp + Δ) turning up: the lowest budget is not the largest, per bits, on one eval."""
    lines, numbers, first_examples = [], {}, []
    for bits in sorted({c["bits"] for c in cells if c.get("bits") is not None}):
        up, n, examples = 0, 0, []
        for (fam, _, size, _, seed), s in series(cells, eval=ev, bits=bits).items():
            q = [c["fp_loss"] + c["delta_loss"] for c in s]
            best = min(range(len(q)), key=q.__getitem__)
            n += 1
            if best < len(q) - 1:
                up += 1
                examples.append(f"{fam}{'' if seed in (None, 0) else f' seed {seed}'} N = {size:,}: {q[best]:.3f} at {s[best]['tokens'] / 1e6:.3g}M → "
                                f"{q[-1]:.3f} at {s[-1]['tokens'] / 1e6:.3g}M tokens")
        numbers[bits] = (up, n)
        if bits == min(numbers):
            first_examples = examples
        lines.append(f"{bits}-bit: {up} of {n}" + (f" ({'; '.join(examples[:2])}{'; …' if len(examples) > 2 else ''})"
                                                    if examples and bits == min(numbers) else ""))
    tested = _u_curve_tested(cells, ev)
    if tested:  # issue 21: count only turns whose paired interval excludes 0
        example = f", e.g. {' and '.join(first_examples[:2])}" if first_examples else ""
        text = (f"**The U-curve** (the quantized loss fp + Δ at the largest budget is above its lowest point at a "
                f"smaller budget, by a paired test on the same tokens, `{ev}`, per (family, size, seed)): "
                + "; ".join(f"{b}-bit: {t.text('series')}" + (example if b == min(tested) else "")
                            for b, t in tested.items()) + ".")
        numbers["tested"] = {b: (t.resolved, t.unresolved, t.total) for b, t in tested.items()}
    else:
        text = (f"**The U-curve** (quantized loss fp + Δ lowest before the largest budget, `{ev}`, per (family, "
                f"size, seed); point estimates, not tested: the cells keep no window sums): " + "; ".join(lines) + ".")
    return Claim("u_curve", text, True, numbers)


def _u_curve_tested(cells: list[dict], ev: str) -> dict:
    from qsens.analysis.tested import u_curve_tested

    if not all(c.get("window_sums") and c.get("tokens_digest") for c in cells if c["eval"] == ev):
        return {}  # cells stored before window sums were kept: no paired test possible
    return u_curve_tested(cells, ev)


def _fit_rows(fits: list[dict], law: str, ev: str | None = None, axis: str | None = "nominal") -> list[dict]:
    return [f for f in fits if f["law"] == law and f["status"] == "ok" and (ev is None or f["eval"] == ev)
            and (axis is None or f.get("bits_axis") in (axis, None))]


def noise_aware(fits: list[dict]) -> bool:
    """Whether the stored fits carry the misfit test against measured noise (qsens.fit.noise). Fits stored before
    it keep the block they had (the old rule's sentence, no D* bullet): `qsens fit` is what changes the block."""
    return any("noise" in (f.get("diagnostics") or {}) for f in fits if f["status"] == "ok")


def verdicts(fits: list[dict]) -> Claim:
    """How many fits of each law fit their data (qsens.fit.diagnostics)."""
    ok = [f for f in fits if f["status"] == "ok"]
    if not ok or any(f.get("verdict") is None for f in ok):
        return Claim("verdicts", "**Fit diagnostics**: the stored fits carry no diagnostics (fitted by a qsens "
                     "without them); run `qsens fit` before reading the fitted laws.", True, {})
    aware = noise_aware(fits)
    parts, numbers = [], {}
    for law in LAWS:
        rows = [f for f in ok if f["law"] == law]
        if not rows:
            continue
        counts = {v: sum(f["verdict"] == v for f in rows) for v in ("fits", "does not fit", "degenerate", "unchecked")}
        sds = sorted(f["diagnostics"]["residual_sd"] for f in rows if f["diagnostics"].get("residual_sd") is not None)
        loos = sorted(f["diagnostics"]["loo_rms"] for f in rows if f["diagnostics"].get("loo_rms") is not None)
        tests = [f["diagnostics"]["noise"] for f in rows if (f["diagnostics"].get("noise") or {}).get("available")]
        numbers[law] = counts
        noise = ""
        if aware:
            seeds = sorted({t["n_seeds"] for t in tests})
            noise = (f"excess SD beyond the measured noise {span(sorted(t['tau'] for t in tests))} in {len(tests)} "
                     f"tested, noise from eval" + (" and seeds (" + "/".join(map(str, seeds)) + " seeds)"
                                                   if seeds and seeds[-1] > 1 else " only (one training seed)") + ", ")
        parts.append(f"{law}: {counts['fits']} of {len(rows)} fit"
                     + (f", {counts['does not fit']} do not fit" if counts["does not fit"] else "")
                     + (f", {counts['degenerate']} degenerate" if counts["degenerate"] else "")
                     + (f", {counts['unchecked']} too small to check" if counts["unchecked"] else "")
                     + f" ({noise}residual SD {span(sds)}, leave-largest-D-out RMS {span(loos)}, log units)")
    rule = ("excess SD beyond the measured noise ≤ 0.25 or χ² p ≥ 0.01, residual SD ≤ 0.25 where the noise is not "
            "measured" if aware else "residual SD ≤ 0.25")
    text = (f"**Do the laws fit?** ({rule}, leave-largest-D-out RMS ≤ log 1.5, no significant bend of "
            "the residuals in D; `qsens/fit/diagnostics.py`) " + "; ".join(parts) + ".")
    return Claim("verdicts", text, True, numbers)


def d_star(fits: list[dict], ev: str) -> Claim:
    """D* only from degradation fits that fit beside an fp-loss fit that fits (diagnostics.prediction_withheld),
    nominal bits, on one eval; the others counted by why not."""
    from qsens.fit.diagnostics import prediction_withheld

    by_key = {f["key"]: f for f in fits}
    rows = [f for f in fits if f["status"] == "ok" and f["eval"] == ev and f.get("d_star")
            and f.get("bits_axis") in ("nominal", None)]
    shown, why_not = [], defaultdict(int)
    for f in rows:
        if prediction_withheld(f, by_key.get(f.get("fp_fit_key"))) is None:
            shown.append(f)
        else:
            why_not[f["verdict"] if f["verdict"] != "fits" else f"beside an fp-loss fit that is "
                    f"{by_key.get(f.get('fp_fit_key'), {}).get('verdict') or f.get('fp_verdict') or 'missing'}"] += 1
    values = []
    for f in sorted(shown, key=lambda f: (f["law"], f["schedule"] or "", f["bits"] or 0)):
        largest = max(e["n_params"] for e in f["d_star"])
        for e in (e for e in f["d_star"] if e["n_params"] == largest):
            ratio = e["d_star"] / e["n_params"]
            values.append(f"{f['law']} {f['schedule']} {e['bits']}-bit: D*/N = "
                          + ("none (no bottom)" if not math.isfinite(ratio) else f"{ratio:.3g} "
                             f"[{e['d_star_ci_low'] / e['n_params']:.3g}, {e['d_star_ci_high'] / e['n_params']:.3g}]"))
    rest = ", ".join(f"{n} {'do not fit' if v == 'does not fit' else v}" for v, n in sorted(why_not.items()))
    text = (f"**D\\* from the fits** (the U-curve's bottom, `{ev}`, nominal bits; shown only from a degradation fit "
            f"that fits beside a full-precision fit that fits): {len(shown)} of {len(rows)} fits qualify"
            + (f" (at the largest N: {'; '.join(values)})" if values else "")
            + (f"; the other {len(rows) - len(shown)} show none: {rest}" if rest else "") + ".")
    return Claim("d_star", text, True, {"shown": len(shown), "n": len(rows), "withheld": dict(why_not)})


def _p(p: dict) -> str:
    return f"{p['value']:.3g}" if p.get("fixed") or math.isnan(p["ci_low"]) else \
        f"{p['value']:.3g} [{p['ci_low']:.3g}, {p['ci_high']:.3g}]"


def schedules(comparisons: list[dict], fits: list[dict]) -> Claim:
    """Sign and significance of the cosine − WSD D-exponent differences, nominal bits axis."""
    rows = [c for c in comparisons if c.get("bits_axis", "nominal") == "nominal"]
    if not rows:
        return Claim("schedules", "**Cosine vs WSD**: no schedule comparison is stored.", True, {})
    verdict = {f["key"]: f.get("verdict") for f in fits}
    smaller = sum((c["difference"] > 0) == (c["schedule_a"] == "cosine") for c in rows)
    significant = sum(bool(c["differs"]) for c in rows)
    misfit = sum(any(verdict.get(k) not in (None, "fits") for k in c["fit_keys"]) for c in rows)
    paired = all(c.get("paired") for c in rows)
    sds = [c["sd"] for c in rows if c.get("sd") is not None]
    smaller_resolved = sum(bool(c["differs"]) and (c["difference"] > 0) == (c["schedule_a"] == "cosine") for c in rows)
    text = (f"**Cosine vs WSD** ({len(rows)} comparisons of the D exponent: per-bit Ouyang, unified and Kumar laws, "
            f"both evals; {'paired' if paired else 'independent'} bootstrap draws): counted where the difference's "
            f"95% interval excludes 0, the WSD exponent is smaller in {smaller_resolved} of {len(rows)} and larger in "
            f"{significant - smaller_resolved}; {len(rows) - significant} are unresolved (by point estimate alone: "
            f"smaller in {smaller}, larger in {len(rows) - smaller})"
            + (f"; SD of the difference {min(sds):.2f}–{max(sds):.2f}" if sds else "")
            + (f"; {misfit} of {len(rows)} compare fits that do not fit their data" if misfit else "") + ".")
    return Claim("schedules", text, True, {"n": len(rows), "wsd_smaller": smaller, "significant": significant,
                                           "misfit": misfit, "wsd_smaller_resolved": smaller_resolved})


def gamma(fits: list[dict], ev: str) -> Claim:
    """The unified law's bit-width exponent against Ouyang et al.'s, on each stored bits axis."""
    rows = _fit_rows(fits, "unified", ev, axis=None)
    if not rows:
        return Claim("gamma", "**Bit-width exponent**: no unified fit is stored.", True, {})
    parts, inside = [], []
    for f in sorted(rows, key=lambda f: (f.get("bits_axis") or "", f["schedule"] or "")):
        g = f["params"]["gamma"]
        within = not math.isnan(g["ci_low"]) and g["ci_low"] <= OUYANG_GAMMA <= g["ci_high"]
        inside.append(within)
        parts.append(f"{f['schedule']}, P = {f.get('bits_axis') or 'nominal'} bits: γ = {_p(g)} "
                     f"({f['n_points']} cells, {f['n_excluded']} excluded; "
                     f"verdict: {f.get('verdict') or 'none stored'})")
    text = (f"**Bit-width exponent** (unified law, `{ev}`): " + "; ".join(parts) + f". Ouyang et al.'s γ = "
            f"{OUYANG_GAMMA} lies inside {sum(inside)} of {len(inside)} of these intervals; γ depends on the P axis "
            f"and on which cells are excluded, and a law that does not fit gives no exponent to compare.")
    return Claim("gamma", text, True, {"inside": sum(inside), "n": len(inside)})


def laws_table(fits: list[dict], ev: str) -> str:
    """Markdown: each law's D, N and bits exponents and verdict per schedule (nominal bits), beside the papers; with
    noise-aware fits also the excess SD beyond the measured noise and the reduced χ²."""
    names = {law.name: (law.d_exponent, law.n_exponent, law.bits_exponent) for law in DELTA_LAWS if law.pooled_bits}
    aware = noise_aware(fits)
    extra = " excess SD [95% CI] | χ²/dof |" if aware else ""
    head = (f"| law | schedule | verdict | D exponent | N exponent | bits | resid SD |{extra} LOO rms |\n"
            + "|---" * (10 if aware else 8) + "|")
    rows = []
    num = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    for law, (d, n, b) in names.items():
        for f in sorted(_fit_rows(fits, law, ev), key=lambda f: f["schedule"] or ""):
            dg = f.get("diagnostics") or {}
            noise = dg.get("noise") or {}
            tested = (f" {num(noise['tau'])} [{num(noise['tau_ci'][0])}, {num(noise['tau_ci'][1])}] | "
                      f"{noise['reduced_chi2']:.3g} |" if noise.get("available") else " - | - |") if aware else ""
            rows.append(f"| {law} | {f['schedule']} | {f.get('verdict') or '-'} | {_p(f['params'][d])} | "
                        f"{_p(f['params'][n])} | {_p(f['params'][b])} | {num(dg.get('residual_sd'))} |{tested} "
                        f"{num(dg.get('loo_rms'))} |")
    return "\n".join([head] + rows)


def _fmt(v: float) -> str:
    """4 decimals, or 2 significant digits below 0.001 (an interval of 8-bit noise stays readable)."""
    return f"{v:.4f}" if abs(v) >= 1e-3 or v == 0 else f"{v:.2g}"


def _ci(c: dict | None, floor: set[tuple] = frozenset()) -> str:
    if c is None:
        return "-"
    v, lo, hi = c["delta_loss"], c.get("delta_loss_ci_low"), c.get("delta_loss_ci_high")
    if (c["eval"], c.get("checkpoint"), c.get("bits")) in floor:
        return f"{_fmt(v)}†"
    if lo is None or lo <= 0 <= hi:
        return _fmt(v)
    return f"{_fmt(v)} [{_fmt(lo)}, {_fmt(hi)}]"


def delta_table(cells: list[dict], ev: str, family: str, floor: set[tuple] = frozenset()) -> str:
    """Markdown: N, D/N, fp loss and Δloss per bit width with 95% intervals (shown where they exclude 0; † where
    the cell is within the resolution floor, `within_floor`)."""
    sub = [c for c in cells if c["eval"] == ev and c["family"] == family and c.get("bits") is not None]
    bits = sorted({c["bits"] for c in sub})
    grid: dict[tuple, dict] = defaultdict(dict)
    for c in sub:
        grid[(c["n_params"], c["tokens"])][c["bits"]] = c
    head = ("| N | D/N | fp loss | " + " | ".join(f"{b}-bit" for b in bits) + " |\n"
            + "|---" * (3 + len(bits)) + "|")
    rows = [f"| {n:,} | {d / n:.3g} | {next(iter(row.values()))['fp_loss']:.3f} | "
            + " | ".join(_ci(row.get(b), floor) for b in bits) + " |" for (n, d), row in sorted(grid.items())]
    return "\n".join([head] + rows)


def load(results_dir: str | Path) -> tuple[list[dict], list[dict], list[dict]]:
    """(ok cells, fits, schedule comparisons) of a results folder."""
    from qsens.store.cells import read_cells
    from qsens.store.fits import read_fits

    fits, comparisons = read_fits(results_dir)
    return _ok(read_cells(results_dir, status="ok")), fits, comparisons


def claims(results_dir: str | Path, ev: str = "heldout-novels") -> list[Claim]:
    cells, fits, comparisons = load(results_dir)
    quantized = [c for c in cells if c.get("method") != "cast"]  # the resolution floor is no quantizer's finding
    gates = gate_losses(results_dir)
    found = [fp_monotone(quantized), growth(quantized, gates), u_curve(quantized, ev), documents(quantized),
             seeds(quantized, gates), resolution(quantized, fits), verdicts(fits), schedules(comparisons, fits),
             gamma(fits, ev)]
    return found + ([d_star(fits, ev)] if noise_aware(fits) else [])


def claims_markdown(results_dir: str | Path, ev: str = "heldout-novels", label: str | None = None,
                    found: list[Claim] | None = None) -> str:
    """The README block (without the markers): the claims as bullets, then the fitted-laws table. label: how the
    block names the results folder (default: results_dir as given); found: `claims(results_dir, ev)` if already
    derived (its paired tests take a minute on the published database)."""
    cells, fits, _ = load(results_dir)
    cells = [c for c in cells if c.get("method") != "cast"]
    bullets = "\n".join(f"- {c.text}" for c in (found if found is not None else claims(results_dir, ev)))
    family = min({c["family"] for c in cells if c["eval"] == ev})
    seed = sorted({c.get("train_seed") for c in cells if c["family"] == family}, key=str)
    label = label or Path(results_dir).as_posix()
    return (f"Generated by `qsens report --results {label} --claims` from the published "
            f"database; `tests/analysis/test_readme_claims.py` fails when this block and the data disagree.\n\n"
            f"`{ev}`, family `{family}`"
            + (f" (training seed {seed[0]})" if len(seed) == 1 and seed[0] is not None else "")
            + f", Δloss in nats/token with 95% block-bootstrap intervals over these tokens (shown where they "
            f"exclude 0; † within the resolution floor){scope_note(cells, ev)}:\n\n"
            f"{delta_table(cells, ev, family, within_floor(fits))}\n\n{bullets}\n\n"
            f"Fitted laws, `{ev}`, nominal bits (95% bootstrap intervals; Ouyang et al. report β = {OUYANG_BETA}, "
            f"γ = {OUYANG_GAMMA}):\n\n{laws_table(fits, ev)}\n")


def replace_block(readme: str, block: str, begin: str = BEGIN, end: str = END) -> str:
    """readme with the text between the markers (default: the claims block's) replaced by block; ValueError
    without the markers."""
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if not pattern.search(readme):
        raise ValueError(f"no {begin} … {end} block in the README")
    return pattern.sub(lambda _: f"{begin}\n{block}{end}", readme)


def readme_block(readme: str, begin: str = BEGIN, end: str = END) -> str:
    """The text between the markers (default: the claims block's)."""
    start, stop = readme.index(begin) + len(begin) + 1, readme.index(end)
    return readme[start:stop]
