"""llama.cpp's --kl-divergence statistics: against a line-by-line transcription of perplexity.cpp's running sums
(`kl_divergence_result`, `mean_and_uncertainty`, `covariance`, `percentile`), the reverse KL against a direct
float64 computation, the scorer's observer hook, and the `llama.cpp` eval preset's chunking."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from qsens.metrics.llamacpp_stats import ReverseKL, llamacpp_statistics, reverse_kl
from qsens.metrics.protocol import LATER_DEFAULTS, PRESETS, Protocol, resolve_protocol
from qsens.metrics.scoring import score_together
from qsens.metrics.windows import build_eval_tokens, plan_windows


def llamacpp_transcription(nll_q, nll_base, kld, same_top):
    """perplexity.cpp kl_divergence(), its sums and final formulas, in Python scalars (float64)."""
    s = dict(nll=0.0, nll2=0.0, base=0.0, base2=0.0, cross=0.0, kld=0.0, kld2=0.0, dp=0.0, dp2=0.0, top=0, n=0)
    dps = []
    for q, b, k, t in zip(nll_q, nll_base, kld, same_top):
        s["nll"] += q; s["nll2"] += q * q; s["base"] += b; s["base2"] += b * b; s["cross"] += q * b  # noqa: E702
        s["kld"] += k; s["kld2"] += k * k; s["top"] += int(t); s["n"] += 1  # noqa: E702
        dp = math.exp(-q) - math.exp(-b)
        s["dp"] += dp; s["dp2"] += dp * dp  # noqa: E702
        dps.append(dp)
    n = s["n"]

    def mu(total, total2):
        f = total / n
        df = total2 / n - f * f
        return f, (math.sqrt(df / (n - 1)) if df > 0 and n > 10 else 0.0)

    lq, lb, kl, dp = mu(s["nll"], s["nll2"]), mu(s["base"], s["base2"]), mu(s["kld"], s["kld2"]), mu(s["dp"], s["dp2"])
    cov = (s["cross"] / n - (s["nll"] / n) * (s["base"] / n)) / (n - 1)

    def percentile(values, fraction):
        values = sorted(values)
        p = fraction * (len(values) - 1)
        ip = int(p)
        p -= ip
        return (1 - p) * values[ip] + p * values[min(ip + 1, len(values) - 1)]

    top = s["top"] / n
    return {
        "ppl_q": math.exp(lq[0]), "ppl_q_se": math.exp(lq[0]) * lq[1], "ppl_fp": math.exp(lb[0]),
        "ln_ppl_ratio": lq[0] - lb[0], "ln_ppl_ratio_se": math.sqrt(lq[1] ** 2 + lb[1] ** 2 - 2 * cov),
        "cor": cov / (lq[1] * lb[1]), "kl_mean": kl[0], "kl_se": kl[1],
        "kl_p": {f: percentile(kld, f / 100) for f in (99.9, 99, 95, 90, 10, 5, 1, 0.1)},
        "kl_median": percentile(kld, 0.5), "dp_mean": dp[0], "dp_se": dp[1],
        "dp_p": {f: percentile(dps, f / 100) for f in (99.9, 99, 95, 90, 10, 5, 1, 0.1)},
        "dp_rms": math.sqrt(s["dp2"] / n), "top": top, "top_se": math.sqrt(top * (1 - top) / (n - 1)),
    }


def test_statistics_equal_llamacpps_formulas():
    rng = np.random.default_rng(3)
    n = 3001
    fp = rng.gamma(2.0, 1.5, n)
    q = fp + rng.normal(0.02, 0.1, n)
    kl, rev = rng.gamma(0.5, 0.01, n), rng.gamma(0.5, 0.012, n)
    top = rng.random(n) < 0.93
    got, ref = llamacpp_statistics(fp, q, kl, rev, top), llamacpp_transcription(q, fp, kl, top)
    approx = lambda x: pytest.approx(x, rel=1e-9, abs=1e-15)  # noqa: E731
    assert got["ppl_q"] == approx(ref["ppl_q"]) and got["ppl_q_se"] == approx(ref["ppl_q_se"])
    assert got["ppl_fp"] == approx(ref["ppl_fp"])
    assert got["ln_ppl_ratio"] == approx(ref["ln_ppl_ratio"])
    assert got["ln_ppl_ratio_se"] == pytest.approx(ref["ln_ppl_ratio_se"], rel=1e-6)  # difference of close sums
    assert got["logprob_correlation"] == pytest.approx(ref["cor"], rel=1e-6)
    assert got["kl"]["mean"] == approx(ref["kl_mean"]) and got["kl"]["se"] == approx(ref["kl_se"])
    assert got["kl"]["p50"] == approx(ref["kl_median"])
    for f, v in ref["kl_p"].items():
        assert got["kl"][f"p{f:g}"] == approx(v), f
    for f, v in ref["dp_p"].items():
        assert got["delta_p"][f"p{f:g}"] == approx(v), f
    assert got["delta_p"]["mean"] == approx(ref["dp_mean"]) and got["delta_p"]["se"] == approx(ref["dp_se"])
    assert got["delta_p"]["rms"] == approx(ref["dp_rms"])
    assert got["delta_p"]["sd"] == pytest.approx(np.std(np.exp(-q) - np.exp(-fp), ddof=1), rel=1e-12)
    assert got["same_top"] == approx(ref["top"]) and got["same_top_se"] == approx(ref["top_se"])
    assert got["kl_reverse"]["mean"] == approx(rev.mean()) and got["n_tokens"] == n


def test_reverse_kl_is_kl_of_q_from_p_in_float64():
    g = torch.Generator().manual_seed(0)
    z_fp = torch.randn(37, 300, generator=g) * 3
    z_q = z_fp + 0.05 * torch.randn(37, 300, generator=g)
    p = np.exp(z_fp.double().numpy() - np.logaddexp.reduce(z_fp.double().numpy(), axis=1, keepdims=True))
    q = np.exp(z_q.double().numpy() - np.logaddexp.reduce(z_q.double().numpy(), axis=1, keepdims=True))
    expected = (q * (np.log(q) - np.log(p))).sum(1)
    assert np.allclose(reverse_kl(z_fp, z_q, rows=5), expected, rtol=1e-9, atol=1e-15)


class _Logits(torch.nn.Module):
    """A 'model' whose logits at position t are a fixed table row of the token id: the scorer's view of a model."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = torch.nn.Parameter(table, requires_grad=False)

    def forward(self, input_ids):
        return type("Out", (), {"logits": self.table[input_ids]})()


class _Tok:
    bos_token_id, eos_token_id, is_fast = 0, 0, True

    def __call__(self, text, add_special_tokens=False, return_offsets_mapping=True):
        ids = [1 + (ord(c) % 40) for c in text]
        return {"input_ids": ids, "offset_mapping": [(i, i + 1) for i in range(len(text))]}


def test_the_observer_sees_every_scored_token_once():
    g = torch.Generator().manual_seed(1)
    table = torch.randn(41, 41, generator=g)
    fp, q = _Logits(table), _Logits(table + 0.1 * torch.randn(41, 41, generator=g))
    text = "".join(chr(97 + int(i)) for i in torch.randint(0, 26, (300,), generator=g))
    tokens = build_eval_tokens(text, _Tok(), resolve_protocol("llama.cpp", {"context_length": 16}))
    reverse = ReverseKL(tokens.n_targets)
    _, scores = score_together(fp, {"q": q}, tokens, torch.device("cpu"), batch_size=3, on_logits=reverse)
    inputs = torch.cat([inp[first : first + n] for inp, first, n in tokens.windows])
    assert np.allclose(reverse.values["q"], reverse_kl(table[inputs], q.table[inputs]), rtol=1e-12)
    assert np.isfinite(scores["q"].kl).all()


def test_llamacpp_preset_is_its_chunking():
    """perplexity.cpp: tokens = [BOS] + text; chunk i = tokens[i n_ctx, (i+1) n_ctx) with its first token set to
    BOS; scored: tokens[start + n_ctx/2 + 1 .. start + n_ctx - 1], predicted from positions n_ctx/2 .. n_ctx - 2."""
    n_ctx, n = 16, 16 * 5 + 7
    plans = plan_windows(n, n_ctx, n_ctx, last_logit=False, drop_last=True, score_from="second_half")
    assert [(p.start, p.end, p.t_lo, p.t_hi) for p in plans] == [
        (i * n_ctx, (i + 1) * n_ctx, i * n_ctx + n_ctx // 2 + 1, (i + 1) * n_ctx) for i in range(5)]
    text = "".join(chr(97 + (7 * i) % 26) for i in range(n - 1))
    tokens = build_eval_tokens(text, _Tok(), resolve_protocol("llama.cpp", {"context_length": n_ctx}))
    ids = [0] + _Tok()(text)["input_ids"]
    assert len(tokens.windows) == 5 and tokens.n_targets == 5 * (n_ctx - 1 - n_ctx // 2)
    for i, (inp, first, count) in enumerate(tokens.windows):
        assert inp.tolist() == [0] + ids[i * n_ctx + 1 : (i + 1) * n_ctx]
        assert (first, count) == (n_ctx // 2, n_ctx - 1 - n_ctx // 2)
    expected = [t for i in range(5) for t in ids[i * n_ctx + n_ctx // 2 + 1 : (i + 1) * n_ctx]]
    assert tokens.targets.tolist() == expected


def test_protocols_without_the_new_fields_keep_their_hash():
    """Cells computed before window_bos / score_from existed keep their keys: at their defaults the fields are
    left out of the hashed material."""
    import hashlib
    import json

    from qsens.metrics.protocol import METRICS_VERSION

    for preset in ("qsens", "gptq", "lm-eval"):
        p = resolve_protocol(preset, {})
        fields = p.model_dump(exclude={"batch_size", *LATER_DEFAULTS})
        fields["stride"] = p.stride if p.context_length == "model" else p.effective_stride
        fields["metrics_version"] = METRICS_VERSION
        old = hashlib.sha256(json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]
        assert p.hash() == old, preset
    assert resolve_protocol("llama.cpp", {}).hash() != resolve_protocol(
        "llama.cpp", {"window_bos": False}).hash()
    assert set(PRESETS["llama.cpp"]) >= {"window_bos", "score_from", "drop_last", "prefix"}


@pytest.mark.parametrize("kw", [dict(score_from="second_half", drop_last=False),
                                dict(score_from="second_half", drop_last=True, context_length=16, stride=8)])
def test_second_half_needs_llamacpps_full_chunks(kw):
    with pytest.raises(ValueError, match="second_half"):
        Protocol(**kw)
