"""Per-layer sensitivity (qsens.analysis.layers): a layer set's Δloss and KL from a suite run against an independent
computation (the set quantized by hand in float64, scored with a plain loop here), and the paired additivity
interval on synthetic window sums against its closed form."""

from __future__ import annotations

import gzip
import math
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from qsens.analysis.layers import layers_markdown
from qsens.metrics.layer_stats import WHOLE, additivity, layer_series, layer_set_of, partitions, share, summarize
from qsens.metrics.compare import encode_window_sums
from qsens.runner.loop import run_suite
from qsens.store.cells import read_cells

ROOT = Path(__file__).resolve().parents[2]
MICRO = ROOT / "checkpoints" / "micro" / "s24" / "cosine" / "s24-cosine-d008.000M"
CONTEXT, MAX_TOKENS = 64, 2048


def rtn_float64(w: torch.Tensor, bits: int, group: int) -> torch.Tensor:
    """Asymmetric min/max RTN per group of `group` input columns, range holding 0 (GPTQ's quant.py), float64."""
    w = w.double()
    rows, cols = w.shape
    g = w.reshape(rows, cols // group, group)
    lo, hi = g.amin(-1).clamp(max=0), g.amax(-1).clamp(min=0)
    maxq = 2**bits - 1
    scale = (hi - lo) / maxq
    zero = torch.round(-lo / scale)
    q = torch.clamp(torch.round(g / scale[..., None]) + zero[..., None], 0, maxq)
    return (scale[..., None] * (q - zero[..., None])).reshape(rows, cols)


def scored_logprobs(model, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-overlapping windows of CONTEXT tokens; each predicts its own tokens after the first (last_logit off).
    Returns (log-probs float64 [T, V] at the scored positions, targets [T])."""
    logps, targets = [], []
    with torch.no_grad():
        for start in range(0, ids.numel(), CONTEXT):
            window = ids[start:start + CONTEXT]
            if window.numel() < 2:
                continue
            logits = model(window[None]).logits[0, :-1].double()
            logps.append(torch.log_softmax(logits, -1))
            targets.append(window[1:])
    return torch.cat(logps), torch.cat(targets)


@pytest.fixture(scope="module")
def layer_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("layers")
    text = gzip.decompress((ROOT / "data" / "eval" / "heldout-novels.txt.gz").read_bytes()).decode()[:20_000]
    (tmp / "eval.txt").write_text(text, encoding="utf-8")
    (tmp / "suite.yaml").write_text(textwrap.dedent(f"""\
        name: layers-check
        families:
          - name: micro
            n_params: 15096
            checkpoints: [{{path: {MICRO}, tokens: 8000000}}]
        quantizers:
          - {{method: rtn, bits: 3, group_size: 8, layers: [all, each_block, kind:mlp.down_proj]}}
        evals:
          - {{name: text, path: eval.txt, preset: qsens, protocol: {{context_length: {CONTEXT}, max_tokens: {MAX_TOKENS}}}}}
        bootstrap: {{samples: 200}}
        """))
    from qsens.suites.load import load_suite

    run_suite(load_suite(tmp / "suite.yaml"), tmp / "results", progress=False)
    cells = {layer_set_of(c): c for c in read_cells(tmp / "results")}
    return text, cells


def test_a_sets_delta_and_kl_match_an_independent_computation(layer_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    text, cells = layer_run
    assert all(c["status"] == "ok" for c in cells.values())
    ids = torch.tensor(AutoTokenizer.from_pretrained(MICRO)(text, add_special_tokens=False)["input_ids"][:MAX_TOKENS])
    fp = AutoModelForCausalLM.from_pretrained(MICRO, dtype=torch.float32).eval()
    fp_logp, targets = scored_logprobs(fp, ids)
    fp_nll = -fp_logp.gather(1, targets[:, None])[:, 0]
    for layer_set, wanted in (("kind:mlp.down_proj", lambda n: n.endswith("mlp.down_proj")),
                              ("block:1", lambda n: ".layers.1." in n)):
        q = AutoModelForCausalLM.from_pretrained(MICRO, dtype=torch.float32).eval()
        with torch.no_grad():
            for name, module in q.named_modules():
                if isinstance(module, torch.nn.Linear) and name != "lm_head" and wanted(name):
                    module.weight.copy_(rtn_float64(module.weight, 3, 8).float())
        q_logp, _ = scored_logprobs(q, ids)
        delta = float((-q_logp.gather(1, targets[:, None])[:, 0] - fp_nll).mean())
        kl = float((fp_logp.exp() * (fp_logp - q_logp)).sum(-1).mean())
        cell = cells[layer_set]
        assert cell["n_tokens"] == targets.numel()
        # float64 vs float32 grids differ only where a weight sits on a rounding tie; the forward passes are
        # float32 in both, so the two means agree to float32 accumulation over ~2,000 tokens (~1e-6 nats)
        assert cell["delta_loss"] == pytest.approx(delta, rel=1e-3, abs=2e-6), layer_set
        assert cell["kl_mean"] == pytest.approx(kl, rel=1e-3, abs=2e-6), layer_set
        assert abs(delta) > 1e-4  # the set does damage: the comparison is not of two zeros


def test_the_run_gives_the_tables_partitions_and_shares(layer_run):
    _, cells = layer_run
    series = layer_series(list(cells.values()))
    assert len(series) == 1
    row = series[0].cells[8_000_000]
    assert partitions(row) == {"blocks": ["block:0", "block:1"]}  # one kind alone partitions nothing
    s = share(row["kind:mlp.down_proj"], row[WHOLE])
    assert s["estimate"] == pytest.approx(row["kind:mlp.down_proj"]["delta_loss"] / row[WHOLE]["delta_loss"],
                                          rel=1e-9)
    assert "which layers" in layers_markdown(list(cells.values()))
    assert set(summarize(series[0])["additivity"][8_000_000]) == {"blocks"}


def _cell(delta_nll: np.ndarray, n_tokens: np.ndarray, doc: np.ndarray) -> dict:
    sums = {"n_tokens": n_tokens, "fp_nll": 3.0 * n_tokens, "delta_nll": delta_nll, "doc": doc}
    return {"window_sums": encode_window_sums(sums), "tokens_digest": "same", "delta_loss": float(
        delta_nll.sum() / n_tokens.sum())}


def _synthetic(seed: int, interaction: float, W: int = 400, per_window: float = 100.0) -> tuple[dict, float]:
    rng = np.random.default_rng(seed)
    n = np.full(W, per_window)
    doc = np.zeros(W, dtype=np.int64)
    a = rng.gamma(2.0, 1.0, W)  # per-window Δ sums of the parts: skewed, positive
    b = rng.gamma(3.0, 1.0, W)
    whole = a + b - interaction * per_window + rng.normal(0.0, 0.5, W)
    r = additivity([_cell(a, n, doc), _cell(b, n, doc)], _cell(whole, n, doc))
    return r, float((a + b - whole).sum() / n.sum())


def test_the_additivity_interval_on_a_synthetic_case():
    """Two parts and a whole on 400 independent windows of 100 tokens: whole = part a + part b - interaction,
    plus noise of sd 0.5 nats per window sum. The statistic Σ parts - whole per token is the interaction plus
    the noise's mean; for independent windows its interval is the normal one, ±1.96 · 0.5 / (100 √400) =
    ±4.9e-4 (closed form), and it should hold the true interaction in about 95% of replicates. The block
    bootstrap's own widenings (a t quantile on ~19 blocks, its variance-bias factor) make single intervals up to
    ~1.4x the closed form; the median is within 10% of it."""
    half = 1.96 * 0.5 / (100.0 * math.sqrt(400))
    covered, widths = 0, []
    for seed in range(40):
        r, direct = _synthetic(seed, 0.0)
        assert r["estimate"] == pytest.approx(direct, rel=1e-9, abs=1e-15)
        widths.append((r["ci_high"] - r["ci_low"]) / 2 / half)
        covered += r["ci_low"] <= 0.0 <= r["ci_high"]
        assert r["interact"] == (not r["ci_low"] <= 0.0 <= r["ci_high"])
    assert 0.6 < min(widths) and max(widths) < 1.6 and 0.9 < float(np.median(widths)) < 1.1
    assert covered >= 34  # binomial(40, 0.95) falls below 34 with probability < 0.5%
    r, _ = _synthetic(1, 0.02)  # seed 1: its noise-only interval held 0; 0.02 nats/token is ~40 half-widths away
    assert r["interact"] and r["ci_low"] <= 0.02 <= r["ci_high"]
