"""The README's counts by tests: a difference counts only when its paired interval excludes 0 (issue 21).

The findings block (`qsens.analysis.claims`) counted point estimates: "the 2-bit U-curve turns up in 6 of 6" was
5 of 6 under a paired test on the stored window sums. Here every such count is of paired differences between two
cells scored on the same tokens (`qsens.metrics.compare.paired_difference`, the cells' own block bootstrap on the
difference series): `resolved` counts those whose interval lies on the claimed side of 0, `unresolved` those whose
point estimate is on that side but whose interval includes 0, `against` those resolved on the other side.

Growth factors (Δ at the largest budget over Δ at the smallest) are also given for the series restricted to
checkpoints past a quality gate (`gate_loss`: per eval, the fp loss a checkpoint must be at or below, e.g. the
bigram minus its margin, `qsens.testbed.gates.checkpoint_gate`): below it Δ is dominated by the model's climb from
unigram to language model.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from qsens.metrics.compare import paired_difference

LOW_BITS = (2, 3, 4)


@dataclass(frozen=True)
class TestedCount:
    """How many differences of a claim are resolved on its side, unresolved, or resolved against it."""

    resolved: int
    unresolved: int
    against: int
    point: int  # the old count: point estimates on the claimed side

    @property
    def total(self) -> int:
        return self.resolved + self.unresolved + self.against + self.undecided

    undecided: int = 0  # point estimate not on the claimed side and interval includes 0

    def text(self, what: str) -> str:
        return (f"{self.resolved} of {self.total} {what} (paired 95% interval excludes 0; {self.unresolved} more "
                f"by point estimate only, unresolved" + (f"; {self.against} resolved the other way" if self.against
                                                         else "") + ")")


def _classify(diff: dict) -> str:
    if diff["ci_low"] > 0:
        return "resolved"
    if diff["ci_high"] < 0:
        return "against"
    return "unresolved" if diff["difference"] > 0 else "undecided"


def _count(diffs: list[dict]) -> TestedCount:
    kinds = [_classify(d) for d in diffs]
    return TestedCount(kinds.count("resolved"), kinds.count("unresolved"), kinds.count("against"),
                       sum(d["difference"] > 0 for d in diffs), kinds.count("undecided"))


def _series(cells: list[dict], **where) -> dict[tuple, list[dict]]:
    """{(family, eval, N, bits, training seed): cells sorted by D} for the ok cells matching `where`: one series
    is one training run's trajectory (seed replicates of a family are series of their own)."""
    out: dict[tuple, list[dict]] = defaultdict(list)
    for c in cells:
        if c.get("status", "ok") == "ok" and all(c.get(k) == v for k, v in where.items()):
            out[(c["family"], c["eval"], c["n_params"], c.get("bits"), c.get("train_seed"))].append(c)
    return {k: sorted(v, key=lambda c: c["tokens"]) for k, v in sorted(out.items(), key=lambda kv: str(kv[0]))}


def u_curve_tested(cells: list[dict], ev: str, samples: int = 1000, seed: int = 0) -> dict[int, TestedCount]:
    """Per bits: series whose quantized loss at the largest budget is above its lowest point (q_loss, paired)."""
    out: dict[int, list[dict]] = defaultdict(list)
    for (_, _, _, bits, _), s in _series(cells, eval=ev).items():
        if bits is None or len(s) < 2:
            continue
        q = [c["fp_loss"] + c["delta_loss"] for c in s]
        best = min(range(len(q) - 1), key=q.__getitem__)  # the lowest point before the largest budget
        out[bits].append(paired_difference(s[-1], s[best], "q_loss", samples=samples, seed=seed))
    return {bits: _count(d) for bits, d in sorted(out.items())}


def growth_tested(cells: list[dict], samples: int = 1000, seed: int = 0,
                  gate_loss: dict[str, float] | None = None) -> dict:
    """Low-bit series whose Δloss at the largest budget is above the smallest budget's (paired on the same tokens);
    and the growth factors largest/smallest, over all series and over checkpoints past the gate (when given).

    gate_loss: {tokens digest or eval name: fp loss at or below which a checkpoint is past the gate}; a series'
    cells are looked up by their tokens digest first (`qsens.testbed.gates.read_baselines` keys), then by eval."""
    diffs, factors, gated = [], [], []
    for (_, ev, _, bits, _), s in _series(cells).items():
        if bits not in LOW_BITS or len(s) < 2:
            continue
        diffs.append(paired_difference(s[-1], s[0], "delta_loss", samples=samples, seed=seed))
        if s[0]["delta_loss_ci_low"] > 0 and s[-1]["delta_loss_ci_low"] > 0:  # a ratio of two resolved, positive Δs
            factors.append(s[-1]["delta_loss"] / s[0]["delta_loss"])
        gate = (gate_loss or {}).get(s[0].get("tokens_digest"), (gate_loss or {}).get(ev))
        if gate is not None:
            past = [c for c in s if c["fp_loss"] <= gate]
            if len(past) >= 2 and past[0]["delta_loss_ci_low"] > 0 and past[-1]["delta_loss_ci_low"] > 0:
                gated.append(past[-1]["delta_loss"] / past[0]["delta_loss"])
    span = lambda v: (min(v), max(v)) if v else None  # noqa: E731
    return {"count": _count(diffs), "factors": span(factors), "factors_past_gate": span(gated),
            "series_past_gate": len(gated)}
