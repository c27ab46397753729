"""`qsens run SUITE`: compute every missing or failed cell of a suite and store it."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "run a suite: quantize every checkpoint and measure its sensitivity (incremental, resumable)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("suite", help="suite YAML file")
    parser.add_argument("--results", help="results folder (default: results/<suite name>/)")
    parser.add_argument("--executor", choices=("local", "ray"), default="local")
    parser.add_argument("--address", help="Ray cluster address (with --executor ray; default: a local instance)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def main(args: argparse.Namespace) -> int:
    from qsens.cli.validate import load_or_report
    from qsens.runner.loop import run_suite
    from qsens.runner.summary import print_summary
    from qsens.store import ResultStore

    suite = load_or_report(args.suite)
    if suite is None:
        return 2
    results = Path(args.results or Path("results") / suite.name)
    options = {"address": args.address} if args.executor == "ray" else {}
    summary = run_suite(suite, results, executor=args.executor, progress=not args.no_progress, **options)
    print_summary(suite, ResultStore(results), summary)
    return 1 if summary.failed else 0
