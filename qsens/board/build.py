"""`build_board(results_dir, out_dir)`: the whole static site, built aside and swapped in.

The build writes everything into a fresh `<out>.tmp-XXXX` beside `out` (same filesystem, so renames are atomic),
then exchanges it with the old site in one atomic `renameat2(RENAME_EXCHANGE)` (Linux) and deletes the old. Where
the exchange is not available, it renames the old site away and the new one in; a build killed between those two
renames leaves `<out>.old-XXXX`, which the next build renames back before anything else. Any failure before the
swap deletes the temporary folder and leaves the old site exactly as it was. One build at a time per site: a lock
file beside it serializes a nightly build with a manual one. So the site is always the old or the new build, never
half of one.

The output folder is the board's own: every build writes a marker file (`MARKER`) into it, and a build refuses
an existing file, or a non-empty folder without the marker (someone's thesis, a results folder), unless forced;
it never replaces a folder that holds the results it reads, nor a results database (a file named or shaped like
one, a folder holding one directly or one level down), not even when forced. A build is a function of its input: the build time
shown is the time of the newest cell, fit or run record (not the wall clock), and a build equal byte for byte to
the site already there leaves that site untouched.
"""

from __future__ import annotations

import ctypes
import fcntl
import filecmp
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
from qsens.board.layers import is_layer_cell, layer_plots
from qsens.board.model import seed_siblings, site_model
from qsens.board.plots import family_plots
from qsens.board.render import render_pages, write_data
from qsens.store.sqlite import DB_NAME

# Temporary or displaced folders older than this are from a crashed build (a live build holds the lock).
STALE_SECONDS = 3600
MARKER = ".qsens-board"


class OutputError(ValueError):
    """The output path is not the board's to replace."""


def check_output(out: Path, results: Path, force: bool = False) -> None:
    """Raise OutputError unless `out` is absent, an empty folder, a qsens site, or `force` is given (and even then
    never a folder holding the results the board is built from)."""
    if out == results or out in results.parents:
        raise OutputError(f"--out {out} holds the results the board is built from ({results}); choose another folder")
    database = results_database_at(out, results)
    if database is not None:
        raise OutputError(f"--out {out} {'is' if database == out else 'holds'} a results database ({database}); "
                          "a board never replaces results, not even with --force: choose another folder")
    if not out.exists() and not out.is_symlink():
        return
    if not out.is_dir():
        if force:
            return
        raise OutputError(f"--out {out} is an existing file, not a site folder; refusing to replace it "
                          "(choose another path, or --force to replace it)")
    if (out / MARKER).is_file() or ((out / "build.json").is_file() and (out / "index.html").is_file()):
        return  # a qsens site (sites built before the marker existed have build.json and index.html)
    try:
        entries = sorted(p.name for p in out.iterdir())
    except OSError as exc:
        raise OutputError(f"--out {out}: cannot list it: {exc.strerror or exc}") from None
    if entries and not force:
        shown = ", ".join(entries[:5]) + (f" and {len(entries) - 5} more" if len(entries) > 5 else "")
        raise OutputError(f"--out {out} is a non-empty folder that is not a qsens site (no {MARKER}; it holds "
                          f"{shown}); refusing to replace it (choose another folder, or --force to replace it)")


def _is_database(path: Path) -> bool:
    """A results database (or its WAL/journal) by name, or any SQLite file by its header."""
    if path.name.startswith(DB_NAME):
        return True
    try:
        with open(path, "rb") as f:
            return f.read(16) == b"SQLite format 3\x00"
    except OSError:
        return False


def results_database_at(out: Path, results: Path) -> Path | None:
    """A results database that replacing `out` would delete: `out` itself, one of the results folders the board
    reads (`--results` may be their parent), or a database directly in `out` or in one of its subfolders."""
    if out.is_file():
        return out if _is_database(out) else None
    if not out.is_dir():
        return None
    candidates = [d / DB_NAME for d in board_data.result_dirs(results)] + [out / DB_NAME]
    try:
        candidates += [p / DB_NAME for p in out.iterdir() if p.is_dir()]
    except OSError:
        pass  # an unlistable folder is refused by check_output itself
    for db in candidates:
        if db.is_file() and out in db.resolve().parents:
            return db.resolve()
    return None


def data_time(data: board_data.BoardData) -> datetime:
    """The newest timestamp in the input (cells, fits, run records); the wall clock when there is none."""
    stamps = [c.get(k) for c in data.cells for k in ("finished_at", "started_at")]
    stamps += [f.get("created_at") for f in data.fits] + [r.get(k) for r in data.runs for k in ("finished_at", "started_at")]
    parsed = []
    for s in stamps:
        try:
            t = datetime.fromisoformat(str(s))
        except ValueError:
            continue
        parsed.append(t if t.tzinfo else t.replace(tzinfo=timezone.utc))
    return max(parsed) if parsed else datetime.now(timezone.utc)


def same_tree(a: Path, b: Path) -> bool:
    """True when folders `a` and `b` hold the same files with the same bytes."""
    cmp = filecmp.dircmp(a, b, ignore=[])
    if cmp.left_only or cmp.right_only or cmp.funny_files:
        return False
    if filecmp.cmpfiles(a, b, cmp.common_files, shallow=False)[1:] != ([], []):
        return False
    return all(same_tree(a / d, b / d) for d in cmp.common_dirs)


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
    """Restore a site a killed build had renamed away, and remove leftovers of builds that crashed mid-way (we hold
    the lock, so none is live)."""
    if not out.exists() and not out.is_symlink():
        olds = sorted(out.parent.glob(f"{out.name}.old-*"), key=lambda p: p.stat().st_mtime)
        if olds and olds[-1].is_dir():
            os.rename(olds[-1], out)
    now = time.time()
    for pattern in (f"{out.name}.tmp-*", f"{out.name}.old-*"):
        for p in out.parent.glob(pattern):
            if p.is_dir() and now - p.stat().st_mtime > STALE_SECONDS:
                shutil.rmtree(p, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two folders atomically (Linux renameat2 with RENAME_EXCHANGE); False where that is not available."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def swap_in(new: Path, out: Path) -> None:
    """Replace folder `out` by `new`: exchanged atomically, or old renamed away, new renamed in (old restored on
    failure); the old site is deleted."""
    if out.is_dir() and not out.is_symlink() and _exchange(new, out):
        shutil.rmtree(new, ignore_errors=True)  # `new` now names the old site
        return
    old = None
    if out.exists() or out.is_symlink():
        old = Path(tempfile.mkdtemp(prefix=f"{out.name}.old-", dir=out.parent))
        old.rmdir()  # only the unique name is wanted: rename needs the target not to exist
        os.rename(out, old)
    try:
        os.rename(new, out)
    except OSError:
        if old is not None:
            os.rename(old, out)
        raise
    if old is not None and old.is_dir() and not old.is_symlink():
        shutil.rmtree(old, ignore_errors=True)
    elif old is not None:
        old.unlink(missing_ok=True)  # a file replaced with --force


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
    siblings = seed_siblings(data.cells)
    for family in sorted({c.get("family") for c in data.cells}, key=str):
        cells = [c for c in data.cells if c.get("family") in siblings[family]]
        # layer-set cells get their own heat maps and exponent plots instead of one plot pair per set
        plots[family] = family_plots(family, [c for c in cells if not is_layer_cell(c)], data.fits, tmp) + \
            layer_plots(family, cells, tmp)
    site = site_model(data, changes, plots, hist.summary(snaps, trans, unreadable),
                      now.isoformat(timespec="seconds"))
    render_pages(site, tmp)
    write_data(site, data.cells, tmp)
    errors = [f"{p['title']}: {p['error'].splitlines()[0]}" for ps in plots.values() for p in ps if p["error"]]
    return BuildResult(out, len(site["rows"]), len(site["families"]), len(snaps), added, errors)


def build_board(results_dir: str | Path, out_dir: str | Path, now: datetime | None = None,
                force: bool = False) -> BuildResult:
    """Build the site for every results folder under `results_dir` into `out_dir`, atomically.

    Raises FileNotFoundError when `results_dir` holds no results database and OutputError when `out_dir` is not
    the board's to replace (see `check_output`); any error leaves `out_dir` untouched. `now` fixes the build time
    (default: the newest timestamp in the data, so an unchanged input rebuilds the same bytes).
    """
    out = Path(out_dir).resolve()
    check_output(out, Path(results_dir).resolve(), force)
    data = board_data.load(results_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    now = now or data_time(data)
    with _locked(out):
        check_output(out, Path(results_dir).resolve(), force)  # again, under the lock
        _clean_stale(out)
        tmp = Path(tempfile.mkdtemp(prefix=f"{out.name}.tmp-", dir=out.parent))
        try:
            result = _build_into(tmp, out, data, now)
            (tmp / "build.json").write_text(json.dumps({"built_at": now.isoformat(timespec="seconds"),
                                                        "sources": data.sources, "rows": result.rows}) + "\n")
            (tmp / MARKER).write_text("qsens board site: `qsens board` replaces this whole folder on every build\n")
            os.chmod(tmp, 0o755)  # mkdtemp makes it 0700; a static host must be able to read the site
            if out.is_dir() and same_tree(tmp, out):
                shutil.rmtree(tmp)  # nothing changed: leave every byte (and mtime) of the site as it is
            else:
                swap_in(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return result
