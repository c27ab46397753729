"""`qsens report`: the overtraining effect as Markdown tables, from a results folder."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "print Markdown tables of Δloss vs D/N per family, size and quantizer"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--results", required=True, help="results folder (holds qsens.sqlite)")


def main(args: argparse.Namespace) -> int:
    from qsens.report import effect_markdown
    from qsens.store import ResultStore
    from qsens.store.db import DB_NAME

    if not (Path(args.results) / DB_NAME).is_file():
        print(f"qsens report: no {DB_NAME} in {args.results}", file=sys.stderr)
        return 2
    print(effect_markdown(ResultStore(args.results, readonly=True).cells()))
    return 0
