"""`qsens family train`: tokenizer, data order, and every (size, schedule, budget) checkpoint of a ladder.

Resumable: a checkpoint listed in the manifest is never retrained; a run in flight restarts from its last saved
state (`<out>/.state/`), and a WSD branch restarts from the stable run's state at its branch point. Several
processes may train different sizes into one folder (`sizes=`): manifest updates hold a file lock.
"""

from __future__ import annotations

import copy
import fcntl
import os
import shutil
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from qsens.families.manifest import Manifest, ManifestCheckpoint, read_manifest, write_manifest
from qsens.families.spec import LadderSpec, SizeSpec
from qsens.families.trainer import (DataOrder, build_model, load_state, lr_at, make_optimizer, non_embedding_params,
                                    save_state, train_steps, wsd_branch_step)
from qsens.metrics.text import read_text

EOS = "<|endoftext|>"


def byte_level_bpe(texts: list[str], vocab_size: int):
    """A byte-level BPE trained with the `tokenizers` library, as a transformers fast tokenizer (EOS = BOS)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOS, eos_token=EOS, model_max_length=10**6)


def train_tokenizer(texts: list[str], vocab_size: int, out_dir: Path):
    """`byte_level_bpe`, saved atomically to `out_dir` (kept if another process saved it first)."""
    fast = byte_level_bpe(texts, vocab_size)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    fast.save_pretrained(tmp)
    tmp.replace(out_dir) if not out_dir.exists() else shutil.rmtree(tmp)
    return fast


def _texts(spec: LadderSpec, base: Path) -> list[str]:
    texts = [read_text(base / p) for p in spec.train_text]
    if spec.max_train_chars is not None:
        kept, left = [], spec.max_train_chars
        for t in texts:
            kept.append(t[:left])
            left -= len(kept[-1])
        texts = [t for t in kept if t]
    return texts


@contextmanager
def _locked(out: Path):
    with open(out / ".manifest.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


class Ladder:
    def __init__(self, spec: LadderSpec, spec_path: Path, out: Path, log=None):
        self.spec, self.base, self.out = spec, spec_path.parent, out
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        out.mkdir(parents=True, exist_ok=True)
        texts = _texts(spec, self.base)
        with _locked(out):
            if (out / "tokenizer").is_dir():
                from transformers import AutoTokenizer

                self.tokenizer = AutoTokenizer.from_pretrained(out / "tokenizer")
            else:
                self.log(f"training a {spec.vocab_size}-token byte-level BPE on {sum(map(len, texts)):,} characters")
                self.tokenizer = train_tokenizer(texts, spec.vocab_size, out / "tokenizer")
        eos = self.tokenizer.eos_token_id
        ids = [np.asarray(self.tokenizer(t, add_special_tokens=False)["input_ids"], dtype=np.int64) for t in texts]
        stream = np.concatenate([np.concatenate([[eos], x]) for x in ids])
        self.data = DataOrder(stream, spec)
        self.log(f"training stream: {len(stream):,} tokens")

    def done(self) -> set[str]:
        path = self.out / "manifest.json"
        return {c.name for c in read_manifest(path).checkpoints} if path.is_file() else set()

    def train(self, sizes: list[str] | None = None) -> None:
        for size in self.spec.sizes:
            if sizes and size.name not in sizes:
                continue
            budgets = sorted(self.spec.budgets)
            if "cosine" in self.spec.schedules:
                for budget in budgets:
                    self._cosine(size, budget)
            if "wsd" in self.spec.schedules:
                self._wsd(size, budgets)

    def _name(self, size: SizeSpec, schedule: str, budget: int) -> str:
        return f"{size.name}-{schedule}-d{budget / 1e6:07.3f}M"

    def _fresh(self, size: SizeSpec):
        model = build_model(size, self.spec, len(self.tokenizer), self.tokenizer.eos_token_id)
        return model, make_optimizer(model, self.spec)

    def _run(self, model, opt, steps: range, schedule: str, total: int, state: Path, what: str):
        self.log(f"[{what}] steps {steps.start}..{steps.stop} of {total}")
        return train_steps(model, opt, self.data, steps, lambda s: lr_at(s, total, self.spec, schedule), state,
                           lambda m: self.log(f"[{what}] {m}"), self.spec.optim.grad_clip)

    def _cosine(self, size: SizeSpec, budget: int) -> None:
        name = self._name(size, "cosine", budget)
        if name in self.done():
            return
        total = self.spec.steps_for(budget)
        model, opt = self._fresh(size)
        state = self.out / ".state" / f"{name}.pt"
        start = load_state(state, model, opt)
        loss, secs = self._run(model, opt, range(start, total), "cosine", total, state, name)
        self._save(model, size, "cosine", budget, total, loss, secs)
        state.unlink(missing_ok=True)

    def _wsd(self, size: SizeSpec, budgets: list[int]) -> None:
        todo = [b for b in budgets if self._name(size, "wsd", b) not in self.done()]
        if not todo:
            return
        model, opt = self._fresh(size)
        stable_state = self.out / ".state" / f"{size.name}-wsd-stable.pt"
        step = load_state(stable_state, model, opt)
        for budget in todo:
            total = self.spec.steps_for(budget)
            branch_at = wsd_branch_step(total, self.spec)
            if step > branch_at:
                raise RuntimeError(f"stable run is at step {step}, past the branch point {branch_at} of {budget}")
            self._run(model, opt, range(step, branch_at), "wsd", total, stable_state, f"{size.name}-wsd-stable")
            step = branch_at
            save_state(stable_state, model, opt, step)
            name = self._name(size, "wsd", budget)
            branch_model = copy.deepcopy(model)
            branch_opt = make_optimizer(branch_model, self.spec)
            # deepcopy: load_state_dict would share the moment tensors, letting the branch mutate the stable run
            branch_opt.load_state_dict(copy.deepcopy(opt.state_dict()))
            branch_state = self.out / ".state" / f"{name}.pt"
            start = max(branch_at, load_state(branch_state, branch_model, branch_opt))
            loss, secs = self._run(branch_model, branch_opt, range(start, total), "wsd", total, branch_state, name)
            self._save(branch_model, size, "wsd", budget, total, loss, secs)
            branch_state.unlink(missing_ok=True)

    def _save(self, model, size: SizeSpec, schedule: str, budget: int, steps: int, loss: float, secs: float) -> None:
        name = self._name(size, schedule, budget)
        rel = Path(size.name) / schedule / name
        final = self.out / rel
        tmp = final.with_name(final.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        model.eval().save_pretrained(tmp, safe_serialization=True)
        (tmp / "generation_config.json").unlink(missing_ok=True)
        for f in sorted((self.out / "tokenizer").iterdir()):  # one tokenizer, linked into every checkpoint
            os.symlink(os.path.relpath(f, tmp), tmp / f.name)
        shutil.rmtree(final, ignore_errors=True)
        tmp.replace(final)
        spec, tps = self.spec, self.spec.tokens_per_step
        entry = ManifestCheckpoint(
            name=name, path=str(rel), size=size.name, schedule=schedule, n_params=non_embedding_params(model),
            n_params_total=sum(p.numel() for p in model.parameters()), tokens=steps * tps, steps=steps,
            tokens_per_step=tps, epochs=steps * tps / len(self.data.stream), lr_at_checkpoint=lr_at(steps - 1, steps, spec, schedule),
            peak_lr=spec.optim.peak_lr, seed=spec.seed, data_order=self.data.describe(), train_seconds=round(secs, 1),
            extra={"budget": budget, "hidden": size.hidden, "layers": size.layers, "heads": size.heads, "mlp": size.mlp,
                   "vocab_size": len(self.tokenizer), "sequence_length": spec.sequence_length,
                   "batch_size": spec.batch_size, "final_train_loss": round(loss, 5),
                   "cooldown_fraction": spec.wsd_cooldown_fraction if schedule == "wsd" else None,
                   "warmup_steps": spec.optim.warmup_steps, "min_lr_ratio": spec.optim.min_lr_ratio,
                   "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
        )
        with _locked(self.out):
            path = self.out / "manifest.json"
            manifest = read_manifest(path) if path.is_file() else Manifest(
                family=spec.name, description=spec.description, train_text=list(spec.train_text),
                heldout_text=list(spec.heldout_text), checkpoints=[])
            others = [c for c in manifest.checkpoints if c.name != name]
            order = lambda c: (c.size, c.schedule, c.tokens)  # noqa: E731
            write_manifest(manifest.model_copy(update={"checkpoints": sorted(others + [entry], key=order)}), path)
        self.log(f"[{name}] saved: N={entry.n_params:,} D={entry.tokens:,} D/N={entry.tokens / entry.n_params:.1f} "
                 f"loss {loss:.4f}")


def train_ladder(spec_path: str | Path, out: str | Path, sizes: list[str] | None = None, log=None) -> Path:
    """Train (or finish training) every checkpoint of the spec; returns the manifest path."""
    from qsens.families.spec import load_ladder_spec

    spec = load_ladder_spec(spec_path)
    unknown = sorted(set(sizes or ()) - {s.name for s in spec.sizes})
    if unknown:
        raise ValueError(f"{spec_path}: --sizes {','.join(unknown)}: no such size in sizes "
                         f"(allowed: {', '.join(s.name for s in spec.sizes)})")
    if spec.threads:
        torch.set_num_threads(spec.threads)
    ladder = Ladder(spec, Path(spec_path), Path(out), log)
    ladder.train(sizes)
    return Path(out) / "manifest.json"
