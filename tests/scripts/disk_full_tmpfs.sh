#!/bin/sh
# A disk that fills during `hmoe train`: --out on a 3 MB tmpfs, a checkpoint every step. The run
# must end with a clear error (the path and "No space left on device"; no abort, no backtrace), a
# non-zero exit, no temporary checkpoint directory left behind, and `latest` naming a checkpoint
# that verifies; once there is space again, --resume continues the run to its end.
# Needs root powers to mount a tmpfs in a private mount namespace: without them it reports a
# skip (exit 77) with the reason. Usage: disk_full_tmpfs.sh HMOE WORK_DIR
hmoe=$1
work=$2/disk-full-test
if [ "$(id -u)" -ne 0 ] || ! command -v unshare >/dev/null 2>&1 || ! unshare -m true 2>/dev/null; then
  echo "SKIP: mounting a tmpfs needs root and a mount namespace (unshare -m); not available here"
  exit 77
fi
rm -rf "$work"
mkdir -p "$work/mnt"
export work hmoe
exec unshare -m sh -c '
  set -u
  fail() { echo "FAIL: $*"; exit 1; }
  mount -t tmpfs -o size=3m tmpfs "$work/mnt" || { echo "SKIP: cannot mount a tmpfs"; exit 77; }
  run="$work/mnt/run"
  tiny="--nproc 1 --tp 1 --dp 1 --pp 1 --ep 1 --d-model 32 --n-heads 2 --n-layers 2 --batch-size 8 --micro-batches 1 --steps 12 --no-eval --train-lines 500 --eval-per-task 2 --no-progress --checkpoint-every 1 --checkpoint-keep 0"
  "$hmoe" train $tiny --out "$run" > "$work/first.log" 2>&1
  rc=$?
  cat "$work/first.log"
  [ $rc -ne 0 ] || fail "the run on a full disk exited 0"
  [ $rc -lt 128 ] || fail "the run ended by a signal (exit $rc), not with an error"
  grep -q "No space left on device" "$work/first.log" || fail "no \"No space left on device\" in the output"
  grep -q "$run/checkpoints" "$work/first.log" || fail "the error does not name the checkpoint path"
  if grep -q -i "backtrace\|Exception raised from" "$work/first.log"; then fail "a backtrace was printed"; fi
  leftovers=$(find "$run/checkpoints" -name ".tmp_*" -o -name "*.tmp")
  [ -z "$leftovers" ] || fail "temporaries left behind: $leftovers"
  latest=$(cat "$run/checkpoints/latest") || fail "no latest"
  "$hmoe" checkpoint verify "$run/checkpoints/$latest" || fail "latest ($latest) does not verify"
  # Space again: resume continues to the end.
  mount -o remount,size=64m "$work/mnt" || fail "cannot grow the tmpfs"
  "$hmoe" train --resume --out "$run" --checkpoint-keep 2 --no-progress > "$work/second.log" 2>&1 || { cat "$work/second.log"; fail "resume failed"; }
  cat "$work/second.log"
  grep -q "^done: 12 steps" "$work/second.log" || fail "the resumed run did not finish"
  "$hmoe" checkpoint verify "$run" || fail "checkpoint verify after the resumed run"
  echo "disk full: clean error, previous checkpoint intact, resumed to the end"
'
