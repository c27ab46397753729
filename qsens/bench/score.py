"""`qsens bench score`: scoring throughput of qsens beside lm-eval's `loglikelihood_rolling`, in one process.

Same loaded model, same text, same context and batch: lm-eval 0.4's HFLM wraps the very model object qsens
scores. Measurements are interleaved (lm-eval, qsens fp pass, qsens sweep of fp + k quantized models with KL,
then again) `rounds` times and the median of each is kept, so a contended machine slows all of them alike;
only ratios are reported as results. lm-eval's summed log-likelihood must equal qsens' (same protocol: EOT
prefix, rolling windows of `context` scored tokens, last window aligned), which checks that both did the same work.

Figures (tokens/s = scored tokens / seconds):
    fp_vs_lmeval        qsens fp pass vs one lm-eval run
    cell_vs_lmeval      one quantized cell with KL, its marginal cost in a sweep ((sweep - fp) / k), vs one lm-eval run
    cell_all_in_vs_lmeval  the same with its 1/k share of the fp pass
    suite_fp_passes     sweep seconds / fp-pass seconds (goal <= 1 + 1.1 k)
    delta_vs_lmeval     (k + 1) lm-eval runs (what Delta-loss of k quantizers takes there, without KL) / sweep
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import torch

from qsens.metrics.scoring import score_reference, score_together
from qsens.metrics.text import read_text
from qsens.metrics.windows import build_eval_tokens
from qsens.metrics.protocol import Protocol


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


def run(model_dir: str | Path, text_path: str | Path, *, context: int = 128, batch_size: int = 8,
        max_tokens: int = 8192, k: int = 2, rounds: int = 3, device: torch.device | None = None,
        profile: bool = False, kl_compile: bool = True) -> dict:
    """Measure every figure of the module docstring; returns them with the raw seconds."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).to(device).eval()
    text = _same_text(tokenizer, text_path, max_tokens)
    proto = Protocol(context_length=context, last_logit=True, align_last=True, prefix="eos", batch_size=batch_size)
    tokens = build_eval_tokens(text, tokenizer, proto)
    qs = quantized_copies(model, tokenizer, device, k)
    saved = os.environ.get("QSENS_KL_COMPILE_MIN")
    try:
        _choose_kl_kernel(kl_compile, int(model.config.vocab_size), device)
        return _measure(model, tokenizer, text, tokens, qs, device, context, batch_size, k, rounds, profile,
                        model_dir)
    finally:
        if saved is None:
            os.environ.pop("QSENS_KL_COMPILE_MIN", None)
        else:
            os.environ["QSENS_KL_COMPILE_MIN"] = saved


def _measure(model, tokenizer, text, tokens, qs, device, context, batch_size, k, rounds, profile, model_dir) -> dict:
    secs: dict[str, list[float]] = {"lmeval": [], "fp": [], "sweep": []}
    lls = []
    for _ in range(rounds):
        t, ll = lmeval_rolling(model, tokenizer, text, context, batch_size)
        secs["lmeval"].append(t)
        lls.append(ll)
        t0 = time.perf_counter()
        ref = score_reference(model, tokens, device, batch_size, keep_logits=False)
        secs["fp"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        score_together(model, dict(enumerate(qs)), tokens, device, batch_size, kl=True)
        secs["sweep"].append(time.perf_counter() - t0)
    med = {name: statistics.median(v) for name, v in secs.items()}
    cell = (med["sweep"] - med["fp"]) / k
    out = {
        "model": str(model_dir), "device": str(device), "threads": torch.get_num_threads(), "context": context,
        "batch_size": batch_size, "k": k, "rounds": rounds, "scored_tokens": tokens.n_targets,
        "vocab": int(model.config.vocab_size), "seconds": secs, "median_seconds": med,
        "tokens_per_s": {"lmeval": tokens.n_targets / med["lmeval"], "fp": tokens.n_targets / med["fp"],
                         "cell_marginal": tokens.n_targets / cell},
        "fp_vs_lmeval": med["lmeval"] / med["fp"],
        "cell_vs_lmeval": med["lmeval"] / cell,
        "cell_all_in_vs_lmeval": med["lmeval"] / (med["sweep"] / k),
        "suite_fp_passes": med["sweep"] / med["fp"], "suite_goal_fp_passes": 1 + 1.1 * k,
        "delta_vs_lmeval": (k + 1) * med["lmeval"] / med["sweep"],
        "loglik_qsens": -float(ref.nll.sum()), "loglik_lmeval": lls[0], "kl_compiled": _kl_compiled(),
    }
    if profile:
        out["profile"] = profile_sweep(model, qs, tokens, device, batch_size)
    return out


def _choose_kl_kernel(compiled: bool, V: int, device: torch.device) -> None:
    """Force the fused (compiled) or eager KL kernel for this process, compiling before any timing: at real
    sizes the runner compiles it too (`qsens.metrics.scoring._sums_fn`), the compile paid once per process."""
    from qsens.metrics import scoring

    os.environ["QSENS_KL_COMPILE_MIN"] = "0" if compiled else "-1"
    if compiled:
        z = torch.zeros(3, V, device=device)
        scoring._compare(scoring._FpBatch.of(z), z, torch.zeros(3, dtype=torch.int64), scoring._sums_fn(0))


def _kl_compiled() -> bool:
    from qsens.metrics import scoring

    return os.environ.get("QSENS_KL_COMPILE_MIN") == "0" and not scoring._COMPILED.get("failed")


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


def to_markdown(results: list[dict], command: str) -> str:
    lines = [f"Scoring throughput vs lm-eval 0.4 `loglikelihood_rolling` (`{command}`): medians of interleaved "
             "rounds in one process; ratios > 1 mean qsens is faster.", "",
             "| model | V | device, threads | KL kernel | tokens | k | lm-eval tok/s | fp tok/s | fp/lm-eval | cell (KL)/lm-eval "
             "| cell incl. fp share/lm-eval | suite, fp passes (goal) | Δloss of k vs lm-eval k+1 runs |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(
            f"| {Path(r['model']).name} | {r['vocab']:,} | {r['device']}, {r['threads']} "
            f"| {'compiled' if r['kl_compiled'] else 'eager'} | {r['scored_tokens']:,} "
            f"| {r['k']} | {r['tokens_per_s']['lmeval']:,.0f} | {r['tokens_per_s']['fp']:,.0f} "
            f"| {r['fp_vs_lmeval']:.2f}x | {r['cell_vs_lmeval']:.2f}x | {r['cell_all_in_vs_lmeval']:.2f}x "
            f"| {r['suite_fp_passes']:.2f} (≤ {r['suite_goal_fp_passes']:.1f}) | {r['delta_vs_lmeval']:.2f}x |")
    for r in results:
        if r.get("profile"):
            lines += ["", f"Profile of one sweep, {Path(r['model']).name} (self CPU time):", "",
                      "| op | s | share |", "|---|---|---|"]
            lines += [f"| {p['op']} | {p['self_cpu_s']:.2f} | {p['share']:.0%} |" for p in r["profile"]]
    return "\n".join(lines) + "\n"
