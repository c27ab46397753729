#!/usr/bin/env bash
# Train (or resume) the whole gutenberg family: one process per (size, seed), all in parallel, then the manifest.
#   scripts/train_gutenberg.sh [auto|cuda|cpu]        rerun the same command to resume after any interruption
# Logs: logs/gutenberg/<size>-s<seed>.log. Plan, cost and gates: checkpoints/gutenberg/TRAINING.md.
set -euo pipefail
cd "$(dirname "$0")/.."
device=${1:-auto}
py=${PYTHON:-python}
mkdir -p logs/gutenberg
# once: tokenizer (committed, so normally present) and the cached token stream, before the runs share them
$py -m qsens family train checkpoints/gutenberg.yaml --out checkpoints/gutenberg --prepare --device "$device"
pids=()
for run in h96:0 h48:0 h48:1 h48:2 h32:0 h32:1 h32:2; do
  size=${run%:*} seed=${run#*:}
  OMP_NUM_THREADS=1 $py -m qsens family train checkpoints/gutenberg.yaml --out checkpoints/gutenberg \
    --sizes "$size" --seeds "$seed" --device "$device" >"logs/gutenberg/$size-s$seed.log" 2>&1 &
  pids+=($!)
done
status=0
for p in "${pids[@]}"; do wait "$p" || status=1; done
[ $status = 0 ] && echo "all runs done: checkpoints/gutenberg/manifest.json" || echo "a run failed: see logs/gutenberg/"
exit $status
