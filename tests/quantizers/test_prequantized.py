"""Pre-quantized artifacts scored against their parent through a suite: a GGUF file (written here with gguf's
GGUFWriter as convert_hf_to_gguf + llama-quantize lay it out: Q/K rows permuted, Q8_0 blocks, F16 where the rows
do not fit, F32 norms) and a GPTQ HF folder (quantized here by gptqmodel). With the right parent the cell's KL
equals a float64 KL computed here from the weights rebuilt independently; with a deliberately wrong parent (a
less trained checkpoint of the same shapes) it is large, so what is scored is the artifact's weights."""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")

from qsens.quantizers import prequantized  # noqa: E402
from qsens.runner.loop import run_suite  # noqa: E402
from qsens.store import ResultStore  # noqa: E402
from qsens.suites.load import SuiteError, load_suite  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
H32 = REPO / "checkpoints/gutenberg/h32/s0"
PARENT = H32 / "wsd-f0.4/h32-s0-wsd-f0.4-d033.554M"
WRONG = H32 / "stable/h32-s0-stable-d003.355M"
EVAL = REPO / "tests/fixtures/llamacpp/eval.txt"
N_TOKENS, CTX = 1024, 128
HAS_GPTQMODEL = importlib.util.find_spec("gptqmodel") is not None


def _load(path: Path) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf LlamaModel.permute (llama.cpp's RoPE row order)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_names(n_layers: int) -> dict[str, str]:
    """HF Llama parameter -> GGUF tensor name, written out (llama.cpp's tensor naming)."""
    out = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight"}
    parts = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
    for i in range(n_layers):
        out.update({f"model.layers.{i}.{hf}.weight": f"blk.{i}.{g}.weight" for hf, g in parts.items()})
    return out


def write_gguf(model: torch.nn.Module, path: Path) -> dict[str, np.ndarray]:
    """Write `model` as a Q8_0 GGUF; returns the float32 weights it holds, in HF names and layout."""
    cfg = model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    held = {}
    for hf, name in gguf_names(cfg.num_hidden_layers).items():
        w = model.get_parameter(hf).detach().numpy()
        stored = permute(w, cfg.num_attention_heads) if "attn_q" in name or "attn_k" in name else w
        if w.ndim == 1:
            writer.add_tensor(name, stored)
            held[hf] = w
        elif w.shape[1] % 32:
            writer.add_tensor(name, stored.astype(np.float16))
            held[hf] = w.astype(np.float16).astype(np.float32)
        else:
            kind = gguf.GGMLQuantizationType.Q8_0
            writer.add_tensor(name, gguf.quants.quantize(stored, kind), raw_dtype=kind)
            held[hf] = gguf.quants.dequantize(gguf.quants.quantize(w, kind), kind)  # blocks are within rows
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return held


def write_gptq_folder(parent: torch.nn.Module, folder: Path) -> None:
    """gptqmodel 4-bit, group 16 (divides every width of h32) on 16 training windows, saved to `folder`."""
    from transformers import AutoTokenizer

    from qsens.metrics.text import read_text
    from qsens.quantizers import gptq
    from qsens.quantizers.base import QuantContext

    tok = AutoTokenizer.from_pretrained(PARENT)
    ids = tok(read_text(REPO / "data/gutenberg/train-00.txt.gz")[:60000], add_special_tokens=False)["input_ids"]
    calib = torch.tensor(ids[: 16 * 128]).reshape(16, 128)
    settings = gptq.Settings(bits=4, group_size=16, symmetric=False, calibration_samples=16, calibration_length=128)
    ctx = QuantContext(parent, tok, torch.device("cpu"), 0, checkpoint_dir=str(PARENT))
    with gptq.gptqmodel_environment():
        gptq._quantize_and_reload(ctx, settings, calib, folder.parent)
    assert (folder / "config.json").is_file()


def gptq_weights(folder: Path, parent: torch.nn.Module) -> dict[str, np.ndarray]:
    """The folder's weights: packed Linears through gptqmodel's own dequantize_weight, the rest read from its
    safetensors."""
    from safetensors import safe_open

    from qsens.quantizers import gptq

    held = {}
    with safe_open(str(next(folder.glob("*.safetensors"))), "pt") as f:
        for name in f.keys():
            held[name] = f.get_tensor(name).float().numpy()
    with gptq.gptqmodel_environment():
        from gptqmodel import BACKEND, GPTQModel
        from gptqmodel.nn_modules.qlinear import BaseQuantLinear

        loaded = GPTQModel.load(str(folder), device="cpu", dtype=torch.float16, backend=BACKEND.GPTQ_TORCH)
        for name, m in loaded.model.named_modules():
            if isinstance(m, BaseQuantLinear):
                held[f"{name}.weight"] = m.dequantize_weight().T.float().numpy()
    return {n: held[n] for n, _ in parent.named_parameters()}


def independent_kl(parent: torch.nn.Module, weights: dict[str, np.ndarray]) -> float:
    """Mean KL(parent || artifact) over the suite's windows (qsens preset: 128-token windows, the first token of
    each context only), float64 softmaxes of float32 logits."""
    from transformers import AutoTokenizer

    model = copy.deepcopy(parent)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.from_numpy(weights[name]))
    ids = AutoTokenizer.from_pretrained(PARENT)(EVAL.read_text(), add_special_tokens=False)["input_ids"][:N_TOKENS]
    x = torch.tensor(ids).reshape(-1, CTX)
    with torch.no_grad():
        lp = torch.log_softmax(parent(input_ids=x).logits[:, :-1].double(), -1)
        lq = torch.log_softmax(model(input_ids=x).logits[:, :-1].double(), -1)
    return float((lp.exp() * (lp - lq)).sum(-1).mean())


def write_suite(tmp: Path, artifacts: list[tuple[str, Path, str]]) -> Path:
    entries = "\n".join(f"  - {{method: prequantized, format: {fmt}, path: {p}, parent: {parent}}}"
                        for fmt, p, parent in artifacts)
    path = tmp / "suite.yaml"
    path.write_text(textwrap.dedent(f"""\
        name: prequantized
        device: cpu
        families:
          - name: h32
            n_params: 1
            checkpoints:
              - {{name: right, path: {PARENT}, tokens: 33554432}}
              - {{name: wrong, path: {WRONG}, tokens: 3355443}}
        quantizers:
        """) + entries + textwrap.dedent(f"""
        evals:
          - {{name: excerpt, path: {EVAL}, preset: qsens, protocol: {{context_length: {CTX}, max_tokens: {N_TOKENS}}}}}
        metrics: [delta_loss, ppl_ratio, kl, top1_agree, bits_per_byte, llamacpp]
        bootstrap: {{samples: 100}}
        """))
    return path


def _score(tmp: Path, artifacts: list[tuple[str, Path, str]]):
    suite = load_suite(write_suite(tmp, artifacts))
    summary = run_suite(suite, tmp / "res", progress=False)
    assert summary.planned == len(artifacts)  # each artifact is scored on its parent only
    return {c["checkpoint"]: c for c in ResultStore(tmp / "res").cells()}, suite


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """The GGUF file scored on its right and on a wrong parent (one suite run), and the independent KL."""
    tmp = tmp_path_factory.mktemp("prequantized")
    parent = _load(PARENT)
    held = write_gguf(parent, tmp / "model-q8_0.gguf")
    cells, suite = _score(tmp, [("gguf", tmp / "model-q8_0.gguf", "right"), ("gguf", tmp / "model-q8_0.gguf", "h32/wrong")])
    return cells, independent_kl(parent, held), suite


def check_right_and_wrong(cells: dict, expected_kl: float) -> None:
    right, wrong = cells["right"], cells["wrong"]
    assert right["status"] == wrong["status"] == "ok", (right["error"], wrong["error"])
    # the scorer's KL: float64 sums of float32 logit differences; here float64 log-softmaxes of the same logits
    assert right["kl_mean"] == pytest.approx(expected_kl, rel=1e-4)
    assert wrong["kl_mean"] > max(10 * right["kl_mean"], 0.1)
    assert right["n_tokens"] == N_TOKENS // CTX * (CTX - 1)
    stats = json.loads(right["stats_json"])
    assert stats["kl"]["mean"] == pytest.approx(right["kl_mean"], rel=1e-9)
    assert stats["ppl_q"] == pytest.approx(right["q_ppl"], rel=1e-9)
    assert stats["kl_reverse"]["mean"] > 0 and 0.5 < stats["same_top"] <= 1


def test_gguf_right_parent_kl_equals_an_independent_one_and_a_wrong_parent_is_far(scored):
    cells, expected, _ = scored
    check_right_and_wrong(cells, expected)


@pytest.mark.heavy
@pytest.mark.skipif(not HAS_GPTQMODEL, reason="needs the 'gptq' extra")
@pytest.mark.skipif(os.environ.get("QSENS_HEAVY") != "full",
                    reason="gptqmodel's import and quantization: QSENS_HEAVY=full (CI runs the GGUF artifact above)")
def test_gptq_folder_right_parent_kl_equals_an_independent_one_and_a_wrong_parent_is_far(tmp_path):
    """Measured on the shared 2-core machine under load 15: 7 min (gptqmodel import and quantization); KL with the
    right parent 0.0445 (4-bit, group 16, 16 calibration windows), with the wrong one 0.616."""
    parent = _load(PARENT)
    write_gptq_folder(parent, tmp_path / "quantized")
    expected = independent_kl(parent, gptq_weights(tmp_path / "quantized", parent))
    cells, _ = _score(tmp_path, [("hf", tmp_path / "quantized", "h32/right"), ("hf", tmp_path / "quantized", "wrong")])
    check_right_and_wrong(cells, expected)
    assert cells["right"]["bits"] == 4 and "gptqmodel" in cells["right"]["backend"]


def test_what_is_recorded(scored):
    cells, _, suite = scored
    gguf_cell = cells["right"]
    details = json.loads(gguf_cell["details_json"])
    assert details["tensor_types"] == {"F32": 9, "Q8_0": 25, "F16": 4}  # 4 layers x (2 norms | 6 | down) + 2
    assert gguf_cell["bits"] == 8 and gguf_cell["backend"].startswith("gguf-0.19")
    n8, n16 = 32 * 2048 + 4 * (4 * 32 * 32 + 2 * 80 * 32), 4 * 32 * 80
    assert gguf_cell["effective_bits"] == pytest.approx((n8 * 8.5 + n16 * 16) / (n8 + n16))
    setting = next(s for s in suite.quantizers if s.format == "gguf")
    assert Path(setting.artifact).is_absolute() and Path(setting.artifact).is_file() and len(setting.digest) == 64


def test_the_same_artifact_keeps_its_cell_keys_in_another_folder(tmp_path):
    """The key holds the path as the suite wrote it and the artifact's sha256, not where the repository lies."""
    import shutil

    from qsens.runner.plan import plan_cells

    keys = []
    for where in (tmp_path / "a", tmp_path / "b" / "deeper"):
        (where / "art").mkdir(parents=True)
        shutil.copyfile(REPO / "tests/fixtures/llamacpp/model-Q8_0.gguf", where / "art/model.gguf")
        suite = load_suite(write_suite(where, [("gguf", Path("art/model.gguf"), "right")]))
        assert suite.quantizers[0].artifact == str((where / "art/model.gguf").resolve())
        keys.append([c.key for c in plan_cells(suite)])
    assert keys[0] == keys[1] and len(keys[0]) == 1
    (tmp_path / "b/deeper/art/model.gguf").write_bytes((REPO / "tests/fixtures/llamacpp/model-Q4_0.gguf").read_bytes())
    other = [c.key for c in plan_cells(load_suite(write_suite(tmp_path / "b/deeper", [("gguf", Path("art/model.gguf"), "right")])))]
    assert other != keys[0]  # another file under the same name is another cell


def _tiny_gguf(path: Path, arch: str) -> Path:
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_tensor("token_embd.weight", np.zeros((4, 32), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_suite_errors_name_the_artifact_and_the_parent(tmp_path):
    (tmp_path / "x.gguf").write_bytes(b"not a gguf file")
    with pytest.raises(SuiteError) as err:
        load_suite(write_suite(tmp_path, [("gguf", tmp_path / "missing.gguf", "right"),
                                          ("hf", tmp_path, "right"),
                                          ("gguf", tmp_path / "x.gguf", "right"),
                                          ("gguf", _tiny_gguf(tmp_path / "ok.gguf", "llama"), "nobody")]))
    text = str(err.value)
    assert "GGUF file not found" in text and "no config.json" in text and "parent 'nobody'" in text
    assert f"{tmp_path / 'x.gguf'} is not a readable gguf artifact" in text
    assert "h32/right" in text  # the allowed parents are listed


def test_unsupported_architecture_is_refused(tmp_path):
    with pytest.raises(ValueError, match="gptneox.*not supported"):
        prequantized.gguf_state(str(_tiny_gguf(tmp_path / "neox.gguf", "gptneox")), _load(PARENT))
