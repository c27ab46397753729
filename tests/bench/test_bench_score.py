"""Scoring benchmark (pytest-benchmark): qsens' sweep timed by pytest-benchmark, and the ratios against lm-eval's
`loglikelihood_rolling` measured in the same run (`qsens.bench.score`). No speed is asserted (the machine is
shared); what is asserted is that both tools scored the same tokens to the same log-likelihood, an independent
check that the ratios compare equal work.

Reduced (CI): the micro checkpoint, 2,048 tokens, one round. QSENS_HEAVY=full: 8,192 tokens, three rounds, and a
Pythia-160M-shaped stand-in (2 layers of the real width, V = 50,304).
"""

import json
import os

import pytest
import torch

from qsens.bench import score
from qsens.testbed.standins import REPO, build_standin
from qsens.metrics.scoring import score_together
from qsens.metrics.windows import build_eval_tokens
from qsens.metrics.protocol import Protocol

FULL = os.environ.get("QSENS_HEAVY") == "full"
MICRO = REPO / "checkpoints/micro/s64/cosine/s64-cosine-d008.000M"
TEXT = REPO / "data/eval/heldout-novels.txt.gz"


def _models(tmp_path_factory):
    yield MICRO
    if FULL:
        yield build_standin("pythia-160m", tmp_path_factory.mktemp("st") / "pythia-160m", layers=2,
                            tokenizer_vocab=4096)


@pytest.mark.heavy
def test_ratios_against_lmeval_on_the_same_work(tmp_path_factory, record_property):
    pytest.importorskip("lm_eval")
    for model_dir in _models(tmp_path_factory):
        r = score.run(model_dir, TEXT, max_tokens=8192 if FULL else 2048, rounds=4 if FULL else 2, k=2,
                      kl_compile=FULL)  # compiling the KL kernel costs ~20 s: the full form only
        assert r["loglik_qsens"] == pytest.approx(r["loglik_lmeval"], rel=1e-5)  # same tokens, same windows
        t = r["timing"]
        assert t["orders"][0] == t["orders"][1][::-1] and len(t["load"]) == len(t["orders"])
        per_round = [s / f for s, f in zip(t["cpu"]["sweep"], t["cpu"]["fp"])]
        assert r["suite_fp_passes"]["cpu"]["rounds"] == pytest.approx(per_round, rel=1e-3)
        assert min(per_round) > 1  # a sweep is an fp pass plus k quantized passes
        # the share of peak: the pass's matmul FLOPs at the round's best rate, over the pass's CPU seconds
        flops, best = r["matmul_flops_per_pass"]["total"], r["peak"][0]["float32"]["best_rate"]
        assert r["fp_share_of_peak"]["rounds"][0] == pytest.approx(flops / best / t["cpu"]["fp"][0], rel=1e-3)
        assert 0 < r["fp_share_of_peak"]["median"] < 1.5  # cannot beat the matmul limit by much (timer noise)
        record_property(f"score_bench_{model_dir.name}", json.dumps({k: v for k, v in r.items() if k != "seconds"}))


@pytest.mark.heavy
def test_sweep_benchmark(benchmark):
    """pytest-benchmark's timing of one sweep (fp + 2 RTN copies, KL on) on the micro checkpoint."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(MICRO)
    model = AutoModelForCausalLM.from_pretrained(MICRO).eval()
    text = score._same_text(tok, TEXT, 2048)
    tokens = build_eval_tokens(text, tok, Protocol(context_length=128, last_logit=True, prefix="eos"))
    qs = dict(enumerate(score.quantized_copies(model, tok, torch.device("cpu"), 2)))
    ref, out = benchmark.pedantic(score_together, args=(model, qs, tokens, torch.device("cpu")), rounds=1 if not FULL
                                  else 3, iterations=1)
    assert all(o.kl.mean() > 0 for o in out.values()) and ref.nll.shape == (tokens.n_targets,)
