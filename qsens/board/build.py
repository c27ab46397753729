"""`build_board(results_dir, out_dir)`: the whole static site, built aside and swapped in.

The build writes everything into a fresh `<out>.tmp-XXXX` beside `out` (same filesystem, so renames are atomic),
then renames the old site away, renames the new one in and deletes the old. Any failure before the swap deletes the
temporary folder and leaves the old site exactly as it was. One build at a time per site: a lock file beside it
serializes a nightly build with a manual one. A reader hitting the site during the two renames may briefly see no
site; it never sees half of one.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from qsens.board import data as board_data
from qsens.board import history as hist
from qsens.board.model import site_model
from qsens.board.plots import family_plots
from qsens.board.render import render_pages, write_data

# Temporary or displaced folders older than this are from a crashed build (a live build holds the lock).
STALE_SECONDS = 3600


@dataclass
class BuildResult:
    out: Path
    rows: int
    families: int
    snapshots: int
    new_snapshot: bool
    plot_errors: list[str]


@contextmanager
def _locked(out: Path) -> Iterator[None]:
    lock = out.parent / f".{out.name}.lock"
    with open(lock, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes, also if the process dies
        yield


def _clean_stale(out: Path) -> None:
    """Remove leftovers of builds that crashed mid-way (we hold the lock, so none is live)."""
    now = time.time()
    for pattern in (f"{out.name}.tmp-*", f"{out.name}.old-*"):
        for p in out.parent.glob(pattern):
            if p.is_dir() and now - p.stat().st_mtime > STALE_SECONDS:
                shutil.rmtree(p, ignore_errors=True)


def swap_in(new: Path, out: Path) -> None:
    """Replace folder `out` by `new`: old renamed away, new renamed in, old deleted; old restored on failure."""
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f"{out.name}.old-", dir=out.parent))
        old.rmdir()  # only the unique name is wanted: rename needs the target not to exist
        os.rename(out, old)
    try:
        os.rename(new, out)
    except OSError:
        if old is not None:
            os.rename(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _history(out: Path, tmp: Path, data: board_data.BoardData, now: datetime) -> tuple[list, list, list, bool]:
    """Carry the old site's snapshots into the new build and add this build's if the cells changed."""
    folder = tmp / "history"
    if (out / "history").is_dir():
        shutil.copytree(out / "history", folder)
    snaps, unreadable = hist.read_history(folder)
    before = len(snaps)
    snaps = hist.add_snapshot(folder, hist.snapshot(data.cells, data.sources, now), snaps)
    return snaps, unreadable, hist.transitions(snaps), len(snaps) > before


def _build_into(tmp: Path, out: Path, data: board_data.BoardData, now: datetime) -> BuildResult:
    snaps, unreadable, trans, added = _history(out, tmp, data, now)
    changes = hist.last_changes(trans)
    plots: dict = {}
    for family in sorted({c.get("family") for c in data.cells}, key=str):
        plots[family] = family_plots(family, [c for c in data.cells if c.get("family") == family], data.fits, tmp)
    site = site_model(data, changes, plots, hist.summary(snaps, trans, unreadable),
                      now.isoformat(timespec="seconds"))
    render_pages(site, tmp)
    write_data(site, data.cells, tmp)
    errors = [f"{p['title']}: {p['error'].splitlines()[0]}" for ps in plots.values() for p in ps if p["error"]]
    return BuildResult(out, len(site["rows"]), len(site["families"]), len(snaps), added, errors)


def build_board(results_dir: str | Path, out_dir: str | Path, now: datetime | None = None) -> BuildResult:
    """Build the site for every results folder under `results_dir` into `out_dir`, atomically.

    Raises FileNotFoundError when `results_dir` holds no results database; any error leaves `out_dir` untouched.
    `now` fixes the build time (tests; a nightly job may pass its run's start time).
    """
    data = board_data.load(results_dir)
    out = Path(out_dir).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    now = now or datetime.now(timezone.utc)
    with _locked(out):
        _clean_stale(out)
        tmp = Path(tempfile.mkdtemp(prefix=f"{out.name}.tmp-", dir=out.parent))
        try:
            result = _build_into(tmp, out, data, now)
            (tmp / "build.json").write_text(json.dumps({"built_at": now.isoformat(timespec="seconds"),
                                                        "sources": data.sources, "rows": result.rows}) + "\n")
            os.chmod(tmp, 0o755)  # mkdtemp makes it 0700; a static host must be able to read the site
            swap_in(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return result
