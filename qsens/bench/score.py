"""`qsens bench score`: scoring throughput of qsens beside lm-eval's `loglikelihood_rolling` and beside the
machine's matmul limit for the model's own shapes, all in one process.

Same loaded model, same text, same context and batch: lm-eval 0.4's HFLM wraps the very model object qsens
scores. Each round runs lm-eval, the qsens fp pass, a sweep (fp + k quantized models with KL) and the matmul
peak (`qsens.bench.peak`), in an order reversed every other round (`qsens.bench.timing`); every ratio is formed
within a round, reported per round and as their median, in process CPU time beside wall time, with the load
average. lm-eval's summed log-likelihood must equal qsens' (same protocol: EOT prefix, rolling windows of
`context` scored tokens, last window aligned), which checks that both did the same work.

Figures (per round, seconds s[step]; CPU time on the CPU, where a neighbour steals wall time, not CPU time):
    fp_vs_lmeval           s[lmeval] / s[fp]
    cell_vs_lmeval         one quantized cell with KL, its marginal cost in a sweep ((sweep - fp) / k)
    cell_all_in_vs_lmeval  the same with its 1/k share of the fp pass
    suite_fp_passes        s[sweep] / s[fp]: the suite's scoring cost in fp passes per checkpoint (ideal 1 + k,
                           goal <= 1.1 (1 + k))
    delta_vs_lmeval        (k + 1) lm-eval runs (Delta-loss of k quantizers there, without KL) / sweep
    fp_share_of_peak       the pass's linear FLOPs at the round's best measured rate, over s[fp]: 1 would be a
                           forward that is nothing but matmuls at the fastest route the machine has
    cell_share_of_peak     the same over a cell's marginal seconds
"""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path

import torch

from qsens import blas
from qsens.bench.peak import forward_flops, linear_shapes, matmul_peak
from qsens.bench.timing import interleave, load_average
from qsens.metrics.protocol import Protocol
from qsens.metrics.scoring import _batch_plan, score_reference, score_together
from qsens.metrics.text import read_text
from qsens.metrics.windows import build_eval_tokens

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def lmeval_rolling(model, tokenizer, text: str, context: int, batch_size: int) -> tuple[float, float]:
    """(seconds, summed log-likelihood) of lm-eval's `loglikelihood_rolling` over `text` as one request."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=context)
    req = Instance(request_type="loglikelihood_rolling", doc={}, arguments=(text,), idx=0)
    t0 = time.perf_counter()
    (ll,) = lm.loglikelihood_rolling([req], disable_tqdm=True)
    return time.perf_counter() - t0, float(ll)


def quantized_copies(model, tokenizer, device: torch.device, k: int) -> list[torch.nn.Module]:
    """k RTN-quantized copies (4, 3, 8, 2 bits, group 128, head kept) of `model`, as a suite would score."""
    from qsens.quantizers import rtn
    from qsens.quantizers.base import QuantContext

    ctx = QuantContext(fp_model=model, tokenizer=tokenizer, device=device, seed=0)
    bits = [4, 3, 8, 2]
    return [rtn.quantize(ctx, rtn.Settings(bits=bits[i % 4], group_size=128,
                                           skip=("lm_head", "embed_out"))).model for i in range(k)]


def _same_text(tokenizer, path: str | Path, max_tokens: int) -> str:
    """The first `max_tokens` tokens of the file, decoded: both tools get exactly this string."""
    ids = tokenizer(read_text(path), add_special_tokens=False)["input_ids"][:max_tokens]
    return tokenizer.decode(ids)


def pass_matmul_flops(model, tokens, batch_size: int, device: torch.device) -> dict:
    """Matmul FLOPs of one pass over `tokens` (FlopCounterMode on one forward per distinct batch shape), and the
    batch shapes: {'total', 'by_op', 'batch_shapes': {'BxL': count}}."""
    shapes = Counter(tuple(ids.shape) for ids, *_ in _batch_plan(tokens, batch_size, device))
    total, by_op = 0, Counter()
    for shape, count in shapes.items():
        f = forward_flops(model, torch.zeros(shape, dtype=torch.long, device=device))
        total += f["total"] * count
        by_op.update({op: n * count for op, n in f["by_op"].items()})
    return {"total": total, "by_op": dict(by_op), "batch_shapes": {f"{b}x{l}": n for (b, l), n in shapes.items()}}


def run(model_dir: str | Path, text_path: str | Path, *, context: int = 128, batch_size: int = 8,
        max_tokens: int = 8192, k: int = 2, rounds: int = 4, device: torch.device | None = None,
        profile: bool = False, kl_compile: bool = True, dtype: str = "float32") -> dict:
    """Measure every figure of the module docstring; returns them with the raw seconds."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=DTYPES[dtype]).to(device).eval()
    text = _same_text(tokenizer, text_path, max_tokens)
    proto = Protocol(context_length=context, last_logit=True, align_last=True, prefix="eos", batch_size=batch_size)
    tokens = build_eval_tokens(text, tokenizer, proto)
    qs = quantized_copies(model, tokenizer, device, k)
    saved = os.environ.get("QSENS_KL_COMPILE_MIN")
    try:
        _choose_kl_kernel(kl_compile, int(model.config.vocab_size), device)
        out = _measure(model, tokenizer, text, tokens, qs, device, context, batch_size, k, rounds, DTYPES[dtype])
        if profile:  # with the compare kernels the timed rounds used
            out["profile"] = profile_sweep(model, qs, tokens, device, batch_size)
    finally:
        if saved is None:
            os.environ.pop("QSENS_KL_COMPILE_MIN", None)
        else:
            os.environ["QSENS_KL_COMPILE_MIN"] = saved
    out.update(model=str(model_dir), dtype=dtype)
    return out


def _peak_dtypes(device: torch.device, dtype: torch.dtype) -> list[torch.dtype]:
    """float32 always; on CUDA also bfloat16 and float16 (the model's own dtype first)."""
    want = [dtype, torch.float32] + ([torch.bfloat16, torch.float16] if device.type == "cuda" else [])
    return list(dict.fromkeys(want))


def _measure(model, tokenizer, text, tokens, qs, device, context, batch_size, k, rounds, dtype) -> dict:
    peaks: list[dict] = []
    shapes = linear_shapes(model)
    rows = batch_size * context

    def peak():
        peaks.append({str(d).replace("torch.", ""): matmul_peak(shapes, rows, device, d) for d in
                      _peak_dtypes(device, dtype)})

    steps = {
        "lmeval": lambda: lmeval_rolling(model, tokenizer, text, context, batch_size)[1],
        "fp": lambda: score_reference(model, tokens, device, batch_size, keep_logits=False),
        "sweep": lambda: score_together(model, dict(enumerate(qs)), tokens, device, batch_size, kl=True),
        "peak": peak,
    }
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else None
    r = interleave(steps, rounds, sync)
    flops = pass_matmul_flops(model, tokens, batch_size, device)
    own = str(dtype).replace("torch.", "")
    limit = [flops["total"] / p[own]["best_rate"] for p in peaks]  # seconds per pass at the limit, per round
    clock = "wall" if device.type == "cuda" else "cpu"  # the clock the peak was timed on

    def share(seconds_of):
        vals = [limit[i] / seconds_of(s) for i, s in enumerate(r.per_round(lambda s: s, clock))]
        return {"clock": clock, "rounds": [round(v, 4) for v in vals], "median": sorted(vals)[len(vals) // 2]}

    ref = r.results["fp"]
    return {
        "device": str(device), "blas_route": blas.route(), "threads": torch.get_num_threads(), "context": context,
        "batch_size": batch_size,
        "k": k, "rounds": rounds, "scored_tokens": tokens.n_targets, "vocab": int(model.config.vocab_size),
        "timing": r.as_dict(), "load_after": load_average(),
        "fp_vs_lmeval": r.figure(lambda s: s["lmeval"] / s["fp"]),
        "cell_vs_lmeval": r.figure(lambda s: s["lmeval"] / ((s["sweep"] - s["fp"]) / k)),
        "cell_all_in_vs_lmeval": r.figure(lambda s: s["lmeval"] / (s["sweep"] / k)),
        "suite_fp_passes": r.figure(lambda s: s["sweep"] / s["fp"]), "suite_ideal_fp_passes": 1 + k,
        "suite_goal_fp_passes": 1.1 * (1 + k),
        "delta_vs_lmeval": r.figure(lambda s: (k + 1) * s["lmeval"] / s["sweep"]),
        "matmul_flops_per_pass": flops, "peak": peaks,
        "fp_share_of_peak": share(lambda s: s["fp"]),
        "cell_share_of_peak": share(lambda s: (s["sweep"] - s["fp"]) / k),
        "loglik_qsens": -float(ref.nll.sum()), "loglik_lmeval": r.results["lmeval"], "kl_compiled": _kl_compiled(),
    }


def _choose_kl_kernel(compiled: bool, V: int, device: torch.device) -> None:
    """Force the compiled or the eager compare kernels (`qsens.metrics.fused`) for this process, compiling before
    any timing: at real sizes the runner compiles them too, the compile paid once per process."""
    from qsens.metrics import fused

    os.environ["QSENS_KL_COMPILE_MIN"] = "0" if compiled else "-1"
    if compiled:
        z, ks = torch.zeros(3, V, device=device), fused.kernels(0)
        fused.compare(fused.fp_side(z, ks), z, torch.zeros(3, dtype=torch.int64, device=device), ks)


def _kl_compiled() -> bool:
    from qsens.metrics import fused

    return os.environ.get("QSENS_KL_COMPILE_MIN") == "0" and not fused._COMPILED.get("failed")


def profile_sweep(model, qs, tokens, device, batch_size: int, top: int = 12) -> list[dict]:
    """Self time per op over one sweep (torch profiler): where a cell's time goes beyond the forward."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        score_together(model, dict(enumerate(qs)), tokens, device, batch_size, kl=True)
    rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in rows) or 1
    return [{"op": e.key, "self_cpu_s": e.self_cpu_time_total / 1e6, "share": e.self_cpu_time_total / total}
            for e in rows[:top]]


def _ratio(fig: dict) -> str:
    c, w = fig["cpu"], fig["wall"]
    return f"{c['median']:.2f}x ({', '.join(f'{v:.2f}' for v in c['rounds'])}; wall {w['median']:.2f}x)"


def _peak_cell(r: dict) -> str:
    own = r["peak"][-1][r["dtype"]]
    best = [p[r["dtype"]]["best_rate"] / 1e9 for p in r["peak"]]
    routes = ", ".join(f"{n} {v / 1e9:.0f}" for n, v in own["rate_by_route"].items())
    return f"{min(best):.0f}-{max(best):.0f} ({routes})"


def to_markdown(results: list[dict], command: str) -> str:
    unit = "GFLOP per CPU-s" if results and results[0]["device"] == "cpu" else "GFLOP/s"
    lines = [f"Scoring throughput vs lm-eval 0.4 `loglikelihood_rolling` and vs the machine's matmul limit "
             f"(`{command}`): rounds interleaved, order reversed every other round; each ratio is the median of "
             "per-round ratios in CPU time (per round in brackets), wall time beside it; > 1 means qsens is faster.",
             "", "| model | V | dtype, device, threads, BLAS route | tokens | k | fp/lm-eval | cell (KL)/lm-eval "
             "| fp + k cells, "
             "fp passes (ideal 1 + k; goal) | fp pass, share of peak | cell, share of peak | best matmul rate, "
             f"{unit} (last round by route) | load (1 min) per round |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        loads = ", ".join(f"{ld[0]:.1f}" for ld in r["timing"]["load"] if ld)
        lines.append(
            f"| {Path(r['model']).name} | {r['vocab']:,} | {r['dtype']}, {r['device']}, {r['threads']}, "
            f"{r.get('blas_route', '?')} | {r['scored_tokens']:,} | {r['k']} | {_ratio(r['fp_vs_lmeval'])} "
            f"| {_ratio(r['cell_vs_lmeval'])} "
            f"| {r['suite_fp_passes']['cpu']['median']:.2f} ({', '.join(f'{v:.2f}' for v in r['suite_fp_passes']['cpu']['rounds'])}; "
            f"{r['k'] + 1}; ≤ {r['suite_goal_fp_passes']:.1f}) | {r['fp_share_of_peak']['median']:.0%} "
            f"| {r['cell_share_of_peak']['median']:.0%} | {_peak_cell(r)} | {loads} |")
    for r in results:
        if r.get("profile"):
            lines += ["", f"Profile of one sweep, {Path(r['model']).name} (self CPU time):", "",
                      "| op | s | share |", "|---|---|---|"]
            lines += [f"| {p['op']} | {p['self_cpu_s']:.2f} | {p['share']:.0%} |" for p in r["profile"]]
    return "\n".join(lines) + "\n"
