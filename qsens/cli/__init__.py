"""`qsens` command line. Each subcommand is a module `qsens/cli/<name>.py` defining

    HELP: str                                   one line for `qsens --help`
    add_arguments(parser: ArgumentParser) -> None
    main(args: Namespace) -> int                the exit status

Heavy imports belong inside `main`, so `qsens --help` and `qsens validate` stay fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS: dict[str, str] = {
    "run": "qsens.cli.run",
    "validate": "qsens.cli.validate",
    "export": "qsens.cli.export",
    "report": "qsens.cli.report",
    "family": "qsens.cli.family",
    "fit": "qsens.cli.fit",
    "board": "qsens.cli.board",
    "bench": "qsens.cli.bench",
    "nightly": "qsens.cli.nightly",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qsens", description="Quantization-sensitivity benchmark.")
    from qsens import __version__

    parser.add_argument("--version", action="version", version=f"qsens {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name in COMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:  # command not built in this install
                continue
            raise
        command = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(command)
        command.set_defaults(_main=module.main)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args._main(args) or 0)
    except KeyboardInterrupt:
        print("qsens: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
