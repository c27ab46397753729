"""`qsens board --results DIR --out DIR`: render results and fits into a static site (no server needed)."""

from __future__ import annotations

import argparse
import sys

HELP = "render results and fits into a static HTML site with leaderboard.json/.csv and history"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--results", required=True,
                        help="a results folder (holds qsens.sqlite) or a parent of several, e.g. results/")
    parser.add_argument("--out", required=True, help="site folder; replaced atomically, its history/ carried over. "
                        "An existing file or a non-empty folder that is not a qsens site is refused")
    parser.add_argument("--force", action="store_true",
                        help="replace --out even if it is a file or a folder that is not a qsens site")


def main(args: argparse.Namespace) -> int:
    from qsens.board.build import OutputError, build_board
    from qsens.errors import terminal_safe

    try:
        result = build_board(args.results, args.out, force=args.force)
    except (FileNotFoundError, OutputError) as exc:
        print(terminal_safe(f"qsens board: {exc}"), file=sys.stderr)
        return 2
    for err in result.plot_errors:
        print(terminal_safe(f"qsens board: plot failed: {err}"), file=sys.stderr)
    snap = "new snapshot" if result.new_snapshot else "no change since the last snapshot"
    print(f"qsens board: {result.rows} rows, {result.families} families, {result.snapshots} snapshots ({snap}); "
          f"open {result.out / 'index.html'}")
    return 1 if result.plot_errors else 0
