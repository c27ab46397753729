"""One finding of the README block (`Claim`) and the series the findings count over (one per training run)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

LOW_BITS = (2, 3, 4)


@dataclass
class Claim:
    name: str
    text: str
    holds: bool
    numbers: dict = field(default_factory=dict)


def series(cells: list[dict], **where) -> dict[tuple, list[dict]]:
    """{(family, eval, N, bits, training seed): cells sorted by D} for the cells matching `where` (one series per
    training run: a family's seed replicates are series of their own)."""
    out: dict[tuple, list[dict]] = defaultdict(list)
    for c in cells:
        if all(c.get(k) == v for k, v in where.items()):
            out[(c["family"], c["eval"], c["n_params"], c.get("bits"), c.get("train_seed"))].append(c)
    return {k: sorted(v, key=lambda c: c["tokens"]) for k, v in sorted(out.items(), key=lambda kv: str(kv[0]))}


def span(v: list[float]) -> str:
    return f"{v[0]:.2f}–{v[-1]:.2f}" if v else "-"
