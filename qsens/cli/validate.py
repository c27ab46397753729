"""`qsens validate SUITE`: check a suite without running anything."""

from __future__ import annotations

import argparse
import sys

HELP = "check a suite file and list the cells it would run"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("suite", help="suite YAML file")


def load_or_report(path: str):
    """The loaded suite, or None after printing every problem to stderr."""
    from qsens.errors import terminal_safe
    from qsens.suites.load import SuiteError, load_suite

    try:
        return load_suite(path)
    except SuiteError as exc:
        print(terminal_safe(str(exc)), file=sys.stderr)
        return None


def main(args: argparse.Namespace) -> int:
    from qsens.errors import terminal_safe

    suite = load_or_report(args.suite)
    if suite is None:
        return 2
    # a pre-quantized artifact is scored on its parent only (QuantSettings.pairs_with)
    n = sum(q.pairs_with(c.family, c.name) for c in suite.checkpoints for q in suite.quantizers) * len(suite.evals)
    print(terminal_safe(f"{args.suite}: valid suite '{suite.name}': {len(suite.checkpoints)} checkpoints x "
                        f"{len(suite.quantizers)} quantizer settings x {len(suite.evals)} eval texts = {n} cells"))
    for q in suite.quantizers:
        print(terminal_safe(f"  quantizer {q.label()}"))
    for e in suite.evals:
        print(terminal_safe(f"  eval {e.name}: {e.path.name} protocol {e.protocol.hash()}"))
    return 0
