"""The end-of-run summary a person reads: Δloss per checkpoint (rows) and quantizer (columns), with counts."""

from __future__ import annotations

import sys
from collections import defaultdict

from rich.console import Console
from rich.markup import escape as escape_markup
from rich.table import Table

from qsens.errors import terminal_safe

from qsens.runner.loop import RunSummary
from qsens.store import ResultStore
from qsens.suites.load import Suite


def escape(text: str) -> str:
    """Data for the console: no markup read from it, no control characters (ANSI/OSC escapes) passed through."""
    return escape_markup(terminal_safe(text))


def print_summary(suite: Suite, store: ResultStore, summary: RunSummary, console: Console | None = None) -> None:
    """The run's cells (`summary.planned_keys`) as a table, then its counts and first failures.

    Names and errors come from suites, manifests and the hub: data, escaped, never read as console markup or
    terminal control sequences."""
    # Piped or logged output gets a wide table rather than rich's 80-column default, which truncates labels.
    console = console or (Console() if sys.stdout.isatty() else Console(width=220))
    keys = set(summary.planned_keys)
    cells = [c for c in store.cells() if c["key"] in keys]
    quantizers = [q.label() for q in suite.quantizers]
    rows: dict[tuple, dict] = defaultdict(dict)
    for c in cells:
        row = rows[(c["family"], c["checkpoint"], c["eval"])]
        row["n"], row["d"], row["fp"] = c["n_params"], c["tokens"], c["fp_loss"] if c["fp_loss"] is not None else row.get("fp")
        if c["status"] == "ok":
            row[c["quantizer"]] = f"{c['delta_loss']:+.4f}"
        else:
            row[c["quantizer"]] = f"[red]{c['status']}[/red]"
    table = Table(title=escape(f"{suite.name}: Δloss (nats/token) vs full precision"), show_lines=False)
    for col in ("family", "checkpoint", "eval", "D/N", "fp loss", *quantizers):
        table.add_column(escape(col), justify="right" if col not in ("family", "checkpoint", "eval") else "left")
    for (fam, ckpt, ev), row in sorted(rows.items(), key=lambda kv: (kv[0][0], kv[1]["n"], kv[1]["d"], kv[0][2])):
        fp = f"{row['fp']:.4f}" if row.get("fp") is not None else "-"
        table.add_row(escape(fam), escape(ckpt), escape(ev), f"{row['d'] / row['n']:.1f}", fp,
                      *(row.get(q, "-") if q in row and row[q].startswith("[red]") else escape(row.get(q, "-"))
                        for q in quantizers))
    console.print(table)
    console.print(escape(
        f"{summary.planned} cells planned: {summary.skipped} already done (skipped), "
        f"{summary.computed} computed, {summary.failed} failed. Results: {store.path}"
    ))
    elsewhere = summary.elsewhere
    if elsewhere or summary.done_elsewhere:
        owners = ", ".join(sorted(set(elsewhere.values())))
        console.print(escape(f"{len(elsewhere)} cells left to another live run on this results folder ({owners}); "
                             f"{summary.done_elsewhere} finished by another run meanwhile. Run again after it ends "
                             "to pick up whatever it did not finish."))
    failed = [c for c in cells if c["status"] == "failed"]
    for c in failed[:5]:
        console.print("[red]failed[/red] " + escape(f"{c['checkpoint']} {c['quantizer']} {c['eval']}: "
                                                    f"{(c['error'] or '').splitlines()[0] if c['error'] else ''}"))
