"""Issue 16's hostile and careless suites and manifests: each ends in exit 2 and one message naming the file, the
key path and what is allowed — never a traceback, a silent guess or a runaway allocation."""

from __future__ import annotations

import json
import textwrap
import tracemalloc

import pytest

from qsens.cli import main as cli_main


@pytest.fixture
def folder(tmp_path):
    ck = tmp_path / "ck"
    ck.mkdir()
    (ck / "config.json").write_text(json.dumps({"max_position_embeddings": 256}))
    (ck / "model.safetensors").write_bytes(b"weights")
    (tmp_path / "eval.txt").write_text("some text to score\n" * 20)
    fam = tmp_path / "fam"
    (fam / "m1").mkdir(parents=True)
    (fam / "m1" / "config.json").write_text("{}")
    (fam / "m1" / "model.safetensors").write_bytes(b"weights")
    (fam / "manifest.json").write_text(json.dumps(manifest()))
    return tmp_path


def manifest(**over) -> dict:
    ckpt = dict(name="m1", path="m1", size="s", schedule="cosine", n_params=1000, n_params_total=2000, tokens=5000,
                steps=10, tokens_per_step=500, epochs=0.5, lr_at_checkpoint=0.0, peak_lr=0.01, seed=0,
                data_order="seeded")
    return {"format": 1, "family": "fam", "checkpoints": [{**ckpt, **over}]}


SUITE = """\
name: t
seed: 0
families:
  - name: local
    checkpoints:
      - {path: ck, n_params: 1000, tokens: 5000}
  - name: trained
    manifest: fam/manifest.json
quantizers:
  - {method: rtn, bits: 4, group_size: 32, symmetric: false}
evals:
  - {name: e, path: eval.txt, protocol: {context_length: 64}}
bootstrap: {samples: 1000}
"""


def validate(path, capsys) -> tuple[int, str]:
    code = cli_main(["validate", str(path)])
    return code, capsys.readouterr().err


def write(folder, body: str | bytes):
    path = folder / "suite.yaml"
    path.write_bytes(body if isinstance(body, bytes) else textwrap.dedent(body).encode())
    return path


def test_the_base_suite_is_valid(folder, capsys):
    assert validate(write(folder, SUITE), capsys) == (0, "")


CASES = [
    # (name, old, new, key path, what the message says)
    ("group_size 2**70", "group_size: 32", f"group_size: {2**70}", "quantizers[0].group_size", "64 bits"),
    ("seed 2**70", "seed: 0", f"seed: {2**70}", "seed", "64 bits"),
    ("seed -1", "seed: 0", "seed: -1", "seed", "greater than or equal to 0"),
    ("n_params 2**70", "n_params: 1000, tokens", f"n_params: {2**70}, tokens", "families[0].checkpoints[0].n_params",
     "64 bits"),
    ("method is a mapping", "method: rtn", "method: {name: rtn}", "quantizers[0].method", "must be one of"),
    ("device cuda without CUDA", "seed: 0", "seed: 0\ndevice: cuda", "device", "no CUDA device"),
    ("duplicate key", "seed: 0", "seed: 0\nseed: 1", "", "at line 3, column 1: duplicate key 'seed' (first on line 2)"),
    ("duplicate key in flow mapping", "bits: 4,", "bits: 4, bits: 8,", "", "duplicate key 'bits'"),
    ("bits as a string", "bits: 4", 'bits: "4"', "quantizers[0].bits", "valid integer"),
    ("symmetric yes", "symmetric: false", "symmetric: yes", "quantizers[0].symmetric",
     "yes is ambiguous: YAML 1.1 (yaml.safe_load and many tools) reads it as true, YAML 1.2 as the string 'yes'"),
    ("symmetric quoted", "symmetric: false", 'symmetric: "true"', "quantizers[0].symmetric", "valid boolean"),
    ("context length as a string", "context_length: 64", 'context_length: "64"', "evals[0].protocol.context_length",
     "valid integer"),
    ("context beyond max positions", "context_length: 64", "context_length: 512", "evals[0].protocol.context_length",
     "max_position_embeddings 256"),
    ("name ..", "name: t", "name: ..", "name", "dots only"),
    ("name with a separator", "name: t", "name: a/b", "name", "pattern"),
    ("group_size 1e8 (float)", "group_size: 32", "group_size: 1e8", "quantizers[0].group_size", "valid integer"),
    ("group_size 10**8", "group_size: 32", "group_size: 100000000", "quantizers[0].group_size", "at most 65,536"),
    ("bootstrap 1e12", "samples: 1000", "samples: 1000000000000", "bootstrap.samples", "less than or equal to 20000"),
    ("empty sweep", "bits: 4", "bits: []", "quantizers[0].bits", "empty list"),
    ("missing manifest folder", "manifest: fam/manifest.json", "manifest: nofam/manifest.json",
     "families[1].manifest", "file not found"),
    ("infinite float", "samples: 1000}", "samples: 1000, confidence: .inf}", "bootstrap.confidence", "finite"),
    ("a set", "seed: 0", "seed: !!set {a, b}", "seed", "YAML type set"),
    ("non-string key", "seed: 0", "seed: 0\n1: x", "", "keys must be strings"),
    ("html and markup in an unknown key", "seed: 0", "seed: 0\n'<b>[red]x': 1", "<b>[red]x", "unknown key"),
    # issue 25
    ("bits 010 (YAML 1.1 octal)", "bits: 4", "bits: 010", "quantizers[0].bits",
     "010 is ambiguous: YAML 1.1 (yaml.safe_load and many tools) reads it as 8, YAML 1.2 as 10; write 8 or 10"),
    ("name no (YAML 1.1 boolean)", "name: t", "name: no", "name", "reads it as false, YAML 1.2 as the string 'no'"),
    ("symmetric on", "symmetric: false", "symmetric: on", "quantizers[0].symmetric", "reads it as true"),
    ("sexagesimal 1:30", "seed: 0", "seed: 1:30", "seed", "reads it as 90, YAML 1.2 as the string '1:30'"),
    ("digit separators", "samples: 1000}", "samples: 1_000}", "bootstrap.samples", "reads it as 1000"),
    ("binary 0b100", "bits: 4", "bits: 0b100", "quantizers[0].bits", "reads it as 4"),
    ("tokens 0 on a local checkpoint", "n_params: 1000, tokens: 5000", "n_params: 1000, tokens: 0",
     "families[0].checkpoints[0].tokens", "greater than or equal to 1"),
    ("tokens from step 0", "n_params: 1000, tokens: 5000}", "n_params: 1000, step: 0}\n    tokens_per_step: 100",
     "families[0].checkpoints[0]", "0 tokens: a checkpoint must have seen at least 1 token"),
    ("hub repo id ../../etc", "  - name: trained\n", "  - name: hub\n    hub: ../../etc\n    n_params: 10\n"
     "    checkpoints: [{revision: main, tokens: 5}]\n  - name: trained\n", "families[1].hub",
     "not a hub repo id: Repo id must be in the form 'repo_name' or 'namespace/repo_name': '../../etc'"),
    ("hub repo id with a leading /", "  - name: trained\n", "  - name: hub\n    hub: /etc/passwd\n    n_params: 10\n"
     "    checkpoints: [{revision: main, tokens: 5}]\n  - name: trained\n", "families[1].hub", "not a hub repo id"),
    ("hub revision ../x", "  - name: trained\n", "  - name: hub\n    hub: org/model\n    n_params: 10\n"
     "    checkpoints: [{revision: ../x, tokens: 5}]\n  - name: trained\n", "families[1].checkpoints[0].revision",
     "not a valid hub revision"),
    ("hub revision with a leading /", "  - name: trained\n", "  - name: hub\n    hub: org/model\n    n_params: 10\n"
     "    checkpoints: [{revision: /main, tokens: 5}]\n  - name: trained\n", "families[1].checkpoints[0].revision",
     "not a valid hub revision"),
    ("the same checkpoint under two names", "      - {path: ck, n_params: 1000, tokens: 5000}\n",
     "      - {path: ck, n_params: 1000, tokens: 5000}\n      - {path: ck, name: again, n_params: 1000, tokens: 5000}\n",
     "families[0]", "checkpoint 'again' is the same as 'local/ck' (same weights"),
    ("two identical families", "    manifest: fam/manifest.json\n",
     "    manifest: fam/manifest.json\n  - name: trained2\n    manifest: fam/manifest.json\n", "families[2]",
     "family 'trained2' lists the same checkpoints as family 'trained'"),
]


@pytest.mark.parametrize("name,old,new,where,what", CASES, ids=[c[0] for c in CASES])
def test_hostile_suite_is_one_clear_message(folder, capsys, name, old, new, where, what):
    assert old in SUITE
    path = write(folder, SUITE.replace(old, new, 1))
    code, err = validate(path, capsys)
    assert code == 2, err
    assert "Traceback" not in err and str(path) in err
    assert f"{path}: {where or '<top>'}" in err or (where and f": {where}" in err), err
    assert what in err, err


def test_quoted_yaml_1_1_words_and_dates_stay_strings(folder, capsys):
    """Quoted, `no` is the string it says; a date is a string too (no timestamp type), so names like these are
    taken as written."""
    from qsens.suites.load import load_suite

    suite = load_suite(write(folder, SUITE.replace("name: t", "name: 'no'", 1).replace("name: e,", "name: 2024-01-01,")))
    assert suite.name == "no" and suite.evals[0].name == "2024-01-01"


@pytest.mark.parametrize("over,where,what", [
    ({"tokens": -5}, "checkpoints[0].tokens", "greater than or equal to 1"),
    ({"tokens": 0}, "checkpoints[0].tokens", "greater than or equal to 1"),
    ({"n_params": 2**70}, "checkpoints[0].n_params", "64 bits"),
    ({"tokens": "5000"}, "checkpoints[0].tokens", "valid integer"),
    ({"path": "gone"}, "", "folder not found"),
])
def test_hostile_manifest_is_one_clear_message(folder, capsys, over, where, what):
    (folder / "fam" / "manifest.json").write_text(json.dumps(manifest(**over)))
    code, err = validate(write(folder, SUITE), capsys)
    assert code == 2 and "Traceback" not in err, err
    assert "families[1].manifest" in err and where in err and what in err, err
    assert "Repo id" not in err


def test_manifest_with_a_duplicate_key_or_bad_bytes(folder, capsys):
    text = json.dumps(manifest()).replace('"family": "fam"', '"family": "fam", "family": "other"')
    (folder / "fam" / "manifest.json").write_text(text)
    code, err = validate(write(folder, SUITE), capsys)
    assert code == 2 and "duplicate key 'family'" in err, err
    (folder / "fam" / "manifest.json").write_bytes(json.dumps(manifest()).encode("utf-16"))
    code, err = validate(write(folder, SUITE), capsys)
    assert code == 2 and "not UTF-8" in err, err


@pytest.mark.parametrize("encoding", ["latin-1", "utf-16"])
def test_a_suite_that_is_not_utf8(folder, capsys, encoding):
    path = write(folder, SUITE.replace("name: t", "name: t\ndescription: café").encode(encoding))
    code, err = validate(path, capsys)
    assert code == 2 and "not UTF-8" in err and "Traceback" not in err, err


@pytest.mark.parametrize("content,what", [("", "empty"), ("  \n\t\n", "only whitespace"),
                                          (b"caf\xe9\n", "not UTF-8"), (b"\x1f\x8b\x08junk", "gzip"),
                                          ("\u200b\u200b\ufeff\u200d\n" * 50, "no visible character"),
                                          (b"\x00" * 1000, "no visible character"),
                                          ("\x1b\x07\x01\x7f\u0085\n" * 10, "no visible character")])
def test_eval_text_is_checked_up_front(folder, capsys, content, what):
    name = "eval.txt.gz" if what == "gzip" else "eval.txt"
    target = folder / name
    target.write_bytes(content if isinstance(content, bytes) else content.encode())
    code, err = validate(write(folder, SUITE.replace("path: eval.txt", f"path: {name}")), capsys)
    assert code == 2 and "evals[0].path" in err and what in err, err


@pytest.mark.parametrize("breakage,what", [("no weights", "no weights"), ("empty weights", "empty weights"),
                                           ("bad config", "not valid UTF-8 JSON")])
def test_checkpoint_folder_is_checked_up_front(folder, capsys, breakage, what):
    ck = folder / "ck"
    if breakage == "no weights":
        (ck / "model.safetensors").unlink()
    elif breakage == "empty weights":
        (ck / "model.safetensors").write_bytes(b"")
    else:
        (ck / "config.json").write_bytes(b"{\xff")
    code, err = validate(write(folder, SUITE), capsys)
    assert code == 2 and "families[0].checkpoints[0].path" in err and what in err, err


def test_unknown_keys_are_rejected_before_any_sweep_expands(folder, capsys):
    """Eight unknown keys of ten values each would be 10^8 settings: refused at once, in little memory."""
    junk = ", ".join(f"junk{i}: [{', '.join(map(str, range(10)))}]" for i in range(8))
    path = write(folder, SUITE.replace("symmetric: false", f"symmetric: false, {junk}"))
    tracemalloc.start()
    code, err = validate(path, capsys)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert code == 2 and "quantizers[0].junk0: unknown key (allowed for rtn:" in err, err
    assert peak < 50 * 2**20, peak


def test_a_sweep_beyond_the_limit_names_its_count_and_factors(folder, capsys):
    body = SUITE.replace("{method: rtn, bits: 4, group_size: 32, symmetric: false}",
                         "{method: rtn, bits: [2, 3, 4, 5, 6, 7, 8], group_size: [%s], symmetric: [true, false]}"
                         % ", ".join(str(g) for g in range(1, 1001)))
    code, err = validate(write(folder, body), capsys)
    assert code == 2, err
    assert "the sweeps make 14,000 settings, more than the limit of 10,000" in err, err
    assert "bits (7) x group_size (1000) x symmetric (2)" in err, err


def test_a_large_suite_file_is_refused_before_reading(folder, capsys):
    path = write(folder, SUITE + "description: '" + "x" * (2 << 20) + "'\n")
    code, err = validate(path, capsys)
    assert code == 2 and "the limit is 1,048,576" in err, err


def test_aliases_cannot_blow_up(folder, capsys):
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, "
              f"*a{i - 1}, *a{i - 1}]" for i in range(1, 9)]
    code, err = validate(write(folder, "\n".join(lines) + "\n" + SUITE), capsys)
    assert code == 2 and "more than 100,000 values" in err, err


@pytest.mark.parametrize("expands_to,protocol,what", [
    (80 << 20, "{context_length: 64}", "holds more than 67,108,864 bytes decompressed; the limit for a text is "
                                       "67,108,864 bytes"),
    (8 << 20, "{context_length: 64, max_tokens: 512}", "with max_tokens 512 the limit is max(4,194,304, 64 bytes x "
                                                        "max_tokens) = 4,194,304 bytes"),
])
def test_a_gzip_bomb_is_refused_in_bounded_memory(folder, capsys, expands_to, protocol, what):
    """Issue 25: 1 MB of gzip expanding to 1 GiB passed validate and the run grew to 21 GB. The text is
    decompressed as a stream and refused past its limit (the stated cap, or a bound max_tokens sets)."""
    import gzip

    bomb = folder / "bomb.txt.gz"
    with gzip.open(bomb, "wb", compresslevel=1) as f:
        chunk = b"a" * (1 << 20)
        for _ in range(expands_to >> 20):
            f.write(chunk)
    body = SUITE.replace("path: eval.txt, protocol: {context_length: 64}", f"path: bomb.txt.gz, protocol: {protocol}")
    tracemalloc.start()
    code, err = validate(write(folder, body), capsys)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert code == 2 and "evals[0].path" in err and what in err, err
    assert peak < (64 << 20) * 1.5, peak  # never more than the limit (+1 byte) held


def test_the_run_reads_an_eval_text_within_the_same_limit(tmp_path):
    """The runner's reader enforces the limit validate checked (a file swapped after validate cannot blow up)."""
    import gzip

    from qsens.metrics.text import TextTooLarge, read_text, text_limit

    path = tmp_path / "t.txt.gz"
    path.write_bytes(gzip.compress(b"word " * (1 << 20)))  # 5 MiB
    assert len(read_text(path)) == 5 << 20
    with pytest.raises(TextTooLarge):
        read_text(path, text_limit(512))


def test_a_text_swapped_after_validate_fails_its_cells_with_the_limit(tmp_path):
    """The runner's message names the file and why the limit is what it is (max_tokens 512: 4 MiB)."""
    import gzip

    from qsens.metrics.protocol import Protocol
    from qsens.metrics.text import TextTooLarge
    from qsens.runner.checkpoint import _cached_eval_tokens
    from qsens.suites.load import EvalText

    path = tmp_path / "swapped.txt.gz"
    path.write_bytes(gzip.compress(b"a" * (5 << 20)))  # 5 MiB > max(4 MiB, 64 x 512)
    ev = EvalText("e", path, Protocol(context_length=64, max_tokens=512), "0" * 16)
    with pytest.raises(TextTooLarge, match=r"swapped\.txt\.gz holds more than 4,194,304 bytes decompressed; with "
                                           r"max_tokens 512 the limit is max\(4,194,304, 64 bytes x max_tokens\)"):
        _cached_eval_tokens(None, ev, 64)


def test_an_eval_path_that_is_a_symlink_loop(folder, capsys):
    """Issue 25: it exited 70 (Path.resolve raised RuntimeError); now exit 2 naming the key."""
    import os

    os.symlink("loop-b.txt", folder / "loop-a.txt")
    os.symlink("loop-a.txt", folder / "loop-b.txt")
    code, err = validate(write(folder, SUITE.replace("path: eval.txt", "path: loop-a.txt")), capsys)
    assert code == 2 and "evals[0].path" in err and "symlink loop" in err and "Traceback" not in err, err


ANSI = "x\x1b[2J\x1b]0;pwned\x07\x1b]8;;http://e/\x1b\\link\u202eevil"


def test_escapes_in_names_never_reach_the_terminal(folder, capsys):
    """Issue 25: raw ANSI/OSC escapes in a checkpoint name reached the terminal summary (`ESC[2J`, a title)."""
    import io
    from collections import Counter

    from rich.console import Console

    from qsens.runner.loop import RunSummary
    from qsens.runner.summary import print_summary
    from qsens.store import ResultStore
    from qsens.suites.load import load_suite

    name = json.dumps(ANSI)  # a YAML double-quoted string takes JSON's escapes
    suite = load_suite(write(folder, SUITE.replace("{path: ck, n_params", f"{{path: ck, name: {name}, n_params")))
    assert suite.checkpoints[0].name == ANSI
    store = ResultStore(folder / "res")
    row = {"key": "k1", "suite": "t", "family": "local", "checkpoint": ANSI, "eval": ANSI, "quantizer": "rtn-w4",
           "n_params": 1000, "tokens": 5000, "status": "failed", "error": f"RuntimeError: {ANSI}"}
    store.save(row)
    out = io.StringIO()
    print_summary(suite, store, RunSummary(planned_keys=("k1",), skipped=0, statuses=Counter(failed=1)), Console(file=out, width=300))
    text = out.getvalue()
    assert "\x1b" not in text and "\x07" not in text and "\u202e" not in text, repr(text)
    assert "\\x1b[2J" in text  # shown, as data
    code, err = validate(write(folder, SUITE.replace("name: t", f"name: t\n{name}: 1")), capsys)  # an unknown key
    assert code == 2 and "\x1b" not in err, repr(err)


def test_a_pruned_manifest_checkpoint_names_the_way_back_and_the_way_works(folder, capsys):
    """A checkpoint removed from the tree after scoring (a family kept under its size cap) fails validate with the
    git commands that restore it; run as printed, in a real repository, they bring back the same bytes."""
    import re
    import shutil
    import subprocess

    def git(*args):
        return subprocess.run(["git", "-C", str(folder), *args], check=True, capture_output=True, text=True).stdout

    git("init", "-q")
    git("-c", "user.name=t", "-c", "user.email=t@t", "add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "family")
    shutil.rmtree(folder / "fam" / "m1")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "prune m1")
    code, err = validate(write(folder, SUITE), capsys)
    assert code == 2 and "folder not found" in err and "checkpoint 'm1'" in err, err
    find = re.search(r"`(git log [^`]+)`", err).group(1).split()
    commit = subprocess.run(find, cwd=folder, check=True, capture_output=True, text=True).stdout.strip()
    assert commit == git("rev-parse", "--short", "HEAD").strip()
    restore = re.search(r"`(git checkout [^`]+)`", err).group(1).replace("COMMIT", commit).split()
    subprocess.run(restore, cwd=folder, check=True, capture_output=True)
    assert (folder / "fam" / "m1" / "model.safetensors").read_bytes() == b"weights"
    assert validate(write(folder, SUITE), capsys)[0] == 0
