"""`qsens bench kernel`: throughput of the RTN CUDA kernel vs copy, the torch reference and bitsandbytes NF4."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

HELP = ("benchmarks: `qsens bench kernel` (RTN kernel GB/s vs copy), `qsens bench score` (scoring tokens/s vs "
        "lm-eval's loglikelihood_rolling), `qsens bench suite` (a suite's wall time in fp passes), "
        "`qsens bench train` (training tokens per CPU-second, fast vs HF trainer, and the share of the matmul rate)")


def _size(text: str) -> tuple[int, int]:
    try:
        rows, cols = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 4096x4096, got {text!r}") from None
    if rows < 1 or cols < 1:
        raise argparse.ArgumentTypeError(f"size must be positive, got {text!r}")
    return rows, cols


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="bench", metavar="BENCH", required=True)
    k = sub.add_parser("kernel", help="RTN kernel GB/s vs copy, torch reference and bnb quantize_4bit")
    k.add_argument("--sizes", type=_size, nargs="+", metavar="ROWSxCOLS",
                   help="weight shapes (default: 4096x4096 ... 16384x53248 on CUDA, two small ones on CPU)")
    k.add_argument("--bits", type=int, default=4, choices=range(2, 9), metavar="{2..8}")
    k.add_argument("--group-size", type=int, default=128, help="columns per group; -1 for one group per row")
    k.add_argument("--dtype", choices=("float16", "bfloat16", "float32"), default="float16")
    k.add_argument("--iters", type=int, default=20, help="timed runs per measurement (median reported)")
    k.add_argument("--device", help="default: cuda when available, else cpu")
    k.add_argument("--out", type=Path, help="write the Markdown table here and its data beside it (.json)")
    s = sub.add_parser("score", help="scoring tokens/s of the fp pass and of quantized cells with KL vs lm-eval")
    s.add_argument("models", nargs="+", type=Path, help="local HF folders (e.g. a micro checkpoint, a stand-in)")
    s.add_argument("--text", type=Path, default=Path("data/eval/heldout-novels.txt.gz"))
    s.add_argument("--context", type=int, default=128)
    s.add_argument("--batch-size", type=int, default=8)
    s.add_argument("--max-tokens", type=int, default=8192, help="tokens of the text both tools score")
    s.add_argument("-k", type=int, default=2, help="quantized models scored in one sweep")
    s.add_argument("--rounds", type=int, default=4,
                   help="interleaved rounds, order reversed every other one (median of per-round ratios)")
    s.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32",
                   help="the model's dtype (scoring accumulates in float32/float64 whatever it is)")
    s.add_argument("--threads", type=int, default=1,
                   help="torch threads (default: %(default)s, as `qsens run` gives each worker)")
    s.add_argument("--device", help="default: cuda when available, else cpu")
    s.add_argument("--profile", action="store_true", help="add a torch-profiler table of one sweep")
    s.add_argument("--eager-kl", action="store_true", help="the eager KL kernel instead of the compiled one")
    s.add_argument("--out", type=Path, help="write the Markdown table here and its data beside it (.json)")
    u = sub.add_parser("suite", help="a suite's wall time and cells/s, in fp passes per checkpoint (same run)")
    u.add_argument("suite", nargs="?", type=Path, default=Path("suites/micro.yaml"), help="default: %(default)s")
    u.add_argument("--threads", type=int, default=1,
                   help="torch threads (default: %(default)s, as `qsens run` gives each worker)")
    u.add_argument("--rounds", type=int, default=3,
                   help="interleaved rounds of suite and baseline, order reversed every other one (default "
                        "%(default)s: the first suite run also compiles the compare kernels, and the median of "
                        "three leaves that round out)")
    u.add_argument("--limit-checkpoints", type=int, metavar="N", help="only the suite's first N checkpoints")
    u.add_argument("--out", type=Path, help="write the Markdown report here and its data beside it (.json)")
    t = sub.add_parser("train", help="training tokens per CPU-second, fast vs HF trainer, and the matmul-rate share")
    t.add_argument("spec", nargs="?", type=Path, default=Path("checkpoints/gutenberg.yaml"),
                   help="default: %(default)s")
    t.add_argument("--sizes", help="comma-separated size names (default: all of the spec)")
    t.add_argument("--steps", type=int, default=4, help="training steps per timed block")
    t.add_argument("--rounds", type=int, default=4, help="interleaved blocks per trainer (order reversed every other)")
    t.add_argument("--compare-blas", action="store_true",
                   help="also time the largest size's GEMMs in fresh processes on each BLAS route (qsens.blas)")
    t.add_argument("--out", type=Path, help="write the Markdown table here and its data beside it (.json)")


def main(args: argparse.Namespace) -> int:
    if args.bench == "score":
        return _score(args)
    if args.bench == "suite":
        return _suite(args)
    if args.bench == "train":
        return _train(args)
    import torch

    from qsens.bench import kernel

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    sizes = args.sizes or (kernel.DEFAULT_SIZES_CUDA if device.type == "cuda" else kernel.DEFAULT_SIZES_CPU)
    if args.group_size != -1 and args.group_size < 1:
        print(f"--group-size must be -1 or >= 1, got {args.group_size}", file=sys.stderr)
        return 2
    data = kernel.run(sizes, args.bits, args.group_size, getattr(torch, args.dtype), device, args.iters)
    command = "qsens " + shlex.join(sys.argv[1:]) if sys.argv[1:2] == ["bench"] else "qsens bench kernel"
    table = kernel.to_markdown(data, command)
    return _publish(table, data, args.out)


def _publish(table: str, data, out: Path | None) -> int:
    """Print the markdown table; with --out also write it there and the data as JSON beside it."""
    print(table)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(table)
        out.with_suffix(".json").write_text(json.dumps(data, indent=2) + "\n")
    return 0


def _route(args: argparse.Namespace) -> str:
    """The matmul route `qsens run` takes on this CPU (`qsens.blas.ensure`: may re-execute this process; QSENS_BLAS
    =off measures the default route), once the arguments are checked and before any matmul."""
    from qsens import blas

    return blas.ensure(reexec=getattr(args, "command_line", False))


def _score(args: argparse.Namespace) -> int:
    import torch

    from qsens.bench import score

    for flag, value in (("--rounds", args.rounds), ("--threads", args.threads)):
        if value < 1:
            print(f"{flag} must be >= 1, got {value}", file=sys.stderr)
            return 2
    for m in args.models:
        if not (m / "config.json").exists():
            print(f"{m}: not a HF model folder (no config.json)", file=sys.stderr)
            return 2
    _route(args)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device) if args.device else None
    results = [score.run(m, args.text, context=args.context, batch_size=args.batch_size, max_tokens=args.max_tokens,
                         k=args.k, rounds=args.rounds, device=device, profile=args.profile,
                         kl_compile=not args.eager_kl, dtype=args.dtype) for m in args.models]
    table = score.to_markdown(results, "qsens " + shlex.join(sys.argv[1:]) if sys.argv[1:2] == ["bench"]
                              else "qsens bench score")
    return _publish(table, results, args.out)


def _suite(args: argparse.Namespace) -> int:
    from qsens.bench import suite
    from qsens.cli.validate import load_or_report

    for flag, value in (("--limit-checkpoints", args.limit_checkpoints), ("--threads", args.threads),
                        ("--rounds", args.rounds)):
        if value is not None and value < 1:
            print(f"{flag} must be >= 1, got {value}", file=sys.stderr)
            return 2
    loaded = load_or_report(str(args.suite))
    if loaded is None:
        return 2
    _route(args)
    result = suite.run(loaded, threads=args.threads, rounds=args.rounds, limit_checkpoints=args.limit_checkpoints)
    table = suite.to_markdown(result, "qsens " + shlex.join(sys.argv[1:]) if sys.argv[1:2] == ["bench"]
                              else "qsens bench suite")
    return _publish(table, result, args.out)


def _train(args: argparse.Namespace) -> int:
    import torch

    from qsens import blas
    from qsens.bench import train

    for flag, value in (("--steps", args.steps), ("--rounds", args.rounds)):
        if value < 1:
            print(f"{flag} must be >= 1, got {value}", file=sys.stderr)
            return 2
    try:
        # the route training takes on this CPU (may re-execute this process)
        blas.ensure(reexec=getattr(args, "command_line", False))
        torch.set_num_threads(1)
        data = train.run(args.spec, args.sizes.split(",") if args.sizes else None, args.steps, args.rounds,
                         args.compare_blas)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    command = "qsens " + shlex.join(sys.argv[1:]) if sys.argv[1:2] == ["bench"] else "qsens bench train"
    return _publish(train.to_markdown(data, command), data, args.out)
