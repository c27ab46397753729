"""`qsens board --results DIR --out DIR`: render results and fits into a static site (no server needed)."""

from __future__ import annotations

import argparse
import sys

HELP = "render results and fits into a static HTML site with leaderboard.json/.csv and history"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--results", required=True,
                        help="a results folder (holds qsens.sqlite) or a parent of several, e.g. results/")
    parser.add_argument("--out", required=True, help="site folder; replaced atomically, its history/ carried over")


def main(args: argparse.Namespace) -> int:
    from qsens.board.build import build_board

    try:
        result = build_board(args.results, args.out)
    except FileNotFoundError as exc:
        print(f"qsens board: {exc}", file=sys.stderr)
        return 2
    for err in result.plot_errors:
        print(f"qsens board: plot failed: {err}", file=sys.stderr)
    snap = "new snapshot" if result.new_snapshot else "no change since the last snapshot"
    print(f"qsens board: {result.rows} rows, {result.families} families, {result.snapshots} snapshots ({snap}); "
          f"open {result.out / 'index.html'}")
    return 1 if result.plot_errors else 0
