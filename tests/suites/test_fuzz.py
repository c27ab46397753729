"""Fuzzing suite, manifest, family-spec and nightly-config loading with Hypothesis (issues 16 and 25).

Each example starts from a valid suite (or manifest) and breaks it: a value anywhere replaced by a hostile one
(wrong type, a number as a string, "yes", integers beyond 64 bits, negative numbers, inf/NaN, huge floats, lists,
mappings, null, console markup, HTML, control characters, path tricks), an unknown key added at any depth, a key
given twice at any depth, a required key removed, or the file re-encoded (UTF-16, Latin-1, invalid bytes).

The property: `qsens validate` (the CLI entry, in-process) exits 0 for a document that is still valid and 2
otherwise, with every problem on a line `file: key path: what`, naming a path the mutation touched (or the file
itself, for encodings and duplicate keys); never a traceback or any other status; each example within the
Hypothesis deadline. A handful of hostile files also go through a real `python -m qsens validate` subprocess.
Family specs and nightly configs get the same mutations (and unquoted YAML 1.1/1.2-ambiguous scalars, as suites do)
through their loaders. CI runs 1,000 suite/manifest and 600 family/nightly examples (derandomized, so a failure
reproduces); QSENS_HEAVY=full runs 10,000 and 5,000 random ones.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import re
import subprocess
import sys
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qsens.cli import main as cli_main

FULL = os.environ.get("QSENS_HEAVY") == "full"

SUITE = {
    "name": "fz", "seed": 0, "device": "cpu",
    "families": [
        {"name": "local", "checkpoints": [{"path": "ck", "n_params": 1000, "tokens": 5000}]},
        {"name": "trained", "manifest": "fam/manifest.json", "select": {"schedule": ["cosine"]}},
        {"name": "hub", "hub": "org/model", "n_params": 2000, "tokens_per_step": 100,
         "checkpoints": [{"revision": "step10"}]},
    ],
    "quantizers": [{"method": "rtn", "bits": [2, 4], "group_size": 32, "symmetric": False},
                   {"method": "noise", "magnitude": 0.1}],
    "evals": [{"name": "e", "path": "eval.txt", "protocol": {"context_length": 64, "max_tokens": 512}}],
    "metrics": ["delta_loss", "kl"],
    "bootstrap": {"samples": 200, "confidence": 0.9},
}
MANIFEST = {"format": 1, "family": "fam", "checkpoints": [dict(
    name="m1", path="m1", size="s", schedule="cosine", n_params=1000, n_params_total=2000, tokens=5000, steps=10,
    tokens_per_step=500, epochs=0.5, lr_at_checkpoint=0.0, peak_lr=0.01, seed=0, data_order="seeded")]}

# A family spec (qsens family train) and a nightly config: only loaded, so their files need not exist.
FAMILY = {
    "name": "fzf", "seed": 0, "train_text": ["a.txt.gz"], "vocab_size": 300, "sequence_length": 32, "batch_size": 8,
    "sizes": [{"name": "h16", "hidden": 16, "layers": 1, "heads": 2, "mlp": 48, "seeds": [0, 1]}],
    "budgets": [16384, 65536], "schedules": ["cosine", "wsd"], "cooldowns": [{"fraction": 0.2, "budgets": "all"}],
    "optim": {"peak_lr": 0.01, "warmup_steps": 8, "betas": [0.9, 0.95]}, "threads": 1, "device": "cpu",
}
NIGHTLY = {
    "suites": [{"suite": "suite.yaml", "results": "res/a", "executor": "local", "retries": 1},
               {"suite": "other.yaml", "executor": "ray", "address": "auto", "num_gpus_per_task": 0.5}],
    "fit": True, "board": {"results": "res", "out": "site"}, "log": "res/nightly.jsonl",
}
BASES = {"suite": SUITE, "manifest": MANIFEST, "family": FAMILY, "nightly": NIGHTLY}
# Plain scalars YAML 1.1 and 1.2 read differently, written unquoted into the file (issue 25).
AMBIGUOUS = ["010", "yes", "No", "on", "OFF", "1:30", "0b11", "1_000", "09", "-007"]

HOSTILE = [
    "4", "yes", "no", "on", "", " ", "..", "../../etc", "/abs/path", "a/b", "[red]x[/red]", "x[/red]", "[bold",
    "<script>alert(1)</script>", "&amp;<b>", "=cmd|' /C calc'!A0", "+1", "-1", "@SUM(A1)", "\x1b[31mred", "tab\there",
    "nul\x00byte", "ünïcödé ✓", "x" * 500, 2**64, -(2**64), 2**70, -1, 0, -2**63 - 1, 10**30, 1e308, -1e308,
    float("inf"), float("-inf"), float("nan"), 0.5, 1e-300, True, False, None, [], [1, "a"], {}, {"a": 1},
    {"method": "rtn"}, [[[[]]]], [None],
]

counts: Counter = Counter()


def _paths(node, at=()):
    """Every (path, value) in a document, the root included."""
    yield at, node
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, at + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, at + (i,))


def _get(doc, path):
    for p in path:
        doc = doc[p]
    return doc


def _dotted(path) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


@st.composite
def mutated(draw, targets=("suite", "suite", "suite", "manifest")):
    """(target: a key of BASES, file bytes, paths touched, mutation kinds)."""
    target = draw(st.sampled_from(targets))
    doc = copy.deepcopy(BASES[target])
    touched, kinds, dups, plain = [], [], [], []
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p, _ in _paths(doc)]
        kind = draw(st.sampled_from(["value", "value", "value", "unknown", "duplicate", "remove"]
                                    + (["ambiguous"] if target != "manifest" else [])))
        path = draw(st.sampled_from(paths))
        parent_path = path if isinstance(_get(doc, path), dict) else None
        if kind == "ambiguous" and path:
            marker = f"zzamb{len(plain)}zz"
            _get(doc, path[:-1])[path[-1]] = marker
            plain.append((marker, draw(st.sampled_from(AMBIGUOUS))))
        elif kind == "value" and path:
            value = draw(st.one_of(st.sampled_from(HOSTILE), st.integers(), st.floats(), st.text(max_size=30),
                                   st.lists(st.integers(), max_size=3)))
            _get(doc, path[:-1])[path[-1]] = value
        elif kind in ("unknown", "duplicate") and parent_path is not None:
            parent = _get(doc, parent_path)
            if kind == "unknown":
                key = draw(st.sampled_from(["junk", "<b>x</b>", "[red]k", "bitz", "x" * 80, "0"]))
                parent[key] = draw(st.sampled_from(HOSTILE[:20] + [[1, 2, 3] * 4]))
                path = parent_path + (key,)
            elif parent:
                key = draw(st.sampled_from(sorted(parent, key=str)))
                marker = f"zzdup{len(dups)}zz"
                parent[marker] = copy.deepcopy(parent[key])
                dups.append((marker, key))
                path = parent_path + (key,)
        elif kind == "remove" and path:
            container = _get(doc, path[:-1])
            del container[path[-1]]
        else:
            continue
        touched.append(path)
        kinds.append(kind)
    if target == "manifest":
        text = json.dumps(doc, allow_nan=True)
        for marker, key in dups:
            text = text.replace(json.dumps(marker), json.dumps(key))
    else:
        text = yaml.safe_dump(doc, allow_unicode=True, sort_keys=False, width=1000)
        for marker, key in dups:
            text = text.replace(f"{marker}:", f"{key}:")
        for marker, token in plain:
            text = text.replace(marker, token)
    encoding = draw(st.sampled_from(["utf-8"] * 8 + ["utf-16", "latin-1", "bad-bytes"]))
    if encoding == "bad-bytes":
        data = text.encode() + b"\n# \xff\xfe\x80\n"
    elif encoding == "latin-1":
        data = (text + "\n# caf\u00e9\n").encode("latin-1", errors="replace")
    else:
        data = text.encode(encoding)
    if encoding != "utf-8":
        kinds.append("encoding")
    return target, data, touched, kinds


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fuzz")
    (root / "ck").mkdir()
    (root / "ck" / "config.json").write_text(json.dumps({"max_position_embeddings": 128}))
    (root / "ck" / "model.safetensors").write_bytes(b"weights")
    (root / "fam" / "m1").mkdir(parents=True)
    (root / "fam" / "m1" / "config.json").write_text("{}")
    (root / "fam" / "m1" / "model.safetensors").write_bytes(b"weights")
    (root / "eval.txt").write_text("some words to score\n" * 50)
    return root


def _validate(path: Path) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = cli_main(["validate", str(path)])
    return code, err.getvalue()


def test_the_base_documents_are_valid(folder):
    (folder / "fam" / "manifest.json").write_text(json.dumps(MANIFEST))
    (folder / "suite.yaml").write_text(yaml.safe_dump(SUITE, sort_keys=False))
    assert _validate(folder / "suite.yaml") == (0, "")


def test_fuzz_suites_and_manifests(folder):
    suite_path, manifest_path = folder / "suite.yaml", folder / "fam" / "manifest.json"
    base_suite = yaml.safe_dump(SUITE, sort_keys=False).encode()
    _validate(suite_path)  # imports and the first file checks happen outside the deadline

    @settings(max_examples=10_000 if FULL else 1_000, deadline=timedelta(seconds=3), derandomize=not FULL,
              database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(case=mutated())
    def check(case):
        target, data, touched, kinds = case
        suite_path.write_bytes(data if target == "suite" else base_suite)
        manifest_path.write_bytes(data if target == "manifest" else json.dumps(MANIFEST).encode())
        code, err = _validate(suite_path)
        counts["generated"] += 1
        counts[f"{target} generated"] += 1
        assert "Traceback" not in err and code in (0, 2), (code, err)
        if code == 0:
            counts["still valid"] += 1
            counts[f"{target} accepted"] += 1
            assert err == ""
            return
        counts["rejected with a message"] += 1
        counts[f"{target} rejected"] += 1
        lines = err.splitlines()
        assert lines[0] == "invalid suite" and len(lines) > 1, err
        assert all(line.startswith(f"  {suite_path}: ") for line in lines[1:] if line.startswith("  /")), err
        problems = "\n".join(lines[1:])
        if target == "manifest":
            assert f"{suite_path}: families[1]." in problems, err
        elif not ({"encoding", "duplicate"} & set(kinds)):
            heads = {_dotted(p[:1]) for p in touched if p}
            assert any(f"{suite_path}: {h}" in problems for h in heads) or f"{suite_path}: <top>" in problems, err

    check()
    print(f"\nfuzz: {dict(counts)}")
    assert counts["generated"] >= (10_000 if FULL else 1_000)
    assert counts["rejected with a message"] >= 0.7 * counts["generated"]


def _load_outcome(target: str, path: Path) -> tuple[str, str]:
    """('accepted', '') or ('rejected', message) from the family-spec or nightly-config loader; anything else (another
    exception) propagates and fails the property."""
    from qsens.documents import DocumentError
    from qsens.nightly import ConfigError, load_config
    from qsens.testbed.spec import load_ladder_spec

    try:
        load_ladder_spec(path) if target == "family" else load_config(path)
    except (DocumentError, ConfigError) as exc:
        return "rejected", str(exc)
    return "accepted", ""


def test_fuzz_family_specs_and_nightly_configs(tmp_path):
    """The same mutations on family specs and nightly configs (issue 25): each loads, or is refused with a message
    whose lines are all `file: key path: what` under `file: invalid family spec|nightly config`, naming a path the
    mutation touched (or <top>); never another exception."""
    paths = {"family": tmp_path / "family.yaml", "nightly": tmp_path / "nightly.yaml"}
    for target, path in paths.items():
        path.write_text(yaml.safe_dump(BASES[target], sort_keys=False))
        assert _load_outcome(target, path) == ("accepted", ""), target

    @settings(max_examples=5_000 if FULL else 600, deadline=timedelta(seconds=3), derandomize=not FULL,
              database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(case=mutated(targets=("family", "nightly")))
    def check(case):
        target, data, touched, kinds = case
        path = paths[target]
        path.write_bytes(data)
        outcome, message = _load_outcome(target, path)
        counts[f"{target} generated"] += 1
        counts[f"{target} {outcome}"] += 1
        if outcome == "accepted":
            return
        what = "family spec" if target == "family" else "nightly config"
        lines = message.splitlines()
        assert lines[0] == f"{path}: invalid {what}" and len(lines) > 1, message
        assert all(line.startswith(f"  {path}: ") for line in lines[1:]), message
        if not ({"encoding", "duplicate"} & set(kinds)):
            heads = {_dotted(p[:1]) for p in touched if p}
            assert any(f"{path}: {h}" in message for h in heads) or f"{path}: <top>" in message, message

    check()
    print(f"\nfuzz: {dict(counts)}")
    for target in paths:
        assert counts[f"{target} generated"] >= (1_000 if FULL else 200)
        assert counts[f"{target} rejected"] >= 0.6 * counts[f"{target} generated"]


HOSTILE_FILES = {
    "utf16": (yaml.safe_dump(SUITE) + "description: café\n").encode("utf-16"),
    "huge-int": yaml.safe_dump({**SUITE, "seed": 2**70}).encode(),
    "duplicate": (yaml.safe_dump(SUITE) + "seed: 1\n").encode(),
    "markup-key": yaml.safe_dump({**SUITE, "[red]x[/": 1}).encode(),
    "alias-bomb": ("a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"a{i}: &a{i} [{', '.join([f'*a{i - 1}' if i > 1 else '*a'] * 10)}]\n" for i in range(1, 8))).encode(),
}


# Each costs a fresh interpreter (~3 s); CI sends the two that only a real process can show (the decoder and the
# parser's own limits), the rest are checked in-process above and in test_hostile.py; QSENS_HEAVY=full sends all.
@pytest.mark.parametrize("name", sorted(HOSTILE_FILES) if FULL else ["alias-bomb", "utf16"])
def test_hostile_files_through_a_real_process(folder, name):
    (folder / "fam" / "manifest.json").write_text(json.dumps(MANIFEST))
    path = folder / f"hostile-{name}.yaml"
    path.write_bytes(HOSTILE_FILES[name])
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.run([sys.executable, "-m", "qsens", "validate", str(path)], capture_output=True, text=True,
                          timeout=120, env=env)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert re.search(rf"^  {re.escape(str(path))}: \S+: .+", proc.stderr, re.M), proc.stderr
