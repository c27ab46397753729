"""History: one small JSON snapshot of the cells per build that saw new numbers, and the changes between them.

Snapshots live in `<site>/history/<UTC time>-<digest>.json` and are carried from the old site into each new
build, so every nightly run that changed something is kept. A build whose cells equal the latest snapshot's
(same digest) adds none: history records changes, not rebuilds.

A cell is followed across snapshots by its identity `suite|family|schedule|checkpoint|eval|quantizer`, not by its
key: a key changes when anything that determines the numbers changes (checkpoint files, protocol), and that is
precisely the kind of change the history should show.

What "changed" means, per tracked metric:
- changed: the value differs by more than 1e-9 relative (storage round-off is far below that; any recomputation
  that moves a number at all shows up), or the cell appeared, disappeared or changed status;
- significant: both values have confidence intervals and the intervals do not overlap (conservative: a
  non-overlap means the difference is beyond both runs' sampling noise).
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path

TRACKED = ("delta_loss", "ppl_ratio", "kl_mean", "top1_agree", "fp_loss", "q_loss")
_SNAP_FIELDS = ("key", "status", "family", "schedule", "checkpoint", "n_params", "tokens", "eval", "method", "bits",
                "quantizer", "git_commit", "finished_at") + tuple(
    c for m in TRACKED for c in (m, f"{m}_ci_low", f"{m}_ci_high"))
FORMAT = 1
REL_TOL = 1e-9


def cell_id(cell: dict) -> str:
    parts = ("suite", "family", "schedule", "checkpoint", "eval", "quantizer")
    return "|".join("" if cell.get(k) is None else str(cell[k]) for k in parts)


def snapshot(cells: list[dict], sources: list[str], now: datetime | None = None) -> dict:
    """The finished cells (ok or failed) in compact form, with a digest of their content."""
    compact = {cell_id(c): {k: c.get(k) for k in _SNAP_FIELDS} for c in cells if c.get("status") in ("ok", "failed")}
    body = json.dumps(compact, sort_keys=True, default=str)
    now = now or datetime.now(timezone.utc)
    return {"format": FORMAT, "created_at": now.isoformat(timespec="seconds"), "sources": sources,
            "digest": hashlib.sha256(body.encode()).hexdigest()[:16], "cells": compact}


def snapshot_name(snap: dict) -> str:
    stamp = snap["created_at"].replace("-", "").replace(":", "").replace("+0000", "Z").replace("+00:00", "Z")
    return f"{stamp}-{snap['digest']}.json"


def read_history(folder: Path) -> tuple[list[dict], list[str]]:
    """Snapshots in time order, and the names of files that could not be read (kept, but not shown)."""
    snaps, bad = [], []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            snap = json.loads(path.read_text())
            if snap.get("format") != FORMAT or not isinstance(snap.get("cells"), dict):
                raise ValueError("not a snapshot")
        except (OSError, ValueError, AttributeError):
            bad.append(path.name)
            continue
        snap["file"] = path.name
        snaps.append(snap)
    snaps.sort(key=lambda s: (s["created_at"], s["file"]))
    return snaps, bad


def add_snapshot(folder: Path, snap: dict, history: list[dict]) -> list[dict]:
    """Write `snap` into `folder` unless the latest snapshot has the same digest; the history including it."""
    if history and history[-1]["digest"] == snap["digest"]:
        return history
    folder.mkdir(parents=True, exist_ok=True)
    name = snapshot_name(snap)
    (folder / name).write_text(json.dumps(snap, sort_keys=True, default=str, separators=(",", ":")) + "\n")
    return history + [{**snap, "file": name}]


def _differs(a, b) -> bool:
    if a is None or b is None:
        return (a is None) != (b is None)
    return abs(a - b) > REL_TOL * max(1.0, abs(a), abs(b))


def _significant(old: dict, new: dict, metric: str) -> bool:
    lo_o, hi_o = old.get(f"{metric}_ci_low"), old.get(f"{metric}_ci_high")
    lo_n, hi_n = new.get(f"{metric}_ci_low"), new.get(f"{metric}_ci_high")
    if None in (lo_o, hi_o, lo_n, hi_n):
        return False
    return hi_o < lo_n or hi_n < lo_o


def diff(old: dict, new: dict) -> list[dict]:
    """Changes from snapshot `old` to `new`: one record per changed metric, appeared, vanished or status change."""
    out = []
    for cid in sorted(set(old["cells"]) | set(new["cells"])):
        a, b = old["cells"].get(cid), new["cells"].get(cid)
        # every record carries `significant` (the history page reads it on every row; only a metric can be)
        base = {"id": cid, "cell": b or a, "at": new["created_at"], "since": old["created_at"], "significant": False}
        if a is None or b is None:
            out.append({**base, "kind": "added" if a is None else "removed"})
            continue
        if a.get("status") != b.get("status"):
            out.append({**base, "kind": "status", "old": a.get("status"), "new": b.get("status")})
        for m in TRACKED:
            if _differs(a.get(m), b.get(m)):
                change = None if None in (a.get(m), b.get(m)) else b[m] - a[m]
                out.append({**base, "kind": "metric", "metric": m, "old": a.get(m), "new": b.get(m),
                            "change": change, "significant": _significant(a, b, m)})
    return out


def transitions(history: list[dict]) -> list[dict]:
    """Per consecutive pair of snapshots: when, how many cells, and its changes (newest first)."""
    out = []
    for prev, cur in zip(history, history[1:]):
        changes = diff(prev, cur)
        out.append({"at": cur["created_at"], "since": prev["created_at"], "file": cur["file"],
                    "changes": changes, "n_significant": sum(bool(c.get("significant")) for c in changes)})
    return out[::-1]


def last_changes(trans: list[dict]) -> dict[tuple[str, str], dict]:
    """(cell id, metric) -> its most recent metric change, from `transitions` (newest first)."""
    latest: dict[tuple[str, str], dict] = {}
    for t in trans:
        for c in t["changes"]:
            if c["kind"] == "metric":
                latest.setdefault((c["id"], c["metric"]), c)
    return latest


def summary(history: list[dict], trans: list[dict], unreadable: list[str], max_listed: int = 500) -> dict:
    """The history page's model: snapshots newest first with counts, and the transitions."""
    by_file = {t["file"]: t for t in trans}
    snaps = []
    for s in history[::-1]:
        cells = s["cells"].values()
        t = by_file.get(s["file"])
        snaps.append({"created_at": s["created_at"], "file": s["file"], "digest": s["digest"],
                      "ok": sum(c.get("status") == "ok" for c in cells),
                      "failed": sum(c.get("status") == "failed" for c in cells),
                      "commits": sorted({str(c["git_commit"]) for c in cells if c.get("git_commit")}),
                      "n_changes": len(t["changes"]) if t else None, "n_significant": t["n_significant"] if t else None})
    return {"snapshots": snaps, "transitions": trans, "unreadable": unreadable, "rel_tol": REL_TOL,
            "max_listed": max_listed, "latest": history[-1]["created_at"] if history else None}
