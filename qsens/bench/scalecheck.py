"""`scripts/gpu-check`'s steps at the sizes people run (issue 24): each builds what it needs and returns a step
result (status, figures, the command's tail) for `qsens.bench.gpucheck`.

    score      `qsens bench score --dtype D` for D in float32 and bfloat16: the fp pass and a cell as a share of
               the measured matmul peak, the sweep in fp passes, the lm-eval ratio; Pythia-160M and -1B stand-ins
    placed     the Pythia-410M stand-in under `placement: {device_map: auto}` with a max_memory that holds 40% of
               its weights on the GPU (the rest offloaded to host memory), beside the same suite on one device:
               every cell ok, equal numbers, the map recorded in each cell
    cells-1b   a Pythia-1B-shape stand-in through RTN 4/3-bit, bnb NF4 and noise: cells/hour end to end (process
               start, load, quantize, score) and from the cells' own seconds

Reduced (CPU, or `--reduced`), every model is a tiny stand-in of the same architecture (TINY widths, 2 layers;
the score step uses the micro checkpoint) and the placed run offloads to disk instead of host memory, so the whole
plan runs here in a minute or two (tests/bench/test_gpu_check.py); the real form is sized to finish within about
eight minutes on one GPU together with `env` (`scripts/gpu-check --only env placed cells-1b score --budget 480`).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from qsens.bench.checksteps import REPO, cell_figures, run_command, stored_cells, write_suite

DTYPES = ("float32", "bfloat16")
# How closely lm-eval's summed log-likelihood must equal qsens' (the check that both scored the same tokens).
# lm-eval 0.4 takes its log-softmax and the sum in the model's dtype (HFLM softmax_dtype=None): in bfloat16 its
# total is rounded to bfloat16 (2^-8 relative steps; the micro model's 1,024 tokens: -3826.0 against qsens'
# -3827.30 from float32/float64, 3.4e-4 apart), so the check is only that coarse there.
LOGLIK_TOLERANCE = {"float32": 1e-5, "bfloat16": 2e-3}
# Reduced form: the architecture and module names of the shape, at widths that build and run in seconds.
TINY = {"hidden_size": 64, "intermediate_size": 256, "num_attention_heads": 2, "vocab_size": 1088}
MICRO_TOKENIZER = REPO / "checkpoints/micro/tokenizer"
SKIP = "skip: [lm_head, embed_out]"
WIKITEXT = REPO / "data/wikitext-2/wiki.test.raw.gz"


def standin(shape: str, work: Path, tiny: bool) -> Path:
    """The stand-in folder of `shape` (built once per work folder; one BPE tokenizer per vocabulary size)."""
    from qsens.testbed.standins import TOKENIZER_VOCAB, build_standin

    folder = work / "standins" / (shape + ("-tiny" if tiny else ""))
    if (folder / "standin.json").exists():
        return folder
    if tiny:  # the micro family's byte-level BPE (1,025 tokens, from the same novels): nothing to train
        return build_standin(shape, folder, layers=2, widths=TINY, tokenizer_cache=MICRO_TOKENIZER)
    vocab = TOKENIZER_VOCAB[shape]
    return build_standin(shape, folder, tokenizer_vocab=vocab, tokenizer_cache=work / "standins" / f"tokenizer-{vocab}")


def _family(name: str, folder: Path) -> str:
    n = json.loads((folder / "standin.json").read_text())["n_params"]
    return f"  - {{name: {name}, checkpoints: [{{path: {folder}, n_params: {n}, tokens: 1000000000}}]}}\n"


def _eval(tiny: bool, max_tokens: int) -> str:
    return (f"  - {{name: wikitext2, path: {WIKITEXT}, preset: gptq, protocol: {{context_length: "
            f"{64 if tiny else 2048}, max_tokens: {512 if tiny else max_tokens}, batch_size: 4}}}}\n")


def _share(result: dict, dtype: str, cuda: bool) -> dict:
    """The figures of one `qsens bench score` result that the report shows (as fc302c4's bench writes them)."""
    clock = "wall" if cuda else "cpu"

    def med(name):
        fig = result.get(name) or {}
        return (fig.get(clock) or fig).get("median")

    peak = (result.get("peak") or [{}])[-1].get(dtype, {})
    ours, theirs = result.get("loglik_qsens"), result.get("loglik_lmeval")
    rel = abs(ours - theirs) / abs(ours) if ours and theirs is not None else float("nan")
    return {"model": Path(result.get("model", "?")).name, "fp_share_of_peak": med("fp_share_of_peak"),
            "cell_share_of_peak": med("cell_share_of_peak"), "suite_fp_passes": med("suite_fp_passes"),
            "fp_vs_lmeval": med("fp_vs_lmeval"), "best_matmul_rate": peak.get("best_rate"),
            "rate_by_route": peak.get("rate_by_route"), "loglik_rel_diff": rel,
            "loglik_equal": rel <= LOGLIK_TOLERANCE[dtype]}


def score_step(py: str, out: Path, work: Path, cuda: bool, tiny: bool) -> dict:
    micro = REPO / "checkpoints/micro/s64/cosine/s64-cosine-d008.000M"
    models = [micro] if tiny else [standin("pythia-160m", work, False), standin("pythia-1b", work, False)]
    figures, runs, failed = {}, [], []
    for dtype in DTYPES:
        md = out / f"score-{dtype}.md"
        r = run_command([py, "-m", "qsens", "bench", "score", *map(str, models), "--dtype", dtype, "-k", "2",
                         "--max-tokens", "1024" if tiny else "16384", "--rounds", "2", "--out", str(md)]
                        + (["--eager-kl"] if tiny else []), 100 if not tiny else 300)
        runs.append(r)
        data = json.loads(md.with_suffix(".json").read_text()) if r["rc"] == 0 else None
        figures[dtype] = [_share(x, dtype, cuda) for x in data] if data else None
        if r["rc"] != 0 or not data or not all(f["loglik_equal"] for f in figures[dtype]):
            failed.append(dtype)
    return {"status": "failed" if failed else "ok", "figures": figures,
            "detail": f"failed: {', '.join(failed)}" if failed else "", "run_seconds": [r["seconds"] for r in runs],
            "tail": "\n".join(r["tail"][-1200:] for r in runs), "command": " ; ".join(r["command"] for r in runs)}


def _by_quantizer(results: Path) -> dict[str, dict]:
    return {c["quantizer"]: c for c in stored_cells(results)} if results.exists() else {}


def placed_step(py: str, work: Path, cuda: bool, tiny: bool) -> dict:
    folder = standin("pythia-410m", work, tiny)
    weights = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
    if cuda:  # 40% of the weights on the GPU, the rest offloaded to host memory and streamed in per forward
        placement = f'placement: {{device_map: auto, max_memory: {{"0": {int(0.4 * weights)}, cpu: 64GiB}}}}\n'
    else:  # the CPU's second "device" is the disk; below ~80% accelerate puts the tiny model's every module there
        placement = (f"placement: {{device_map: auto, max_memory: {{cpu: {int(0.9 * weights)}}}, "
                     f"offload_folder: {work / 'offload'}}}\n")
    quant = (f"  - {{method: rtn, bits: [3, 4], group_size: {32 if tiny else 128}, {SKIP}}}\n"
             f"  - {{method: noise, magnitude: 0.05, {SKIP}}}\n")
    fam, ev, device = _family("pythia-410m", folder), _eval(tiny, 16384), "cuda" if cuda else "cpu"
    runs, cells = {}, {}
    for name, extra in (("one-device", ""), ("placed", placement)):
        suite = write_suite(work / f"placed-{name}", fam, quant, ev, device, calibration=False, extra=extra)
        res = work / f"placed-{name}" / "results"
        runs[name] = run_command([py, "-m", "qsens", "run", str(suite), "--results", str(res), "--no-progress"], 150)
        cells[name] = _by_quantizer(res)
    one, placed = cells["one-device"], cells["placed"]
    problems = [f"{n}: not every cell ok" for n, c in cells.items()
                if runs[n]["rc"] != 0 or not c or any(x["status"] != "ok" for x in c.values())]
    diffs, maps = {}, {}
    if not problems and one.keys() == placed.keys():
        for q, a in one.items():
            b = placed[q]
            diffs[q] = {"fp_loss": abs(a["fp_loss"] - b["fp_loss"]), "q_loss": abs(a["q_loss"] - b["q_loss"]),
                        "kl_rel": abs(a["kl_mean"] - b["kl_mean"]) / max(abs(a["kl_mean"]), 1e-12)}
            maps[q] = json.loads(b["details_json"] or "{}").get("placement")
        # same kernels on the same batches: equal up to run-to-run GPU nondeterminism, far below any Δloss reported
        if any(d["fp_loss"] > 1e-4 or d["q_loss"] > 1e-4 or d["kl_rel"] > 1e-3 for d in diffs.values()):
            problems.append("placed numbers differ from one device's")
        if any(not m or len(m.get("modules", {})) < 2 for m in maps.values()):
            problems.append("the placed cells did not run on two devices")
    elif not problems:
        problems.append("the two runs computed different cells")
    return {"status": "failed" if problems else "ok", "detail": "; ".join(problems),
            "figures": {"weights_bytes": weights, "placement": placement.strip(), "map": next(iter(maps.values()), None),
                        "differences": diffs, **{n: cell_figures(list(c.values()), runs[n]["seconds"])
                                                for n, c in cells.items()}},
            "run_seconds": {n: r["seconds"] for n, r in runs.items()},
            "tail": "\n".join(r["tail"][-1200:] for r in runs.values()),
            "command": " ; ".join(r["command"] for r in runs.values())}


def cells_1b_step(py: str, work: Path, cuda: bool, tiny: bool) -> dict:
    folder = standin("pythia-1b", work, tiny)
    g = 32 if tiny else 128
    quant = (f"  - {{method: rtn, bits: [3, 4], group_size: {g}, {SKIP}}}\n"
             f"  - {{method: bnb, quant_type: nf4, blocksize: 64, {SKIP}}}\n"
             f"  - {{method: noise, magnitude: 0.05, {SKIP}}}\n")
    suite = write_suite(work / "cells-1b", _family("pythia-1b", folder), quant, _eval(tiny, 65536),
                        "cuda" if cuda else "cpu", calibration=False)
    res = work / "cells-1b" / "results"
    r = run_command([py, "-m", "qsens", "run", str(suite), "--results", str(res), "--no-progress"], 150)
    cells = stored_cells(res) if res.exists() else []
    fig = cell_figures(cells, r["seconds"])
    own = [c["seconds"] for c in cells if c["status"] == "ok" and c["seconds"]]
    # end to end (cells_per_hour: the command's wall time, process start and model load included) and from the
    # cells' own seconds (quantization + their share of the group's sweep): what a long suite approaches
    fig["cells_per_hour_own_seconds"] = round(3600 / statistics.mean(own), 1) if own else None
    fig["shape"] = "pythia-1b" + (" (tiny widths)" if tiny else "")
    bad = r["rc"] != 0 or not cells or fig["ok"] != fig["cells"]
    print(f"gpu-check: cells-1b: {fig['cells_per_hour']} cells/hour end to end, "
          f"{fig['cells_per_hour_own_seconds']} from the cells' own seconds ({fig['ok']} of {fig['cells']} ok)",
          flush=True)
    # the step's seconds are gpu-check's (stand-in build included); the command's own are run_seconds
    return {"status": "failed" if bad else "ok", "figures": fig, "run_seconds": r["seconds"],
            **{k: v for k, v in r.items() if k != "seconds"}}
