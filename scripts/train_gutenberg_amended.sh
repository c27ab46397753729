#!/usr/bin/env bash
# Train (or resume) the amended gutenberg family (docs/schedule-question.md, "Amendment, 2026-12-03"): one process
# per (size, seed), at most JOBS at a time (default: one per CPU core; each process uses one thread). Seed 0 of each size from checkpoints/gutenberg-amended-seed0.yaml (its primary
# trajectory plus the secondary f = 0.1/0.4 cooldowns and cosine anchors), every other seed from
# checkpoints/gutenberg-amended.yaml (primary only); both into checkpoints/gutenberg-amended.
#   scripts/train_gutenberg_amended.sh [auto|cuda|cpu]     rerun the same command to resume after any interruption
# Logs: logs/gutenberg-amended/<size>-s<seed>.log. Never train seed 0 from the primary spec (see its header).
set -euo pipefail
cd "$(dirname "$0")/.."
device=${1:-auto}
py=${PYTHON:-python}
out=checkpoints/gutenberg-amended
mkdir -p logs/gutenberg-amended
# once: the cached token stream (the tokenizer is committed: a copy of checkpoints/gutenberg/tokenizer)
$py -m qsens family train checkpoints/gutenberg-amended.yaml --out $out --prepare --device "$device"
jobs_max=${JOBS:-$(nproc)}
status=0
for run in h48:0 h96:0 h48:1 h96:1 h48:2 h96:2 h48:3 h96:3 h48:4 h48:5 h48:6 h48:7; do
  while [ "$(jobs -rp | wc -l)" -ge "$jobs_max" ]; do wait -n || status=1; done
  size=${run%:*} seed=${run#*:}
  spec=checkpoints/gutenberg-amended.yaml
  [ "$seed" = 0 ] && spec=checkpoints/gutenberg-amended-seed0.yaml
  OMP_NUM_THREADS=1 $py -m qsens family train $spec --out $out \
    --sizes "$size" --seeds "$seed" --device "$device" >"logs/gutenberg-amended/$size-s$seed.log" 2>&1 &
done
while true; do wait -n; rc=$?; [ $rc = 127 ] && break; [ $rc = 0 ] || status=1; done  # 127: no child left
[ $status = 0 ] && echo "all runs done: $out/manifest.json" || echo "a run failed: see logs/gutenberg-amended/"
exit $status
