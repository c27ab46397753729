"""qsens.blas: which CPUs get MKL's Intel path, the shim built at first use, and equal losses on either route."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from qsens import blas

REPO = Path(__file__).resolve().parents[1]
ZEN5 = "vendor_id\t: AuthenticAMD\ncpu family\t: 26\nflags\t\t: fpu sse2 avx avx2 fma avx512f avx512bw\n"
ZEN3 = "vendor_id\t: AuthenticAMD\ncpu family\t: 25\nflags\t\t: fpu sse2 avx avx2 fma\n"
SAPPHIRE = "vendor_id\t: GenuineIntel\nflags\t\t: fpu sse2 avx avx2 fma avx512f amx_tile\n"


def test_the_shim_is_for_amd_cpus():
    assert blas.cpu_features(ZEN5) == ("AuthenticAMD", {"fpu", "sse2", "avx", "avx2", "fma", "avx512f", "avx512bw"})
    assert blas.shim_helps(ZEN5)
    assert blas.shim_helps(ZEN3)  # AVX2 on either path, but the Intel path's kernels measured faster
    assert not blas.shim_helps(SAPPHIRE)  # MKL already takes its Intel path
    assert not blas.shim_helps("")  # no /proc/cpuinfo (not Linux)
    # the route names the code path: an Intel CPU takes MKL's Intel path without the shim, an AMD one does not
    assert blas.native_intel_path(SAPPHIRE) == blas.torch_uses_mkl()
    assert not blas.native_intel_path(ZEN5) and not blas.native_intel_path("")


def test_an_unknown_qsens_blas_value_names_the_variable_and_the_choices(monkeypatch):
    monkeypatch.setenv("QSENS_BLAS", "fast")
    with pytest.raises(ValueError, match=r"QSENS_BLAS='fast': allowed values are auto, shim, off"):
        blas.wanted()
    monkeypatch.setenv("QSENS_BLAS", "off")
    assert not blas.wanted()


def test_the_shim_compiles_and_exports_the_one_symbol(tmp_path):
    import ctypes

    lib = blas.shim_library(tmp_path)
    assert lib is not None and lib.is_file(), "gcc is part of the test environment"
    assert ctypes.CDLL(str(lib)).mkl_serv_intel_cpu_true() == 1
    assert blas.shim_library(tmp_path) == lib  # cached: built once


def test_the_plain_environment_drops_only_the_shim_from_ld_preload(tmp_path):
    """Regression: `bench train --compare-blas` run with the shim loaded gave its 'default' child the shim too."""
    base = {"LD_PRELOAD": f"/lib/x.so {tmp_path}/mkl-intel-path-0123456789ab.so", "QSENS_BLAS": "shim",
            "QSENS_BLAS_REEXECUTED": "1", "HOME": "/h"}
    assert blas.plain_env(base) == {"LD_PRELOAD": "/lib/x.so", "QSENS_BLAS": "off", "HOME": "/h"}
    assert "LD_PRELOAD" not in blas.plain_env({"LD_PRELOAD": f"{tmp_path}/mkl-intel-path-0123456789ab.so"})


TRAIN_THREE_STEPS = """
import json, types, torch
from qsens import blas
route = blas.ensure()
from qsens.testbed.fastllama import FastLlama
torch.set_num_threads(1)
torch.manual_seed(0)
config = types.SimpleNamespace(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                               num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                               tie_word_embeddings=True, rms_norm_eps=1e-6, rope_parameters={"rope_theta": 1e4})
model = FastLlama(config)  # a config without transformers: the subprocess imports torch only
for p in model.parameters():
    torch.nn.init.normal_(p, std=0.02) if p.dim() == 2 else None
opt = torch.optim.AdamW(model.parameters(), lr=3e-3, fused=True)
data = torch.randint(0, 256, (3, 16, 65), generator=torch.Generator().manual_seed(1))
losses = []
for batch in data:
    loss = model.loss(batch[:, :-1], batch[:, 1:])
    opt.zero_grad(); loss.backward(); opt.step()
    losses.append(loss.item())
print(json.dumps({"route": route, "reported": blas.route(), "losses": losses}))
"""


def _run(choice: str, cache: Path) -> dict:
    env = dict(os.environ, QSENS_BLAS=choice, XDG_CACHE_HOME=str(cache), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-c", TRAIN_THREE_STEPS], env=env, capture_output=True, text=True,
                          timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not blas.torch_uses_mkl() or not sys.platform.startswith("linux"),
                    reason="the shim applies to torch builds with MKL on Linux")
def test_a_process_reexecuted_with_the_shim_trains_to_the_same_losses(tmp_path):
    """QSENS_BLAS=shim re-executes the process with the shim preloaded (reported as the route); the losses of
    three steps equal those of the default route to rounding (the same products, other kernels)."""
    shim, plain = _run("shim", tmp_path), _run("off", tmp_path)
    assert shim["route"] == shim["reported"] == "mkl-intel-path"
    assert plain["route"] == plain["reported"] == (blas.INTEL_PATH if blas.native_intel_path() else blas.DEFAULT)
    assert shim["losses"] == pytest.approx(plain["losses"], rel=1e-5)
    assert plain["losses"][0] == pytest.approx(5.545, abs=0.05)  # ln 256: near-uniform start, a real run
