"""Issue 25's hostile family specs and nightly configs, the twins of test_hostile.py: each ends in exit 2 and one
line per bad key naming the file, the key path and the value, before anything is trained, run or written."""

from __future__ import annotations

import sqlite3
import textwrap

import pytest

from qsens.cli import main as cli_main
from tests.conftest import TINY_SPEC, write_tiny_spec

FAMILY_CASES = [
    # (name, old, new, key path, what the message says)
    ("budget -5", "budgets: [16384, 65536]", "budgets: [-5]", "budgets[0]",
     "-5 tokens is less than one step of batch_size x sequence_length = 256 tokens"),
    ("budget below one step", "budgets: [16384, 65536]", "budgets: [100, 65536]", "budgets[0]", "at least 256"),
    ("seed as a string", "seed: 0", 'seed: "7"', "seed", "Input should be a valid integer (got '7')"),
    ("hidden as a string", "hidden: 16,", 'hidden: "8",', "sizes[0].hidden", "valid integer (got '8')"),
    ("budget as a string", "budgets: [16384, 65536]", 'budgets: ["4096"]', "budgets[0]", "valid integer"),
    ("batch_size as a string", "batch_size: 8", 'batch_size: "4"', "batch_size", "valid integer (got '4')"),
    ("hidden 2**40", "hidden: 16,", "hidden: 1099511627776,", "sizes[0]", "at most 2,000,000,000"),
    ("negative seed", "seed: 0", "seed: -1", "seed", "greater than or equal to 0"),
    ("vocab_size 0300 (YAML 1.1 octal)", "vocab_size: 300", "vocab_size: 0300", "vocab_size",
     "reads it as 192, YAML 1.2 as 300"),
    ("a schedule 'on'", "schedules: [cosine]", "schedules: [cosine, on]", "schedules[1]",
     "reads it as true, YAML 1.2 as the string 'on'"),
    ("threads 1:30", "threads: 1", "threads: 1:30", "threads", "reads it as 90"),
    ("peak_lr as a string", "peak_lr: 0.01", 'peak_lr: "0.01"', "optim.peak_lr", "valid number"),
    ("unknown key", "threads: 1", "threads: 1\nthreds: 2", "threds", "unknown key"),
]


@pytest.mark.parametrize("name,old,new,where,what", FAMILY_CASES, ids=[c[0] for c in FAMILY_CASES])
def test_hostile_family_spec_is_one_clear_message(tmp_path, capsys, name, old, new, where, what):
    assert old in TINY_SPEC
    spec = write_tiny_spec(tmp_path, **{old: new})
    code = cli_main(["family", "train", str(spec), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    assert f"{spec}: {where}: " in err and what in err, err
    assert not (tmp_path / "out").exists()  # refused before anything was made


def test_the_tiny_family_spec_is_valid(tmp_path):
    from qsens.testbed.spec import load_ladder_spec

    spec = load_ladder_spec(write_tiny_spec(tmp_path))
    assert spec.budgets == [16384, 65536] and spec.tokens_per_step == 8 * 32


def test_memory_is_checked_before_any_model_is_built(tmp_path, monkeypatch):
    """A size within MAX_PARAMS whose training would not fit in free memory: refused with the estimate, before
    the ladder builds its training model."""
    from qsens.testbed import ladder, spec as spec_module

    spec = spec_module.load_ladder_spec(write_tiny_spec(tmp_path))
    size = spec.sizes[1]  # h32: 2 x 16 x 32 x 32 ... parameters, counted independently below
    params = 300 * 32 + 1 * (4 * 32 * 32 + 3 * 32 * 96 + 2 * 32) + 32
    assert size.params(spec.vocab_size) == params
    monkeypatch.setattr("qsens.metrics.resources.available_bytes", lambda device: 16 * params)  # weights only
    monkeypatch.setattr(ladder, "build_training_model", lambda *a, **k: pytest.fail("allocated before the memory check"))
    with pytest.raises(ValueError, match=r"sizes: h32 needs about .* GiB to train .* but cpu has"):
        ladder.check_training_memory(spec, [size], "cpu")


def _nightly(folder, body: str):
    path = folder / "nightly.yaml"
    path.write_text(textwrap.dedent(body))
    return path


NIGHTLY_CASES = [
    ("log is the results database", "log: results/nightly.jsonl", "log: results/t/qsens.sqlite", "log",
     "names a results database (qsens.sqlite)"),
    ("fit yes", "fit: true", "fit: yes", "fit", "reads it as true"),
    ("fit as a string", "fit: true", 'fit: "true"', "fit", "valid boolean"),
    ("retries as a string", "retries: 1", 'retries: "2"', "suites[0].retries", "valid integer (got '2')"),
    ("retries 010", "retries: 1", "retries: 010", "suites[0].retries", "reads it as 8, YAML 1.2 as 10"),
    ("an executor that does not exist", "executor: local", "executor: slurm", "suites[0].executor", "'slurm'"),
    ("board without out", "board: {results: results, out: site}", "board: {results: results}", "board.out",
     "Field required"),
    ("unknown key", "fit: true", "fit: true\nfitt: false", "fitt", "unknown key"),
    ("retries 10**6", "retries: 1", "retries: 1000000", "suites[0].retries", "less than or equal to 100"),
    ("log with a NUL byte", "log: results/nightly.jsonl", 'log: "results/a\\0.jsonl"', "log", "holds a NUL byte"),
    ("log names a folder", "log: results/nightly.jsonl", "log: .", "log", "is a folder"),
    ("log name too long", "log: results/nightly.jsonl", f"log: {'x' * 300}.jsonl", "log", "cannot be used as a file"),
    ("an empty suite path", "suite: suite.yaml", 'suite: ""', "suites[0].suite", "at least 1 character"),
]
NIGHTLY = """\
suites:
  - {suite: suite.yaml, executor: local, retries: 1}
fit: true
board: {results: results, out: site}
log: results/nightly.jsonl
"""


@pytest.mark.parametrize("name,old,new,where,what", NIGHTLY_CASES, ids=[c[0] for c in NIGHTLY_CASES])
def test_hostile_nightly_config_is_one_clear_message(tmp_path, capsys, name, old, new, where, what):
    assert old in NIGHTLY
    config = _nightly(tmp_path, NIGHTLY.replace(old, new))
    code = cli_main(["nightly", str(config)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    assert f"{config}: {where}: " in err and what in err, err
    assert not (tmp_path / "results").exists()  # nothing ran, nothing was written


def test_a_log_that_is_an_sqlite_file_is_refused(tmp_path, capsys):
    """Issue 25: `log:` naming the database appended the run record to it; a database under another name is
    recognised by its header."""
    db = tmp_path / "other.db"
    with sqlite3.connect(db) as con:
        con.execute("CREATE TABLE t (x)")
    before = db.read_bytes()
    config = _nightly(tmp_path, NIGHTLY.replace("log: results/nightly.jsonl", "log: other.db"))
    assert cli_main(["nightly", str(config)]) == 2
    err = capsys.readouterr().err
    assert f"{config}: log: is an SQLite database" in err and "(got 'other.db')" in err, err
    assert db.read_bytes() == before


def test_the_base_nightly_config_is_valid(tmp_path):
    from qsens.nightly import load_config

    config = load_config(_nightly(tmp_path, NIGHTLY))
    assert config.fit is True and config.suites[0].retries == 1 and config.board.out == "site"
