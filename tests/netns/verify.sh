#!/usr/bin/env bash
# verify.sh — `hmoe verify --layouts all` over 2 nodes x K ranks of the test hosts (hosts.sh): the
# ranks are started by the test hosts themselves with torchrun's variables (RANK, WORLD_SIZE,
# LOCAL_RANK, LOCAL_WORLD_SIZE, GROUP_RANK, MASTER_ADDR = node 0, GLOO_SOCKET_IFNAME = the node's
# interface), so traffic between nodes crosses the veth links. Every layout of up to 2K ranks must
# pass, and the table must say which groups cross nodes. More arguments go to `hmoe verify`.
# Usage: verify.sh HMOE WORK_DIR K [VERIFY_ARGS...]
HMOE=$1
work=$2/netns-verify-2x$3
k=$3
shift 3
. "$(dirname "$0")/hosts.sh"
hosts_require
rm -rf "$work" && mkdir -p "$work"
hosts_up 2
start=$SECONDS
hosts_start_ranks "$k" "$work/rank" -- env HMOE_TIMEOUT_S=120 "$HMOE" verify --nproc $((2 * k)) \
  --layouts all "$@"
hosts_wait $((HOSTS_MAX_S - 20))
echo "verify over 2 nodes x $k ranks: exit codes ${HOST_RCS[*]}, ${HOST_WAIT_S} s"
cat "$work/rank.0"
for rc in "${HOST_RCS[@]}"; do
  [ "$rc" = 0 ] || hosts_fail "a rank exited with $rc" "$work"/rank.*
done
grep -q 'runs, all pass$' "$work/rank.0" || hosts_fail "verify did not report 'all pass'" "$work/rank.0"
grep -q "(2 nodes x $k ranks; crossing nodes: .*)" "$work/rank.0" ||
  hosts_fail "the table does not say which groups cross nodes" "$work/rank.0"
# Rank 0's Gloo traffic crossed node 0's interface (not loopback).
bytes=$(hosts_iface_bytes 0)
((bytes > 100000)) || hosts_fail "only $bytes bytes crossed node 0's interface"
echo "PASS: verify over 2 nodes x $k ranks in $((SECONDS - start)) s, $bytes bytes on hn0"
