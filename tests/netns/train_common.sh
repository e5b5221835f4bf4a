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

# The start of a test over 2 nodes: its work directory $work (= $2/NAME, emptied), the test hosts,
# and launches with the collective timeout TIMEOUT_S ($timeout_s). Usage: netns_begin NAME
# WORK_ROOT TIMEOUT_S
netns_begin() {
  work=$2/$1
  timeout_s=$3
  hosts_require
  rm -rf "$work" && mkdir -p "$work"
  hosts_up 2
  HOSTS_LAUNCH_FLAGS=(--timeout "$timeout_s")
}

# `hmoe train` over 2 nodes x 2 ranks (1000 steps, a checkpoint every 2) into $run, returning once
# the checkpoint of step 4 exists: a run in the middle of training.
train_until_checkpoint() {
  run="$work/run"
  hosts_launch 2 "$work/launch" -- "$HMOE" train "${TRAIN_FLAGS[@]}" --steps 1000 \
    --checkpoint-every 2 --out "$run"
  hosts_wait_for_file "$run/checkpoints/step_000004" 120 "$work"/launch.*
}

# Waits for the launchers after a fault (at most twice the timeout + 30 s); $took: seconds since
# the fault, which must be within the timeout + 15 s (the launcher's grace, the peer probe, load).
wait_after_fault() {
  local fault=$SECONDS
  hosts_wait $((timeout_s * 2 + 30))
  took=$((SECONDS - fault))
  ((took <= timeout_s + 15)) || hosts_fail "the ranks took ${took} s to end (timeout ${timeout_s} s)" \
    "$work"/*.n*
}

# The run's checkpoints pass `hmoe checkpoint verify`; $last: the one --resume would take.
checkpoint_intact() {
  "$HMOE" checkpoint verify "$run" > "$work/verify.log" 2>&1 ||
    hosts_fail "the last checkpoint does not pass verify" "$work/verify.log"
  cat "$work/verify.log"
  last=$(grep -o 'step_[0-9]*' "$work/verify.log" | tail -n 1)
}
