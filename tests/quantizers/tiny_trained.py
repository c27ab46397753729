"""A tiny trained Llama checkpoint for quantizer tests, built in seconds on 2 CPU cores.

Used when the suite-wide `tiny_family` fixture (tests/conftest.py) is not available. The text is a synthetic
"language" drawn from a seeded word-level bigram chain (no data files, so the model and every expected number
depend on nothing but the seed): enough structure that a 2-layer model learns it well in 300 steps (loss
~1.6 nats against ~6.2 for the unigram), so its weights are trained and its Linear inputs strongly
correlated, which is what GPTQ exploits and RTN ignores. The checkpoint is a plain HF folder (config, safetensors, tokenizer).
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from qsens.quantizers.base import QuantContext


def corpus_text(n_words: int = 120_000, seed: int = 0) -> str:
    """A seeded synthetic text: Zipf-weighted successors over a 400-word random vocabulary, with punctuation."""
    rng = np.random.default_rng(seed)
    letters = list(string.ascii_lowercase)
    vocab = ["".join(rng.choice(letters, size=rng.integers(2, 7))) for _ in range(400)]
    # Zipf-like unigram, sparse bigram successors: each word has 8 likely followers.
    follow = rng.integers(0, len(vocab), size=(len(vocab), 8))
    weights = 1.0 / np.arange(1, 9)
    weights /= weights.sum()
    words, w = [], 0
    for i in range(n_words):
        w = follow[w, rng.choice(8, p=weights)] if rng.random() > 0.05 else rng.integers(0, len(vocab))
        words.append(vocab[w])
        if rng.random() < 0.08:
            words[-1] += "." if rng.random() < 0.7 else ","
    return " ".join(words)


def train_tokenizer(text: str, vocab_size: int = 512):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([text[i : i + 10_000] for i in range(0, len(text), 10_000)], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                                   unk_token="<|endoftext|>", pad_token="<|endoftext|>")


def build_tiny_checkpoint(out_dir: Path, steps: int = 300, hidden: int = 64, layers: int = 2, seed: int = 0) -> dict:
    """Train and save a tiny LlamaForCausalLM; returns {'dir', 'train_ids', 'heldout_ids'}.

    Trains on the first 90% of the tokens; the last 10% is held out (never trained on) for evaluation.
    Local torch.Generator only: the global RNG state is left as it was.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    text = corpus_text(seed=seed)
    tokenizer = train_tokenizer(text)
    ids = torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.int64)
    split = int(0.9 * ids.numel())
    train_ids, heldout_ids = ids[:split], ids[split:]
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=3 * hidden,
                         num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=2,
                         max_position_embeddings=256, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    cpu_state = torch.random.get_rng_state()
    torch.manual_seed(seed)  # weight init draws from the global generator; restored below
    model = LlamaForCausalLM(config)
    torch.random.set_rng_state(cpu_state)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps, pct_start=0.05)
    batch, length = 16, 128
    model.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on a shared 2-core machine one thread trains this model 2x faster than two
    try:
        _train(model, opt, sched, train_ids, gen, steps, batch, length)
    finally:
        torch.set_num_threads(threads)
    model.eval()
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return {"dir": out_dir, "train_ids": train_ids, "heldout_ids": heldout_ids}


def _train(model, opt, sched, train_ids, gen, steps, batch, length) -> None:
    for _ in range(steps):
        starts = torch.randint(0, train_ids.numel() - length - 1, (batch,), generator=gen)
        x = torch.stack([train_ids[s : s + length] for s in starts])
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()


EVAL_ROWS, EVAL_LEN = 32, 128  # 4096 held-out tokens: Δloss standard error ~1e-3 at 4 bits, well under the gaps tested


@dataclass
class Trained:
    dir: Path
    train_ids: torch.Tensor
    heldout: torch.Tensor  # int64 [EVAL_ROWS, EVAL_LEN], never trained on

    def load(self, **kwargs) -> torch.nn.Module:
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(self.dir, dtype=torch.float32, **kwargs).eval()

    def calibration(self, seed: int = 0):
        def sample(n: int, length: int) -> torch.Tensor:  # same contract as the runner's: seeded training windows
            starts = np.random.default_rng(seed).integers(0, self.train_ids.numel() - length, size=n)
            return torch.stack([self.train_ids[s : s + length] for s in starts])

        return sample

    def context(self, fp_model: torch.nn.Module, seed: int = 0) -> QuantContext:
        from transformers import AutoTokenizer

        return QuantContext(fp_model=fp_model, tokenizer=AutoTokenizer.from_pretrained(self.dir),
                            device=torch.device("cpu"), seed=seed,
                            calibration=self.calibration(seed), checkpoint_dir=str(self.dir))


def heldout_loss(model: torch.nn.Module, ids: torch.Tensor) -> float:
    with torch.no_grad():
        return float(model(input_ids=ids, labels=ids).loss)
