"""Run checkpoints one after another in this process, writing each cell as soon as it finishes."""

from __future__ import annotations

from typing import Callable

from tqdm.auto import tqdm

from qsens.families.loading import resolve_device
from qsens.provenance import provenance
from qsens.runner.plan import Cell
from qsens.runner.worker import run_checkpoint
from qsens.suites.load import Suite


def run_local(suite: Suite, groups: list[list[Cell]], record: Callable[[dict], None], progress: bool = True,
              claim: Callable[[list[Cell]], list[Cell]] | None = None) -> None:
    """Compute each group (one checkpoint's cells) in turn; `claim` filters a group, just before it runs, down to
    the cells this process may compute (the others are done or held by another run)."""
    device = resolve_device(suite.spec.device)
    prov = provenance(device)
    total = sum(len(g) for g in groups)
    with tqdm(total=total, desc=f"qsens {suite.name}", unit="cell", disable=not progress or total == 0) as bar:

        def emit(row: dict) -> None:
            record(row)
            if row["status"] != "running":
                bar.set_postfix_str(f"{row['checkpoint']} {row['quantizer']} {row['eval']}: {row['status']}")
                bar.update(1)

        for group in groups:
            mine = claim(group) if claim else group
            bar.update(len(group) - len(mine))
            if mine:
                run_checkpoint(suite, mine[0].checkpoint, mine, device, emit, prov)
