"""Run jobs one after another in this process; each cell's row is handed back as soon as it is made."""

from __future__ import annotations

from tqdm.auto import tqdm

from qsens.errors import terminal_safe
from qsens.executors import Callbacks, Job, Worker


def launch(jobs: list[Job], worker: Worker, callbacks: Callbacks, progress: bool = True, title: str = "qsens") -> None:
    """Run each job in turn, claiming it just before it runs (so two runs on one results folder share the work:
    the cells another run holds or has finished meanwhile are skipped). A job that raises ends the launch."""
    total = sum(len(job) for job in jobs)
    with tqdm(total=total, desc=title, unit="cell", disable=not progress or total == 0) as bar:
        for job in jobs:
            mine = callbacks.claim(job)
            bar.update(len(job) - (len(mine) if mine else 0))
            if not mine:
                continue
            labels = {c.key: c.label for c in mine.cells}

            def finished(row: dict, labels=labels) -> None:
                callbacks.finished(row)
                bar.set_postfix_str(terminal_safe(f"{labels[row['key']]}: {row['status']}"))
                bar.update(1)

            worker(mine, callbacks.started, finished)
