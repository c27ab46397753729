#!/usr/bin/env bash
# Commit what a background training job has landed, so that no finished work waits uncommitted and the next
# session (a fresh clone) resumes exactly: the new checkpoints and the manifest; with --states also the run states
# of the runs in flight (<out>/resume/, 2.5 MB at h48 and 7.7 MB at h96 each; a finished run deletes its own, and
# the deletion is committed too). Every commit of a state stays in the history, so commit states once, shortly
# before a session ends, and checkpoints as often as they land.
#   scripts/commit_training.sh [--states] [OUT] [MESSAGE]        OUT defaults to checkpoints/gutenberg-amended
# Run states are only consistent at rest between two periodic saves, which each replace their file atomically.
set -euo pipefail
cd "$(dirname "$0")/.."
states=0
[ "${1:-}" = --states ] && { states=1; shift; }
out=${1:-checkpoints/gutenberg-amended}
[ -f "$out/manifest.json" ] || { echo "$out/manifest.json: no manifest (train first: scripts/train_gutenberg_amended.sh)" >&2; exit 2; }
other=$(git diff --cached --name-only -- . ":(exclude)$out")
[ -z "$other" ] || { echo "staged outside $out (commit or unstage them first): $other" >&2; exit 2; }
if [ $states = 1 ]; then git add -A -- "$out"; else git add -A -- "$out" ":(exclude)$out/resume"; fi
if git diff --cached --quiet -- "$out"; then echo "nothing new in $out"; exit 0; fi
n=$(python3 -c "import json,sys; print(len(json.load(open(sys.argv[1]))['checkpoints']))" "$out/manifest.json")
what="run states not committed (--states commits them)"
[ $states = 1 ] && what="$(ls "$out/resume" 2>/dev/null | grep -c '\.pt$' || true) run state(s) in flight committed for an exact resume"
git commit -q -m "${2:-$(basename "$out"): $n checkpoints landed; $what}"
git log --oneline -1
