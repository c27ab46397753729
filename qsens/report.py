"""The end-of-run summary: Δloss per checkpoint (rows) and quantizer (columns), with counts."""

from __future__ import annotations

from collections import defaultdict

from rich.console import Console
from rich.table import Table

from qsens.runner import plan_cells
from qsens.store import ResultStore
from qsens.suites.load import Suite


def print_summary(suite: Suite, store: ResultStore, summary, console: Console | None = None) -> None:
    console = console or Console()
    keys = {c.key for c in plan_cells(suite)}
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
    table = Table(title=f"{suite.name}: Δloss (nats/token) vs full precision", show_lines=False)
    for col in ("family", "checkpoint", "eval", "D/N", "fp loss", *quantizers):
        table.add_column(col, justify="right" if col not in ("family", "checkpoint", "eval") else "left")
    for (fam, ckpt, ev), row in sorted(rows.items(), key=lambda kv: (kv[0][0], kv[1]["n"], kv[1]["d"], kv[0][2])):
        fp = f"{row['fp']:.4f}" if row.get("fp") is not None else "-"
        table.add_row(fam, ckpt, ev, f"{row['d'] / row['n']:.1f}", fp, *(row.get(q, "-") for q in quantizers))
    console.print(table)
    console.print(
        f"{summary.planned} cells planned: {summary.skipped} already done (skipped), "
        f"{summary.computed} computed, {summary.failed} failed. Results: {store.path}"
    )
    failed = [c for c in cells if c["status"] == "failed"]
    for c in failed[:5]:
        console.print(f"[red]failed[/red] {c['checkpoint']} {c['quantizer']} {c['eval']}: {(c['error'] or '').splitlines()[0]}")
