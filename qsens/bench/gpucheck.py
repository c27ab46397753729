"""`scripts/gpu-check`: one command that validates the GPU path and writes one report with every figure.

Steps (each a subprocess with its own time limit, so one hang cannot eat the others' time):
    env        what is installed: torch and its CUDA build, the device, nvcc, gptqmodel, bitsandbytes, ray, lm-eval
    gpu-tests  `pytest -m gpu` (the CUDA kernel against its reference)                       CUDA only
    kernel     `qsens bench kernel --out cuda/BENCHMARKS.md` (GB/s vs copy and torch)         CUDA only
    micro      one micro size under every quantizer (RTN, GPTQ, bnb NF4/FP4, noise): every cell ok, and on
               CUDA RTN ran the kernel and every cell's device is cuda
    standins   Pythia-160M/-410M and OLMo-2 1B stand-ins (real shapes, random weights) end to end: cells/hour,
               peak RSS / GPU memory / temp disk per cell
    ray        the micro suite through `--executor ray` with one GPU (or, on CPU, one CPU) worker
    placed     the Pythia-410M stand-in placed over GPU and host memory (device_map), equal to one device
    cells-1b   cells/hour at Pythia-1B shape (RTN, bnb, noise)
    score      `qsens bench score --dtype float32|bfloat16`: fp pass and cell as a share of the matmul peak,
               fp passes per sweep, the lm-eval ratio (qsens.bench.scalecheck has these last three)
On CPU the CUDA-only steps are skipped and the others run in a reduced form (`--reduced` forces that form on
CUDA too). Exit status 0 only when no step failed; the report is REPORT.md + report.json in --out.

Issue 24's check, unattended on one GPU in about eight minutes (`--budget` caps every step's time limit by what
is left, and skips the steps it cannot start):  scripts/gpu-check --only env placed cells-1b score --budget 480
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from qsens.bench import scalecheck
from qsens.bench.checksteps import DEADLINE, REPO, cell_figures, run_command, stored_cells, write_suite

NEEDED = ("gptqmodel", "bitsandbytes", "ray", "lm_eval", "pytest", "pytest_benchmark")


def env_step(cuda: bool) -> dict:
    import torch

    info = {"python": sys.version.split()[0], "torch": torch.__version__, "torch_cuda_build": torch.version.cuda,
            "cuda_available": torch.cuda.is_available(), "nvcc": shutil.which("nvcc"),
            "missing": [m for m in NEEDED if importlib.util.find_spec(m) is None]}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(device=props.name, memory_gib=round(props.total_memory / 2**30, 1),
                    capability=f"{props.major}.{props.minor}", devices=torch.cuda.device_count())
    problems = [f"missing packages: {', '.join(info['missing'])} (pip install -e '.[all,test]')"] if info["missing"] else []
    if cuda and info["nvcc"] is None:
        problems.append("nvcc not on PATH: the RTN kernel cannot be built (install the CUDA toolkit)")
    if not torch.cuda.is_available() and torch.version.cuda is None and shutil.which("nvidia-smi"):
        problems.append("a GPU is present but torch is a CPU build: install torch==2.13.0 from the cu128 index first")
    return {"status": "failed" if problems else "ok", "figures": info, "detail": "; ".join(problems)}


def gpu_tests_step(py: str) -> dict:
    r = run_command([py, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "tests/cuda"], 300)
    return {"status": "ok" if r["rc"] == 0 else "failed", "figures": {"summary": r["tail"].strip().splitlines()[-1:]},
            **r}


def kernel_step(py: str) -> dict:
    r = run_command([py, "-m", "qsens", "bench", "kernel", "--out", "cuda/BENCHMARKS.md"], 240)
    data = json.loads((REPO / "cuda/BENCHMARKS.json").read_text()) if r["rc"] == 0 else None
    return {"status": "ok" if r["rc"] == 0 else "failed", "figures": {"kernel": data}, **r}


MICRO_QUANTIZERS = """  - {method: rtn, bits: [2, 4], group_size: 8}
  - {method: gptq, bits: [3, 4], group_size: -1, symmetric: false, calibration_samples: 32, calibration_length: 128}
  - {method: bnb, quant_type: [nf4, fp4], blocksize: 64, compute_dtype: float32}
  - {method: noise, magnitude: 0.1}
"""


def micro_step(py: str, out: Path, cuda: bool, reduced: bool, executor: str = "local") -> dict:
    # s64 only: gptqmodel 7.6's 3-bit packing indexes past a 24-wide layer (s24) and the process exits
    ckpts = "[s64]"
    names = "" if not reduced else ", names: [s64-cosine-d008.000M]"
    fam = (f"  - {{name: micro-cosine, manifest: {REPO}/checkpoints/micro/manifest.json, "
           f"select: {{schedule: [cosine], size: {ckpts}{names}}}}}\n")
    ev = (f"  - {{name: novels, path: {REPO}/data/eval/heldout-novels.txt.gz, "
          f"protocol: {{context_length: 128, max_tokens: {2048 if reduced else 65536}}}}}\n")
    quant = MICRO_QUANTIZERS if executor == "local" else "  - {method: rtn, bits: [2, 4], group_size: 8}\n"
    name = f"micro-{executor}"
    suite = write_suite(out / name, fam, quant, ev, "cuda" if cuda else "cpu")
    args = [py, "-m", "qsens", "run", str(suite), "--results", str(out / name / "results"), "--no-progress"]
    if executor == "ray":
        args += ["--executor", "ray"]
    r = run_command(args, 420 if not reduced else 300)
    cells = stored_cells(out / name / "results") if (out / name / "results").exists() else []
    fig = cell_figures(cells, r["seconds"])
    problems = []
    if r["rc"] != 0 or fig["ok"] != fig["cells"] or not cells:
        problems.append("not every cell ok")
    if cuda and any(not str(c["device"]).startswith("cuda") for c in cells):
        problems.append("a cell did not run on cuda")
    if cuda and executor == "local" and any(c["method"] == "rtn" and c["backend"] != "cuda" for c in cells):
        problems.append("RTN did not use the CUDA kernel")
    return {"status": "failed" if problems else "ok", "figures": fig, "detail": "; ".join(problems), **r}


def standins_step(py: str, out: Path, cuda: bool, reduced: bool) -> dict:
    from qsens.testbed.standins import build_standin

    shapes = [("pythia-160m", 1)] if reduced else [("pythia-160m", None), ("pythia-410m", None), ("olmo2-1b", None)]
    fams = ""
    t0 = time.perf_counter()
    for shape, layers in shapes:
        folder = build_standin(shape, out / "standins" / shape, layers=layers,
                               tokenizer_vocab=2048 if reduced else None, dtype="float32",
                               tokenizer_cache=out / "standins" / f"tokenizer-{shape.split('-')[0]}-{reduced}")
        n = json.loads((folder / "standin.json").read_text())["n_params"]
        fams += f"  - {{name: {shape}, checkpoints: [{{path: {folder}, n_params: {n}, tokens: 1000000000}}]}}\n"
    build_s = time.perf_counter() - t0
    skip = "skip: [lm_head, embed_out]"
    quant = (f"  - {{method: rtn, bits: 4, group_size: 128, {skip}}}\n"
             f"  - {{method: gptq, bits: 4, group_size: 128, calibration_samples: {8 if reduced else 128}, "
             f"calibration_length: {64 if reduced else 2048}, {skip}}}\n"
             f"  - {{method: bnb, quant_type: nf4, blocksize: 64, {skip}}}\n")
    ev = (f"  - {{name: wikitext2, path: {REPO}/data/wikitext-2/wiki.test.raw.gz, preset: gptq, "
          f"protocol: {{context_length: {64 if reduced else 2048}, max_tokens: {512 if reduced else 65536}, "
          f"batch_size: {8 if reduced else 4}}}}}\n")
    suite = write_suite(out / "standin-suite", fams, quant, ev, "cuda" if cuda else "cpu")
    r = run_command([py, "-m", "qsens", "run", str(suite), "--results", str(out / "standin-suite/results"),
                     "--no-progress"], 420)
    cells = stored_cells(out / "standin-suite/results") if (out / "standin-suite/results").exists() else []
    fig = {**cell_figures(cells, r["seconds"]), "build_seconds": round(build_s, 1)}
    bad = r["rc"] != 0 or not cells or fig["ok"] != fig["cells"]
    return {"status": "failed" if bad else "ok", "figures": fig, **r}


def score_step(py: str, out: Path, work: Path, cuda: bool, reduced: bool) -> dict:

    return scalecheck.score_step(py, out, work, cuda, reduced)


def to_markdown(report: dict) -> str:
    lines = [f"# gpu-check report ({report['started_at']}, {report['mode']})", "",
             f"Overall: **{report['overall']}** in {report['seconds']:.0f} s. Command: `{report['command']}`", "",
             "| step | status | seconds | detail |", "|---|---|---|---|"]
    for name, s in report["steps"].items():
        lines.append(f"| {name} | {s['status']} | {s.get('seconds', '')} | {s.get('detail', '')} |")
    for name, s in report["steps"].items():
        lines += ["", f"## {name}", "", "```json", json.dumps(s.get("figures"), indent=1, default=str)[:6000], "```"]
        if s["status"] == "failed" and s.get("tail"):
            lines += ["", "Output tail:", "", "```", s["tail"][-2000:], "```"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scripts/gpu-check", description=textwrap.dedent(__doc__ or "").split("\n\n")[0])
    p.add_argument("--out", type=Path, default=REPO / "results/gpu-check")
    p.add_argument("--reduced", action="store_true", help="the CPU form's small sizes, even on CUDA")
    p.add_argument("--skip", nargs="*", default=[], help="steps to leave out")
    p.add_argument("--only", nargs="*", help="run only these steps (the others are reported as skipped)")
    p.add_argument("--budget", type=float, metavar="SECONDS",
                   help="wall-time cap for the whole command: each step's limit is cut to what is left")
    p.add_argument("--keep-work", action="store_true", help="keep the work folder (stand-in models, results)")
    args = p.parse_args(argv)
    import torch


    cuda = torch.cuda.is_available()
    reduced = args.reduced or not cuda
    py = sys.executable
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    for stale in ["REPORT.md", "report.json"] + [f"score-{d}.{e}" for d in scalecheck.DTYPES for e in ("md", "json")]:
        (out / stale).unlink(missing_ok=True)
    # models and results go to a scratch folder: out keeps only the report (small enough to commit)
    work = Path(tempfile.mkdtemp(prefix="qsens-gpu-check-"))
    report = {"started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "command": " ".join(sys.argv),
              "mode": ("cuda" if cuda else "cpu") + (", reduced" if reduced else ""), "steps": {}}
    t0 = time.perf_counter()
    steps = [
        ("env", lambda: env_step(cuda)),
        ("gpu-tests", lambda: gpu_tests_step(py) if cuda else None),
        ("kernel", lambda: kernel_step(py) if cuda else None),
        ("micro", lambda: micro_step(py, work, cuda, reduced)),
        ("standins", lambda: standins_step(py, work, cuda, reduced)),
        ("ray", lambda: micro_step(py, work, cuda, True, executor="ray")),
        ("placed", lambda: scalecheck.placed_step(py, work, cuda, reduced)),
        ("cells-1b", lambda: scalecheck.cells_1b_step(py, work, cuda, reduced)),
        ("score", lambda: score_step(py, out, work, cuda, reduced)),
    ]
    unknown = (set(args.skip) | set(args.only or ())) - {n for n, _ in steps}
    if unknown:
        p.error(f"unknown step(s) {', '.join(sorted(unknown))}; steps: {', '.join(n for n, _ in steps)}")
    DEADLINE[0] = t0 + args.budget if args.budget else None
    for name, fn in steps:
        if name in args.skip or (args.only is not None and name not in args.only):
            report["steps"][name] = {"status": "skipped", "detail": "--skip" if name in args.skip else "--only"}
            continue
        if DEADLINE[0] is not None and time.perf_counter() > DEADLINE[0] - 5:
            report["steps"][name] = {"status": "failed", "detail": f"not started: --budget {args.budget:.0f} s spent"}
            continue
        print(f"gpu-check: {name} ...", flush=True)
        t = time.perf_counter()
        try:
            res = fn() or {"status": "skipped", "detail": "needs CUDA"}
        except Exception as exc:  # noqa: BLE001 - a crashing step is a failed step; the others still run
            res = {"status": "failed", "detail": f"{type(exc).__name__}: {exc}"[:1000]}
        res.setdefault("seconds", round(time.perf_counter() - t, 1))
        report["steps"][name] = res
        print(f"gpu-check: {name} {res['status']} ({res['seconds']} s) {res.get('detail', '')}", flush=True)
    report["seconds"] = time.perf_counter() - t0
    if args.keep_work:
        report["work"] = str(work)
    else:
        shutil.rmtree(work, ignore_errors=True)
    report["overall"] = "failed" if any(s["status"] == "failed" for s in report["steps"].values()) else "ok"
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (out / "REPORT.md").write_text(to_markdown(report))
    print(f"gpu-check: {report['overall']} in {report['seconds']:.0f} s; report: {out / 'REPORT.md'}")
    return 0 if report["overall"] == "ok" else 1


if __name__ == "__main__":
    raise SystemExit(main())
