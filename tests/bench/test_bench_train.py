"""`qsens bench train`: its FLOP count against the model's own parameters, and one short run on a tiny spec."""

import pytest

from qsens.bench import train
from qsens.testbed.spec import load_ladder_spec
from qsens.testbed.trainer import build_training_model

from tests.conftest import write_tiny_spec

FAST = {"threads: 1": "threads: 1\ntrainer: fast"}


def test_step_flops_count_every_matrix_the_model_has_plus_attention(tmp_path):
    """6 T x (every weight matrix of FastLlama except the embedding, plus the tied head V x H) + 12 L B S^2 H."""
    spec = load_ladder_spec(write_tiny_spec(tmp_path, **FAST))
    size = spec.sizes[1]
    model = build_training_model(size, spec, 300, 0, seed=0)
    matrices = sum(p.numel() for name, p in model.named_parameters() if p.dim() == 2 and name != "embed")
    tokens = spec.batch_size * spec.sequence_length
    attention = 12 * size.layers * spec.batch_size * spec.sequence_length**2 * size.hidden
    want = 6 * tokens * (matrices + 300 * size.hidden) + attention
    assert train.step_flops(size.hidden, size.mlp, size.layers, 300, spec.batch_size, spec.sequence_length) == want
    assert len(train.gemms(size.hidden, size.mlp, size.layers, 300, tokens)) == 3 * (4 * size.layers + 1)


def test_a_short_run_reports_both_trainers_and_a_share_of_the_matmul_rate(tmp_path):
    spec_path = write_tiny_spec(tmp_path, **FAST)
    data = train.run(spec_path, ["h16"], steps=1, rounds=2)
    (row,) = data["sizes"]
    assert row["size"] == "h16" and len(row["cpu_seconds"]["hf"]) == len(row["cpu_seconds"]["fast"]) == 2
    assert row["tokens_per_cpu_s_fast"] > 0 and row["tokens_per_cpu_s_hf"] > 0
    assert row["speedup"] == pytest.approx(row["tokens_per_cpu_s_fast"] / row["tokens_per_cpu_s_hf"], rel=1e-2)
    # the rates are stored rounded to 0.01 GFLOP/s and the share to 0.001: their quotient differs from the share by
    # at most that rounding (a one-step tiny run on a loaded CI machine: 0.28 GFLOP/s, so 2%, not the 1% once allowed)
    fast, peak = row["fast_gflop_per_s"], row["matmul_gflop_per_s_same_shapes"]
    slack = 0.0005 + fast / peak * (0.005 / fast + 0.005 / peak)
    assert 0 < row["share_of_matmul_rate"] == pytest.approx(fast / peak, abs=slack)
    t = row["timing"]  # interleaved, the order reversed in the second round; the per-round speedup in CPU time
    assert t["orders"] == [["hf", "fast"], ["fast", "hf"]] and row["cpu_seconds"]["hf"] == [round(x, 3) for x in t["cpu"]["hf"]]
    per = [h / f for h, f in zip(t["cpu"]["hf"], t["cpu"]["fast"])]
    assert row["speedup_rounds"]["cpu"]["rounds"] == pytest.approx(per, rel=1e-3)
    assert "| h16 |" in train.to_markdown(data, "qsens bench train")
    with pytest.raises(ValueError, match=r"no size among \['h99'\] \(allowed: h16, h32\)"):
        train.run(spec_path, ["h99"])
