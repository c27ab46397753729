"""Real-shape stand-ins: local HF folders with random weights in the exact architectures and shapes of the
checkpoints a nightly run downloads (Pythia-160M/-410M/-1B, OLMo-2 1B), so everything but the download runs offline.

Speed and memory depend on shapes, module names and vocabulary, not on weight values. The configs below are
written by hand from the published `config.json` of EleutherAI/pythia-160m, -410m, -1b and
allenai/OLMo-2-0425-1B (values as published; unverified against the hub from here, which is unreachable).
The tokenizer is a byte-level BPE (the scheme both families use) trained on the shipped novels, saved as the
family's tokenizer class (GPTNeoXTokenizerFast) so `AutoTokenizer` loads it; its vocabulary defaults to the
real tokenizer's size (50,277 for Pythia, 100,278 for OLMo-2, or as many merges as the novels allow), and the
model's vocabulary is the real padded one (50,304 / 100,352) whatever the tokenizer's size, as on the hub.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import json
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]

# Published config.json values (hidden sizes, layers, heads, vocab, rotary settings, tying).
PYTHIA_COMMON = {
    "architectures": ["GPTNeoXForCausalLM"], "model_type": "gpt_neox", "hidden_act": "gelu",
    "max_position_embeddings": 2048, "rotary_pct": 0.25, "rotary_emb_base": 10000, "use_parallel_residual": True,
    "layer_norm_eps": 1e-5, "initializer_range": 0.02, "bos_token_id": 0, "eos_token_id": 0,
    "tie_word_embeddings": False, "vocab_size": 50304, "attention_dropout": 0.0, "hidden_dropout": 0.0,
    "use_cache": True,
}
SHAPES: dict[str, dict] = {
    "pythia-160m": {**PYTHIA_COMMON, "hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12,
                    "num_hidden_layers": 12},
    "pythia-410m": {**PYTHIA_COMMON, "hidden_size": 1024, "intermediate_size": 4096, "num_attention_heads": 16,
                    "num_hidden_layers": 24},
    "pythia-1b": {**PYTHIA_COMMON, "hidden_size": 2048, "intermediate_size": 8192, "num_attention_heads": 8,
                  "num_hidden_layers": 16},
    "olmo2-1b": {
        "architectures": ["Olmo2ForCausalLM"], "model_type": "olmo2", "hidden_act": "silu", "hidden_size": 2048,
        "intermediate_size": 8192, "num_attention_heads": 16, "num_key_value_heads": 16, "num_hidden_layers": 16,
        "max_position_embeddings": 4096, "rope_theta": 500000, "rms_norm_eps": 1e-6, "attention_bias": False,
        "attention_dropout": 0.0, "initializer_range": 0.02, "vocab_size": 100352, "tie_word_embeddings": False,
        "bos_token_id": 100257, "eos_token_id": 100257, "pad_token_id": 100277, "use_cache": True,
    },
}
TOKENIZER_VOCAB = {"pythia-160m": 50277, "pythia-410m": 50277, "pythia-1b": 50277, "olmo2-1b": 100278}
EOS_TEXT = "<|endoftext|>"


def non_embedding_params(config: dict) -> int:
    """N as the scaling-law papers count it: every parameter but the input embedding and the output head."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model(config["model_type"], **{k: v for k, v in config.items() if k != "model_type"})
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    emb = {id(p) for p in model.get_input_embeddings().parameters()}
    emb |= {id(p) for p in model.get_output_embeddings().parameters()}
    return sum(p.numel() for p in model.parameters() if id(p) not in emb)


def bpe_tokenizer(vocab_size: int, cache: Path | None = None):
    """A byte-level BPE trained on the shipped novels, as a GPTNeoXTokenizerFast; cached by vocab size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPTNeoXTokenizerFast

    if cache is not None and (cache / "tokenizer.json").exists():
        return GPTNeoXTokenizerFast.from_pretrained(cache)
    texts = [gzip.decompress(Path(f).read_bytes()).decode("utf-8")
             for f in sorted(glob.glob(str(REPO / "data/novels/*.txt.gz")))]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=[EOS_TEXT],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    fast = GPTNeoXTokenizerFast(tokenizer_object=tok, bos_token=EOS_TEXT, eos_token=EOS_TEXT, unk_token=EOS_TEXT)
    if cache is not None:
        fast.save_pretrained(cache)
    return fast


def build_standin(shape: str, out: str | Path, *, layers: int | None = None, tokenizer_vocab: int | None = None,
                  seed: int = 0, dtype: str = "float32", tokenizer_cache: Path | None = None,
                  widths: dict | None = None) -> Path:
    """Write a random-weight HF folder of `shape` (see SHAPES) to `out`; returns the folder.

    layers: fewer layers than the real model (the reduced CI form); widths, vocabulary and module names stay
    real. tokenizer_vocab: BPE vocabulary (default the real tokenizer's size). widths: config values that
    replace the real ones (hidden_size, intermediate_size, num_attention_heads, vocab_size), for checks at tiny
    shapes of what runs at real ones (the architecture and module names stay the shape's).
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    if shape not in SHAPES:
        raise KeyError(f"unknown stand-in shape {shape!r}; known: {', '.join(SHAPES)}")
    config = {**SHAPES[shape], **(widths or {})}
    if layers is not None:
        config["num_hidden_layers"] = layers
    cfg = AutoConfig.for_model(config.pop("model_type"), **config)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=getattr(torch, dtype)).eval()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok = bpe_tokenizer(tokenizer_vocab or TOKENIZER_VOCAB[shape], tokenizer_cache)
    if len(tok) > cfg.vocab_size:
        raise ValueError(f"tokenizer has {len(tok)} tokens, more than the model's vocabulary {cfg.vocab_size}")
    tok.save_pretrained(out)
    meta = {"shape": shape, "layers": cfg.num_hidden_layers, "seed": seed, "dtype": dtype,
            "tokenizer_vocab": len(tok), "widths": widths or None,
            "n_params": non_embedding_params({**SHAPES[shape], **(widths or {}),
                                              "num_hidden_layers": cfg.num_hidden_layers}),
            "config_sha256": hashlib.sha256(json.dumps(SHAPES[shape], sort_keys=True).encode()).hexdigest()[:16]}
    (out / "standin.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    """`python -m qsens.testbed.standins SHAPE OUT [--layers N] [--tokenizer-vocab N] [--dtype D]`."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m qsens.testbed.standins", description=__doc__.split("\n\n")[0])
    p.add_argument("shape", choices=sorted(SHAPES))
    p.add_argument("out", type=Path)
    p.add_argument("--layers", type=int, help="fewer layers than the real model (widths and vocab stay real)")
    p.add_argument("--tokenizer-vocab", type=int, help="BPE vocabulary (default: the real tokenizer's size)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    folder = build_standin(args.shape, args.out, layers=args.layers, tokenizer_vocab=args.tokenizer_vocab,
                           seed=args.seed, dtype=args.dtype)
    print((folder / "standin.json").read_text(), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
