#!/bin/sh
# `hmoe train` on 2 ranks where rank 1 has another seed (started through `hmoe launch`, each rank
# running `hmoe train` with its own flags): every rank stops before the first step with an error
# naming the key, both values and the ranks; nothing is written; the exit code is non-zero.
# Usage: train_config_mismatch.sh HMOE WORK_DIR
hmoe=$1
work=$2/config-mismatch-test
rm -rf "$work"
# The wrapper waits a moment after a failing train so that the launcher's stop-on-failure does
# not cut the other rank short before it has printed its error.
out=$("$hmoe" launch --nproc 2 --timeout 20 -- sh -c '
  seed=1234; [ "$RANK" = 1 ] && seed=99
  "$0" train --nproc 2 --dp 2 --ep 2 --tp 1 --pp 1 --d-model 32 --n-heads 2 --n-layers 2 \
    --batch-size 8 --micro-batches 1 --steps 4 --no-eval --train-lines 500 --eval-per-task 2 \
    --no-progress --seed $seed --out "$1"
  rc=$?; [ $rc -ne 0 ] && sleep 2; exit $rc' "$hmoe" "$work" 2>&1)
rc=$?
echo "$out"
[ $rc -ne 0 ] || { echo "expected a non-zero exit code"; exit 1; }
msg='hmoe: error: configuration differs across ranks: seed = 1234 on rank 0 but 99 on rank 1 (every rank must be started with the same configuration and hmoe build)'
for r in 0 1; do
  echo "$out" | grep -qxF "[rank $r] $msg" || { echo "rank $r's error missing"; exit 1; }
done
echo "$out" | grep -q '^\[launch\] rank [01] failed (root cause): exit code 1; last error line: hmoe: error: configuration differs' ||
  { echo "the launcher's summary line is missing"; exit 1; }
[ ! -e "$work" ] || { echo "$work should not exist: nothing may be written"; exit 1; }
