"""`qsens family train`: tokenizer, data order, and every (size, seed, schedule, budget) checkpoint of a ladder.

Resumable: a checkpoint listed in the manifest is never retrained; a run in flight restarts from its last saved
state (`<out>/resume/`: fp32 weights, optimizer moments and the next step, a few MB per run), and a WSD branch
restarts from the stable run's state at its branch point. Run states sit beside the checkpoints, not in the ignored
`.state/` (which only caches the token stream, rebuilt on demand), because a job that outlives a session must be
resumable from a fresh clone: commit `resume/` with the checkpoints (scripts/commit_training.sh) and the next
checkout continues bit-identically; a run that finishes deletes its state. Several
processes may train different sizes into one folder (`sizes=`): manifest updates hold a file lock.

Two naming schemes. A spec without `cooldowns` (the micro family) names the checkpoints of its `seed`
`<size>-<schedule>-d<D>M` with schedules `cosine` and `wsd`, on the original data order; any other seed it lists
in `seeds` is a replicate: init and data order both drawn from that seed (the same order for its cosine and WSD
runs), named `<size>-s<seed>-<schedule>-d<D>M` in `<size>/s<seed>/<schedule>/`. A spec with a cooldown factorial names them
`<size>-s<seed>-<schedule>-d<D>M`, schedules `cosine`, `stable` (the warmup-stable run saved at a branch point,
D = tokens seen there) and `wsd-f<f>` (a cooldown of f·D ending at budget D), for every seed of every size.
"""

from __future__ import annotations

import copy
import fcntl
import hashlib
import math
import os
import shutil
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from qsens.families.manifest import Manifest, ManifestCheckpoint, read_manifest, write_manifest
from qsens.testbed.spec import LadderSpec, SizeSpec
from qsens.testbed.trainer import (DataOrder, as_hf, build_training_model, load_state, lr_at, make_optimizer,
                                    non_embedding_params, run_settings, save_state, train_steps, wsd_branch_step)
from qsens.metrics.text import read_text

EOS = "<|endoftext|>"
RUN_STATES = "resume"  # <out>/resume/<run>.pt: the state a run in flight resumes from (see the module docstring)


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


def training_documents(paths: list[Path]) -> list[str]:
    """The documents of training text files, in order: each file split at `<|endoftext|>` lines (a file without
    one is one document), empty ones dropped."""
    return [d for p in paths for d in read_text(p).split(EOS + "\n") if d.strip()]


def encode_stream(texts: list[str], tokenizer) -> np.ndarray:
    """Documents as one training stream (int64 [T]): each tokenized without special tokens, preceded by EOS."""
    eos = tokenizer.eos_token_id
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]  # a batch: encoded on all cores
    return np.concatenate([np.concatenate([[eos], np.asarray(x, dtype=np.int64)]) for x in ids])


def _texts(spec: LadderSpec, base: Path) -> list[str]:
    """The training documents (`training_documents`), cut at the spec's `max_train_chars`."""
    texts = training_documents([base / p for p in spec.train_text])
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


def resolve_device(wanted: str) -> str:
    if wanted == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if wanted == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: cuda was asked for, but torch sees no CUDA device")
    return wanted


def _d(tokens: int) -> str:
    return f"d{tokens / 1e6:07.3f}M"


def check_training_memory(spec: LadderSpec, sizes: list[SizeSpec], device) -> None:
    """ValueError, before any model is allocated, for a size whose training would not fit in the memory `device`
    has free now (qsens.testbed.spec.training_bytes, an estimate from the shapes)."""
    from qsens.metrics.resources import available_bytes
    from qsens.testbed.spec import training_bytes

    free = available_bytes(torch.device(device))
    for size in sizes:
        need = training_bytes(spec, size)
        if need > free:
            raise ValueError(f"sizes: {size.name} needs about {need / 2**30:,.2f} GiB to train (weights, gradients, "
                             f"AdamW state, one batch's activations) but {device} has {free / 2**30:,.2f} GiB free; "
                             "make it smaller or use a larger device")


class Ladder:
    def __init__(self, spec: LadderSpec, spec_path: Path, out: Path, log=None, device: str | None = None):
        self.spec, self.base, self.out = spec, spec_path.parent, out
        self.run_states = out / RUN_STATES
        self.device = resolve_device(device or spec.device)
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
        self.stream = self._stream(texts)
        self.log(f"training stream: {len(self.stream):,} tokens; device {self.device}")

    def _stream(self, texts: list[str]) -> np.ndarray:
        """Documents joined by EOS (int64 [T]); cached in .state/, keyed by the texts and the tokenizer."""
        key = hashlib.sha256((self.out / "tokenizer" / "tokenizer.json").read_bytes())
        for t in texts:
            key.update(hashlib.sha256(t.encode("utf-8")).digest())
        cache = self.out / ".state" / f"stream-{key.hexdigest()[:16]}.npy"
        if cache.is_file():
            return np.load(cache).astype(np.int64)
        stream = encode_stream(texts, self.tokenizer)
        cache.parent.mkdir(parents=True, exist_ok=True)
        if len(self.tokenizer) < 2**16:  # uint16 on disk: a quarter of the size
            tmp = cache.with_suffix(f".{os.getpid()}.tmp.npy")  # per process: several may prepare at once
            np.save(tmp, stream.astype(np.uint16))
            tmp.replace(cache)
        return stream

    def done(self) -> set[str]:
        """Names in the manifest; an error if one was trained under other settings than the spec's now."""
        path = self.out / "manifest.json"
        if not path.is_file():
            return set()
        checkpoints = read_manifest(path).checkpoints
        sizes = {s.name: s for s in self.spec.sizes}
        for c in checkpoints:
            was = c.extra.get("spec_fingerprint")
            if was and c.size in sizes and was != self.spec.fingerprint(sizes[c.size]):
                raise ValueError(f"{path}: {c.name} was trained under other settings than {self.spec.name}'s spec "
                                 f"now (training text, tokenizer, batch, optimizer, storage or size): delete it "
                                 f"from the manifest and its folder to retrain it, or restore the spec")
        return {c.name for c in checkpoints}

    def train(self, sizes: list[str] | None = None, seeds: list[int] | None = None) -> None:
        """Every (size, seed) in turn (or those listed): the WSD stable run and its branches first (they yield
        the most checkpoints per token), then the cosine anchors."""
        check_training_memory(self.spec, [s for s in self.spec.sizes if not sizes or s.name in sizes], self.device)
        for size in self.spec.sizes:
            if sizes and size.name not in sizes:
                continue
            for seed in self.spec.seeds_for(size):
                if seeds is not None and seed not in seeds:
                    continue
                # the micro family's own seed keeps its original order (seed=None); a factorial, or a replicate
                # seed of the micro family, seeds init and order alike
                data = DataOrder(self.stream, self.spec, None if self._legacy(seed) else seed,
                                 replicate=not self.spec.factorial)
                if "wsd" in self.spec.schedules:
                    self._wsd(size, seed, data)
                for budget in self.spec.cosine_plan():
                    self._cosine(size, seed, data, budget)

    def _legacy(self, seed: int) -> bool:
        """The micro family's original seed: old names, old data order, no seed in its folder."""
        return not self.spec.factorial and seed == self.spec.seed

    def _name(self, size: SizeSpec, seed: int, schedule: str, tokens: int) -> str:
        if self._legacy(seed):
            return f"{size.name}-{schedule}-{_d(tokens)}"
        return f"{size.name}-s{seed}-{schedule}-{_d(tokens)}"

    def _fresh(self, size: SizeSpec, seed: int):
        model = build_training_model(size, self.spec, len(self.tokenizer), self.tokenizer.eos_token_id, seed,
                                     self.device)
        return model, make_optimizer(model, self.spec)

    def _run(self, model, opt, data, steps: range, lr_of, state: Path, what: str):
        self.log(f"[{what}] steps {steps.start}..{steps.stop}")
        return train_steps(model, opt, data, steps, lr_of, state, lambda m: self.log(f"[{what}] {m}"),
                           self.spec.optim.grad_clip)

    def _cosine(self, size: SizeSpec, seed: int, data, budget: int) -> None:
        name = self._name(size, seed, "cosine", budget)
        if name in self.done():
            return
        total = self.spec.steps_for(budget)
        lr_of = lambda s: lr_at(s, total, self.spec, "cosine")  # noqa: E731
        model, opt = self._fresh(size, seed)
        state = self.run_states / f"{name}.pt"
        start = load_state(state, model, opt)
        loss, secs = self._run(model, opt, data, range(start, total), lr_of, state, name)
        self._save(model, size, seed, data, name, "cosine", total, lr_of(total - 1), loss, secs, budget=budget)
        state.unlink(missing_ok=True)

    def _branches(self) -> dict[int, list[tuple[int, float]]]:
        """{branch step: [(budget, fraction), ...]} of every cooldown of the spec."""
        out: dict[int, list[tuple[int, float]]] = {}
        for budget, f in self.spec.cooldown_plan():
            out.setdefault(wsd_branch_step(self.spec.steps_for(budget), self.spec, f), []).append((budget, f))
        return dict(sorted(out.items()))

    def _cooled(self, fraction: float) -> str:
        return f"wsd-f{fraction:g}" if self.spec.factorial else "wsd"

    def _wsd(self, size: SizeSpec, seed: int, data) -> None:
        spec, tps, done = self.spec, self.spec.tokens_per_step, self.done()
        todo = {}
        for at, branches in self._branches().items():
            names = [self._name(size, seed, self._cooled(f), b) for b, f in branches]
            if spec.factorial:
                names.append(self._name(size, seed, "stable", at * tps))
            if set(names) - done:
                todo[at] = branches
        if not todo:
            return
        model, opt = self._fresh(size, seed)
        label = size.name if self._legacy(seed) else f"{size.name}-s{seed}"
        stable_state = self.run_states / f"{label}-wsd-stable.pt"
        step = load_state(stable_state, model, opt)
        stable_lr = lambda s: lr_at(s, 0, spec, "stable")  # noqa: E731
        # a finished branch point on the way is a stop too when its stable checkpoint is committed: a run
        # retrained from an earlier state (or from step 0) is checked against it there
        stops = {at: todo.get(at, []) for at in self._branches() if at <= max(todo) and
                 (at in todo or (spec.factorial and at > step and self._name(size, seed, "stable", at * tps) in done))}
        for at, branches in stops.items():
            if step > at:
                raise RuntimeError(f"stable run is at step {step}, past the branch point {at}")
            loss, secs = self._run(model, opt, data, range(step, at), stable_lr, stable_state, f"{label}-wsd-stable")
            step = at
            save_state(stable_state, model, opt, step)
            stable_name = self._name(size, seed, "stable", at * tps)
            if spec.factorial and stable_name not in done:
                self._save(model, size, seed, data, stable_name, "stable", at, stable_lr(at - 1), loss, secs)
            elif spec.factorial:
                self._check_retrained(model, stable_name)
            for budget, f in branches:
                name = self._name(size, seed, self._cooled(f), budget)
                if name in done:
                    continue
                total = spec.steps_for(budget)
                lr_of = lambda s, total=total, f=f: lr_at(s, total, spec, "wsd", f)  # noqa: E731
                branch_model = copy.deepcopy(model)
                branch_opt = make_optimizer(branch_model, spec)
                # deepcopy: load_state_dict would share the moment tensors, letting the branch mutate the stable run
                branch_opt.load_state_dict(copy.deepcopy(opt.state_dict()))
                branch_state = self.run_states / f"{name}.pt"
                start = max(at, load_state(branch_state, branch_model, branch_opt))
                loss, secs = self._run(branch_model, branch_opt, data, range(start, total), lr_of, branch_state, name)
                self._save(branch_model, size, seed, data, name, self._cooled(f), total, lr_of(total - 1), loss, secs,
                           budget=budget, fraction=f, branch_step=at, stable=stable_name if spec.factorial else None)
                branch_state.unlink(missing_ok=True)
        # every branch point done: the stable run's state goes too (it is committed with the checkpoints, and a
        # larger budget added to the spec later retrains from step 0, bit-identically, rather than keep MBs per run)
        stable_state.unlink(missing_ok=True)

    def _check_retrained(self, model, name: str) -> None:
        """A stable run retrained past a checkpoint it saved before (its state was lost) must land on that
        checkpoint bit for bit, else later checkpoints would come from another trajectory than the earlier ones."""
        entry = next(c for c in read_manifest(self.out / "manifest.json").checkpoints if c.name == name)
        saved = load_file(self.out / entry.path / "model.safetensors")
        now = as_hf(model).to(getattr(torch, self.spec.save_dtype)).state_dict()
        differ = [k for k, v in saved.items() if not torch.equal(now[k], v)]
        if differ:
            raise RuntimeError(f"{name}: the retrained stable run differs from the committed checkpoint in "
                               f"{len(differ)} of {len(saved)} tensors ({differ[0]}, ...): the trajectory is not "
                               f"reproducible here (BLAS route, torch version or device changed?); restore the "
                               f"run state in {self.run_states} or retrain this (size, seed) from scratch")
        self.log(f"[{name}] retrained stable run equals the committed checkpoint ({len(saved)} tensors)")

    def _save(self, model, size: SizeSpec, seed: int, data, name: str, schedule: str, steps: int, lr: float,
              loss: float, secs: float, budget: int | None = None, fraction: float | None = None,
              branch_step: int | None = None, stable: str | None = None) -> None:
        spec, tps = self.spec, self.spec.tokens_per_step
        folder = schedule if self._legacy(seed) else f"s{seed}/{schedule}"
        rel = Path(size.name) / folder / name
        final = self.out / rel
        tmp = final.with_name(final.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        stored = as_hf(model).to(getattr(torch, spec.save_dtype)).eval()  # a copy: the live model trains on
        stored.save_pretrained(tmp, safe_serialization=True)
        (tmp / "generation_config.json").unlink(missing_ok=True)
        for f in sorted((self.out / "tokenizer").iterdir()):  # one tokenizer, linked into every checkpoint
            os.symlink(os.path.relpath(f, tmp), tmp / f.name)
        shutil.rmtree(final, ignore_errors=True)
        tmp.replace(final)
        entry = ManifestCheckpoint(
            name=name, path=str(rel), size=size.name, schedule=schedule, n_params=non_embedding_params(stored),
            n_params_total=sum(p.numel() for p in stored.parameters()), tokens=steps * tps, steps=steps,
            tokens_per_step=tps, epochs=steps * tps / len(data.stream), lr_at_checkpoint=lr,
            peak_lr=spec.optim.peak_lr, seed=seed, data_order=data.describe(), train_seconds=round(secs, 1),
            extra={"budget": budget, "hidden": size.hidden, "layers": size.layers, "heads": size.heads, "mlp": size.mlp,
                   "vocab_size": len(self.tokenizer), "sequence_length": spec.sequence_length,
                   "batch_size": spec.batch_size,
                   "final_train_loss": round(loss, 5) if math.isfinite(loss) else None,
                   "cooldown_fraction": fraction if schedule != "cosine" else None,
                   "warmup_steps": spec.optim.warmup_steps, "min_lr_ratio": spec.optim.min_lr_ratio,
                   "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            | ({"branch_step": branch_step, "stable_checkpoint": stable, "save_dtype": spec.save_dtype,
                "device": self.device} if spec.factorial else {})
            | ({} if self._legacy(seed) else {"spec_fingerprint": spec.fingerprint(size)})
            | run_settings(model),  # the training model and the BLAS route (qsens.blas) it ran on
        )
        with _locked(self.out):
            path = self.out / "manifest.json"
            manifest = read_manifest(path) if path.is_file() else Manifest(
                family=spec.name, description=spec.description, train_text=list(spec.train_text),
                heldout_text=list(spec.heldout_text), checkpoints=[])
            others = [c for c in manifest.checkpoints if c.name != name]
            order = lambda c: (c.size, c.seed, c.schedule, c.tokens)  # noqa: E731
            write_manifest(manifest.model_copy(update={"checkpoints": sorted(others + [entry], key=order)}), path)
        self.log(f"[{name}] saved: N={entry.n_params:,} D={entry.tokens:,} D/N={entry.tokens / entry.n_params:.1f} "
                 f"lr {lr:.2e} loss {loss:.4f}")


def train_ladder(spec_path: str | Path, out: str | Path, sizes: list[str] | None = None, log=None,
                 device: str | None = None, seeds: list[int] | None = None, prepare_only: bool = False) -> Path:
    """Train (or finish training) every checkpoint of the spec; returns the manifest path."""
    from qsens.testbed.spec import load_ladder_spec

    spec = load_ladder_spec(spec_path)
    unknown = sorted(set(sizes or ()) - {s.name for s in spec.sizes})
    if unknown:
        raise ValueError(f"{spec_path}: --sizes {','.join(unknown)}: no such size in sizes "
                         f"(allowed: {', '.join(s.name for s in spec.sizes)})")
    if spec.threads:
        torch.set_num_threads(spec.threads)
    ladder = Ladder(spec, Path(spec_path), Path(out), log, device)
    if not prepare_only:
        ladder.train(sizes, seeds)
    return Path(out) / "manifest.json"
