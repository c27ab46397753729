"""Scoring on either matmul route (qsens.blas): the same per-token numbers, each within float32 rounding of float64.

`qsens run` re-executes itself with MKL's Intel path preloaded on AMD CPUs (`blas.ensure()`), which changes the
sgemm kernels and so the rounding of every linear layer, never the products. A fresh process per route scores one
shipped micro checkpoint (trained, 2 layers, hidden 64, V = 1,024) and a noised copy of it with `score_together`
(the runner's scorer), and the same model taken to float64 scores the same windows as the reference.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from qsens import blas

REPO = Path(__file__).resolve().parents[1]
CHECKPOINT = REPO / "checkpoints/micro/s64/cosine/s64-cosine-d004.000M"

SCORE = """
import copy, json, sys, torch
from qsens import blas
route = blas.ensure()
torch.set_num_threads(1)
from transformers import AutoModelForCausalLM, AutoTokenizer
from qsens.metrics.protocol import Protocol
from qsens.metrics.scoring import score_together
from qsens.metrics.text import read_text
from qsens.metrics.windows import build_eval_tokens

path, text_path = sys.argv[1], sys.argv[2]
model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
noised = copy.deepcopy(model)
g = torch.Generator().manual_seed(0)
with torch.no_grad():
    for p in noised.parameters():  # a quantization-sized perturbation: 3% of each tensor's spread
        p.add_(torch.randn(p.shape, generator=g) * 0.03 * p.std())
text = read_text(text_path)[:12000]
tokens = build_eval_tokens(text, AutoTokenizer.from_pretrained(path), Protocol(context_length=128, max_tokens=2048))
with torch.no_grad():
    ref, out = score_together(model, {"q": noised}, tokens, torch.device("cpu"), batch_size=4, kl=True)
    fp64, q64, nll, nll_q, kl = model.double(), noised.double(), [], [], []
    for ids, first, n in tokens.windows:  # float64 forward and log-softmax of every window, in window order
        lp = torch.log_softmax(fp64(input_ids=ids[None]).logits[0, first:first + n], -1)
        lq = torch.log_softmax(q64(input_ids=ids[None]).logits[0, first:first + n], -1)
        t = torch.arange(n)
        target = tokens.targets[len(nll):len(nll) + n]
        nll += (-lp[t, target]).tolist()
        nll_q += (-lq[t, target]).tolist()
        kl += (lp.exp() * (lp - lq)).sum(-1).tolist()
print(json.dumps({"route": route, "reported": blas.route(), "nll": ref.nll.tolist(), "nll_q": out["q"].nll.tolist(),
                  "kl": out["q"].kl.tolist(), "nll64": nll, "nll_q64": nll_q, "kl64": kl}))
"""


def _score(choice: str, cache: Path) -> dict:
    env = dict(blas.plain_env(), QSENS_BLAS=choice, XDG_CACHE_HOME=str(cache), OMP_NUM_THREADS="1",
               MKL_NUM_THREADS="1", PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-c", SCORE, str(CHECKPOINT), str(REPO / "data/eval/heldout-novels.txt.gz")],
                          env=env, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    return {k: np.asarray(v) if isinstance(v, list) else v
            for k, v in json.loads(done.stdout.strip().splitlines()[-1]).items()}


@pytest.fixture(scope="module")
def routes(tmp_path_factory) -> dict:
    """Per QSENS_BLAS choice, what its process scored. 'shim' is left out (and its test skipped, saying why) only
    where the shim does not apply: no MKL in this torch, not Linux, or no C compiler to build it."""
    cache = tmp_path_factory.mktemp("blas-cache")
    out = {"off": _score("off", cache)}
    if blas.torch_uses_mkl() and sys.platform.startswith("linux") and blas.shim_library(cache) is not None:
        out["shim"] = _score("shim", cache)
    return out


def _check_against_float64(r: dict) -> None:
    """float32 forward against float64 (2,032 tokens, measured 2026-12-03 on this Zen 5, both routes alike): nll
    and quantized nll max |diff| 7.5e-6 nats (bound 1e-4: 13x), KL 4.6e-5 relative per token at most (bound 1e-3:
    20x), KL's mean 1.3e-7 relative (bound 1e-5: 75x)."""
    assert r["nll"].shape == r["nll64"].shape and r["nll"].size > 1000
    np.testing.assert_allclose(r["nll"], r["nll64"], rtol=0, atol=1e-4)
    np.testing.assert_allclose(r["nll_q"], r["nll_q64"], rtol=0, atol=1e-4)
    np.testing.assert_allclose(r["kl"], r["kl64"], rtol=1e-3, atol=1e-7)
    assert r["kl"].mean() == pytest.approx(r["kl64"].mean(), rel=1e-5)


def test_the_default_route_scores_float64s_numbers(routes):
    off = routes["off"]
    assert off["route"] == off["reported"] == (blas.INTEL_PATH if blas.native_intel_path() else blas.DEFAULT)
    _check_against_float64(off)


def test_mkls_intel_path_scores_the_same_numbers(routes):
    if "shim" not in routes:
        pytest.skip("the shim does not apply here (torch without MKL, not Linux, or no C compiler); "
                    "the default route was still checked against float64")
    shim, off = routes["shim"], routes["off"]
    assert shim["route"] == shim["reported"] == "mkl-intel-path"
    _check_against_float64(shim)
    # two float32 roundings of the same products differ by the sgemm blocking alone: measured 2.3e-8 nats on nll
    # and 3.8e-9 on KL, 0.3-0.4% of either route's distance to float64; the bound is a tenth of that distance
    for key, ref in (("nll", "nll64"), ("nll_q", "nll_q64"), ("kl", "kl64")):
        to_float64 = min(np.abs(off[key] - off[ref]).max(), np.abs(shim[key] - shim[ref]).max())
        assert np.abs(shim[key] - off[key]).max() <= 0.1 * to_float64, key
