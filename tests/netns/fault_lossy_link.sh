#!/usr/bin/env bash
# fault_lossy_link.sh — node 1's link limited to 100 Mbit/s (tc tbf) and 1 % of its packets
# dropped in both directions (an nftables random-drop rule): `hmoe train` over 2 nodes x 2 ranks
# completes, and its losses and gradient norms equal the one-host run's bit for bit (TCP resends
# what was lost). Skipped when nft (Debian's nftables) is missing.
# Usage: fault_lossy_link.sh HMOE WORK_DIR
HMOE=$1
work=$2/netns-fault-lossy
. "$(dirname "$0")/hosts.sh"
. "$(dirname "$0")/train_common.sh"
hosts_require
command -v nft > /dev/null || hosts_skip "nft (nftables) is missing: scripts/install_deps.sh installs it"
command -v tc > /dev/null || hosts_skip "tc (iproute2) is missing"
rm -rf "$work" && mkdir -p "$work"
hosts_up 2
hosts_rate_limit 1 100mbit || hosts_fail "tc tbf failed"
hosts_random_drop 1 1 || hosts_fail "the nftables rule failed"
start=$SECONDS
HOSTS_LAUNCH_FLAGS=(--timeout 60)
hosts_launch 2 "$work/launch" -- "$HMOE" train "${TRAIN_FLAGS[@]}" --steps 6 --out "$work/run"
hosts_wait 180
took=$((SECONDS - start))
dropped=$(hosts_dropped_packets 1)
echo "lossy link: launchers exited ${HOST_RCS[*]} after ${took} s; $dropped packets dropped"
for i in 0 1; do
  [ "${HOST_RCS[i]}" = 0 ] || hosts_fail "node $i's launcher exited ${HOST_RCS[i]}" "$work/launch.n$i"
done
((dropped > 0)) || hosts_fail "the drop rule never fired: the link was not lossy"
"$HMOE" train "${TRAIN_FLAGS[@]}" --steps 6 --out "$work/local" > "$work/local.log" 2>&1 ||
  hosts_fail "the one-host run failed" "$work/local.log"
same_losses "$work/run" "$work/local" || hosts_fail "losses differ from the one-host run"
echo "PASS: lossy link (100 Mbit/s, 1 % drop, $dropped dropped) in ${took} s, losses bit-equal"
