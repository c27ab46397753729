"""`qsens nightly CONFIG`: run a list of suites incrementally, fit, rebuild the board, record the run.

Each step is isolated: a suite that fails to load or crashes is recorded and the next one still runs; the fit
and the board run afterwards on whatever is stored. The run record (start/end, cells computed/skipped/failed,
versions, device, git commit, every step's outcome) goes to the `runs` table of each results folder and to a
JSONL log. The run succeeds only if no cell and no step failed.

Config (YAML, relative paths resolved against the config file's folder):

    suites:
      - {suite: suites/pythia.yaml, results: results/pythia, executor: ray, address: auto}
      - {suite: suites/olmo.yaml}            # results/<suite name>, local executor, 1 thread (threads: N)
    fit: true                                # fit each results folder (qsens.analysis.fit, as `qsens fit`)
    board: {results: results, out: site}     # qsens.board.build.build_board(results, out)
    log: results/nightly.jsonl
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from qsens.errors import error_text
from qsens.provenance import utc_now


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SuiteEntry(_Strict):
    suite: str = Field(min_length=1, description="suite YAML file")
    results: str | None = Field(None, description="results folder (default: results/<suite name>)")
    executor: Literal["local", "ray"] = "local"
    address: str | None = Field(None, description="Ray cluster address ('auto' = the cluster of this node)")
    num_gpus_per_task: float | None = Field(None, ge=0, le=1024, description="default: 1 if the cluster has GPUs, else 0")
    retries: int = Field(1, ge=0, le=100, description="resubmissions of a checkpoint whose Ray worker died")
    threads: int = Field(1, ge=1, le=1024, description="torch threads per checkpoint, as `qsens run --threads` "
                         "(default 1; every core: executor ray, one checkpoint per `threads` CPUs)")


class BoardEntry(_Strict):
    results: str = Field(description="folder holding the results folders the board shows")
    out: str = Field(description="folder the board is written to")


class NightlyConfig(_Strict):
    suites: list[SuiteEntry] = Field(min_length=1)
    fit: bool = True
    board: BoardEntry | None = None
    log: str = "results/nightly.jsonl"


class ConfigError(ValueError):
    pass


def load_config(path: str | Path) -> NightlyConfig:
    """The config, read like a suite (size cap, UTF-8, duplicate keys and 64-bit integers are errors) and strictly
    typed; raises ConfigError listing every problem."""
    from qsens import documents

    try:
        config = documents.read_model(Path(path), NightlyConfig, "nightly config")
        problem = log_problem(Path(path).resolve().parent / config.log)
        if problem:
            raise documents.DocumentError(Path(path), "nightly config", [("log", f"{problem} (got {config.log!r})")])
    except documents.DocumentError as exc:
        raise ConfigError(str(exc)) from None
    return config


def log_problem(log: Path) -> str | None:
    """Why the run record cannot be appended to `log` (a JSONL file), or None: never into a results database
    (issue 25: a `log:` naming qsens.sqlite appended JSON to the database file) or a folder."""
    from qsens.store.sqlite import DB_NAME

    if log.name.startswith(DB_NAME):
        return (f"names a results database ({DB_NAME}); the log is a JSON-lines file of its own, "
                "e.g. results/nightly.jsonl")
    if "\x00" in str(log):
        return "holds a NUL byte; give a file, e.g. results/nightly.jsonl"
    try:
        if log.is_dir():
            return "is a folder; give a file, e.g. results/nightly.jsonl"
    except OSError as exc:  # e.g. a name too long for the filesystem
        return f"cannot be used as a file: {exc.strerror or exc}"
    try:
        with open(log, "rb") as f:
            header = f.read(16)
    except (OSError, ValueError):  # ValueError: a NUL byte in the path (pydantic lets it through)
        return None  # absent (created on the first run) or unreadable (the append says so)
    if header == b"SQLite format 3\x00":
        return "is an SQLite database; the log is a JSON-lines file of its own, e.g. results/nightly.jsonl"
    return None


@dataclass
class Step:
    name: str
    ok: bool = True
    error: str | None = None
    seconds: float = 0.0
    details: dict = field(default_factory=dict)


def _step(name: str, fn, **details) -> Step:
    """Run one step; any exception fails this step (with its traceback tail), never the whole run."""
    step, t0 = Step(name, details=details), time.perf_counter()
    try:
        result = fn()
        if isinstance(result, dict):
            step.details.update(result)
    except Exception as exc:  # noqa: BLE001 - a failing step is recorded, the next one still runs
        step.ok = False
        step.details.update(getattr(exc, "counts", {}))  # a suite with failed cells keeps its counts
        step.error = error_text(exc, frames=2)
    step.seconds = round(time.perf_counter() - t0, 3)
    return step


class CellsFailed(RuntimeError):
    """Some cells of a suite failed; the step is failed, and its counts are kept."""

    def __init__(self, counts: dict):
        super().__init__(f"{counts['failed']} cell(s) failed in suite {counts['suite']} (see `qsens export --status failed`)")
        self.counts = counts


def _run_suite(entry: SuiteEntry, base: Path, results_dirs: list[Path]) -> dict:
    from qsens.runner.loop import run_suite
    from qsens.suites.load import load_suite

    suite = load_suite(base / entry.suite)
    results = base / entry.results if entry.results else base / "results" / suite.name
    results_dirs.append(results)
    options = {}
    if entry.executor == "ray":
        options = {"address": entry.address, "num_gpus_per_task": entry.num_gpus_per_task, "retries": entry.retries}
    summary = run_suite(suite, results, executor=entry.executor, progress=False, threads=entry.threads, **options)
    out = {"suite": suite.name, "results": str(results), "planned": summary.planned, "skipped": summary.skipped,
           "computed": summary.computed, "failed": summary.failed}
    if summary.failed:
        raise CellsFailed(out)
    return out


def _fit(results: Path) -> dict:
    """Fit the cells of one results folder and store the fits, as `qsens fit --results DIR` does."""
    from qsens.analysis.fit import fit_results

    run = fit_results(results)
    return {"results": str(results), "fits": len(run.records), "fits_ok": run.ok}


def _board(board: BoardEntry, base: Path) -> dict:
    from qsens.board.build import build_board

    build_board(base / board.results, base / board.out)
    return {"out": str(base / board.out)}


def _cell_devices(results_dirs: list[Path], since: str) -> list[str]:
    from qsens.store import ResultStore

    devices = set()
    for d in results_dirs:
        if d.is_dir():
            devices |= {c["device"] for c in ResultStore(d).cells() if c["device"] and (c["started_at"] or "") >= since}
    return sorted(devices)


def run_nightly(config_path: str | Path) -> dict:
    """Run everything the config lists; returns the run record (also stored and logged). Raises ConfigError."""
    from qsens.families.loading import resolve_device
    from qsens.provenance import provenance
    from qsens.store.runs import append_run

    config_path = Path(config_path).resolve()
    config, base = load_config(config_path), config_path.parent
    started, t0 = utc_now(), time.perf_counter()
    results_dirs: list[Path] = []
    steps = [_step(f"suite {e.suite}", lambda e=e: _run_suite(e, base, results_dirs), executor=e.executor)
             for e in config.suites]
    if config.fit:
        steps += [_step(f"fit {d}", lambda d=d: _fit(d)) for d in dict.fromkeys(results_dirs)]
    if config.board is not None:
        steps.append(_step("board", lambda: _board(config.board, base)))
    record = _record(config_path, config, steps, started, results_dirs, provenance(resolve_device("auto")))
    record["seconds"] = round(time.perf_counter() - t0, 3)
    for d in dict.fromkeys(results_dirs):
        append_run(d, record)
    log = base / config.log
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a", encoding="utf-8") as f:
        f.write(json.dumps(record, sort_keys=True, default=str) + "\n")
    return record


def _record(config_path: Path, config: NightlyConfig, steps: list[Step], started: str, results_dirs: list[Path],
            prov: dict) -> dict:
    suites = [s.details for s in steps if s.name.startswith("suite ")]
    total = {k: sum(s.get(k, 0) for s in suites) for k in ("planned", "computed", "skipped", "failed")}
    executors = sorted({e.executor for e in config.suites})
    return {
        "kind": "nightly", "config": str(config_path), "suite": ",".join(s["suite"] for s in suites if "suite" in s),
        "started_at": started, "finished_at": utc_now(), "ok": all(s.ok for s in steps),
        "cells_planned": total["planned"], "cells_computed": total["computed"], "cells_skipped": total["skipped"],
        "cells_failed": total["failed"], "executor": ",".join(executors),
        "device": prov["device"], "cell_devices": _cell_devices(results_dirs, started), **prov,
        "steps": [asdict(s) for s in steps],
    }
