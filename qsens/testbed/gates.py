"""Quality gates of a trained family (issue 13): is it a language model, and does a power law in D describe it?

- `ngram_baselines`: a count-based unigram and an add-k bigram, fitted on the family's training token stream and
  scored on exactly the targets the suite scores (`build_eval_tokens` under the eval's protocol). k is chosen on
  the last 5% of the training stream (fitted on the first 95%), never on the eval text.
- `checkpoint_gate`: a checkpoint passes if its full-precision loss on the eval is >= `margin` nats/token below
  that eval's bigram.
- `exponent_gates`: on one arm's (size, seed, D, Δ) points, log Δ = c_size + β·log D by least squares; the D
  exponent of the lower half of the D values vs the upper half (|difference| < 0.2), and leave-one-out at the
  largest D (fit without it, predict the mean log Δ over seeds of each size; every |log error| < 0.2).

`python -m qsens.testbed.gates SPEC FAMILY_DIR RESULTS SUITE [GATE_EVAL [BITS [GROUP]]]` prints the report as JSON
(primary setting: RTN BITS (3) at group GROUP (8); GATE_EVAL defaults to heldout-novels).
`python -m qsens.testbed.gates fp SPEC FAMILY_DIR SUITE EVAL` applies the checkpoint gate from the checkpoints
alone (full-precision losses scored here), before any suite run.
`python -m qsens.testbed.gates baselines SUITE RESULTS` writes RESULTS/baselines.json: the unigram and bigram of
every (manifest family, eval) of a suite, keyed by the scored tokens' digest (`suite_baselines`), which the
README's findings read (`read_baselines`) to report growth past the bigram gate.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

K_GRID = (1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0)


def _bigram_nll(counts: np.ndarray, prev: np.ndarray, nxt: np.ndarray, k: float) -> float:
    """Mean -log p(nxt | prev) under add-k smoothing of a [V, V] count matrix (float64)."""
    v = counts.shape[0]
    row = counts.sum(axis=1, dtype=np.float64)
    return float(np.mean(-np.log((counts[prev, nxt] + k) / (row[prev] + k * v))))


def _bigram_counts(stream: np.ndarray, vocab: int) -> np.ndarray:
    return np.bincount(stream[:-1] * vocab + stream[1:], minlength=vocab * vocab).reshape(vocab, vocab)


def ngram_baselines(stream: np.ndarray, vocab: int, prev: np.ndarray, targets: np.ndarray) -> dict:
    """Unigram (add-1) and add-k bigram nats/token of `targets` (int [T]) given their previous tokens `prev` [T]."""
    stream = np.asarray(stream, dtype=np.int64)
    uni = np.bincount(stream, minlength=vocab).astype(np.float64) + 1.0
    unigram = float(np.mean(-np.log(uni[targets] / uni.sum())))
    cut = int(len(stream) * 0.95)
    fit = _bigram_counts(stream[:cut], vocab)
    tail = stream[cut:]
    k = min(K_GRID, key=lambda k: _bigram_nll(fit, tail[:-1], tail[1:], k))
    bigram = _bigram_nll(_bigram_counts(stream, vocab), prev, targets, k)
    return {"unigram": unigram, "bigram": bigram, "bigram_k": k, "n_targets": int(len(targets))}


def scored_pairs(tokens) -> tuple[np.ndarray, np.ndarray]:
    """(previous token, target) of every scored target of an `EvalTokens`, in its order."""
    prev = [inp[first : first + n].numpy() for inp, first, n in tokens.windows]
    return np.concatenate(prev), tokens.targets.numpy()


def checkpoint_gate(fp_loss: dict[str, float], bigram: float, margin: float = 0.3) -> dict:
    """{checkpoint: fp loss} -> which checkpoints are >= margin below the bigram."""
    passed = sorted(n for n, loss in fp_loss.items() if loss <= bigram - margin)
    return {"threshold": bigram - margin, "passed": len(passed), "failed": sorted(set(fp_loss) - set(passed)),
            "of": len(fp_loss)}


def _slope_fit(points: list[tuple[str, float, float]]):
    """OLS of log Δ on size dummies + log D; points (size, D, Δ). Returns (β, {size: intercept})."""
    sizes = sorted({p[0] for p in points})
    x = np.array([[float(p[0] == s) for s in sizes] + [np.log(p[1])] for p in points])
    y = np.log([p[2] for p in points])
    coef = np.linalg.lstsq(x, y, rcond=None)[0]
    return float(coef[-1]), dict(zip(sizes, coef[:-1].tolist()))


def exponent_gates(points: list[tuple[str, int, float, float]], tolerance: float = 0.2) -> dict:
    """points: (size, seed, D, Δ > 0) of one arm. Halves split the sorted distinct D values by count."""
    ds = sorted({p[2] for p in points})
    if len(ds) < 4:
        raise ValueError(f"exponent gates need at least 4 distinct D values, got {len(ds)}")
    lower, upper = set(ds[: len(ds) // 2]), set(ds[len(ds) - len(ds) // 2 :])
    flat = [(s, d, v) for s, _, d, v in points]
    beta_lo = _slope_fit([p for p in flat if p[1] in lower])[0]
    beta_hi = _slope_fit([p for p in flat if p[1] in upper])[0]
    beta, _ = _slope_fit(flat)
    d_max = ds[-1]
    beta_loo, icpt = _slope_fit([p for p in flat if p[1] != d_max])
    errors = {}
    for size in sorted({p[0] for p in flat if p[1] == d_max}):
        observed = np.mean([np.log(v) for s, d, v in flat if s == size and d == d_max])
        if size in icpt:
            errors[size] = float(icpt[size] + beta_loo * np.log(d_max) - observed)
    return {"beta": beta, "beta_lower_half": beta_lo, "beta_upper_half": beta_hi,
            "halves_pass": abs(beta_hi - beta_lo) < tolerance, "loo_log_error_at_largest_d": errors,
            "loo_pass": bool(errors) and max(abs(e) for e in errors.values()) < tolerance}


def family_report(spec_path: Path, family_dir: Path, results: Path, suite_path: Path, primary: dict,
                  gate_eval: str, margin: float = 0.3) -> dict:
    """Baselines per eval, the checkpoint gate on `gate_eval`, and the exponent gates of `primary`'s cells per
    schedule. `primary`: cell fields that pick one quantizer setting, e.g. {"method": "rtn", "bits": 3}."""
    from qsens.testbed.ladder import Ladder
    from qsens.testbed.spec import load_ladder_spec
    from qsens.metrics.windows import build_eval_tokens
    from qsens.store import ResultStore
    from qsens.suites.load import load_suite

    ladder = Ladder(load_ladder_spec(spec_path), Path(spec_path), Path(family_dir), log=lambda m: None)
    suite = load_suite(suite_path)
    baselines = {}
    for ev in suite.evals:
        tokens = build_eval_tokens(ev.read(), ladder.tokenizer, ev.protocol)
        prev, targets = scored_pairs(tokens)
        baselines[ev.name] = ngram_baselines(ladder.stream, len(ladder.tokenizer), prev, targets)
    cells = [c for c in ResultStore(results).cells("ok") if c["suite"] == suite.name]
    fp = {c["checkpoint"]: c["fp_loss"] for c in cells if c["eval"] == gate_eval}
    gate = checkpoint_gate(fp, baselines[gate_eval]["bigram"], margin)
    arms: dict[str, list] = defaultdict(list)  # schedule -> [(checkpoint, (size, seed, D, Δ))]
    for c in cells:
        if c["eval"] == gate_eval and all(c.get(k) == v for k, v in primary.items()) and (c["delta_loss"] or 0) > 0:
            point = (c["size"], c.get("train_seed"), c["tokens"], c["delta_loss"])
            arms[c["schedule"]].append((c["checkpoint"], point))
    passing = set(fp) - set(gate["failed"])

    def gates(keep) -> dict:
        out = {}
        for arm, pts in sorted(arms.items()):
            kept = [p for name, p in pts if keep(name)]
            out[arm] = exponent_gates(kept) if len({p[2] for p in kept}) >= 4 else "fewer than 4 D values"
        return out

    return {"baselines": baselines, "checkpoint_gate": {"eval": gate_eval, "margin": margin, **gate},
            "primary": primary, "exponent_gates_all_checkpoints": gates(lambda name: True),
            "exponent_gates_checkpoints_passing_the_gate": gates(lambda name: name in passing)}


def _train_file(manifest_path: Path, name: str) -> Path:
    """A manifest's `train_text` entry as a file: manifests written by `qsens family train` keep the spec's paths,
    relative to the spec, which sits in the family folder or above it; so the folder and then each parent."""
    for base in [manifest_path.parent, *manifest_path.parent.parents]:
        if (base / name).is_file():
            return base / name
    raise FileNotFoundError(f"{manifest_path}: train_text {name!r} is not found from its folder or any parent")


def manifest_stream(manifest_path: Path, tokenizer) -> np.ndarray:
    """A manifest family's training text as one token stream (int64 [T]), as `qsens.testbed.ladder` builds it
    (`training_documents`, `encode_stream`). (A spec's `max_train_chars` is not in the manifest: the whole files are
    used.)"""
    from qsens.families.manifest import read_manifest
    from qsens.testbed.ladder import encode_stream, training_documents

    manifest = read_manifest(manifest_path)
    if not manifest.train_text:
        raise ValueError(f"{manifest_path}: no train_text, so no n-gram baseline of its training text")
    return encode_stream(training_documents([_train_file(manifest_path, n) for n in manifest.train_text]), tokenizer)


def suite_baselines(suite, margin: float = 0.3) -> dict[str, dict]:
    """{tokens digest: baselines} for every eval of `suite` (a loaded `qsens.suites.load.Suite`) under every family
    given by a manifest with `train_text`: `ngram_baselines` of that training text on exactly the targets its cells
    score (same tokenizer, protocol and digest as `qsens.runner`), with `eval`, `families` and `gate_loss` (bigram
    minus `margin`, the checkpoint gate's threshold). Families sharing a tokenizer and training text share one
    entry per eval."""
    from transformers import AutoConfig

    from qsens.families.loading import load_tokenizer, pretrained_kwargs
    from qsens.families.manifest import read_manifest
    from qsens.metrics.windows import build_eval_tokens, model_max_length

    out: dict[str, dict] = {}
    streams: dict[tuple, np.ndarray] = {}
    for fam in suite.spec.families:
        ckpts = [c for c in suite.checkpoints if c.family == fam.name]
        if fam.manifest is None or not ckpts:
            continue
        manifest_path = (suite.path.parent / fam.manifest).resolve()
        tokenizer = load_tokenizer(ckpts[0])
        max_length = model_max_length(AutoConfig.from_pretrained(ckpts[0].location, **pretrained_kwargs(ckpts[0])),
                                      tokenizer)
        text_key = (tuple(str(_train_file(manifest_path, t).resolve()) for t in read_manifest(manifest_path).train_text),
                    tokenizer.backend_tokenizer.to_str() if hasattr(tokenizer, "backend_tokenizer") else fam.name)
        if text_key not in streams:
            streams[text_key] = manifest_stream(manifest_path, tokenizer)
        for ev in suite.evals:
            tokens = build_eval_tokens(ev.read(), tokenizer, ev.protocol, max_length)
            if tokens.digest in out:
                out[tokens.digest]["families"].append(fam.name)
                continue
            prev, targets = scored_pairs(tokens)
            base = ngram_baselines(streams[text_key], len(tokenizer), prev, targets)
            out[tokens.digest] = {"eval": ev.name, "families": [fam.name], **base, "margin": margin,
                                  "gate_loss": base["bigram"] - margin}
    return out


def write_baselines(results_dir: Path, suite, margin: float = 0.3) -> Path:
    """Write `suite_baselines` into the results folder (`qsens.store.baselines`); returns the file's path."""
    from qsens.store.baselines import write

    return write(Path(results_dir), suite_baselines(suite, margin))


def checkpoint_losses(manifest_path: Path, text: str, protocol, tokenizer) -> dict[str, float]:
    """Full-precision mean loss (nats/token) of every checkpoint of a manifest on one eval text, scored as the
    suite scores it (float32 weights upcast from what is stored): the checkpoint gate before any suite run."""
    import torch
    from transformers import AutoModelForCausalLM

    from qsens.families.manifest import read_manifest
    from qsens.metrics.scoring import score_reference
    from qsens.metrics.windows import build_eval_tokens

    manifest = read_manifest(manifest_path)
    tokens = build_eval_tokens(text, tokenizer, protocol)
    out = {}
    for c in manifest.checkpoints:
        model = AutoModelForCausalLM.from_pretrained(manifest.checkpoint_dir(manifest_path, c), dtype=torch.float32)
        out[c.name] = float(score_reference(model.eval(), tokens, torch.device("cpu"), keep_logits=False).nll.mean())
    return out


def main(argv: list[str]) -> int:
    if argv and argv[0] == "fp":  # fp SPEC FAMILY_DIR SUITE EVAL: the checkpoint gate from the checkpoints alone
        from transformers import AutoTokenizer

        from qsens.testbed.ladder import Ladder
        from qsens.testbed.spec import load_ladder_spec
        from qsens.metrics.text import read_text
        from qsens.metrics.windows import build_eval_tokens
        import yaml

        from qsens.suites.config import SuiteSpec

        spec, family, suite_path, name = Path(argv[1]), Path(argv[2]), Path(argv[3]), argv[4]
        # the suite's eval only: a family still in training may not yet fill every family of the suite
        ev = next(e for e in SuiteSpec.model_validate(yaml.safe_load(suite_path.read_text())).evals if e.name == name)
        text, protocol = read_text(suite_path.parent / ev.path), ev.resolved_protocol()
        ladder = Ladder(load_ladder_spec(spec), spec, family, log=lambda m: None)
        tok = AutoTokenizer.from_pretrained(family / "tokenizer")
        prev, targets = scored_pairs(build_eval_tokens(text, tok, protocol))
        base = ngram_baselines(ladder.stream, len(tok), prev, targets)
        losses = checkpoint_losses(family / "manifest.json", text, protocol, tok)
        print(json.dumps({"eval": name, "baselines": base, "fp_loss": losses,
                          "gate": checkpoint_gate(losses, base["bigram"])}, indent=2))
        return 0
    if argv and argv[0] == "baselines":  # baselines SUITE RESULTS
        from qsens.suites.load import load_suite

        path = write_baselines(Path(argv[2]), load_suite(Path(argv[1])))
        print(path)
        return 0
    spec, family, results, suite = map(Path, argv[:4])
    gate_eval = argv[4] if len(argv) > 4 else "heldout-novels"
    bits = int(argv[5]) if len(argv) > 5 else 3
    group = int(argv[6]) if len(argv) > 6 else 8
    primary = {"method": "rtn", "bits": bits, "group_size": group}
    report = family_report(spec, family, results, suite, primary, gate_eval)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
