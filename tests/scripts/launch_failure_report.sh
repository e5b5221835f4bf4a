#!/bin/sh
# `hmoe launch` failure report: rank 1 is killed by SIGKILL once the others have printed a line;
# after every rank has ended the launcher prints one line per failed rank: rank 1 with SIGKILL as
# the root cause, ranks 0 and 2 ended by the launcher as consequences; the exit code is 137.
# Usage: launch_failure_report.sh HMOE
hmoe=$1
start=$(date +%s)
out=$("$hmoe" launch --nproc 3 -- sh -c '
  if [ "$RANK" = 1 ]; then echo "rank 1 about to die" >&2; sleep 1; kill -9 $$; fi
  echo "rank $RANK waits" >&2
  exec sleep 30' 2>&1)
rc=$?
echo "$out"
[ $rc -eq 137 ] || { echo "expected exit code 137, got $rc"; exit 1; }
[ $(($(date +%s) - start)) -lt 20 ] || { echo "took too long"; exit 1; }
expect() {
  echo "$out" | grep -qxF "$1" || { echo "missing line: $1"; exit 1; }
}
expect '[rank 1] rank 1 about to die'
expect '[launch] rank 1 failed (root cause): SIGKILL (exit code 137); last error line: rank 1 about to die'
for r in 0 2; do
  expect "[launch] rank $r failed (consequence: ended by the launcher after rank 1 failed): SIGTERM (exit code 143); last error line: rank $r waits"
done
# The summary comes after every rank's output, root cause first.
echo "$out" | tail -n 3 | head -n 1 | grep -q '^\[launch\] rank 1 failed (root cause)' ||
  { echo "the root cause should be the first summary line, after all output"; exit 1; }
