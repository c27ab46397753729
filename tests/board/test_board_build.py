"""The built site: structure, escaping, exports against the database, atomic swap, history across builds."""

from __future__ import annotations

import csv
import hashlib
import json
import sqlite3
from datetime import timedelta
from html.parser import HTMLParser
from pathlib import Path

import pytest
from board_synthetic import T0, XSS, XSS_CKPT, make_results, small_cells

from qsens.board import build as board_build
from qsens.board.build import build_board
from qsens.board.model import family_page
from qsens.board.render import LEADERBOARD_FIELDS
from qsens.cli import main as cli_main
from qsens.store import ResultStore
from qsens.store.export import to_json


class _Tags(HTMLParser):
    """Every start tag with its attributes."""

    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def _tree_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(folder)).encode() + p.read_bytes())
    return h.hexdigest()


def test_site_structure(built):
    _, site = built
    for name in ("index.html", "history.html", "leaderboard.json", "leaderboard.csv", "cells.json", "cells.csv",
                 "static/board.js", "static/board.css", "build.json"):
        assert (site / name).is_file(), name
    assert (site / family_page("novels-probe")).is_file() and (site / family_page(XSS)).is_file()
    svgs = list((site / "plots").glob("*.svg"))
    assert len(svgs) >= 10 and all(p.read_text().lstrip().startswith("<?xml") and "<svg" in p.read_text()
                                   for p in svgs)
    assert len(list((site / "history").glob("*.json"))) == 1
    assert not list(site.parent.glob("site.tmp-*")) and not list(site.parent.glob("site.old-*"))


def test_every_page_escapes_names_and_errors(built):
    _, site = built
    pages = list(site.rglob("*.html"))
    assert len(pages) == 4
    for page in pages:
        text = page.read_text()
        assert XSS not in text and XSS_CKPT not in text and "</pre><script>" not in text
        parser = _Tags()
        parser.feed(text)
        scripts = [a for t, a in parser.tags if t == "script"]
        assert scripts and all(a.get("src", "").endswith("static/board.js") for a in scripts), page
        handlers = [(t, k) for t, a in parser.tags for k in a if k.startswith("on")]
        assert handlers == [], page
    index = (site / "index.html").read_text()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in index
    family = (site / family_page("novels-probe")).read_text()
    assert "&lt;/pre&gt;&lt;script&gt;x()&lt;/script&gt;" in family  # the failed cell's error, as text


def _csv_value(text: str):
    if text == "":
        return None
    for parse in (int, float, json.loads):
        try:
            return parse(text)
        except ValueError:
            pass
    return {"True": True, "False": False}.get(text, text)


def test_leaderboard_json_csv_and_database_agree(built):
    results, site = built
    body = json.loads((site / "leaderboard.json").read_text())
    assert body["fields"] == LEADERBOARD_FIELDS and len(body["rows"]) == 11
    with open(site / "leaderboard.csv", newline="") as f:
        csv_rows = [{k: _csv_value(v) for k, v in r.items()} for r in csv.DictReader(f)]
    for js, cs in zip(body["rows"], csv_rows):
        for k in LEADERBOARD_FIELDS:
            assert cs[k] == pytest.approx(js[k]) if isinstance(js[k], float) else cs[k] == js[k], k
    cells = {(c["family"], c["checkpoint"], c["eval"], c["quantizer"]): c for c in ResultStore(results).cells()}
    for row in body["rows"]:
        if row["checkpoint"] is None:
            continue
        cell = cells[(row["family"], row["checkpoint"], row["eval"], row["quantizer"])]
        for k in ("n_params", "tokens", "delta_loss", "delta_loss_ci_low", "delta_loss_ci_high", "ppl_ratio",
                  "kl_mean", "top1_agree", "q_loss", "q_loss_ci_high"):
            assert row[k] == cell[k], k
    assert (site / "cells.json").read_text() == to_json(ResultStore(results).cells())


def test_build_without_fits_table(tmp_path):
    results = make_results(tmp_path / "results", fits=False, cells=small_cells())
    with sqlite3.connect(results / "qsens.sqlite") as con:
        assert not con.execute("SELECT 1 FROM sqlite_master WHERE name = 'fits'").fetchone()
    result = build_board(results, tmp_path / "site", now=T0)
    assert result.rows == 2 and result.plot_errors == []
    assert "no fit" in (tmp_path / "site" / "index.html").read_text()


def test_build_with_fits_stored_by_an_older_qsens(small_results, tmp_path):
    """A fits table from before fit groups, diagnostics and stored bootstrap draws (qsens.store.fits reads the
    missing columns as None): the fit is listed and drawn without a band, and says so."""
    with sqlite3.connect(small_results / "qsens.sqlite") as con:
        con.row_factory = sqlite3.Row
        ouyang = dict(con.execute("SELECT * FROM fits WHERE law = 'ouyang' AND status = 'ok'").fetchone())
        older = ["key", "law", "formula", "metric", "family", "schedule", "eval", "method", "group_size", "settings",
                 "bits", "pooled", "quantizer", "status", "message", "params", "r2", "n_points", "created_at"]
        con.execute("DROP TABLE fits")
        con.execute(f"CREATE TABLE fits ({', '.join(older)})")
        con.execute(f"INSERT INTO fits VALUES ({', '.join('?' * len(older))})", [ouyang[k] for k in older])
    assert build_board(small_results, tmp_path / "site", now=T0).rows == 2
    page = (tmp_path / "site" / family_page("novels-probe")).read_text()
    assert "<span class=\"law\">ouyang</span>" in page and "no band (no bootstrap refits stored)" in page


def test_failed_build_leaves_the_old_site_untouched(small_results, tmp_path, monkeypatch):
    site = tmp_path / "site"
    build_board(small_results, site, now=T0)
    before = _tree_digest(site)
    ResultStore(small_results).save({**small_cells()[0], "delta_loss": 0.5}, overwrite=True)  # a build would change the site

    def half_render(site_model, out):
        (out / "index.html").write_text("half")
        raise RuntimeError("injected failure")

    monkeypatch.setattr(board_build, "render_pages", half_render)
    with pytest.raises(RuntimeError, match="injected"):
        build_board(small_results, site, now=T0 + timedelta(days=1))
    assert _tree_digest(site) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [".site.lock", "results", "site"]


def test_history_carries_over_and_shows_the_change(small_results, tmp_path):
    site = tmp_path / "site"
    build_board(small_results, site, now=T0)
    # The row's headline cell: N2 at D = 48M, Δloss 0.0400 ± 0.004 in board_synthetic.py.
    target = next(c for c in small_cells() if c["family"] == "novels-probe" and c["tokens"] == 48_000_000)
    ResultStore(small_results).save({**target, "delta_loss": 0.0550, "delta_loss_ci_low": 0.050,
                                     "delta_loss_ci_high": 0.060}, overwrite=True)
    second = build_board(small_results, site, now=T0 + timedelta(days=1))
    assert second.new_snapshot and second.snapshots == 2
    rows = json.loads((site / "leaderboard.json").read_text())["rows"]
    row = next(r for r in rows if r["family"] == "novels-probe")
    assert (row["delta_loss_previous"], row["delta_loss"]) == (0.0400, 0.0550)
    assert row["delta_loss_change"] == pytest.approx(0.0150) and row["delta_loss_change_significant"] is True
    assert "+0.015" in (site / "history.html").read_text()
    third = build_board(small_results, site, now=T0 + timedelta(days=2))
    assert not third.new_snapshot and third.snapshots == 2  # nothing changed: no new snapshot


def test_parent_folder_of_several_suites_and_their_runs(tmp_path):
    from qsens.store.runs import append_run

    record = {"kind": "nightly", "suite": "a,b", "started_at": "2026-11-21T02:00:00+00:00", "ok": False,
              "cells_computed": 7, "cells_failed": 1, "device": "cpu:<b>x</b>"}
    for name, cells in (("a", small_cells()[:2]), ("b", small_cells()[-2:])):
        make_results(tmp_path / "results" / name, fits=False, cells=cells)
        append_run(tmp_path / "results" / name, record)  # nightly records one run in every folder it touched
    result = build_board(tmp_path / "results", tmp_path / "site", now=T0)
    page = (tmp_path / "site" / "history.html").read_text()
    assert page.count("2026-11-21T02:00:00+00:00") == 1 and "cpu:&lt;b&gt;x&lt;/b&gt;" in page
    assert json.loads((tmp_path / "site" / "build.json").read_text())["sources"] == [
        str(tmp_path / "results" / "a"), str(tmp_path / "results" / "b")]
    assert result.families == 2


def test_cli(small_results, tmp_path, capsys):
    assert cli_main(["board", "--results", str(tmp_path / "nowhere"), "--out", str(tmp_path / "s")]) == 2
    assert "no qsens.sqlite" in capsys.readouterr().err
    assert cli_main(["board", "--results", str(small_results), "--out", str(tmp_path / "s")]) == 0
    assert "2 rows" in capsys.readouterr().out


def test_a_failing_plot_is_reported_on_its_page_not_fatal(small_results, tmp_path, monkeypatch):
    from qsens.board import plots

    def broken(*args):
        raise ValueError("no <b>data</b>")

    monkeypatch.setattr(plots, "delta_plot", broken)
    result = build_board(small_results, tmp_path / "site", now=T0)
    assert result.plot_errors and all("ValueError: no <b>data</b>" in e for e in result.plot_errors)
    page = (tmp_path / "site" / family_page("novels-probe")).read_text()
    assert "ValueError: no &lt;b&gt;data&lt;/b&gt;" in page and 'class="plot"' in page  # the U-curve still drawn


def test_rebuild_after_new_cells_arrive(small_results, tmp_path):
    """Issue 25: the second nightly crashed (`'dict object' has no attribute 'significant'`) when a rebuild saw
    cells that were not in the last snapshot: an 'added' change has no interval to compare."""
    site = tmp_path / "site"
    first = build_board(small_results, site, now=T0)
    extra = {**small_cells()[0], "key": "new|cell", "checkpoint": "arrived-later", "tokens": 64_000_000}
    ResultStore(small_results).save(extra)
    second = build_board(small_results, site, now=T0 + timedelta(days=1))
    assert second.new_snapshot and second.snapshots == 2 and second.rows >= first.rows
    page = (site / "history.html").read_text()
    assert "arrived-later" in page and "<td>added</td>" in page
