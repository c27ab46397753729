"""`qsens nightly CONFIG`: run suites incrementally, fit, rebuild the board, append a run record."""

from __future__ import annotations

import argparse
import sys

HELP = "run a list of suites incrementally, fit, rebuild the board and record the run (exit 1 if anything failed)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="nightly config YAML (see docs/nightly.md)")


def main(args: argparse.Namespace) -> int:
    from qsens import blas
    from qsens.errors import terminal_safe
    from qsens.nightly import ConfigError, load_config, run_nightly

    try:
        load_config(args.config)  # a bad config is refused before blas.ensure() may restart the process
        blas.ensure(reexec=getattr(args, "command_line", False))  # the matmul route of `qsens run` (qsens.blas)
        record = run_nightly(args.config)
    except ConfigError as exc:
        print(terminal_safe(str(exc)), file=sys.stderr)
        return 2
    for step in record["steps"]:
        mark = "ok" if step["ok"] else "FAILED"
        print(terminal_safe(f"{mark:>6}  {step['name']}  ({step['seconds']:.1f}s)"))
        if step["error"]:
            print("        " + terminal_safe(step["error"].splitlines()[0]), file=sys.stderr)
    print(f"cells: {record['cells_computed']} computed, {record['cells_skipped']} skipped, "
          f"{record['cells_failed']} failed; {record['started_at']} -> {record['finished_at']}")
    return 0 if record["ok"] else 1
