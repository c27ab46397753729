"""The built site in a real browser: headless Chromium loads it from the file system (file://, no server).

Needs Debian's `chromium` (`.ci/run` installs it) and `websocket-client` (the `test` extra). Skipped only when
no Chromium binary exists; a missing websocket-client is a failure. QSENS_CHROMIUM names another binary.
"""

from __future__ import annotations

import json

import pytest
from board_cdp import Browser, find_browser
from board_synthetic import XSS

from qsens.board.model import family_page

BINARY = find_browser()
pytestmark = [
    pytest.mark.skipif(BINARY is None, reason="no chromium binary (apt-get install -y chromium)"),
    pytest.mark.timeout(120),
]


@pytest.fixture(scope="module")
def browser():
    try:
        import websocket  # noqa: F401
    except ImportError:
        pytest.fail("websocket-client is missing: pip install websocket-client (part of the test extra)")
    with Browser(BINARY) as b:
        yield b


def _column(b: Browser, heading: str) -> list[str]:
    """The data-sort values of the leaderboard's column headed `heading`, visible rows, in page order."""
    return b.js(f"""(() => {{
        const t = document.getElementById('leaderboard-table');
        const i = Array.from(t.tHead.rows[0].cells).findIndex(th => th.textContent.trim() === {json.dumps(heading)});
        return Array.from(t.tBodies[0].rows).filter(r => !r.hidden).map(r => r.cells[i].dataset.sort);
    }})()""")


def _numbers(values: list[str]) -> list[float]:
    return [float(v) for v in values if v != ""]


def test_index_rows_sorting_filtering(built, browser):
    _, site = built
    expected = json.loads((site / "leaderboard.json").read_text())["rows"]
    browser.load((site / "index.html").as_uri())
    assert browser.js("document.querySelectorAll('#leaderboard-table tbody tr').length") == len(expected)
    assert browser.js("document.getElementById('shown').textContent") == f"{len(expected)} of {len(expected)} rows shown"
    # The hostile family name renders as text (not markup), and no script from it ran.
    names = browser.js("Array.from(document.querySelectorAll('#leaderboard-table tbody tr td:first-child'))"
                       ".map(td => td.textContent.trim())")
    assert XSS in names and sorted(names) == sorted(r["family"] for r in expected)

    before = _column(browser, "Δloss")
    browser.click("#leaderboard-table thead th[data-metric='delta_loss']")
    up = _column(browser, "Δloss")
    assert up != before and _numbers(up) == sorted(_numbers(up)) and len(_numbers(up)) == len(before) - 1
    assert up[-1] == ""  # the group whose only cell failed has no Δloss: it sorts last
    browser.click("#leaderboard-table thead th[data-metric='delta_loss']")
    down = _column(browser, "Δloss")
    assert _numbers(down) == sorted(_numbers(up), reverse=True) and down[-1] == ""

    browser.js("(() => { const s = document.querySelector('select[data-filter=bits]'); s.value = '4';"
               " s.dispatchEvent(new Event('change')); })()")
    bits = _column(browser, "bits")
    assert bits and set(bits) == {"4.0"} and len(bits) == sum(r["bits"] == 4 for r in expected)
    browser.js("(() => { const s = document.getElementById('metric-filter'); s.value = 'kl_mean';"
               " s.dispatchEvent(new Event('change')); })()")
    shown = browser.js("Array.from(document.querySelectorAll('#leaderboard-table th[data-metric]'))"
                       ".filter(th => !th.hidden).map(th => th.dataset.metric)")
    assert shown == ["kl_mean"]
    assert browser.problems() == []


def test_plots_present_and_non_empty(built, browser):
    _, site = built
    browser.load((site / family_page("novels-probe")).as_uri())
    images = browser.js("Array.from(document.querySelectorAll('img.plot')).map(i => [i.complete, i.naturalWidth,"
                        " i.naturalHeight, i.getAttribute('src')])")
    assert len(images) >= 10
    assert all(done and w > 100 and h > 100 for done, w, h, _ in images), images
    assert browser.js("document.querySelectorAll('pre.error').length") == 1  # the failed cell's error only
    assert browser.js("document.getElementById('cells-table').tBodies[0].rows.length") == 46  # every cell, failed and unfinished included
    browser.load((site / family_page(XSS)).as_uri())
    assert browser.js("document.querySelector('h1').textContent") == f"Family {XSS}"
    browser.load((site / "history.html").as_uri())
    assert browser.js("document.querySelectorAll('#snapshots-table tbody tr').length") == 1
    assert browser.problems() == []


@pytest.fixture(scope="module")
def layers_site(tmp_path_factory):
    """The board of the published per-layer sweep (results/published/micro-layers, issue 23)."""
    from pathlib import Path

    from qsens.board.build import build_board

    results = Path(__file__).resolve().parents[2] / "results" / "published" / "micro-layers"
    site = tmp_path_factory.mktemp("layers") / "site"
    build_board(results, site)
    return site


def _min_text_px(svg: str) -> float:
    """Smallest font size of an SVG's text, in CSS px at its natural size (matplotlib writes pt: 1 pt = 4/3 px)."""
    import re

    sizes = [float(s) for s in re.findall(r"font-size:\s*([0-9.]+)px", svg)]
    assert sizes and 'width="' in svg and 'pt"' in svg.split("viewBox")[0]
    return min(sizes) * 4 / 3


@pytest.mark.parametrize("width", [1400, 390])
def test_layer_heat_maps_are_readable_on_a_wide_and_a_phone_screen(layers_site, browser, width):
    """Every heat map and exponent plot of a family page loads, none is shrunk so far that its smallest text
    (the '≤0' marks) falls below 7 CSS px or its tick labels below 10 px, the page itself never scrolls sideways,
    and at 1400 px each plot is whole on screen (at 390 px it scrolls in its own figure instead)."""
    from qsens.board.model import family_page

    browser.call("Emulation.setDeviceMetricsOverride", session=True, width=width, height=900, deviceScaleFactor=1,
                 mobile=width < 500)
    try:
        browser.load((layers_site / family_page("micro-cosine")).as_uri())
        figures = browser.js("""Array.from(document.querySelectorAll(
            'figure[data-kind="layers"], figure[data-kind="layer-exponents"]')).map(f => { const i = f.querySelector('img.plot');
            const r = i.getBoundingClientRect(); return {kind: f.dataset.kind, src: i.getAttribute('src'),
            done: i.complete, nw: i.naturalWidth, w: r.width, left: r.left, right: r.right,
            scrolls: f.scrollWidth > f.clientWidth}; })""")
        page = browser.js("[window.innerWidth, document.documentElement.scrollWidth]")
    finally:
        browser.call("Emulation.clearDeviceMetricsOverride", session=True)
    # 3 sizes x 2 bit widths of heat maps, one exponent plot per bit width
    assert sorted(f["kind"] for f in figures) == ["layer-exponents"] * 2 + ["layers"] * 6
    assert page[1] <= page[0] == width  # no sideways scroll of the page
    for f in figures:
        assert f["done"] and f["nw"] > 300, f
        scale = (f["w"] - 2) / f["nw"]  # the 1 px border on each side
        smallest = _min_text_px((layers_site / "family" / f["src"]).read_text())
        assert smallest * scale >= 7 and 9 * 4 / 3 * scale >= 10, (f, smallest, scale)
        assert f["left"] >= 0
        if width == 1400:
            assert f["right"] <= width and not f["scrolls"], f
        else:
            assert f["scrolls"], f  # wider than the phone: it scrolls within its figure
    assert browser.problems() == []


def test_layer_plot_text_stays_inside_the_image(layers_site, browser):
    """Chromium lays out each layer plot's text in its own fonts (the SVG keeps text as text): every label's box
    lies inside the SVG's viewBox, so nothing is cut off at the edges."""
    plots = sorted((layers_site / "plots").glob("*-layer*.svg"))
    assert len(plots) == 2 * 8
    for svg in plots[:4] + [p for p in plots if p.name.endswith("-layer-exponents.svg")][:2]:
        browser.load(svg.as_uri())
        out = browser.js("""(() => { const s = document.documentElement, v = s.viewBox.baseVal;
            return Array.from(s.querySelectorAll('text')).map(t => { const b = t.getBoundingClientRect();
            const k = s.getBoundingClientRect().width / v.width;
            return [t.textContent, b.left / k, b.top / k, b.right / k, b.bottom / k, v.width, v.height]; }); })()""")
        assert out, svg.name
        for text, left, top, right, bottom, w, h in out:
            assert -0.5 <= left and right <= w + 0.5 and -0.5 <= top and bottom <= h + 0.5, (svg.name, text)
    assert browser.problems() == []
