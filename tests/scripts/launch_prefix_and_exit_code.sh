#!/bin/sh
# `hmoe launch` end to end: each rank's output is prefixed with its rank, and the launcher exits
# with the failing rank's code. Rank 1 fails only after rank 0 has printed (a flag file), so that
# the launcher's stop-all on failure cannot cut rank 0 short on a loaded machine.
# Usage: launch_prefix_and_exit_code.sh HMOE WORK_DIR
hmoe=$1
flag=$2/launch-test-rank0-printed
rm -f "$flag"
export HMOE_TEST_FLAG="$flag"
out=$("$hmoe" launch --nproc 2 -- sh -c '
  echo "hi from $RANK"
  if [ "$RANK" -eq 0 ]; then
    touch "$HMOE_TEST_FLAG"
  else
    n=0
    while [ ! -e "$HMOE_TEST_FLAG" ] && [ $n -lt 300 ]; do sleep 0.1; n=$((n + 1)); done
  fi
  exit "$RANK"' 2>&1)
rc=$?
echo "$out"
[ $rc -eq 1 ] || { echo "expected exit code 1, got $rc"; exit 1; }
echo "$out" | grep -q '^\[rank 1\] hi from 1$' || { echo "rank 1's line missing"; exit 1; }
echo "$out" | grep -q '^\[rank 0\] hi from 0$' || { echo "rank 0's line missing"; exit 1; }
