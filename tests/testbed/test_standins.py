"""Real-shape stand-ins through every quantizer: Pythia-160M widths, vocabulary 50,304, hub module names.

Reduced (CI): one layer of the real width, a 2,048-token BPE, 256 scored tokens, GPTQ at 3 bits only. QSENS_HEAVY=full: all 12
layers of Pythia-160M and 2 layers of OLMo-2 1B (vocabulary 100,352) with the real-size tokenizer.
"""

import json
import os
import textwrap

import pytest
from safetensors import safe_open

from qsens.runner.loop import run_suite
from qsens.testbed.standins import REPO, SHAPES, build_standin, non_embedding_params
from qsens.store import ResultStore
from qsens.suites.load import load_suite

FULL = os.environ.get("QSENS_HEAVY") == "full"
GPTQ_BITS = "[2, 3, 4]" if FULL else "3"  # reduced: 3-bit, whose packing is the fragile one (see gpucheck.py)
QUANTIZERS = """
  - {method: rtn, bits: 4, group_size: 128, skip: [lm_head, embed_out]}
  - {method: gptq, bits: GPTQ_BITS, group_size: 128, calibration_samples: 8, calibration_length: 64, skip: [lm_head, embed_out]}
  - {method: bnb, quant_type: [nf4, fp4], blocksize: 64, compute_dtype: float32, skip: [lm_head, embed_out]}
  - {method: noise, magnitude: 0.05, skip: [lm_head, embed_out]}
"""


def test_published_non_embedding_counts():
    """The Pythia paper's N (Table 1): 85,056,000, 302,311,424 and 805,736,448, recounted from the hand-written
    configs."""
    assert non_embedding_params(SHAPES["pythia-160m"]) == 85_056_000
    assert non_embedding_params(SHAPES["pythia-410m"]) == 302_311_424
    assert non_embedding_params(SHAPES["pythia-1b"]) == 805_736_448


@pytest.mark.heavy
@pytest.mark.parametrize("shape,layers", [("pythia-160m", 12 if FULL else 1)]
                         + ([("olmo2-1b", 2)] if FULL else []))
def test_standin_suite_runs_every_quantizer(tmp_path, shape, layers):
    pytest.importorskip("gptqmodel")
    pytest.importorskip("bitsandbytes")
    ckpt = build_standin(shape, tmp_path / shape, layers=layers, tokenizer_vocab=None if FULL else 2048,
                         tokenizer_cache=tmp_path.parent / f"qsens-standin-tok-{'full' if FULL else 2048}")
    with safe_open(ckpt / "model.safetensors", "pt") as f:  # the hub's tensor names, untied head
        head = "embed_out.weight" if shape.startswith("pythia") else "lm_head.weight"
        assert head in f.keys()
    n = json.loads((ckpt / "standin.json").read_text())["n_params"]
    (tmp_path / "suite.yaml").write_text(textwrap.dedent(f"""
        name: standin
        seed: 0
        device: cpu
        families:
          - name: {shape}
            checkpoints: [{{path: {ckpt}, n_params: {n}, tokens: 1000000}}]
        quantizers:
        """) + QUANTIZERS.replace("GPTQ_BITS", GPTQ_BITS) + textwrap.dedent(f"""
        evals:
          - {{name: novels, path: {REPO}/data/eval/heldout-novels.txt.gz, protocol: {{context_length: 64, max_tokens: {4096 if FULL else 256}}}}}
        calibration: {{path: {REPO}/data/novels/TomJones.txt.gz}}
        bootstrap: {{samples: 100}}
        """))
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")
    summary = run_suite(load_suite(tmp_path / "suite.yaml"), tmp_path / "res", progress=False)
    cells = {c["quantizer"]: c for c in ResultStore(tmp_path / "res").cells()}
    errors = {q: c["error"][:300] for q, c in cells.items() if c["status"] != "ok"}
    assert not errors and summary.computed == (7 if FULL else 5)
    per_layer = 7 if shape.startswith("olmo") else 4  # q/k/v/o + 3 MLP (OLMo-2); qkv, dense, 2 MLP (NeoX)
    for q, c in cells.items():
        layers_done = json.loads(c["details_json"])["layers"]
        assert not any(name.endswith(("lm_head", "embed_out")) for name in layers_done), q  # head stays fp
        assert c["layers_quantized"] == layers * per_layer, (q, layers_done)
        assert c["peak_rss_bytes"] > 0 and c["temp_disk_bytes"] is not None
        assert c["kl_mean"] > 0 and c["n_tokens"] > 0
    gptq = {cells[q]["bits"]: cells[q]["kl_mean"] for q in cells if q.startswith("gptq")}
    if FULL:
        assert gptq[2] > gptq[4]
