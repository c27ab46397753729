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
    benchmark.pedantic(_sync(lambda: dst.copy_(weight)), rounds=10, warmup_rounds=1)


def test_bench_reference_fake_quant(benchmark, weight):
    benchmark.pedantic(_sync(lambda: rtn_fake_quantize(weight, 4, 128, False)), rounds=3, warmup_rounds=1)


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


def test_bench_command_rejects_bad_size():
    with pytest.raises(SystemExit):
        qsens_main(["bench", "kernel", "--sizes", "4096by4096"])
