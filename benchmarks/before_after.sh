#!/bin/bash
# One run, two checkouts: the toy sweep (sweep=lr_smoothing_noise, 12 jobs) at trainer.max_epochs=20 with the
# basic and the stacked launcher, and a plain run's overhead against the plain PyTorch loop, for BEFORE (a
# worktree of the older commit) and for this checkout.  bash benchmarks/before_after.sh /path/to/before OUT
set -e
BEFORE=$1; OUT=$2; HERE=$(cd "$(dirname "$0")/.." && pwd)
for side in before after; do
  dir=$HERE; [ $side = before ] && dir=$BEFORE
  mkdir -p "$OUT/$side"
  (cd "$dir" && PYTHONPATH="$dir" python benchmarks/stacked.py "$OUT/$side" --data toy --epochs 20 --no-steps) | tail -8
  (cd "$dir" && PYTHONPATH="$dir" python benchmarks/bench_overhead.py --data digits --iters 200 --rounds 3) | tail -6
done
