"""Compare two `qsens export --format json` files cell by cell: every measured field must be identical.

    python scripts/compare_exports.py BEFORE.json AFTER.json

Fields that describe the run rather than the measurement (timings, timestamps, memory peaks, owner, commit) are
listed and skipped; every other field must be equal (floats exactly). Exit 0 when identical, 1 otherwise.
"""

from __future__ import annotations

import json
import sys

RUN_FIELDS = {"seconds", "quant_seconds", "started_at", "finished_at", "claimed_at", "owner", "git_commit",
              "peak_memory_bytes", "peak_rss_bytes", "peak_gpu_bytes", "temp_disk_bytes", "hostname", "attempts",
              "qsens_version", "location"}  # location: the checkout the checkpoint was read from (the key hashes its files)


def main(before_path: str, after_path: str) -> int:
    before = {c["key"]: c for c in json.load(open(before_path))}
    after = {c["key"]: c for c in json.load(open(after_path))}
    problems = [f"only before: {k}" for k in before.keys() - after.keys()]
    problems += [f"only after: {k}" for k in after.keys() - before.keys()]
    compared = 0
    for key in sorted(before.keys() & after.keys()):
        a, b = before[key], after[key]
        for name in sorted((a.keys() | b.keys()) - RUN_FIELDS):
            compared += 1
            if a.get(name) != b.get(name):
                problems.append(f"{a['checkpoint']} {a['quantizer']} {a['eval']}: {name}: {a.get(name)!r} != "
                                f"{b.get(name)!r}"[:300])
    print(f"{len(before)} cells before, {len(after)} after; {compared} fields compared; skipped run fields: "
          f"{', '.join(sorted(RUN_FIELDS))}")
    print("\n".join(problems[:50]) if problems else "identical")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
