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
