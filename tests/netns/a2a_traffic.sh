#!/usr/bin/env bash
# a2a_traffic.sh — the flat and the two-level all-to-all (`hmoe bench a2a`) over 2 nodes x 4 ranks
# whose links are limited to 1 Gbit/s (tc tbf): both give the same rows; the same bytes cross
# nodes but the two-level exchange sends one message per node pair (8 in all) instead of one per
# remote peer (32); and the bytes the exchange counts as crossing nodes did leave the nodes'
# interfaces (/sys/class/net/*/statistics: at least the counted payload, at most 1.25 x + 4 MB of
# headers, rendezvous and barriers). Prints both algorithms' time per exchange.
# Usage: a2a_traffic.sh HMOE WORK_DIR
HMOE=$1
. "$(dirname "$0")/hosts.sh"
. "$(dirname "$0")/train_common.sh"
command -v tc > /dev/null || hosts_skip "tc (iproute2) is missing"
netns_begin netns-a2a-traffic "$2" 60
hosts_rate_limit 0 1gbit || hosts_fail "tc tbf failed"
hosts_rate_limit 1 1gbit || hosts_fail "tc tbf failed"
iters=2
tx_bytes() { echo $(($(hosts_iface_tx 0) + $(hosts_iface_tx 1))); }
hosts_iface_tx() { hosts_exec "$1" cat "/sys/class/net/${HOST_IF[$1]}/statistics/tx_bytes"; }
for algo in flat hierarchical; do
  before=$(tx_bytes)
  hosts_launch 4 "$work/$algo" -- "$HMOE" bench a2a --rows 2048 --d 256 --iters $iters \
    --algorithms "$algo"
  hosts_wait 150
  for i in 0 1; do
    [ "${HOST_RCS[i]}" = 0 ] || hosts_fail "$algo: node $i exited ${HOST_RCS[i]}" "$work/$algo".n*
  done
  sent=$(($(tx_bytes) - before))
  json=$(grep -o '{"d".*}' "$work/$algo.n0")
  echo "$algo: $json; interfaces sent $sent bytes"
  bytes=$(echo "$json" | grep -o "\"$algo\":{[^}]*" | grep -o '"cross_node_bytes":[0-9]*' | cut -d: -f2)
  messages=$(echo "$json" | grep -o "\"$algo\":{[^}]*" | grep -o '"cross_node_messages":[0-9]*' | cut -d: -f2)
  payload=$((bytes * (iters + 1)))  # a warm-up and the timed exchanges
  ((sent >= payload)) || hosts_fail "$algo: interfaces sent $sent bytes, less than the $payload counted"
  ((sent <= payload * 5 / 4 + 4000000)) || hosts_fail "$algo: interfaces sent $sent bytes for $payload counted"
  eval "${algo}_bytes=$bytes ${algo}_messages=$messages"
done
[ "$flat_bytes" = "$hierarchical_bytes" ] || hosts_fail "cross-node bytes differ: $flat_bytes vs $hierarchical_bytes"
[ "$flat_messages" = 32 ] || hosts_fail "flat: $flat_messages cross-node messages, expected 8 ranks x 4 remote peers"
[ "$hierarchical_messages" = 8 ] || hosts_fail "hierarchical: $hierarchical_messages cross-node messages, expected 8 ranks x 1 remote node"
# Both in one run: the same rows.
hosts_launch 4 "$work/both" -- "$HMOE" bench a2a --rows 512 --d 16 --iters 1
hosts_wait 150
grep -q '"equal":true' "$work/both.n0" || hosts_fail "flat and hierarchical rows differ" "$work/both.n0"
echo "PASS: flat and hierarchical all-to-all over 2 x 4 ranks at 1 Gbit/s: $flat_bytes bytes cross nodes each, $flat_messages vs $hierarchical_messages messages"
