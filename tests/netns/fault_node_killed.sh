#!/usr/bin/env bash
# fault_node_killed.sh — every process of node 1 (its launcher and ranks) is killed with SIGKILL in
# the middle of `hmoe train` over 2 nodes x 2 ranks: node 0's ranks end within the collective
# timeout, its launcher exits non-zero naming the group, the operation and the lost peer, and the
# last complete checkpoint passes `hmoe checkpoint verify`. Prints the time from the kill to the end.
# Usage: fault_node_killed.sh HMOE WORK_DIR
HMOE=$1
. "$(dirname "$0")/hosts.sh"
. "$(dirname "$0")/train_common.sh"
netns_begin netns-fault-node-killed "$2" 15
train_until_checkpoint
hosts_kill_in "${HOST_NS[1]}"
wait_after_fault
grep -v '^\[rank [0-9]*\] *step' "$work/launch.n0" | tail -n 20
echo "node 1 killed: node 0's launcher exited ${HOST_RCS[0]} after ${took} s (timeout ${timeout_s} s)"
[ "${HOST_RCS[0]}" != 0 ] || hosts_fail "node 0's launcher exited 0" "$work/launch.n0"
grep -q "^\[launch\] rank [01] failed (root cause): .*hybridmoe::dist::[a-z_]* on group '[a-z]*' .*peer ${HOST_ADDR[1]} is world ranks 2,3" \
  "$work/launch.n0" || hosts_fail "node 0: no error naming group, operation and peer" "$work/launch.n0"
checkpoint_intact
echo "PASS: node 1 killed -> node 0 ended in ${took} s (timeout ${timeout_s} s)"
