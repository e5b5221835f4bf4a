#!/usr/bin/env bash
# train.sh — `hmoe train` across 2 nodes x 2 ranks of the test hosts, each node started by
# `hmoe launch --nnodes 2 --node-rank R --master-addr <node 0> --master-port P --nproc-per-node 2`,
# and the same run on one host (`hmoe train --nproc 4`, loopback): the losses of every step must be
# equal bit for bit (the same ranks and collectives, only the links differ).
# Usage: train.sh HMOE WORK_DIR
HMOE=$1
work=$2/netns-train
. "$(dirname "$0")/hosts.sh"
. "$(dirname "$0")/train_common.sh"
hosts_require
rm -rf "$work" && mkdir -p "$work"
hosts_up 2
start=$SECONDS
HOSTS_NO_IFNAME=1 hosts_launch 2 "$work/launch" -- "$HMOE" train "${TRAIN_FLAGS[@]}" --steps 6 --out "$work/run"
hosts_wait 150
cross_s=$((SECONDS - start))
echo "train over 2 nodes x 2 ranks: launcher exit codes ${HOST_RCS[*]}, ${cross_s} s"
for rc in "${HOST_RCS[@]}"; do
  [ "$rc" = 0 ] || hosts_fail "a launcher exited with $rc" "$work"/launch.*
done
grep -q '^\[rank 0\] done: 6 steps' "$work/launch.n0" || hosts_fail "no done line" "$work/launch.n0"
bytes=$(hosts_iface_bytes 1)
((bytes > 100000)) || hosts_fail "only $bytes bytes crossed node 1's interface"
start=$SECONDS
"$HMOE" train "${TRAIN_FLAGS[@]}" --steps 6 --out "$work/local" > "$work/local.log" 2>&1 ||
  hosts_fail "the one-host run failed" "$work/local.log"
same_losses "$work/run" "$work/local" || hosts_fail "losses differ from the one-host run"
echo "PASS: train across 2 nodes in ${cross_s} s ($bytes bytes on hn1; one host: $((SECONDS - start)) s), losses bit-equal"
