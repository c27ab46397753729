"""`qsens export`: every cell, all fields, as JSON or CSV."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "export all cells of a results folder as JSON or CSV"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--results", required=True, help="results folder (holds qsens.sqlite)")
    parser.add_argument("--format", choices=("json", "csv"), default="json")
    parser.add_argument("-o", "--output", help="file to write (default: stdout)")
    parser.add_argument("--status", choices=("ok", "failed", "running"), help="only cells with this status")


def main(args: argparse.Namespace) -> int:
    from qsens.store import ResultStore
    from qsens.store.sqlite import DB_NAME
    from qsens.store.export import to_csv, to_json

    if not (Path(args.results) / DB_NAME).is_file():
        print(f"qsens export: no {DB_NAME} in {args.results}", file=sys.stderr)
        return 2
    cells = ResultStore(args.results, readonly=True).cells(status=args.status)
    text = to_json(cells) if args.format == "json" else to_csv(cells)
    if args.output:
        out = Path(args.output)
        tmp = out.with_name(out.name + ".tmp")
        try:  # write aside, then rename: a failed write (disk full) leaves the previous export intact
            tmp.write_text(text)
            tmp.replace(out)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            print(f"qsens export: cannot write {out}: {exc.strerror or exc}", file=sys.stderr)
            return 3
    else:
        sys.stdout.write(text)
    return 0
