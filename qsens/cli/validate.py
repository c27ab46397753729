"""`qsens validate SUITE`: check a suite without running anything."""

from __future__ import annotations

import argparse
import sys

HELP = "check a suite file and list the cells it would run"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("suite", help="suite YAML file")


def main(args: argparse.Namespace) -> int:
    from qsens.suites.load import SuiteError, load_suite

    try:
        suite = load_suite(args.suite)
    except SuiteError as exc:
        print(exc, file=sys.stderr)
        return 2
    n = len(suite.checkpoints) * len(suite.quantizers) * len(suite.evals)
    print(f"{args.suite}: valid suite '{suite.name}': {len(suite.checkpoints)} checkpoints x "
          f"{len(suite.quantizers)} quantizer settings x {len(suite.evals)} eval texts = {n} cells")
    for q in suite.quantizers:
        print(f"  quantizer {q.label()}")
    for e in suite.evals:
        print(f"  eval {e.name}: {e.path.name} protocol {e.protocol.hash()}")
    return 0
