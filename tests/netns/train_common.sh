#!/usr/bin/env bash
# train_common.sh — the small `hmoe train` run of the netns tests (4 ranks: dp 4, ep 2) and a
# bit-for-bit comparison of two runs' losses (metrics.jsonl), sourced by the tests.
TRAIN_FLAGS=(--nproc 4 --tp 1 --dp 4 --pp 1 --ep 2 --d-model 32 --n-heads 2 --n-layers 2
  --batch-size 8 --micro-batches 1 --no-eval --train-lines 500 --eval-per-task 2 --no-progress)

# The "loss" and "grad_norm" of every step of run directory $1, one per line, as written.
run_losses() {
  grep -o '"\(loss\|grad_norm\)": *[^,}]*' "$1/metrics.jsonl"
}

# Whether runs $1 and $2 logged the same losses, bit for bit (the text of a double written with
# full precision); prints both on a difference.
same_losses() {
  local a b
  a=$(run_losses "$1")
  b=$(run_losses "$2")
  [ -n "$a" ] || { echo "no losses in $1/metrics.jsonl"; return 1; }
  [ "$a" = "$b" ] && return 0
  echo "losses of $1:"; echo "$a"; echo "losses of $2:"; echo "$b"
  return 1
}
