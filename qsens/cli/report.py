"""`qsens report`: the overtraining effect as Markdown tables, the fits' verdicts, and the README's claims."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "print Markdown tables of Δloss vs D/N per family, size and quantizer, with the fits' verdicts"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--results", required=True, help="results folder (holds qsens.sqlite)")
    parser.add_argument("--claims", action="store_true",
                        help="print the findings block the README holds (qsens.analysis.claims) instead of the tables")
    parser.add_argument("--readme", type=Path, default=None,
                        help="with --claims: rewrite the block between the claims markers of this README")
    parser.add_argument("--eval", default="heldout-novels", help="with --claims: the eval the findings are about")
    parser.add_argument("--layer-claims", action="store_true",
                        help="print the per-layer findings block (qsens.analysis.layer_claims; with --readme: rewrite "
                             "the block between the layers markers)")


def _fit_section(results: str) -> str:
    from qsens.fit import report
    from qsens.store.fits import read_fits

    fits, _ = read_fits(results)
    if not fits:
        return "No fits stored (run `qsens fit`)."
    return "#### Fits (verdict and diagnostics; `qsens fit` for D* and schedules)\n\n```\n" + \
        report.fits_table(fits) + "\n\n" + report.verdict_lines(fits) + "\n```"


def main(args: argparse.Namespace) -> int:
    from qsens.analysis.effect import effect_markdown
    from qsens.store.cells import read_cells
    from qsens.store.sqlite import DB_NAME

    if not (Path(args.results) / DB_NAME).is_file():
        print(f"qsens report: no {DB_NAME} in {args.results}", file=sys.stderr)
        return 2
    if args.claims or args.layer_claims:
        if args.claims and args.layer_claims:
            print("qsens report: --claims and --layer-claims are two blocks; give one", file=sys.stderr)
            return 2
        if args.layer_claims:
            from qsens.analysis.layer_claims import layer_claims_markdown as claims_markdown
            from qsens.analysis.layer_claims import replace_block
        else:
            from qsens.analysis.claims import claims_markdown, replace_block

        block = claims_markdown(args.results, args.eval)
        if args.readme is None:
            print(block, end="")
            return 0
        try:
            args.readme.write_text(replace_block(args.readme.read_text(), block))
        except (OSError, ValueError) as exc:
            print(f"qsens report: {args.readme}: {exc}", file=sys.stderr)
            return 2
        print(f"rewrote the claims block of {args.readme}")
        return 0
    if args.readme is not None:
        print("qsens report: --readme needs --claims", file=sys.stderr)
        return 2
    from qsens.analysis.layers import layers_markdown

    cells = read_cells(args.results)
    print(effect_markdown(cells))
    layers = layers_markdown(cells)
    if layers:
        print("### Which layers break first\n\n" + layers)
    print(_fit_section(args.results))
    return 0
