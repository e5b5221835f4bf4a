#!/usr/bin/env bash
# fault_start.sh — faults at the start of a run over 2 nodes x 2 ranks, each named within the
# timeout: (1) node 1 started with another configuration (seed): every launcher exits non-zero and
# the error names the key, both values and ranks; (2) node 1 never started: node 0's ranks end
# after the rendezvous timeout naming ranks 2,3 as never arrived; (3) node 0 (the master) never
# started: node 1's ranks name rank 0 and its store server's address.
# Usage: fault_start.sh HMOE WORK_DIR
HMOE=$1
work=$2/netns-fault-start
timeout_s=10
. "$(dirname "$0")/hosts.sh"
. "$(dirname "$0")/train_common.sh"
hosts_require
rm -rf "$work" && mkdir -p "$work"
hosts_up 2
HOSTS_LAUNCH_FLAGS=(--timeout "$timeout_s")
# 1. Another seed on node 1.
start=$SECONDS
HOST_PIDS=()
hosts_launch_node 0 2 "$work/mismatch" -- "$HMOE" train "${TRAIN_FLAGS[@]}" --steps 4 --seed 1234 --out "$work/run1"
hosts_launch_node 1 2 "$work/mismatch" -- "$HMOE" train "${TRAIN_FLAGS[@]}" --steps 4 --seed 99 --out "$work/run1"
hosts_wait $((timeout_s * 2 + 30))
took1=$((SECONDS - start))
cat "$work"/mismatch.n*
for i in 0 1; do
  [ "${HOST_RCS[i]}" != 0 ] || hosts_fail "mismatch: node $i's launcher exited 0" "$work/mismatch.n$i"
done
grep -qh "configuration differs across ranks: seed = 1234 on ranks 0,1 but 99 on ranks 2,3" "$work"/mismatch.n* ||
  hosts_fail "mismatch: the error does not name the key, values and ranks"
((took1 <= timeout_s + 15)) || hosts_fail "mismatch: took ${took1} s"
# 2. Node 1 never starts.
start=$SECONDS
HOST_PIDS=()
hosts_launch_node 0 2 "$work/absent" -- "$HMOE" train "${TRAIN_FLAGS[@]}" --steps 4 --out "$work/run2"
hosts_wait $((timeout_s * 2 + 30))
took2=$((SECONDS - start))
cat "$work/absent.n0"
[ "${HOST_RCS[0]}" != 0 ] || hosts_fail "absent node: node 0's launcher exited 0"
grep -q "rendezvous at $MASTER_ADDR:$HOSTS_PORT timed out after $timeout_s s (HMOE_TIMEOUT_S): ranks 2,3 of 4 never arrived" \
  "$work/absent.n0" || hosts_fail "absent node: ranks 2,3 not named"
((took2 <= timeout_s + 15)) || hosts_fail "absent node: took ${took2} s"
# 3. Node 0 never starts.
start=$SECONDS
HOST_PIDS=()
hosts_launch_node 1 2 "$work/no-master" -- "$HMOE" train "${TRAIN_FLAGS[@]}" --steps 4 --out "$work/run3"
hosts_wait $((timeout_s * 2 + 30))
took3=$((SECONDS - start))
cat "$work/no-master.n1"
[ "${HOST_RCS[0]}" != 0 ] || hosts_fail "absent master: node 1's launcher exited 0"
grep -q "rank [23]: rendezvous at $MASTER_ADDR:$HOSTS_PORT timed out after $timeout_s s (HMOE_TIMEOUT_S): rank 0 never arrived (its store server at $MASTER_ADDR:$HOSTS_PORT did not accept a connection" \
  "$work/no-master.n1" || hosts_fail "absent master: rank 0 not named"
((took3 <= timeout_s + 15)) || hosts_fail "absent master: took ${took3} s"
echo "PASS: another configuration named in ${took1} s; a node never started named in ${took2} s, the master in ${took3} s (timeout ${timeout_s} s)"
