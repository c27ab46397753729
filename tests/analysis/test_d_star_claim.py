"""D* is shown only from fits that fit (issue 21 item 5): the README block's D* bullet and the `qsens fit` report,
on constructed fit records whose verdicts are known."""

from __future__ import annotations

from qsens.analysis.claims import d_star, noise_aware, verdicts
from qsens.fit.report import d_star_lines

N = 100_000


def _fit(key, verdict, fp_key="fp-ok", bits=2, schedule="cosine", d_star_tokens=3.0e6):
    entry = {"n_params": N, "bits": bits, "p": bits, "d_star": d_star_tokens, "d_star_ci_low": 2.0e6,
             "d_star_ci_high": 5.0e6, "max_measured_tokens": 8e6, "verdict": "within the measured range"}
    return {"key": key, "law": "ouyang", "status": "ok", "eval": "ev", "schedule": schedule, "bits": bits,
            "bits_axis": "nominal", "family": "f", "quantizer": f"rtn-w{bits}", "verdict": verdict,
            "fp_fit_key": fp_key, "d_star": [entry],
            "diagnostics": {"reasons": [] if verdict == "fits" else ["residuals bend in D"],
                            "noise": {"available": False, "n_seeds": 1}}}


def _fp(key, verdict):
    return {"key": key, "law": "chinchilla", "status": "ok", "eval": "ev", "schedule": "cosine", "bits": None,
            "bits_axis": None, "family": "f", "verdict": verdict,
            "diagnostics": {"reasons": [] if verdict == "fits" else ["parameter(s) at a bound: log_E"]}}


FITS = [_fp("fp-ok", "fits"), _fp("fp-bad", "degenerate"), _fit("a", "fits"), _fit("b", "does not fit", bits=3),
        _fit("c", "fits", fp_key="fp-bad", bits=4), _fit("d", "degenerate", bits=8)]


def test_the_d_star_bullet_counts_only_fits_that_fit_beside_an_fp_fit_that_fits():
    claim = d_star(FITS, "ev")
    assert claim.numbers == {"shown": 1, "n": 4, "withheld": {"does not fit": 1, "degenerate": 1,
                                                              "beside an fp-loss fit that is degenerate": 1}}
    assert "1 of 4 fits qualify" in claim.text and "ouyang cosine 2-bit: D*/N = 30 [20, 50]" in claim.text
    assert "1 beside an fp-loss fit that is degenerate, 1 degenerate, 1 do not fit" in claim.text


def test_the_report_prints_d_star_only_for_fits_that_fit_and_says_why_not_for_the_rest():
    text = d_star_lines(FITS)
    table, withheld = text.split("D* not shown for 3 fits")
    (row,) = [line for line in table.splitlines() if "100000" in line]
    assert row.endswith("100000  30 [20, 50]")  # D*/N = 3e6 / 1e5, interval [2e6, 5e6] / 1e5
    assert "D*/N 2-bit" in table and "3-bit" not in table  # columns only for the bit widths shown
    assert "bits=3: the fit does not fit (residuals bend in D)" in withheld
    assert "bits=4: the full-precision loss fit beside it is degenerate (parameter(s) at a bound: log_E)" in withheld
    assert "bits=8: the fit is degenerate" in withheld and "30 [" not in withheld


def test_fits_without_the_noise_test_keep_the_old_rule_sentence():
    old = [{**f, "diagnostics": {k: v for k, v in f["diagnostics"].items() if k != "noise"}} for f in FITS]
    assert noise_aware(FITS) and not noise_aware(old)
    assert "(residual SD ≤ 0.25, leave" in verdicts(old).text
    assert "excess SD beyond the measured noise ≤ 0.25 or χ² p ≥ 0.01" in verdicts(FITS).text
