"""Benchmarks of the RTN kernel (pytest-benchmark) and the `qsens bench kernel` command.

On CPU the reference and the copy run on small sizes (the kernel columns say "n/a (no CUDA)"); on a GPU
the kernel is timed too. The full table comes from `qsens bench kernel --out cuda/BENCHMARKS.md`.
"""

from __future__ import annotations

import json

import pytest
import torch

from qsens.cli import main as qsens_main
from qsens.quantizers import rtn_kernel
from qsens.quantizers.rtn_reference import rtn_fake_quantize

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
SHAPE = (4096, 4096) if DEVICE.type == "cuda" else (256, 1024)


@pytest.fixture(scope="module")
def weight() -> torch.Tensor:
    return (torch.randn(*SHAPE, generator=torch.Generator().manual_seed(0)) * 0.02).to(torch.float16).to(DEVICE)


def _sync(fn):
    def run():
        out = fn()
        if DEVICE.type == "cuda":
            torch.cuda.synchronize()
        return out

    return run


def test_bench_copy(benchmark, weight):
    dst = torch.empty_like(weight)
    out = benchmark.pedantic(_sync(lambda: dst.copy_(weight)), rounds=10, warmup_rounds=1)
    assert torch.equal(out, weight)  # the baseline the kernel is compared with does the whole copy


def test_bench_reference_fake_quant(benchmark, weight):
    out = benchmark.pedantic(_sync(lambda: rtn_fake_quantize(weight, 4, 128, False)), rounds=3, warmup_rounds=1)
    # What was timed is 4-bit asymmetric RTN in groups of 128, checked against its closed form in float64: at most
    # 16 levels per group, each weight within half a step (max − min) / 15 of its level, plus float16 rounding.
    w = weight.double().cpu().reshape(SHAPE[0], -1, 128)
    q = out.double().cpu().reshape(w.shape)
    half_step = (w.amax(-1) - w.amin(-1)) / 15 / 2
    fp16_rounding = w.abs().amax(-1) * 2.0**-10
    assert ((q - w).abs().amax(-1) <= half_step + fp16_rounding).all()
    assert max(len(torch.unique(group)) for group in q.reshape(-1, 128)[:64]) <= 16


@pytest.mark.gpu
@pytest.mark.skipif(DEVICE.type != "cuda", reason="needs a CUDA device")
def test_bench_kernel_fake_quant(benchmark, weight):
    ok, reason = rtn_kernel.kernel_status()
    assert ok, reason
    benchmark.pedantic(_sync(lambda: rtn_kernel.rtn_fake_quantize_kernel(weight, 4, 128, False)), rounds=20,
                       warmup_rounds=2)


def test_bench_command_writes_table_and_data(tmp_path, capsys):
    out = tmp_path / "BENCHMARKS.md"
    argv = ["bench", "kernel", "--sizes", "32x256", "--iters", "2", "--device", "cpu", "--out", str(out)]
    assert qsens_main(argv) == 0
    table = out.read_text()
    assert "| 32x256 |" in table and "n/a (no CUDA)" in table and "cpu:" in table
    data = json.loads(out.with_suffix(".json").read_text())
    (row,) = data["results"]
    assert row["rows"] == 32 and row["cols"] == 256 and row["copy_gbps"] > 0 and row["reference_gbps"] > 0
    assert row["kernel_fake_gbps"] is None and row["notes"]["kernel"] == "n/a (no CUDA)"
    assert row["inplace_gbps"] > 0 and "| in place GB/s |" in table


def test_bench_command_rejects_bad_size():
    with pytest.raises(SystemExit):
        qsens_main(["bench", "kernel", "--sizes", "4096by4096"])
