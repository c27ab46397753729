"""`qsens run SUITE`: compute every missing or failed cell of a suite and store it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "run a suite: quantize every checkpoint and measure its sensitivity (incremental, resumable)"
THREADS_HELP = ("torch threads per checkpoint (default: %(default)s; torch's own default, every core, ran 9-12x "
                "slower on a loaded machine). To use every core, run checkpoints in parallel instead: --executor ray "
                "(checkpoints in parallel, --threads CPUs each) or several `qsens run` on the same --results (they "
                "share the cells through claims)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("suite", help="suite YAML file")
    parser.add_argument("--results", help="results folder (default: results/<suite name>/)")
    parser.add_argument("--executor", choices=("local", "ray"), default="local")
    parser.add_argument("--address", help="Ray cluster address (with --executor ray; default: a local instance)")
    parser.add_argument("--threads", type=int, default=1, metavar="N", help=THREADS_HELP)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def main(args: argparse.Namespace) -> int:
    from qsens.cli.validate import load_or_report
    from qsens.runner.loop import run_suite
    from qsens.runner.summary import print_summary
    from qsens.store import ResultStore

    from qsens import blas

    if args.threads < 1:
        print(f"--threads must be >= 1, got {args.threads}", file=sys.stderr)
        return 2
    suite = load_or_report(args.suite)
    if suite is None:  # refused before blas.ensure() may restart the process: a refusal costs no restart
        return 2
    # may re-execute this process with MKL's Intel path preloaded (qsens.blas), before any matmul; the route is
    # recorded with every cell (blas_route), a Ray worker's its own
    blas.ensure(reexec=getattr(args, "command_line", False))
    results = Path(args.results or Path("results") / suite.name)
    options = {"address": args.address} if args.executor == "ray" else {}
    summary = run_suite(suite, results, executor=args.executor, progress=not args.no_progress, threads=args.threads,
                        **options)
    print_summary(suite, ResultStore(results), summary)
    return 1 if summary.failed else 0
