#!/usr/bin/env bash
# 2 trials x 1 thread vs 1 trial x 2 threads, per study step, on this machine (issue #11).
# Each run: 1 epoch on the first 12,000 training images, bf16, test set not scored, the
# step's origin recipe otherwise; the 2x1 runs start together. Reads the train loop's own
# "img/s" per run from stdout. Run on a quiet machine (no sweep beside it).
set -euo pipefail
out=${1:-/tmp/layout-runs}; rm -rf "$out"
common=(--epochs 1 --train-limit 12000 --test-eval never --mixed-precision bf16 --no-download)
for step in step1 step2 step3 step4; do
  mnist-dist train --step $step "${common[@]}" --threads 2 --out "$out/$step-1x2" > "$out-$step-1x2.log" 2>&1
  mnist-dist train --step $step "${common[@]}" --threads 1 --seed 0 --out "$out/$step-2x1-a" > "$out-$step-2x1-a.log" 2>&1 &
  mnist-dist train --step $step "${common[@]}" --threads 1 --seed 1 --out "$out/$step-2x1-b" > "$out-$step-2x1-b.log" 2>&1
  wait
  for f in "$out-$step"-*.log; do echo "$(basename "$f" .log): $(grep -o '[0-9.]*s  [0-9,]* img/s' "$f")"; done
done
