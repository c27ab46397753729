"""`qsens bench suite` on a tiny suite (two micro checkpoints, RTN at 2 and 8 bits, one short eval): the report's
arithmetic is checked against what the run recorded, counted independently (the store's SQLite file read directly,
the seconds recomputed from the baseline's per-eval timings). No speed is asserted."""

import gzip
import json
import sqlite3
import textwrap
from datetime import datetime

import pytest
import torch

from qsens.bench import suite as bench_suite
from qsens.cli import main as cli_main
from qsens.testbed.standins import REPO


@pytest.fixture
def tiny_suite(tmp_path):
    text = gzip.decompress((REPO / "data/eval/heldout-novels.txt.gz").read_bytes()).decode()[:20000]
    (tmp_path / "eval.txt").write_text(text)  # short: tokenizing the whole file would dominate the test
    path = tmp_path / "suite.yaml"
    path.write_text(textwrap.dedent(f"""
        name: bench-tiny
        seed: 0
        families:
          - name: micro
            manifest: {REPO / "checkpoints/micro/manifest.json"}
            select: {{size: [s24], schedule: [cosine]}}
        quantizers:
          - {{method: rtn, bits: [2, 8], group_size: 8}}
        evals:
          - {{name: novels, path: eval.txt,
              protocol: {{context_length: 64, max_tokens: 1024}}}}
        bootstrap: {{samples: 100}}
    """))
    return path


def test_report_arithmetic_matches_the_recorded_run(tiny_suite, tmp_path):
    before = torch.get_num_threads()
    r = bench_suite.run(tiny_suite, limit_checkpoints=2, results_dir=tmp_path / "res", threads=1)
    assert torch.get_num_threads() == before  # the thread count was the run's only
    with sqlite3.connect(tmp_path / "res" / "qsens.sqlite") as con:
        rows = con.execute("SELECT checkpoint, status, fp_loss FROM cells").fetchall()
        first, last = con.execute("SELECT min(started_at), max(finished_at) FROM cells").fetchone()
    assert r["checkpoints"] == 2 and r["k"] == 2 and r["threads"] == 1
    assert r["cells"] == len(rows) == r["planned"] == 2 * 2 * 1  # checkpoints x quantizers x evals
    assert r["statuses"] == {"ok": 4}
    # the cells' own timestamps (whole seconds) lie within the suite's timed wall
    span = (datetime.fromisoformat(last) - datetime.fromisoformat(first)).total_seconds()
    assert 0 <= span <= r["suite_seconds"] + 1
    assert r["cells_per_s"] == pytest.approx(len(rows) / r["suite_seconds"], rel=1e-12)
    base = sum(s for b in r["baseline"] for s in b["per_eval"].values())
    assert r["baseline_seconds"] == pytest.approx(base, rel=1e-12)
    assert r["fp_passes"] == pytest.approx(r["suite_seconds"] / base, rel=1e-12)
    assert r["goal_fp_passes"] == pytest.approx(1 + 1.1 * 2)
    # the baseline timed the suite's own fp work: same checkpoints, same tokens, same fp loss
    fp = {(b["checkpoint"], loss) for b in r["baseline"] for loss in b["fp_loss"].values()}
    assert {b["checkpoint"] for b in r["baseline"]} == {c for c, _, _ in rows}
    for ckpt, _, stored in rows:
        assert any(c == ckpt and loss == pytest.approx(stored, rel=1e-9) for c, loss in fp)
    md = bench_suite.to_markdown(r, "qsens bench suite")
    assert "| cells | 4 of 4 planned (4 ok) |" in md and f"| {r['fp_passes']:.2f} (goal ≤ 1 + 1.1·k = 3.2) |" in md


def test_cli_writes_report_and_json(tiny_suite, tmp_path, capsys):
    out = tmp_path / "bench" / "suite.md"
    assert cli_main(["bench", "suite", str(tiny_suite), "--limit-checkpoints", "1", "--out", str(out)]) == 0
    data = json.loads(out.with_suffix(".json").read_text())
    assert data["cells"] == 2 and out.read_text() == capsys.readouterr().out.rstrip("\n") + "\n"
    assert cli_main(["bench", "suite", str(tiny_suite), "--limit-checkpoints", "0"]) == 2
    assert cli_main(["bench", "suite", str(tiny_suite), "--threads", "0"]) == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text(tiny_suite.read_text().replace("seed: 0", "seed: 0\nbogus: 1"))
    assert cli_main(["bench", "suite", str(bad)]) == 2
    assert "bogus" in capsys.readouterr().err
