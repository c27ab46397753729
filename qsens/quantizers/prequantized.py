"""A checkpoint someone already quantized, scored against its full-precision parent on the same tokens.

Suite syntax (a quantizer entry; the parent is a checkpoint of the suite, which is the fp model of the cell):

    quantizers:
      - {method: prequantized, format: gguf, path: ../artifacts/model-Q4_0.gguf, parent: my-family/ckpt-name}
      - {method: prequantized, format: hf, path: ../artifacts/model-gptq-4bit, parent: ckpt-name}

`path` is relative to the suite file; `parent` is `family/checkpoint` or a checkpoint name, and the setting is
scored on that checkpoint only (`pairs_with`). The suite loader fingerprints the artifact (`digest`, part of the
cell key) and reads its nominal `bits` (GGUF: the most common type of its matrices; HF: quantization_config.bits).

What is scored is the artifact's weights, every one of them: a copy of the parent whose every parameter is
replaced by the artifact's, so a parent that is not the artifact's shows as a large KL (tests check it).
  gguf: read with the gguf package's GGUFReader, each tensor dequantized by `gguf.quants.dequantize` (every type
      it reads, K-quants and i-quants included), GGUF names mapped back to the parent's HF names with
      gguf's TensorNameMap; Llama's Q/K rows un-permuted (convert_hf_to_gguf permutes them for llama.cpp's RoPE).
      Architectures: llama only (others have their own conversions of fused tensors), refused otherwise.
  hf: an HF folder whose config.json has a GPTQ or AWQ `quantization_config`, loaded with gptqmodel on CPU
      (portable torch kernel); quantized Linears are gptqmodel's `dequantize_weight` of the packed codes, the
      other parameters the folder's own (float16 as stored), as `qsens.quantizers.gptq` reads its own output.
effective_bits: stored bits of the quantized matrices (codes, scales, zeros) per weight.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import time
from collections import Counter
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import torch
from pydantic import Field, PrivateAttr

from qsens.quantizers.base import QuantContext, QuantResult, QuantSettings
from qsens.quantizers.layers import peak_memory_bytes

GGUF_ARCHS = ("llama",)


class Settings(QuantSettings):
    method: Literal["prequantized"] = "prequantized"
    format: Literal["gguf", "hf"]
    path: str = Field(description="the artifact (GGUF file, or HF folder), relative to the suite file")
    parent: str = Field(description="the full-precision checkpoint it was made from: 'family/name' or 'name'")
    bits: int = 0  # read from the artifact by `bind`
    digest: str | None = Field(None, description="sha256 of the artifact, filled in by the suite loader")
    skip: tuple[str, ...] = ()
    supports_layer_sets: ClassVar[bool] = False  # the artifact's layers were chosen when it was made
    # The artifact's absolute location, set by `bind`. Not a field: the cell key holds `path` as the suite wrote it
    # and the artifact's sha256, so the same artifact keeps its cells when the repository moves.
    _resolved: str | None = PrivateAttr(None)

    group_size_field = None

    def label(self) -> str:
        return f"pre-{self.format}-{Path(self.path).name}@{self.parent}"

    @property
    def libraries(self) -> tuple[str, ...]:  # type: ignore[override]
        """The library that dequantizes the artifact, whose version is part of the cell key (runner.plan)."""
        return ("gguf",) if self.format == "gguf" else ("gptqmodel",)

    def pairs_with(self, family: str, checkpoint: str) -> bool:
        return self.parent in (checkpoint, f"{family}/{checkpoint}")

    def bind(self, suite_dir) -> "Settings":
        path = (Path(suite_dir) / self.path).resolve()
        if self.format == "gguf" and not path.is_file():
            raise ValueError(f"path: GGUF file not found: {path}")
        if self.format == "hf" and not (path / "config.json").is_file():
            raise ValueError(f"path: no config.json in HF folder {path}")
        digest = artifact_digest(path)
        if self.digest not in (None, digest):
            raise ValueError(f"digest: {path} has sha256 {digest}, not the {self.digest} the suite states")
        try:
            bits = gguf_nominal_bits(path) if self.format == "gguf" else hf_quantization_config(path)[1]
        except (ValueError, KeyError, IndexError, OSError, json.JSONDecodeError) as exc:
            if isinstance(exc, ValueError) and str(exc).startswith("path:"):
                raise
            raise ValueError(f"path: {path} is not a readable {self.format} artifact: {exc}") from None
        if self.bits not in (0, bits):
            raise ValueError(f"bits: the artifact says {bits}, not {self.bits}; omit bits")
        bound = self.model_copy(update={"digest": digest, "bits": bits})
        bound._resolved = str(path)
        return bound

    @property
    def artifact(self) -> str:
        """The artifact's location: as resolved by `bind` (the suite loader), else `path` itself."""
        return self._resolved or self.path


def artifact_digest(path: Path) -> str:
    """sha256 over a file, or over a folder's files (relative names and contents, sorted)."""
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        h.update(str(f.relative_to(path) if f != path else f.name).encode() + b"\0")
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def hf_quantization_config(folder: Path) -> tuple[str, int]:
    """(quant_method, bits) of an HF folder's config.json `quantization_config`; ValueError if it has none."""
    config = json.loads((folder / "config.json").read_text())
    qc = config.get("quantization_config")
    if not isinstance(qc, dict) or qc.get("quant_method") not in ("gptq", "awq") or not isinstance(qc.get("bits"), int):
        raise ValueError(f"path: {folder}/config.json has no GPTQ/AWQ quantization_config with integer bits "
                         f"(got {str(qc)[:120]})")
    return qc["quant_method"], qc["bits"]


def _type_bits(type_name: str) -> int:
    """Nominal bits of a ggml type name: Q4_0 -> 4, Q6_K -> 6, IQ4_XS -> 4, F16 -> 16, MXFP4 -> 4."""
    match = re.search(r"(\d+)", type_name.replace("MXFP", "Q").replace("NVFP", "Q"))
    return int(match.group(1)) if match else 32


def gguf_nominal_bits(path: Path) -> int:
    """The nominal bits of the type most of a GGUF file's matrix elements are stored in."""
    from gguf import GGUFReader

    counts = Counter()
    for t in GGUFReader(str(path)).tensors:
        if len(t.shape) == 2:
            counts[t.tensor_type.name] += int(t.n_elements)
    return _type_bits(counts.most_common(1)[0][0])


def _field(reader, key: str):
    field = reader.get_field(key)
    if field is None:
        raise ValueError(f"GGUF file has no metadata key {key!r}")
    return field.contents()


def unpermute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of convert_hf_to_gguf's LlamaModel.permute on the rows of w [n_head * head_dim, ...]."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_state(path: str, parent: torch.nn.Module) -> tuple[dict[str, torch.Tensor], dict]:
    """The parent's parameters (HF names) as the GGUF file holds them, float32, and what was read.

    Raises ValueError naming the tensor when the file is not the parent's architecture or shapes differ."""
    import gguf

    reader = gguf.GGUFReader(path)
    arch = _field(reader, "general.architecture")
    if arch not in GGUF_ARCHS:
        raise ValueError(f"{path}: GGUF architecture {arch!r} is not supported (supported: {', '.join(GGUF_ARCHS)})")
    n_head, n_kv = int(_field(reader, f"{arch}.attention.head_count")), int(_field(reader, f"{arch}.attention.head_count_kv"))
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, int(_field(reader, f"{arch}.block_count")))
    tensors = {t.name: t for t in reader.tensors}
    state, types, used, bits, n_weights = {}, Counter(), set(), 0, 0
    for hf_name, param in parent.named_parameters():  # tied parameters appear once
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name not in tensors:
            raise ValueError(f"{path}: no tensor {gguf_name!r} for the parent's {hf_name} {tuple(param.shape)}")
        t = tensors[gguf_name]
        w = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(tuple(reversed(t.shape.tolist())))
        if gguf_name.endswith(("attn_q.weight", "attn_q.bias")):
            w = unpermute_rows(w, n_head)
        elif gguf_name.endswith(("attn_k.weight", "attn_k.bias")):
            w = unpermute_rows(w, n_kv)
        if w.shape != tuple(param.shape):
            raise ValueError(f"{path}: {gguf_name} has shape {w.shape}, the parent's {hf_name} {tuple(param.shape)}")
        state[hf_name] = torch.from_numpy(np.array(w, dtype=np.float32, order="C"))
        used.add(gguf_name)
        types[t.tensor_type.name] += 1
        if w.ndim == 2:
            bits, n_weights = bits + 8 * int(t.n_bytes), n_weights + w.size
    unused = sorted(set(tensors) - used - {"rope_freqs.weight"})
    if unused:
        raise ValueError(f"{path}: tensors the parent has no parameter for: {unused[:8]}")
    return state, {"tensor_types": dict(types), "matrix_bits": bits / max(n_weights, 1), "architecture": arch}


def hf_state(path: str, parent: torch.nn.Module) -> tuple[dict[str, torch.Tensor], dict]:
    """The parent's parameters as a GPTQ/AWQ HF folder holds them (gptqmodel dequantizes the packed Linears)."""
    from qsens.quantizers.gptq import gptqmodel_environment

    quant_method, bits = hf_quantization_config(Path(path))
    with gptqmodel_environment():
        from gptqmodel import BACKEND, GPTQModel, __version__
        from gptqmodel.nn_modules.qlinear import BaseQuantLinear

        backend = BACKEND.GPTQ_TORCH if quant_method == "gptq" else BACKEND.AUTO
        loaded = GPTQModel.load(path, device="cpu", dtype=torch.float16, backend=backend)
        qlinears = {n: m for n, m in loaded.model.named_modules() if isinstance(m, BaseQuantLinear)}
        held = dict(loaded.model.named_parameters())
        state = {}
        for hf_name, param in parent.named_parameters():
            module, _, leaf = hf_name.rpartition(".")
            if module in qlinears and leaf == "weight":
                w = qlinears[module].dequantize_weight().T  # gptqmodel returns [in, out]
            elif hf_name in held:
                w = held[hf_name]
            else:
                raise ValueError(f"{path}: holds no {hf_name} {tuple(param.shape)} of the parent")
            if tuple(w.shape) != tuple(param.shape):
                raise ValueError(f"{path}: {hf_name} has shape {tuple(w.shape)}, the parent's {tuple(param.shape)}")
            state[hf_name] = w.detach().float().cpu()
        kernels = sorted({type(m).__name__ for m in qlinears.values()})
        shapes = [(q.out_features, q.in_features, q.group_size) for q in qlinears.values()]
    n = sum(r * c for r, c, _ in shapes)
    matrix_bits = sum(r * c * (bits + (16 + bits) / (c if g in (-1, None) else g)) for r, c, g in shapes) / max(n, 1)
    return state, {"quant_method": quant_method, "kernels": kernels, "library": {"gptqmodel": __version__},
                   "quantized_linears": sorted(qlinears), "matrix_bits": matrix_bits}


def quantize(ctx: QuantContext, settings: Settings) -> QuantResult:
    start = time.perf_counter()
    read = gguf_state if settings.format == "gguf" else hf_state
    state, details = read(settings.artifact, ctx.fp_model)
    model = copy.deepcopy(ctx.fp_model)
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.copy_(state[name].to(device=param.device, dtype=param.dtype))
    if settings.format == "gguf":
        from importlib.metadata import version

        backend = f"gguf-{version('gguf')}:dequantize"
        details["library"] = {"gguf": version("gguf")}
    else:
        backend = f"gptqmodel-{details['library']['gptqmodel']}:dequantized:{'+'.join(details['kernels'])}"
    return QuantResult(
        model=model.eval(),
        effective_bits=details["matrix_bits"],
        layers_quantized=sorted(state),
        seconds=time.perf_counter() - start,
        peak_memory_bytes=peak_memory_bytes(ctx.device),
        backend=backend,
        details={**details, "artifact": settings.artifact, "digest": settings.digest, "parent": settings.parent},
    )
