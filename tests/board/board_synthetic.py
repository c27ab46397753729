"""A synthetic results folder for the board's tests and the README screenshot, from measured numbers.

Family `novels-probe`, N = 106,816, is the probe in /work/shared/FIELD-NOTES.md (2026-11-22): fp loss and Δloss
at 2/3/4/8 bits are copied from its cosine and WSD tables. A second size, N = 427,264, at the same D/N (9.4, 37,
112), is invented to give the plots a second series. Intervals are synthetic: ±0.03 on losses, ±max(10 %, 2e-4)
on Δloss. A failed cell, an unfinished cell and a hostile family (`<script>` names) test the failure and escaping
paths. Fits are made by the fit pipeline from the stored cells and stored by qsens.store.fits, as `qsens fit` does.
`python board_synthetic.py DIR` writes the folder (used by scripts/screenshot_board.sh).
"""

from __future__ import annotations

import math
import sys
from datetime import datetime, timezone
from pathlib import Path

from qsens.fit.pipeline import compare_schedules, fit_cells
from qsens.store import ResultStore
from qsens.store import fits as fit_store
from qsens.store.cells import read_cells

N1, N2 = 106_816, 427_264
T0 = datetime(2026, 11, 22, 18, 0, tzinfo=timezone.utc)  # the tests' first build time
BITS = (2, 3, 4, 8)
N_BOOT = 40  # bootstrap refits per fit: enough for intervals and bands, few enough for quick fixtures
# (schedule, N, D, fp loss, {bits: Δloss}) — N1 rows from FIELD-NOTES.md, N2 rows invented.
CHECKPOINTS = [
    ("cosine", N1, 250_000, 6.203, {2: 0.0018, 3: 0.0016, 4: -0.0001, 8: 0.00001}),
    ("cosine", N1, 1_000_000, 5.412, {2: 0.024, 3: 0.0072, 4: 0.0010, 8: 0.00007}),
    ("cosine", N1, 4_000_000, 4.169, {2: 0.359, 3: 0.065, 4: 0.0196, 8: 0.00003}),
    ("cosine", N1, 12_000_000, 3.892, {2: 0.796, 3: 0.133, 4: 0.0355, 8: 0.00010}),
    ("wsd", N1, 1_000_000, 5.018, {2: 0.040, 3: 0.0073, 4: 0.0026, 8: -0.00002}),
    ("wsd", N1, 4_000_000, 4.059, {2: 0.360, 3: 0.068, 4: 0.0172, 8: 0.00000}),
    ("wsd", N1, 12_000_000, 3.873, {2: 0.709, 3: 0.125, 4: 0.0249, 8: -0.00009}),
    ("cosine", N2, 4_000_000, 4.900, {2: 0.030, 3: 0.010, 4: 0.0015, 8: 0.00005}),
    ("cosine", N2, 16_000_000, 3.800, {2: 0.400, 3: 0.070, 4: 0.0200, 8: 0.00004}),
    ("cosine", N2, 48_000_000, 3.550, {2: 0.900, 3: 0.150, 4: 0.0400, 8: 0.00012}),
]
XSS = "<script>alert(1)</script>"
XSS_CKPT = '<img src=x onerror="alert(2)">'
PROVENANCE = {"qsens_version": "0.1.0", "git_commit": "68239a6942a4f48410bc60fdaaec079e34287f31",
              "torch_version": "2.13.0+cpu", "transformers_version": "5.23.0", "python_version": "3.11.7",
              "device": "cpu:x86_64", "hostname": "vm", "seed": 0}


def cell(family, schedule, n, d, fp, bits, delta, eval_name="vathek", **extra) -> dict:
    """One finished cell with every metric the board shows, consistent with fp and Δloss."""
    name = extra.pop("checkpoint", f"{family}-{schedule}-n{n}-d{d}")
    d_ci = max(0.1 * abs(delta), 2e-4)
    q = fp + delta
    kl = max(delta, 0.0) * 0.8 + 1e-5
    top1 = 1.0 - min(0.5, 2 * max(delta, 0.0))
    return {
        "key": f"{family}|{name}|{eval_name}|{bits}", "suite": "synthetic", "family": family, "checkpoint": name,
        "schedule": schedule, "n_params": n, "tokens": d, "eval": eval_name, "method": "rtn", "bits": bits,
        "group_size": 32, "quantizer": f"rtn-w{bits}-g32-asym", "status": "ok", "error": None, "seconds": 1.5,
        "effective_bits": bits + 0.5625, "layers_quantized": 14, "backend": "torch",
        "settings_json": {"method": "rtn", "bits": bits, "group_size": 32, "symmetric": False},
        "protocol_json": {"context_length": 128}, "eval_hash": "e7f917cdf87481eb", "tokens_digest": "bb65c495",
        "fp_loss": fp, "fp_loss_ci_low": fp - 0.03, "fp_loss_ci_high": fp + 0.03,
        "q_loss": q, "q_loss_ci_low": q - 0.03, "q_loss_ci_high": q + 0.03,
        "delta_loss": delta, "delta_loss_ci_low": delta - d_ci, "delta_loss_ci_high": delta + d_ci,
        "ppl_ratio": math.exp(delta), "ppl_ratio_ci_low": math.exp(delta - d_ci),
        "ppl_ratio_ci_high": math.exp(delta + d_ci), "kl_mean": kl, "kl_mean_ci_low": kl * 0.9,
        "kl_mean_ci_high": kl * 1.1, "top1_agree": top1, "top1_agree_ci_low": top1 - 0.005,
        "top1_agree_ci_high": min(1.0, top1 + 0.005), "started_at": "2026-11-22T18:00:00+00:00",
        "finished_at": "2026-11-22T18:01:00+00:00", **PROVENANCE, **extra,
    }


def all_cells() -> list[dict]:
    cells = [cell("novels-probe", s, n, d, fp, b, deltas[b]) for s, n, d, fp, deltas in CHECKPOINTS for b in BITS]
    # A second eval text on the N1 cosine checkpoints, 4 bits only (losses shifted: a different text).
    cells += [cell("novels-probe", s, n, d, fp + 0.3, 4, deltas[4] * 1.2, eval_name="pride")
              for s, n, d, fp, deltas in CHECKPOINTS[:4]]
    failed = cell("novels-probe", "cosine", N2, 48_000_000, 3.55, 3, 0.0, eval_name="pride")
    failed.update(status="failed", error="quantization failed: RuntimeError: out of memory </pre><script>x()</script>",
                  **{k: None for k in failed if k.endswith(("loss", "_ci_low", "_ci_high", "ratio", "agree", "mean"))})
    running = cell("novels-probe", "cosine", N2, 16_000_000, 3.8, 2, 0.0, eval_name="pride", status="running")
    hostile = [cell(XSS, None, 50_000, d, 5.0 - d / 1e7, 4, 0.001 * d / 1e6, checkpoint=f"{XSS_CKPT}-{d}")
               for d in (1_000_000, 5_000_000)]
    return cells + [failed, running] + hostile


SEED_SCALE = (0.9, 1.0, 1.15)  # Δloss of training seed s is the probe's Δ × SEED_SCALE[s] (seeded_cells)


def seeded_cells() -> list[dict]:
    """Family `seeds-probe`: the cosine probe checkpoints (N1, N2) trained with three seeds, 2/3/4 bits; seed s has
    Δloss × SEED_SCALE[s] and fp loss + 0.01·s, so every (N, D)'s seed mean, min and max are known in closed form."""
    out = []
    for s, scale in enumerate(SEED_SCALE):
        for schedule, n, d, fp, deltas in CHECKPOINTS:
            if schedule != "cosine":
                continue
            for b in (2, 3, 4):
                out.append(cell("seeds-probe", schedule, n, d, fp + 0.01 * s, b, deltas[b] * scale, train_seed=s,
                                checkpoint=f"seeds-probe-n{n}-d{d}-s{s}"))
    return out


def store_fits(folder: Path) -> None:
    """Fit the folder's ok cells with the fit pipeline, as `qsens fit` does, and store the fits beside them."""
    fitted = fit_cells(read_cells(folder, status="ok"), n_boot=N_BOOT)
    fit_store.write_fits(folder, [f.record for f in fitted], compare_schedules(fitted))


def small_cells() -> list[dict]:
    """The N1 cosine 4-bit cells and the hostile family: enough for every page, few plots (fast builds)."""
    return [c for c in all_cells() if c["family"] == XSS or (c["quantizer"] == "rtn-w4-g32-asym"
                                                             and c["schedule"] == "cosine" and c["eval"] == "vathek")]


def make_results(folder: Path, fits: bool = True, cells: list[dict] | None = None) -> Path:
    store = ResultStore(folder)
    for c in all_cells() if cells is None else cells:
        store.save(c)
    if fits:
        store_fits(folder)
    return folder


if __name__ == "__main__":
    print(make_results(Path(sys.argv[1])))
