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
    r = bench_suite.run(tiny_suite, limit_checkpoints=2, results_dir=tmp_path / "res", threads=1, rounds=2)
    assert torch.get_num_threads() == before  # the thread count was the run's only
    with sqlite3.connect(tmp_path / "res" / "qsens.sqlite") as con:
        rows = con.execute("SELECT checkpoint, status, fp_loss FROM cells").fetchall()
        first, last = con.execute("SELECT min(started_at), max(finished_at) FROM cells").fetchone()
    assert r["checkpoints"] == 2 and r["k"] == 2 and r["threads"] == 1
    assert r["cells"] == len(rows) == r["planned"] == 2 * 2 * 1  # checkpoints x quantizers x evals
    assert r["statuses"] == {"ok": 4}
    # the cells' own timestamps (whole seconds) lie within the first round's timed suite run (it wrote res/)
    t = r["timing"]
    span = (datetime.fromisoformat(last) - datetime.fromisoformat(first)).total_seconds()
    assert 0 <= span <= t["wall"]["suite"][0] + 1
    assert r["cells_per_s"] == pytest.approx(len(rows) / r["suite_seconds"], rel=1e-12)
    assert t["orders"] == [["suite", "fp"], ["fp", "suite"]]
    assert r["suite_seconds"] == pytest.approx(sum(t["wall"]["suite"]) / 2, rel=1e-12)  # the median of two rounds
    base = sum(s for b in r["baseline"] for s in b["per_eval"].values())
    assert base <= t["wall"]["fp"][-1]  # the last round's baseline: its scoring, within its timed step
    per_round = [s / f for s, f in zip(t["cpu"]["suite"], t["cpu"]["fp"])]  # CPU seconds, round by round
    assert r["fp_passes_rounds"]["cpu"]["rounds"] == pytest.approx(per_round, rel=1e-3)
    assert r["fp_passes"] == pytest.approx(sum(per_round) / 2, rel=1e-3)
    assert r["ideal_fp_passes"] == 3 and r["goal_fp_passes"] == pytest.approx(1.1 * 3)
    # the baseline timed the suite's own fp work: same checkpoints, same tokens, same fp loss
    fp = {(b["checkpoint"], loss) for b in r["baseline"] for loss in b["fp_loss"].values()}
    assert {b["checkpoint"] for b in r["baseline"]} == {c for c, _, _ in rows}
    for ckpt, _, stored in rows:
        assert any(c == ckpt and loss == pytest.approx(stored, rel=1e-9) for c, loss in fp)
    md = bench_suite.to_markdown(r, "qsens bench suite")
    assert "| cells | 4 of 4 planned (4 ok) |" in md and "(ideal 1 + k = 3, goal ≤ 1.1·(1 + k) = 3.3) |" in md


def test_cli_writes_report_and_json(tiny_suite, tmp_path, capsys):
    out = tmp_path / "bench" / "suite.md"
    assert cli_main(["bench", "suite", str(tiny_suite), "--limit-checkpoints", "1", "--rounds", "1",
                     "--out", str(out)]) == 0
    data = json.loads(out.with_suffix(".json").read_text())
    assert data["cells"] == 2 and out.read_text() == capsys.readouterr().out.rstrip("\n") + "\n"
    assert cli_main(["bench", "suite", str(tiny_suite), "--limit-checkpoints", "0"]) == 2
    assert cli_main(["bench", "suite", str(tiny_suite), "--threads", "0"]) == 2
    assert cli_main(["bench", "suite", str(tiny_suite), "--rounds", "0"]) == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text(tiny_suite.read_text().replace("seed: 0", "seed: 0\nbogus: 1"))
    assert cli_main(["bench", "suite", str(bad)]) == 2
    assert "bogus" in capsys.readouterr().err


def test_cli_defaults_to_one_thread_and_three_rounds(tiny_suite, monkeypatch):
    """One torch thread, as `qsens run` gives each worker; three rounds, so the median leaves out the round whose
    suite run compiled the compare kernels."""
    seen = {}
    monkeypatch.setattr(bench_suite, "run", lambda suite, **kwargs: seen.update(kwargs) or {})  # no work done
    monkeypatch.setattr(bench_suite, "to_markdown", lambda r, command: "")
    assert cli_main(["bench", "suite", str(tiny_suite)]) == 0
    assert seen["threads"] == 1 and seen["rounds"] == 3 and seen["limit_checkpoints"] is None


@pytest.fixture
def layer_suite(tmp_path):
    """Two micro checkpoints, RTN 2-bit on 10 layer sets (whole, 2 blocks, 7 kinds), two short eval texts."""
    text = gzip.decompress((REPO / "data/eval/heldout-novels.txt.gz").read_bytes()).decode()
    (tmp_path / "a.txt").write_text(text[:12000])
    (tmp_path / "b.txt").write_text(text[40000:52000])
    path = tmp_path / "layers.yaml"
    path.write_text(textwrap.dedent(f"""
        name: bench-layers
        seed: 0
        families:
          - name: micro
            manifest: {REPO / "checkpoints/micro/manifest.json"}
            select: {{size: [s24], schedule: [cosine]}}
        quantizers:
          - {{method: rtn, bits: 2, group_size: 8, layers: [all, each_block, each_kind]}}
        evals:
          - {{name: a, path: a.txt, protocol: {{context_length: 64, max_tokens: 768}}}}
          - {{name: b, path: b.txt, protocol: {{context_length: 64, max_tokens: 512}}}}
        bootstrap: {{samples: 100}}
    """))
    return path


def _spy_forwards(monkeypatch):
    """Record every forward of the scoring loop (model object, its input windows) and every fp model loaded, by
    monkeypatching the loop's forward helper and the runner's model loader; independent of qsens.bench.passes."""
    import qsens.metrics.scoring as scoring
    import qsens.runner.checkpoint as checkpoint

    forwards, fp_models = [], []
    real_forward, real_load = scoring._scored_logits, checkpoint.load_model

    def forward(model, ids, rows, cols):
        forwards.append((model, [tuple(r.tolist()) for r in ids.cpu()]))
        return real_forward(model, ids, rows, cols)

    def load(ckpt, device):
        fp_models.append((ckpt.name, real_load(ckpt, device)))
        return fp_models[-1][1]

    monkeypatch.setattr(scoring, "_scored_logits", forward)
    monkeypatch.setattr(checkpoint, "load_model", load)
    return forwards, fp_models


def _eval_windows(suite_path, ckpt_name) -> dict[str, list[tuple]]:
    """Per eval: its scoring windows' input ids, built here from the tokenizer and the protocol."""
    from qsens.families.loading import load_tokenizer
    from qsens.metrics.text import read_text
    from qsens.metrics.windows import build_eval_tokens
    from qsens.suites.load import load_suite

    suite = load_suite(suite_path)
    ckpt = next(c for c in suite.checkpoints if c.name == ckpt_name)
    tok = load_tokenizer(ckpt)
    return {ev.name: [tuple(w[0].tolist()) for w in build_eval_tokens(read_text(ev.path), tok, ev.protocol,
                                                                     10**9).windows] for ev in suite.evals}


@pytest.mark.parametrize("resident", [16, 4])
def test_a_layer_sweep_costs_one_quantized_pass_per_set_and_shares_the_fp_pass(layer_suite, tmp_path, monkeypatch,
                                                                                resident):
    """Counted at the forwards: per checkpoint and eval, one fp pass per resident group (one when all 10 sets fit,
    ceil(10/4) = 3 with room for 4) and exactly one quantized pass per set; the bench's own counts agree."""
    import qsens.runner.checkpoint as checkpoint

    monkeypatch.setattr(checkpoint, "MAX_RESIDENT", resident)
    forwards, fp_models = _spy_forwards(monkeypatch)
    r = bench_suite.run(layer_suite, limit_checkpoints=2, results_dir=tmp_path / "res", threads=1)
    assert r["statuses"] == {"ok": 2 * 10 * 2}
    # loads: the untimed baseline, the suite (one round), the timed baseline: the same two checkpoints each time
    suite_fp = fp_models[2:4]
    assert len(fp_models) == 6 and [n for n, _ in fp_models[:2]] == [n for n, _ in suite_fp] == [n for n, _ in
                                                                                                fp_models[4:]]
    groups = -(-10 // resident)
    fp_ids = {id(m) for _, m in fp_models}
    for name, fp in suite_fp:
        windows = _eval_windows(layer_suite, name)
        everything = sorted(w for ws in windows.values() for w in ws)
        assert len(set(everything)) == len(everything) > 2  # the two texts share no window
        fp_seen = sorted(w for m, rows in forwards if m is fp for w in rows)
        assert fp_seen == sorted(everything * groups)  # every window of every eval, once per resident group
        # the quantized models that ran while this checkpoint was loaded: from its first fp forward up to the
        # next fp model's first forward (the last batch's quantized forwards follow its last fp forward)
        start = next(i for i, (m, _) in enumerate(forwards) if m is fp)
        end = next((i for i, (m, _) in enumerate(forwards) if i > start and id(m) in fp_ids and m is not fp),
                   len(forwards))
        q_seen: dict[int, list] = {}
        for m, rows in forwards[start:end]:
            if id(m) not in fp_ids:
                q_seen.setdefault(id(m), []).extend(rows)
        assert len(q_seen) == 10  # one quantized model per set
        for rows in q_seen.values():
            assert sorted(rows) == everything  # each set: one pass over each eval, no more
    p = r["passes"]
    assert p["fp_passes"] == pytest.approx(2 * 2 * groups) and p["quantized_passes"] == pytest.approx(2 * 2 * 10)
    assert p["fp_passes_per_checkpoint_eval"] == pytest.approx([groups, groups])
    assert p["quantized_passes_per_setting_eval"] == pytest.approx([1, 1])
    assert all(c["q_models"] == 2 * 10 for c in p["per_checkpoint"].values())  # per eval, 10 models
    assert len(p["layer_sets"]) == 10 and p["sweeps"] == 2 * 2 * groups
    md = bench_suite.to_markdown(r, "qsens bench suite")
    assert f"| fp passes counted | {2 * 2 * groups} ({groups} per checkpoint and eval) |" in md
    assert "| quantized passes counted | 40 (1 per setting, checkpoint and eval) |" in md
