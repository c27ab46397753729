"""The benches' measuring parts: interleaved rounds (order, clocks, per-round ratios) and the matmul limit (every
route computes the same product as a float64 reference; FLOPs against the closed form 2 M K N)."""

import time

import pytest
import torch

from qsens.bench import peak, timing
from qsens.testbed.standins import REPO

MICRO = REPO / "checkpoints/micro/s64/cosine/s64-cosine-d008.000M"


def test_rounds_reverse_the_order_and_keep_both_clocks():
    calls = []
    steps = {"spin": lambda: calls.append("spin") or sum(range(200_000)),
             "sleep": lambda: calls.append("sleep") or time.sleep(0.05)}
    r = timing.interleave(steps, rounds=3, warmup=True)
    assert calls == ["spin", "sleep"] + ["spin", "sleep", "sleep", "spin", "spin", "sleep"]
    assert r.orders == [["spin", "sleep"], ["sleep", "spin"], ["spin", "sleep"]]
    assert len(r.load) == 3 and all(len(v) == 3 for v in (*r.cpu.values(), *r.wall.values()))
    # sleeping takes wall time but (almost) no CPU time: the CPU clock is the step's own work
    assert all(w >= 0.05 for w in r.wall["sleep"]) and all(c < 0.5 * w for c, w in zip(r.cpu["sleep"], r.wall["sleep"]))
    fig = r.figure(lambda s: s["spin"] / s["sleep"])
    for clock, secs in (("cpu", r.cpu), ("wall", r.wall)):
        per = [a / b for a, b in zip(secs["spin"], secs["sleep"])]
        assert fig[clock]["rounds"] == pytest.approx(per, rel=1e-3)
        assert fig[clock]["median"] == pytest.approx(sorted(per)[1])
    with pytest.raises(ValueError, match="rounds"):
        timing.interleave(steps, rounds=0)


@pytest.mark.parametrize("route", sorted(peak.routes_for(torch.device("cpu"), torch.float32)))
def test_every_cpu_route_computes_the_linear_layer(route):
    g = torch.Generator().manual_seed(1)
    m, k, n = 37, 96, 200
    x, w, b = torch.randn(m, k, generator=g), torch.randn(n, k, generator=g), torch.randn(n, generator=g)
    fn = peak.routes_for(torch.device("cpu"), torch.float32)[route](w, b, m)
    ref = x.double() @ w.double().T + b.double()
    torch.testing.assert_close(fn(x).double(), ref, rtol=1e-4, atol=1e-4)


def test_flops_and_limit_of_the_micro_model():
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(MICRO).eval()
    shapes = peak.linear_shapes(model)
    c = model.config
    d, f, layers, V = c.hidden_size, c.intermediate_size, c.num_hidden_layers, c.vocab_size
    assert c.model_type == "llama" and c.num_key_value_heads == c.num_attention_heads
    # Llama: q, k, v, o (d -> d), gate and up (d -> f), down (f -> d) per layer; the (tied) head d -> V
    assert shapes == {(d, d): 4 * layers, (d, f): 2 * layers, (f, d): layers, (d, V): 1}
    ids = torch.zeros(2, 16, dtype=torch.long)
    per_token = sum(k * n * cnt for (k, n), cnt in shapes.items())
    flops = peak.forward_flops(model, ids)
    assert flops["total"] >= 2 * ids.numel() * per_token  # every linear layer's 2 M K N, attention on top if counted
    assert flops["total"] <= 2 * ids.numel() * per_token + 4 * 2 * 16 * 16 * d * layers
    lim = peak.matmul_peak({(d, 3 * d): 2, (d, V): 1}, rows=64, device=torch.device("cpu"), repeats=1)
    assert {(p["in"], p["out"]) for p in lim["per_shape"]} == {(d, 3 * d), (d, V)}
    total = 2 * 64 * (2 * d * 3 * d + d * V)
    for route, rate in lim["rate_by_route"].items():  # a route's rate is total FLOPs over its summed seconds
        secs = sum(2 * 64 * p["in"] * p["out"] * p["layers"] / p["rates"][route] for p in lim["per_shape"])
        assert rate == pytest.approx(total / secs, rel=1e-9)
        assert lim["best_rate"] >= rate * (1 - 1e-9)  # the best per shape is at least any one route
