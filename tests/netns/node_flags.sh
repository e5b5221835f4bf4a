#!/usr/bin/env bash
# node_flags.sh — the node flags of the subcommands that launch their own ranks: on each of 2 nodes,
# `hmoe verify --nproc 4 --nnodes 2 --node-rank R --master-addr <node 0> --master-port P` starts
# that node's 2 ranks (no `hmoe launch`); the layouts that cross nodes must pass, and --nproc that
# nnodes does not divide is refused before any rank starts.
# Usage: node_flags.sh HMOE WORK_DIR
HMOE=$1
work=$2/netns-node-flags
. "$(dirname "$0")/hosts.sh"
hosts_require
rm -rf "$work" && mkdir -p "$work"
out=$("$HMOE" verify --nproc 3 --nnodes 2 --node-rank 0 2>&1) && hosts_fail "--nproc 3 on 2 nodes was accepted"
echo "$out" | grep -q -- "--nproc 3 should be a multiple of --nnodes 2" || hosts_fail "refusal: $out"
hosts_up 2
start=$SECONDS
hosts_run_nodes "$work/verify" -- sh -c 'exec "$0" verify --nproc 4 --nnodes 2 --node-rank "$HOSTS_NODE" \
  --master-addr "$MASTER_ADDR" --master-port "$MASTER_PORT" --layouts "1,4,4,1;2,2,2,1;1,2,2,2,1"' "$HMOE"
hosts_wait 120
cat "$work/verify.n0"
for i in 0 1; do
  [ "${HOST_RCS[i]}" = 0 ] || hosts_fail "node $i exited ${HOST_RCS[i]}" "$work/verify.n$i"
done
grep -q '^6 runs, all pass$' "$work/verify.n0" || hosts_fail "not all pass" "$work/verify.n0"
grep -q '(2 nodes x 2 ranks; crossing nodes: stage dp ep)' "$work/verify.n0" ||
  hosts_fail "no crossing groups in the table" "$work/verify.n0"
echo "PASS: hmoe verify --nnodes 2 --node-rank R across 2 nodes in $((SECONDS - start)) s"
