"""`qsens family train SPEC --out DIR`: pretrain a checkpoint ladder (resumable) and write its manifest."""

from __future__ import annotations

import argparse
import sys

HELP = "train a family of small Llama checkpoints (sizes x budgets x schedules)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="family_command", metavar="ACTION", required=True)
    train = sub.add_parser("train", help="train (or resume training) every checkpoint of a ladder spec")
    train.add_argument("spec", help="ladder spec YAML (e.g. checkpoints/micro.yaml)")
    train.add_argument("--out", required=True, help="output folder (manifest.json + one HF folder per checkpoint)")
    train.add_argument("--sizes", help="comma-separated size names to train in this process (default: all)")
    train.add_argument("--seeds", help="comma-separated training seeds to train in this process (default: all)")
    train.add_argument("--prepare", action="store_true",
                       help="only train the tokenizer (if missing) and cache the token stream, then exit")
    train.add_argument("--device", choices=["auto", "cpu", "cuda"], help="override the spec's device (default: auto)")


def main(args: argparse.Namespace) -> int:
    from qsens import blas
    from qsens.testbed.ladder import train_ladder
    from qsens.testbed.spec import load_ladder_spec

    try:
        if not args.prepare:
            # a bad spec is refused before the process may be re-executed: a refusal costs no restart, and a caller
            # running this in-process (cli main(argv) from Python) gets its exit code back on any CPU
            load_ladder_spec(args.spec)
            blas.ensure(reexec=getattr(args, "command_line", False))  # may re-execute (qsens.blas); before any matmul
        manifest = train_ladder(args.spec, args.out, args.sizes.split(",") if args.sizes else None, device=args.device,
                                seeds=[int(s) for s in args.seeds.split(",")] if args.seeds else None,
                                prepare_only=args.prepare)
    except ValueError as exc:
        from qsens.errors import terminal_safe

        print(terminal_safe(str(exc)), file=sys.stderr)
        return 2
    print(f"prepared: tokenizer and token stream of {args.out}" if args.prepare else f"manifest: {manifest}")
    return 0
