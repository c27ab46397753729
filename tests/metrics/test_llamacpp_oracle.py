"""llama.cpp as the oracle: the GGUF files llama.cpp made (tests/fixtures/llamacpp, see its README for the exact
commands and build) are scored by qsens as pre-quantized artifacts with the `llama.cpp` preset, and the numbers
llama-perplexity --kl-divergence printed for the same files and text are matched.

What may differ, and why the tolerances are what they are (observed differences in the README):
  * the tokens: none. qsens' HF tokenizer and llama.cpp's must give the same ids, checked first, exactly.
  * the base model: llama.cpp runs the f32 GGUF with its float32 kernels, qsens the HF model (the same float32
    weights) with torch's; per-token losses differ by float32 rounding, so PPL(base) agrees to ~1e-5 relative.
  * the quantized models: ggml's CPU matmuls for Q8_0/Q4_0 weights also quantize the activations to Q8_0 blocks
    (vec_dot_type of both types), qsens multiplies the dequantized weights in float32; and llama.cpp stores the
    base log-probs as 16-bit codes over [max - 16, max] (dropping probabilities below e^-16 from KL). Both move
    KL and the quantized PPL by a small fraction of their size, so those are matched relatively (below).
"""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("gguf")

from qsens.metrics.text import read_text  # noqa: E402
from qsens.metrics.windows import build_eval_tokens  # noqa: E402
from qsens.runner.loop import run_suite  # noqa: E402
from qsens.store import ResultStore  # noqa: E402
from qsens.suites.load import load_suite  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
FIXTURE = REPO / "tests/fixtures/llamacpp"
PARENT = REPO / "checkpoints/gutenberg/h32/s0/wsd-f0.4/h32-s0-wsd-f0.4-d033.554M"
N_CTX, N_CHUNKS = 128, 24
TYPES = ("Q8_0", "Q4_0")

_NUMBER = r"(-?[0-9.]+(?:e[-+]?\d+)?)"
PRINTED = {  # key -> (regex on llama-perplexity's final statistics, scale to qsens' units)
    "ppl_q": (rf"Mean PPL\(Q\)\s*:\s*{_NUMBER}", 1.0),
    "ppl_fp": (rf"Mean PPL\(base\)\s*:\s*{_NUMBER}", 1.0),
    "ln_ppl_ratio": (rf"Mean ln\(PPL\(Q\)/PPL\(base\)\)\s*:\s*{_NUMBER}", 1.0),
    "cor": (rf"Cor\(ln\(PPL\(Q\)\), ln\(PPL\(base\)\)\):\s*{_NUMBER}%", 0.01),
    "kl_mean": (rf"Mean    KLD:\s*{_NUMBER}", 1.0),
    "kl_p99": (rf"99\.0%   KLD:\s*{_NUMBER}", 1.0),
    "kl_p95": (rf"95\.0%   KLD:\s*{_NUMBER}", 1.0),
    "kl_p90": (rf"90\.0%   KLD:\s*{_NUMBER}", 1.0),
    "kl_median": (rf"Median  KLD:\s*{_NUMBER}", 1.0),
    "kl_max": (rf"Maximum KLD:\s*{_NUMBER}", 1.0),
    "dp_mean": (rf"Mean    Δp:\s*{_NUMBER}", 0.01),
    "same_top": (rf"Same top p:\s*{_NUMBER}", 0.01),
    "same_top_se": (rf"Same top p:\s*[0-9.]+ ±\s*{_NUMBER}", 0.01),
}


def printed(qtype: str) -> dict[str, float]:
    text = (FIXTURE / f"kld-{qtype}.txt").read_text(encoding="utf-8")
    out = {}
    for key, (pattern, scale) in PRINTED.items():
        match = re.search(pattern, text)
        assert match, f"kld-{qtype}.txt: no line for {key}"
        out[key] = float(match.group(1)) * scale
    return out


def ours(stats: dict) -> dict[str, float]:
    return {"ppl_q": stats["ppl_q"], "ppl_fp": stats["ppl_fp"], "ln_ppl_ratio": stats["ln_ppl_ratio"],
            "cor": stats["logprob_correlation"], "kl_mean": stats["kl"]["mean"], "kl_p99": stats["kl"]["p99"],
            "kl_p95": stats["kl"]["p95"], "kl_p90": stats["kl"]["p90"], "kl_median": stats["kl"]["p50"],
            "kl_max": stats["kl"]["max"], "dp_mean": stats["delta_p"]["mean"], "same_top": stats["same_top"],
            "same_top_se": stats["same_top_se"]}


def llamacpp_tokens() -> np.ndarray:
    header, body = (FIXTURE / "tokens.txt").read_text().splitlines()[:2]
    n_ctx, n_chunk = int(header.split()[2]), int(header.split()[6])
    tokens = np.array(body.split(), dtype=np.int64)
    assert tokens.size == n_ctx * n_chunk == N_CTX * N_CHUNKS
    return tokens.reshape(n_chunk, n_ctx)


def suite_file(tmp: Path) -> Path:
    path = tmp / "oracle.yaml"
    artifacts = "\n".join(f"  - {{method: prequantized, format: gguf, path: {FIXTURE}/model-{t}.gguf, parent: parent}}"
                          for t in ("f32", *TYPES))
    path.write_text(textwrap.dedent(f"""\
        name: llamacpp-oracle
        device: cpu
        families:
          - name: gutenberg-h32
            n_params: 1
            checkpoints: [{{name: parent, path: {PARENT}, tokens: 33554432}}]
        quantizers:
        """) + artifacts + textwrap.dedent(f"""
        evals:
          - name: excerpt
            path: {FIXTURE}/eval.txt
            preset: llama.cpp
            protocol: {{context_length: {N_CTX}, max_tokens: {N_CTX * N_CHUNKS}}}
        metrics: [delta_loss, ppl_ratio, kl, top1_agree, llamacpp]
        bootstrap: {{samples: 100}}
        """))
    return path


@pytest.fixture(scope="module")
def cells(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("oracle")
    run_suite(load_suite(suite_file(tmp)), tmp / "res", progress=False)
    out = {}
    for c in ResultStore(tmp / "res").cells():
        assert c["status"] == "ok", c["error"]
        out[Path(c["settings_json"] and json.loads(c["settings_json"])["path"]).stem.removeprefix("model-")] = c
    return out


def test_the_tokens_are_llamacpps():
    """qsens' tokens under the preset are exactly the ids llama-perplexity scored (its logits file's header)."""
    from transformers import AutoTokenizer

    from qsens.metrics.protocol import resolve_protocol

    chunks = llamacpp_tokens()
    protocol = resolve_protocol("llama.cpp", {"context_length": N_CTX, "max_tokens": N_CTX * N_CHUNKS})
    tokens = build_eval_tokens(read_text(FIXTURE / "eval.txt"), AutoTokenizer.from_pretrained(PARENT), protocol)
    assert len(tokens.windows) == N_CHUNKS
    bos = 0
    for chunk, (inp, first, n) in zip(chunks, tokens.windows):
        assert inp.tolist() == [bos] + chunk[1:].tolist()
        assert (first, n) == (N_CTX // 2, N_CTX - 1 - N_CTX // 2)
    assert tokens.targets.tolist() == chunks[:, N_CTX // 2 + 1 :].reshape(-1).tolist()


def test_the_f32_gguf_is_the_parent(cells):
    stats = json.loads(cells["f32"]["stats_json"])
    assert stats["kl"]["max"] < 1e-9 and stats["same_top"] == 1.0
    assert stats["ppl_fp"] == pytest.approx(printed("Q8_0")["ppl_fp"], rel=2e-5)


# The plain pipeline (weight-only: dequantized GGUF weights, float32 activations) against llama.cpp's print.
REL = {"Q8_0": 0.05, "Q4_0": 0.02}


@pytest.mark.xfail(strict=True, reason="llama.cpp's quantized statistics include ggml's activation rounding (Q8_0 "
                   "blocks for Q8_0/Q4_0 weights, float16 for F16 ones), which qsens' weight-only scoring leaves out: "
                   "Q8_0 KL mean 0.000769 there vs 0.000415 here; test_activation_rounding_explains_the_difference "
                   "shows that emulating it closes the gap. Tokens, PPL(base) and the f32 file match.")
@pytest.mark.parametrize("qtype", TYPES)
def test_statistics_match_llamacpps(cells, qtype):
    got, want = ours(json.loads(cells[qtype]["stats_json"])), printed(qtype)
    assert got["ppl_fp"] == pytest.approx(want["ppl_fp"], rel=2e-5)  # float32 kernels on identical weights
    assert got["ppl_q"] == pytest.approx(want["ppl_q"], rel=REL[qtype] * abs(want["ln_ppl_ratio"]) + 2e-5)
    for key in ("kl_mean", "kl_p99", "kl_p95", "kl_p90", "kl_median"):
        assert got[key] == pytest.approx(want[key], rel=REL[qtype], abs=2e-6), key
    n = N_CHUNKS * (N_CTX - 1 - N_CTX // 2)
    assert abs(got["same_top"] - want["same_top"]) <= 3 / n + 1e-5
    assert got["cor"] == pytest.approx(want["cor"], abs=1e-4)


# --- what llama.cpp computes: its matmuls round the activations too ---------------------------------------------
# ggml's CPU mul_mat converts the activations to the weight type's vec_dot_type before the dot products: Q8_0 blocks
# of 32 (d = amax / 127 stored as float16, q = round(x * 127 / amax)) for Q8_0 and Q4_0 weights, float16 for F16
# weights (the ffn_down matrices llama-quantize stored as F16: 80 columns), nothing for F32. The tied output
# matrix is token_embd (Q8_0 in both files). Emulated here, for this test only, by rounding each Linear's input.


def q8_0_round(x: torch.Tensor) -> torch.Tensor:
    """ggml's quantize_row_q8_0 (AVX2 form) and back, along the last dim of float32 x [..., k], k % 32 == 0."""
    blocks = x.reshape(*x.shape[:-1], x.shape[-1] // 32, 32)
    amax = blocks.abs().amax(-1, keepdim=True)
    d = (amax / 127).to(torch.float16).float()
    q = torch.round(blocks * torch.where(amax > 0, 127 / amax, torch.zeros_like(amax)))  # ties to even, as there
    return (q * d).reshape(x.shape)


ACTIVATION_ROUNDING = {"Q8_0": q8_0_round, "Q4_0": q8_0_round, "F16": lambda x: x.half().float(), "F32": None}


def linear_types(path: Path, model) -> dict[str, str]:
    """HF Linear name -> the GGUF type its weight is stored in (lm_head: the tied token_embd)."""
    import gguf

    stored = {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(path)).tensors}
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, model.config.num_hidden_layers)
    return {name: stored[names.get_name("model.embed_tokens.weight" if name == "lm_head" else f"{name}.weight",
                                        try_suffixes=(".weight",))]
            for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}


def scored_logits(model, inputs: torch.Tensor, rounding: dict | None = None) -> torch.Tensor:
    """float32 logits [chunks * (n_ctx/2 - 1), V] at llama-perplexity's scored positions; `rounding`: Linear name ->
    the function applied to its input."""
    hooks = [m.register_forward_pre_hook(lambda _m, args, f=rounding[n]: (f(args[0]),))
             for n, m in model.named_modules() if rounding and rounding.get(n) is not None]
    try:
        with torch.no_grad():
            z = model(inputs).logits[:, N_CTX // 2 : N_CTX - 1].float()
    finally:
        for h in hooks:
            h.remove()
    return z.reshape(-1, z.shape[-1])


def statistics(z_fp: torch.Tensor, z_q: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """qsens' llama.cpp statistics (qsens.metrics.llamacpp_stats) from two float32 logit arrays [n, V]."""
    from qsens.metrics.llamacpp_stats import llamacpp_statistics

    lp, lq = torch.log_softmax(z_fp.double(), -1), torch.log_softmax(z_q.double(), -1)
    nll = lambda lpr: -lpr.gather(1, targets[:, None])[:, 0].numpy()  # noqa: E731
    kl = (lp.exp() * (lp - lq)).sum(-1).numpy()
    return ours(llamacpp_statistics(nll(lp), nll(lq), kl, None, (z_fp.argmax(-1) == z_q.argmax(-1)).numpy()))


@pytest.fixture(scope="module")
def emulated():
    """Per type: (statistics with ggml's activation rounding emulated, weight-only statistics)."""
    import copy

    from transformers import AutoModelForCausalLM

    from qsens.quantizers.prequantized import gguf_state

    chunks = torch.from_numpy(llamacpp_tokens())
    inputs = chunks.clone()
    inputs[:, 0] = 0  # BOS replaces each chunk's first token (test_the_tokens_are_llamacpps)
    targets = chunks[:, N_CTX // 2 + 1 :].reshape(-1)
    parent = AutoModelForCausalLM.from_pretrained(PARENT, dtype=torch.float32).eval()
    z_fp = scored_logits(parent, inputs)
    out = {}
    for qtype in TYPES:
        path = FIXTURE / f"model-{qtype}.gguf"
        state, _ = gguf_state(str(path), parent)
        model = copy.deepcopy(parent)
        with torch.no_grad():
            for name, param in model.named_parameters():
                param.copy_(state[name])
        rounding = {n: ACTIVATION_ROUNDING[t] for n, t in linear_types(path, model).items()}
        out[qtype] = (statistics(z_fp, scored_logits(model, inputs, rounding), targets),
                      statistics(z_fp, scored_logits(model, inputs), targets))
    return out


# Observed (README table): with the rounding emulated, PPL(Q) within 2e-4 relative, KL mean and median within
# 1.5%, KL 90/95% within 3%, KL 99% within 6%, same-top within 3 of 1,512 tokens. What is left: float32 sums in
# another order (ggml's integer block dots, its attention), which move near-tied tokens and the KL tail.
EMULATED_REL = {"ppl_q": 2.5e-4, "kl_mean": 0.015, "kl_median": 0.015, "kl_p90": 0.03, "kl_p95": 0.03, "kl_p99": 0.06}


@pytest.mark.parametrize("qtype", TYPES)
def test_activation_rounding_explains_the_difference(emulated, qtype):
    got, weight_only = emulated[qtype]
    want = printed(qtype)
    assert weight_only["ppl_fp"] == pytest.approx(want["ppl_fp"], rel=2e-5)
    for key, rel in EMULATED_REL.items():
        assert got[key] == pytest.approx(want[key], rel=rel), key
    n = N_CHUNKS * (N_CTX - 1 - N_CTX // 2)
    assert abs(got["same_top"] - want["same_top"]) <= 3 / n + 1e-9
    assert got["cor"] == pytest.approx(want["cor"], abs=2e-4)
    # and the rounding is what made the difference: weight-only scoring is far off where it dominates (Q8_0's
    # tiny weight error), closer everywhere it is not (Q4_0's KL 99% and 95%)
    if qtype == "Q8_0":
        assert abs(weight_only["kl_mean"] / want["kl_mean"] - 1) > 0.4
    for key in ("kl_p99", "kl_p95", "ppl_q"):
        assert abs(got[key] - want[key]) < abs(weight_only[key] - want[key]), key
