"""`qsens` command line. Each subcommand is a module `qsens/cli/<name>.py` defining

    HELP: str                                   one line for `qsens --help`
    add_arguments(parser: ArgumentParser) -> None
    main(args: Namespace) -> int                the exit status

Heavy imports belong inside `main`, so `qsens --help` and `qsens validate` stay fast.

Exit status: 0 success; 1 the work ran but something in it failed (a cell, a fit, a plot); 2 invalid input or
usage (a suite, a config, a path); 3 the results folder or an output cannot be read or written (read-only, a
file in the way, disk full, not a database); 70 an internal error (a bug: one line here, the traceback with
QSENS_DEBUG=1); 130 interrupted; 141 the output pipe closed. Every non-zero status comes with a one-line message on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sqlite3
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
    # the real command line (`python -m qsens`, the `qsens` script) may be re-executed by `qsens.blas.ensure`; a
    # caller passing argv runs the CLI inside its own program (pytest, a notebook), which must never restart
    args.command_line = argv is None
    from qsens.errors import terminal_safe
    from qsens.store.sqlite import StoreError

    prog = f"qsens {args.command}"
    try:
        return int(args._main(args) or 0)
    except KeyboardInterrupt:
        print("qsens: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `qsens export | head`: the reader left; say nothing, like other Unix tools
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - so the interpreter's final flush fails silently too
        return 141
    except StoreError as exc:
        print(terminal_safe(f"{prog}: {exc}"), file=sys.stderr)
        return 3
    except (OSError, sqlite3.Error) as exc:
        where = f" {exc.filename}" if getattr(exc, "filename", None) else ""
        print(terminal_safe(f"{prog}: cannot read or write{where}: {getattr(exc, 'strerror', None) or exc}"),
              file=sys.stderr)
        return 3
    except Exception as exc:  # noqa: BLE001 - a bug, but an unattended run still gets one line, not a traceback
        if os.environ.get("QSENS_DEBUG"):
            raise
        print(terminal_safe(f"{prog}: internal error: {type(exc).__name__}: {str(exc)[:500]} (QSENS_DEBUG=1 shows "
                            "the traceback)"), file=sys.stderr)
        return 70


if __name__ == "__main__":
    sys.exit(main())
