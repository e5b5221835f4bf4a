#!/usr/bin/env bash
# fault_start.sh — faults at the start of a run over 2 nodes x 2 ranks, each named within the
# timeout: (1) node 1 started with another configuration (seed): every launcher exits non-zero and
# the error names the key, both values and ranks; (2) node 1 never started: node 0's ranks end
# after the rendezvous timeout naming ranks 2,3 as never arrived; (3) node 0 (the master) never
# started: node 1's ranks name rank 0 and its store server's address.
# Usage: fault_start.sh HMOE WORK_DIR
HMOE=$1
. "$(dirname "$0")/hosts.sh"
. "$(dirname "$0")/train_common.sh"
netns_begin netns-fault-start "$2" 10

# `hmoe train` (4 steps) on the given nodes, the seed of each given after a colon ("0:1234 1:99");
# every started launcher must exit non-zero within the timeout. Usage: failing_start NAME NODE:SEED...
failing_start() {
  local name=$1 spec i
  shift
  HOST_PIDS=()
  for spec in "$@"; do
    hosts_launch_node "${spec%%:*}" 2 "$work/$name" -- "$HMOE" train "${TRAIN_FLAGS[@]}" --steps 4 \
      --seed "${spec#*:}" --out "$work/$name-run"
  done
  wait_after_fault
  cat "$work/$name".n*
  for i in "${!HOST_RCS[@]}"; do
    [ "${HOST_RCS[i]}" != 0 ] || hosts_fail "$name: a launcher exited 0" "$work/$name".n*
  done
}

failing_start mismatch 0:1234 1:99
took1=$took
grep -qh "configuration differs across ranks: seed = 1234 on ranks 0,1 but 99 on ranks 2,3" "$work"/mismatch.n* ||
  hosts_fail "mismatch: the error does not name the key, values and ranks"
failing_start absent 0:1234
took2=$took
grep -q "rendezvous at $MASTER_ADDR:$HOSTS_PORT timed out after $timeout_s s (HMOE_TIMEOUT_S): ranks 2,3 of 4 never arrived" \
  "$work/absent.n0" || hosts_fail "absent node: ranks 2,3 not named"
failing_start no-master 1:1234
took3=$took
grep -q "rank [23]: rendezvous at $MASTER_ADDR:$HOSTS_PORT timed out after $timeout_s s (HMOE_TIMEOUT_S): rank 0 never arrived (its store server at $MASTER_ADDR:$HOSTS_PORT did not accept a connection" \
  "$work/no-master.n1" || hosts_fail "absent master: rank 0 not named"
echo "PASS: another configuration named in ${took1} s; a node never started named in ${took2} s, the master in ${took3} s (timeout ${timeout_s} s)"
