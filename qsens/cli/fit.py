"""`qsens fit`: fit degradation laws and the full-precision loss law to stored cells; store and print them."""

from __future__ import annotations

import argparse
import sqlite3
import sys
from pathlib import Path

HELP = "fit degradation vs tokens and parameters (Ouyang, Kumar, unified; Chinchilla fp loss) with bootstrap CIs"
LAW_CHOICES = ("ouyang", "unified", "kumar")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--results", required=True, type=Path, help="results folder holding qsens.sqlite")
    parser.add_argument("--metric", default="delta_loss",
                        help="degradation column to fit (default delta_loss; D* only for delta_loss)")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap refits per fit (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    parser.add_argument("--law", action="append", choices=LAW_CHOICES,
                        help="degradation law(s) to fit, repeatable (default: all)")
    parser.add_argument("--bits-axis", choices=("both", "nominal", "effective"), default="both",
                        help="P of the pooled laws: nominal bits, effective bits per weight (scales and zeros "
                        "included, the cells' effective_bits), or both (default)")
    parser.add_argument("--no-store", action="store_true", help="print only; leave the fits table as it is")


def _writable(store, db: Path) -> bool:
    """Take the write lock once, before minutes of fitting, so a read-only results folder fails at once."""
    try:
        con = store.connect(db)
        try:
            con.execute("BEGIN IMMEDIATE")
            con.rollback()
        finally:
            con.close()
    except sqlite3.Error as exc:
        print(f"qsens fit: cannot write the fits to {db}: {exc} (--no-store only prints them)", file=sys.stderr)
        return False
    return True


def main(args: argparse.Namespace) -> int:
    from qsens.fit import report, store
    from qsens.fit.laws import LAWS
    from qsens.fit.pipeline import compare_schedules, fit_cells

    db = args.results / store.DB_NAME
    if not db.is_file():
        print(f"qsens fit: no results database at {db} (run `qsens run` first)", file=sys.stderr)
        return 2
    if args.bootstrap < 0:
        print("qsens fit: --bootstrap must be ≥ 0", file=sys.stderr)
        return 2
    cells = store.load_cells(db)
    if not cells:
        print(f"qsens fit: no ok cells in {db}", file=sys.stderr)
        return 1
    if cells[0].get(args.metric, None) is None and args.metric not in cells[0]:
        print(f"qsens fit: unknown metric {args.metric!r}; cell columns include delta_loss, kl_mean, ppl_ratio",
              file=sys.stderr)
        return 2
    if not args.no_store and not _writable(store, db):
        return 3
    laws = tuple(LAWS[name] for name in (args.law or LAW_CHOICES))
    axes = ("nominal", "effective") if args.bits_axis == "both" else (args.bits_axis,)
    fitted = fit_cells(cells, metric=args.metric, n_boot=args.bootstrap, seed=args.seed, laws=laws, bits_axes=axes)
    comparisons = compare_schedules(fitted)
    records = [f.record for f in fitted]
    if not args.no_store:
        con = store.connect(db)
        try:
            store.save_fits(con, records, comparisons)
        except sqlite3.Error as exc:  # disk full since the check: the transaction rolled back, old fits intact
            print(f"qsens fit: cannot store the fits in {db}: {exc}", file=sys.stderr)
            return 3
        finally:
            con.close()
    print(report.summary(records, comparisons))
    ok = sum(r["status"] == "ok" for r in records)
    print(f"\n{ok} of {len(records)} fits ok ({args.bootstrap} bootstrap refits each, seed {args.seed})"
          + ("" if args.no_store else f"; stored in {db} (table fits)"))
    return 0
