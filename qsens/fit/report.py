"""Plain-text summary of fits: verdict, exponents with intervals, diagnostics (residual SD, the misfit test against
the measured noise, curvature in D, local exponents, LOO error), D* per (N, bits) from the fits that fit (the others
say why not), schedule comparison. Every line names its bits axis."""

from __future__ import annotations

import math

from qsens.fit.diagnostics import prediction_withheld
from qsens.fit.groups import _BITS_TOKEN as _BITS
from qsens.fit.laws import LAWS


def _num(x, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if isinstance(x, float) and math.isinf(x):
        return "inf"
    return f"{x:.{digits}g}"


def _param(p: dict) -> str:
    if p.get("fixed"):
        return f"{_num(p['value'])} (fixed)"
    return f"{_num(p['value'])} [{_num(p['ci_low'])}, {_num(p['ci_high'])}]"


def _loo_rms(loo: list[dict] | None) -> float | None:
    errs = [e["log_error"] for e in loo or [] if e.get("log_error") is not None]
    return math.sqrt(sum(e * e for e in errs) / len(errs)) if errs else None


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return [line(header), line(["-" * w for w in widths])] + [line(r) for r in rows]


def _group(r: dict) -> str:
    parts = [r["family"], r.get("schedule") or "", r["eval"], r.get("quantizer") or r.get("method") or ""]
    return " ".join(p for p in parts if p)


def axis_label(r: dict) -> str:
    """'P = nominal bits' / 'P = effective bits/weight' for pooled fits, '' where P is not an input."""
    if r.get("law") in LAWS and LAWS[r["law"]].pooled_bits:
        return "P=eff" if r.get("bits_axis") == "effective" else "P=nom"
    return ""


def noise_cells(diag: dict) -> list[str]:
    """[χ²/dof (p), excess SD [95% CI], seeds] of the misfit test against the measured noise; '-' without one."""
    noise = diag.get("noise") or {}
    if not noise.get("available"):
        return ["-", "-", str(noise.get("n_seeds") or "-")]
    lo, hi = noise["tau_ci"]
    return [f"{_num(noise['reduced_chi2'], 3)} (p={_num(noise['p_value'], 2)})",
            f"{_num(noise['tau'], 2)} [{_num(lo, 2)}, {_num(hi, 2)}]", str(noise["n_seeds"])]


def _diag_cells(r: dict) -> list[str]:
    d = r.get("diagnostics") or {}
    curv = d.get("curvature") or {}
    return [_num(d.get("residual_sd"), 2), *noise_cells(d), _num(curv.get("p_value"), 2), _num(d.get("loo_rms"), 2)]


def fits_table(records: list[dict]) -> str:
    """One line per fit: verdict, group, bits (axis), exponents [95% CI], R² (log), residual SD (log, the old
    fixed-threshold number), reduced χ² against the measured noise with its p-value, excess SD beyond that noise
    [95% CI] (log), training seeds, curvature p-value, RMS log LOO error at the largest D, points used (-excluded)."""
    rows = []
    for r in records:
        names = LAWS[r["law"]].exponents if r["law"] in LAWS else ()
        bits = "all" if r.get("bits") is None else str(r["bits"])
        bits = f"{bits} {axis_label(r)}".strip()
        if r["status"] != "ok":
            rows.append([r["law"], "insufficient", _group(r), bits, r.get("message") or r["status"]] + [""] * 8)
            continue
        exps = "  ".join(f"{n}={_param(r['params'][n])}" for n in names if n in r["params"])
        used = f"{r['n_points']} (-{r['n_excluded']})" if r.get("n_excluded") else str(r["n_points"])
        rows.append([r["law"], r.get("verdict") or "?", _group(r), bits, exps, _num(r.get("r2")), *_diag_cells(r),
                     used])
    head = ["law", "verdict", "group", "bits", "parameters [95% CI]", "R²(log)", "resid SD", "χ²/dof vs noise",
            "excess SD [95% CI]", "seeds", "curv p", "LOO rms", "points"]
    return "\n".join(_table(head, rows))


def verdict_lines(records: list[dict]) -> str:
    """Why each fit that does not fit (or is degenerate) fails, and its local exponents in D (data, per step)."""
    lines = []
    bare = sum(r["status"] == "ok" and not r.get("diagnostics") for r in records)
    if bare:
        lines.append(f"- {bare} fits carry no diagnostics (stored by a qsens without them): run `qsens fit`")
    for r in records:
        d = r.get("diagnostics") or {}
        if r["status"] != "ok" or not d or d.get("verdict") == "fits":
            continue
        head = f"{r['law']} {_group(r)} bits={'all' if r.get('bits') is None else r['bits']} {axis_label(r)}".rstrip()
        lines.append(f"- {head}: {r.get('verdict')}: " + "; ".join(d.get("reasons") or []))
        series: dict = {}
        for e in d.get("local_exponents") or []:
            series.setdefault((e["n_params"], e["bits"]), []).append(e["exponent"])
        for (n, b), exps in sorted(series.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0))[:6]:
            lines.append(f"    local D exponent per step, N={n}" + (f", P={_num(b)}" if b is not None else "")
                         + ": " + " → ".join(f"{v:.2f}" for v in exps))
    if not lines:
        return "Diagnostics: every fit fits its data (qsens.fit.diagnostics thresholds)."
    return ("Fits that do not fit their data (thresholds: qsens/fit/diagnostics.py; excluded: cells whose interval "
            "includes 0)\n" + "\n".join(lines))


def d_star_lines(records: list[dict]) -> str:
    """D*/N per (fit, N) with one column per bit width, from the degradation fits that fit beside a full-precision
    fit that fits (diagnostics.prediction_withheld); every other fit with a D* table is listed with why it shows
    none. '>' marks a bottom beyond the measured range, 'none' a curve that never turns up. Intervals are in the
    stored fits (d_star)."""
    by_key = {r.get("key"): r for r in records}
    table: dict[tuple, dict[int, str]] = {}  # (law, group without bits, N) -> {bits: cell}
    withheld = []
    for r in records:
        if not r.get("d_star"):
            continue
        label = (_BITS.sub(lambda m: m.group(1) + "w*", _group(r), count=1) + " " + axis_label(r)).rstrip()
        why = prediction_withheld(r, by_key.get(r.get("fp_fit_key")))
        if why:
            bits = "all" if r.get("bits") is None else r["bits"]
            withheld.append(f"- {r['law']} {label} bits={bits}: {why}")
            continue
        for e in r["d_star"]:
            ratio = e["d_star"] / e["n_params"]
            mark = "none" if not math.isfinite(ratio) else (">" if e["verdict"].startswith("beyond") else "")
            low, high = e["d_star_ci_low"] / e["n_params"], e["d_star_ci_high"] / e["n_params"]
            cell = "none" if mark == "none" else f"{mark}{_num(ratio)} [{_num(low, 2)}, {_num(high, 2)}]"
            table.setdefault((r["law"], label, e["n_params"]), {})[e["bits"]] = cell
    bit_widths = sorted({b for cells in table.values() for b in cells})
    rows = [[law, label, str(n)] + [cells.get(b, "") for b in bit_widths] for (law, label, n), cells in table.items()]
    if not rows and not withheld:
        return "D*: no degradation fit with a full-precision fit beside it."
    out = ["U-curve bottom (D* / N; '>' = beyond the measured range), shown only from a degradation fit that fits "
           "beside a full-precision fit that fits (qsens/fit/diagnostics.py)"]
    if rows:
        out += _table(["law", "group", "N"] + [f"D*/N {b}-bit [95% CI]" for b in bit_widths], rows)
    else:
        out.append("no fit qualifies")
    if withheld:
        out += [f"D* not shown for {len(withheld)} fits (a D* is only as good as both fits):"] + withheld
    return "\n".join(out)


def comparison_lines(comparisons: list[dict]) -> str:
    """The D exponent under two schedules, their difference and its interval."""
    if not comparisons:
        return "Schedules: no pair of fits of one fit group that differ only in schedule."
    rows = [[c["law"], c["eval"], ("all" if c["bits"] is None else str(c["bits"])) + (
             " P=eff" if c.get("bits_axis") == "effective" and c["bits"] is None else ""),
             f"{c['schedule_a']}: {_num(c['value_a'])}", f"{c['schedule_b']}: {_num(c['value_b'])}",
             f"{_num(c['difference'])} [{_num(c['ci_low'])}, {_num(c['ci_high'])}]", _num(c.get("sd"), 2),
             {True: "yes", False: "no (interval covers 0)", None: "unknown (too few checkpoints)"}[c["differs"]]]
            for c in comparisons]
    return ("Schedules (families of one fit group, paired bootstrap)\n"
            + "\n".join(_table(["law", "eval", "bits", "exponent a", "exponent b", "a − b [95% CI]", "SD", "differs"],
                                rows)))


def summary(records: list[dict], comparisons: list[dict]) -> str:
    return "\n\n".join([fits_table(records), verdict_lines(records), d_star_lines(records),
                        comparison_lines(comparisons)])
