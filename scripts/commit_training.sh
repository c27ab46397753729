#!/usr/bin/env bash
# Commit what a background training job has landed, so that no finished work waits uncommitted and the next
# session (a fresh clone) resumes exactly: the new checkpoints, the manifest, and the run states of the runs in
# flight (<out>/resume/, a few MB each; a finished run deletes its own, and the deletion is committed too).
#   scripts/commit_training.sh [OUT] [MESSAGE]        OUT defaults to checkpoints/gutenberg-amended
# Run states are only consistent at rest between two periodic saves, which each replace their file atomically.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-checkpoints/gutenberg-amended}
[ -f "$out/manifest.json" ] || { echo "$out/manifest.json: no manifest (train first: scripts/train_gutenberg_amended.sh)" >&2; exit 2; }
git add -A -- "$out"
if git diff --cached --quiet -- "$out"; then echo "nothing new in $out"; exit 0; fi
n=$(python3 -c "import json,sys; print(len(json.load(open(sys.argv[1]))['checkpoints']))" "$out/manifest.json")
states=$(ls "$out/resume" 2>/dev/null | grep -c '\.pt$' || true)
git commit -q -m "${2:-$(basename "$out"): $n checkpoints landed; $states run state(s) in flight committed for an exact resume}" -- "$out"
git log --oneline -1
