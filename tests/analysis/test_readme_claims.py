"""The README's claims block against the published database: the block is what qsens.analysis.claims derives from it, every
claim holds, and the key counts, recomputed here from the raw cells with SQL, are the ones the sentences state."""

from __future__ import annotations

import re
import sqlite3
from collections import defaultdict
from pathlib import Path

import pytest

from qsens.analysis.claims import BEGIN, END, claims, claims_markdown, readme_block, replace_block
from qsens.cli import main as qsens_main

ROOT = Path(__file__).resolve().parents[2]
PUBLISHED = ROOT / "results" / "published" / "micro"
README = ROOT / "README.md"


def _rows(sql: str) -> list[sqlite3.Row]:
    con = sqlite3.connect(PUBLISHED / "qsens.sqlite")
    con.row_factory = sqlite3.Row
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def _series(sql_where: str) -> dict[tuple, list[sqlite3.Row]]:
    out = defaultdict(list)
    for r in _rows(f"SELECT * FROM cells WHERE status = 'ok' AND {sql_where} ORDER BY tokens"):
        out[(r["family"], r["eval"], r["n_params"], r["bits"], r["train_seed"])].append(r)
    return out


@pytest.fixture(scope="module")
def found():
    """The published database's claims, derived once (their paired tests take about a minute)."""
    return claims(PUBLISHED)


def test_the_readme_block_is_what_the_published_database_gives(found):
    derived = claims_markdown(PUBLISHED, label="results/published/micro", found=found)
    assert readme_block(README.read_text()) == derived, (
        "README claims are stale: qsens report --results results/published/micro --claims --readme README.md")


def test_every_claim_holds_on_the_published_database(found):
    assert found and all(c.holds for c in found), [c.name for c in found if not c.holds]


def test_the_counts_in_the_sentences_match_an_independent_count():
    block = readme_block(README.read_text())
    low = _series("bits IN (2, 3, 4) AND method = 'rtn'")
    nonpositive = sum(s[0]["delta_loss"] <= 0 for s in low.values())
    assert f"≤ 0 in {nonpositive} of {len(low)} series" in block
    # the paired test's counts split the point-estimate count: resolved + unresolved = series whose largest budget's
    # Δ is above the smallest's (a mean of window sums, so the paired difference is exactly the difference of Δs)
    above = sum(s[-1]["delta_loss"] > s[0]["delta_loss"] for s in low.values())
    resolved, unresolved = map(int, re.search(r"smallest budget's in (\d+) of \d+ .*?; (\d+) more by point", block).groups())
    assert resolved + unresolved == above
    two = _series("bits = 2 AND eval = 'heldout-novels' AND method = 'rtn'")
    turns = sum(min(s, key=lambda r: r["q_loss"]) is not s[-1] for s in two.values())
    resolved, total, unresolved = map(int, re.search(
        r"2-bit: (\d+) of (\d+) series \(paired 95% interval excludes 0; (\d+) more", block).groups())
    assert (resolved + unresolved, total) == (turns, len(two))
    comparisons = [__import__("json").loads(r["body"]) for r in _rows("SELECT body FROM fit_comparisons")]
    nominal = [c for c in comparisons if c.get("bits_axis", "nominal") == "nominal"]
    wsd_smaller = sum(c["value_b"] < c["value_a"] if c["schedule_a"] == "cosine" else c["value_a"] < c["value_b"]
                      for c in nominal)
    assert f"(by point estimate alone: smaller in {wsd_smaller}, larger in {len(nominal) - wsd_smaller})" in block


@pytest.mark.parametrize("sentence", ["a little smaller everywhere", "two to three orders of magnitude",
                                      "remarkably well", "of the two smaller sizes rises"])
def test_the_sentences_the_data_contradict_are_gone(sentence):
    assert sentence not in README.read_text()


def _small_copy(tmp_path) -> Path:
    """The published database cut to its smallest size and seed 0 (the CLI's plumbing, not the claims, is tested)."""
    import shutil

    small = tmp_path / "small"
    small.mkdir()
    shutil.copy(PUBLISHED / "qsens.sqlite", small / "qsens.sqlite")
    con = sqlite3.connect(small / "qsens.sqlite")
    con.execute("DELETE FROM cells WHERE n_params != (SELECT MIN(n_params) FROM cells) OR train_seed != 0")
    con.commit()
    con.close()
    return small


def test_the_cli_rewrites_only_the_block(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text(f"before\n{BEGIN}\nstale\n{END}\nafter\n")
    small = _small_copy(tmp_path)
    assert qsens_main(["report", "--results", str(small), "--claims", "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith("before\n") and text.endswith(f"{END}\nafter\n") and "stale" not in text
    with pytest.raises(ValueError, match="claims:begin"):
        replace_block("no markers", "x")
    (tmp_path / "bare.md").write_text("no markers\n")
    assert qsens_main(["report", "--results", str(small), "--claims", "--readme", str(tmp_path / "bare.md")]) == 2
    assert "claims:begin" in capsys.readouterr().err
