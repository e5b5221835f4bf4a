#!/usr/bin/env bash
# fault_node_killed.sh — every process of node 1 (its launcher and ranks) is killed with SIGKILL in
# the middle of `hmoe train` over 2 nodes x 2 ranks: node 0's ranks end within the collective
# timeout, its launcher exits non-zero naming the group, the operation and the lost peer, and the
# last complete checkpoint passes `hmoe checkpoint verify`. Prints the time from the kill to the end.
# Usage: fault_node_killed.sh HMOE WORK_DIR
HMOE=$1
work=$2/netns-fault-node-killed
timeout_s=15
. "$(dirname "$0")/hosts.sh"
. "$(dirname "$0")/train_common.sh"
hosts_require
rm -rf "$work" && mkdir -p "$work"
hosts_up 2
HOSTS_LAUNCH_FLAGS=(--timeout "$timeout_s")
run="$work/run"
hosts_launch 2 "$work/launch" -- "$HMOE" train "${TRAIN_FLAGS[@]}" --steps 1000 \
  --checkpoint-every 2 --out "$run"
hosts_wait_for_file "$run/checkpoints/step_000004" 120 "$work"/launch.*
hosts_kill_in "${HOST_NS[1]}"
fault=$SECONDS
hosts_wait $((timeout_s * 2 + 30))
took=$((SECONDS - fault))
grep -v '^\[rank [0-9]*\] *step' "$work/launch.n0" | tail -n 20
echo "node 1 killed: node 0's launcher exited ${HOST_RCS[0]} after ${took} s (timeout ${timeout_s} s)"
[ "${HOST_RCS[0]}" != 0 ] || hosts_fail "node 0's launcher exited 0" "$work/launch.n0"
grep -q "^\[launch\] rank [01] failed (root cause): .*hybridmoe::dist::[a-z_]* on group '[a-z]*' .*peer ${HOST_ADDR[1]} is world ranks 2,3" \
  "$work/launch.n0" || hosts_fail "node 0: no error naming group, operation and peer" "$work/launch.n0"
((took <= timeout_s + 15)) || hosts_fail "node 0's ranks took ${took} s to end (timeout ${timeout_s} s)"
"$HMOE" checkpoint verify "$run" > "$work/verify.log" 2>&1 ||
  hosts_fail "the last checkpoint does not pass verify" "$work/verify.log"
cat "$work/verify.log"
echo "PASS: node 1 killed -> node 0 ended in ${took} s (timeout ${timeout_s} s)"
