#!/usr/bin/env bash
# layer_traffic.sh — `hmoe bench layer` over 2 nodes x 4 ranks (ep 8) whose links are limited to
# 1 Gbit/s (tc tbf): the layer's token exchange with a2a_algorithm flat and hierarchical, timed
# against each other. The same bytes cross nodes with both (every row that changes node crosses
# once), the hierarchical exchange in fewer messages (one per node pair and local index instead of
# one per remote peer), and the bytes the layer counted as crossing nodes did leave the nodes'
# interfaces (/sys/class/net/*/statistics: at least the counted payload). Prints both algorithms'
# step time, bytes and messages.
# Usage: layer_traffic.sh HMOE WORK_DIR
HMOE=$1
. "$(dirname "$0")/hosts.sh"
. "$(dirname "$0")/train_common.sh"
command -v tc > /dev/null || hosts_skip "tc (iproute2) is missing"
netns_begin netns-layer-traffic "$2" 60
hosts_rate_limit 0 1gbit || hosts_fail "tc tbf failed"
hosts_rate_limit 1 1gbit || hosts_fail "tc tbf failed"
hosts_iface_tx() { hosts_exec "$1" cat "/sys/class/net/${HOST_IF[$1]}/statistics/tx_bytes"; }
before=$(($(hosts_iface_tx 0) + $(hosts_iface_tx 1)))
warmup=1 iters=3
hosts_launch 4 "$work/bench" -- "$HMOE" bench layer --nproc 8 --layout 1,8,8,1 --tokens 2048 \
  --d-model 128 --d-hidden 256 --experts 8 --top-k 2 --overlap-degrees "" --adaptive false \
  --skip-naive --warmup $warmup --iters $iters --threads 1
hosts_wait 180
for i in 0 1; do
  [ "${HOST_RCS[i]}" = 0 ] || hosts_fail "node $i exited ${HOST_RCS[i]}" "$work"/bench.n*
done
sent=$(($(hosts_iface_tx 0) + $(hosts_iface_tx 1) - before))
json=$(grep -o '{.*"bench":"layer_distributed".*}' "$work/bench.n0")
[ -n "$json" ] || hosts_fail "no JSON record" "$work/bench.n0"
# flat_bytes flat_messages flat_ms hierarchical_bytes hierarchical_messages hierarchical_ms
read -r fb fm fms hb hm hms <<< "$(echo "$json" | /usr/bin/python3 -c '
import json, sys
runs = {r["a2a_algorithm"]: r for r in json.load(sys.stdin)["a2a_algorithm"]["runs"]}
print(" ".join(str(v) for a in ("flat", "hierarchical") for v in (
    int(runs[a]["cross_node_bytes_per_step"]), int(runs[a]["cross_node_messages_per_step"]),
    runs[a]["step_ms"])))')"
[ -n "$hms" ] || hosts_fail "the record has no a2a_algorithm runs" "$work/bench.n0"
echo "per step across nodes: flat $fb bytes in $fm messages, $fms ms;" \
  "hierarchical $hb bytes in $hm messages, $hms ms; interfaces sent $sent bytes"
[ "$fb" = "$hb" ] || hosts_fail "cross-node bytes differ: flat $fb, hierarchical $hb"
((fb > 0)) || hosts_fail "nothing crossed nodes"
((hm < fm)) || hosts_fail "hierarchical sent $hm cross-node messages, flat $fm"
# Both variants ran warmup + iters steps in the sweep.
payload=$(((fb + hb) * (warmup + iters)))
((sent >= payload)) || hosts_fail "interfaces sent $sent bytes, less than the $payload counted"
echo "PASS: the layer's flat and hierarchical exchange over 2 x 4 ranks at 1 Gbit/s"
