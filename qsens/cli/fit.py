"""`qsens fit`: fit degradation laws and the full-precision loss law to stored cells; store and print them."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "fit degradation vs tokens and parameters (Ouyang, Kumar, unified; Chinchilla fp loss) with bootstrap CIs"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from qsens.analysis.fit import DELTA_LAW_NAMES

    parser.add_argument("--results", required=True, type=Path, help="results folder holding qsens.sqlite")
    parser.add_argument("--metric", default="delta_loss",
                        help="degradation column to fit (default delta_loss; D* only for delta_loss)")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap refits per fit (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    parser.add_argument("--law", action="append", choices=DELTA_LAW_NAMES,
                        help="degradation law(s) to fit, repeatable (default: all)")
    parser.add_argument("--bits-axis", choices=("both", "nominal", "effective"), default="both",
                        help="P of the pooled laws: nominal bits, effective bits per weight (scales and zeros "
                        "included, the cells' effective_bits), or both (default)")
    parser.add_argument("--no-store", action="store_true", help="print only; leave the fits table as it is")


def main(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from qsens.analysis.fit import DELTA_LAW_NAMES, FitInputError, FitOptions, NoCellsToFit, fit_results
    from qsens.fit import report
    from qsens.store.sqlite import StoreError

    options = FitOptions(metric=args.metric, n_boot=args.bootstrap, seed=args.seed,
                         laws=tuple(args.law or DELTA_LAW_NAMES), store=not args.no_store,
                         bits_axes=("nominal", "effective") if args.bits_axis == "both" else (args.bits_axis,))
    bar = tqdm(desc="qsens fit", unit="fit", disable=None, file=sys.stderr)  # shown on a terminal only

    def on_fit(record: dict) -> None:
        bar.set_postfix_str(f"{record['law']} {record.get('eval')} {record.get('quantizer') or ''}".strip())
        bar.update()

    try:
        run = fit_results(args.results, options, on_fit=on_fit)
    except NoCellsToFit as exc:
        print(f"qsens fit: {exc}", file=sys.stderr)
        return 1
    except FitInputError as exc:
        print(f"qsens fit: {exc}", file=sys.stderr)
        return 2
    except StoreError as exc:
        print(f"qsens fit: {exc} (--no-store only prints them)", file=sys.stderr)
        return 3
    finally:
        bar.close()
    print(report.summary(run.records, run.comparisons))
    print(f"\n{run.ok} of {len(run.records)} fits ok ({args.bootstrap} bootstrap refits each, seed {args.seed})"
          + (f"; stored in {args.results / 'qsens.sqlite'} (table fits)" if run.stored else ""))
    return 0
