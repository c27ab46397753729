"""The README's per-layer block against results/published/micro-layers: the block is what
qsens.analysis.layer_claims derives, every claim holds, and its counts agree with ones recomputed here from the
raw cells with SQL (point estimates), which bound the interval-based counts."""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from pathlib import Path

import pytest

from qsens.analysis.layer_claims import layer_claims, layer_claims_markdown, readme_block, series_rows
from qsens.store.cells import read_cells

ROOT = Path(__file__).resolve().parents[2]
PUBLISHED = ROOT / "results" / "published" / "micro-layers"
README = ROOT / "README.md"


@pytest.fixture(scope="module")
def rows():
    return series_rows(read_cells(PUBLISHED), "heldout-novels")


def _raw() -> dict[tuple, dict]:
    """(family, size, bits) -> {(D, set label suffix): delta_loss} from SQL alone."""
    con = sqlite3.connect(PUBLISHED / "qsens.sqlite")
    try:
        got = con.execute("SELECT family, size, bits, tokens, quantizer, delta_loss FROM cells WHERE status = 'ok' "
                          "AND eval = 'heldout-novels'").fetchall()
    finally:
        con.close()
    out: dict[tuple, dict] = defaultdict(dict)
    for family, size, bits, tokens, quantizer, delta in got:
        out[(family, size, bits)][(tokens, quantizer.partition("@")[2] or "whole")] = delta
    return out


def test_the_readme_block_is_what_the_published_database_gives():
    derived = layer_claims_markdown(PUBLISHED, label="results/published/micro-layers")
    assert readme_block(README.read_text()) == derived, (
        "README layer claims are stale: qsens report --results results/published/micro-layers --layer-claims "
        "--readme README.md")


def test_every_claim_holds_and_its_counts_match_the_raw_cells(rows):
    claims = {c.name: c for c in layer_claims(rows)}
    assert all(c.holds for c in claims.values()), [c.text for c in claims.values() if not c.holds]
    raw = _raw()
    assert claims["whole_grows"].numbers["n"] == len(raw) == len(rows)
    # point estimates: growth of the whole model's Δ, and which block grew more (from SQL, no bootstrap)
    grew, block_wins = 0, defaultdict(int)
    for cells in raw.values():
        budgets = sorted({d for d, _ in cells})
        first, last = budgets[0], budgets[-1]
        grew += cells[(last, "whole")] > cells[(first, "whole")]
        growth = {b: cells[(last, b)] - cells[(first, b)] for b in ("block0", "block1")}
        block_wins[max(growth, key=growth.get)] += 1
    assert claims["whole_grows"].numbers["k"] <= grew  # an interval above 0 needs a positive estimate
    winner = claims["top_block_carrier"].numbers["winner"].replace(":", "")
    assert block_wins[winner] == claims["top_block_carrier"].numbers["wins"]
