#!/usr/bin/env bash
# fault_link_down.sh — the link of node 1 goes down (its bridge port, a pulled cable) in the middle
# of `hmoe train` over 2 nodes x 2 ranks: both nodes' launchers exit non-zero within the collective
# timeout (HMOE_TIMEOUT_S) plus the launcher's grace, each naming the failing group, operation
# and the unreachable peer; the last complete checkpoint passes `hmoe checkpoint verify`; with the
# link back, --resume continues from it. Prints the time from the fault to the end.
# Usage: fault_link_down.sh HMOE WORK_DIR
HMOE=$1
. "$(dirname "$0")/hosts.sh"
. "$(dirname "$0")/train_common.sh"
netns_begin netns-fault-link-down "$2" 15
train_until_checkpoint
hosts_link_down 1
wait_after_fault
cat "$work"/launch.n0 "$work"/launch.n1 | grep -v '^\[rank [0-9]*\] *step' | tail -n 30
echo "link down: launchers exited ${HOST_RCS[*]} after ${took} s (timeout ${timeout_s} s)"
for i in 0 1; do
  [ "${HOST_RCS[i]}" != 0 ] || hosts_fail "node $i's launcher exited 0" "$work/launch.n$i"
  # The root cause's error names the group, the operation and the unreachable peer.
  grep -q "^\[launch\] rank [0-9]* failed (root cause): .*hybridmoe::dist::[a-z_]* on group '[a-z]*' .*unreachable" \
    "$work/launch.n$i" || hosts_fail "node $i: no error naming group, operation and peer" "$work/launch.n$i"
done
checkpoint_intact
# The link back: resume from the last complete checkpoint and run two more steps.
hosts_link_up 1
step=$((10#${last#step_}))
resume_start=$SECONDS
hosts_launch 2 "$work/resume" -- "$HMOE" train --resume --out "$run" --steps $((step + 2)) --no-progress
hosts_wait 150
for i in 0 1; do
  [ "${HOST_RCS[i]}" = 0 ] || hosts_fail "resume: node $i's launcher exited ${HOST_RCS[i]}" "$work/resume.n$i"
done
grep -q "resumed from .*$last" "$work/resume.n0" || hosts_fail "not resumed from $last" "$work/resume.n0"
grep -q "^\[rank 0\] done: $((step + 2)) steps" "$work/resume.n0" || hosts_fail "resume did not finish" "$work/resume.n0"
echo "PASS: link down -> every rank ended in ${took} s (timeout ${timeout_s} s); resumed from $last in $((SECONDS - resume_start)) s"
