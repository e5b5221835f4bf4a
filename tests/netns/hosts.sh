#!/usr/bin/env bash
# hosts.sh — test hosts made of Linux network namespaces, sourced by the tests in tests/netns.
# Node i is the namespace <prefix>-n<i> with the interface hn<i> and the address 10.213.0.<i+1>/24
# (a subnet that exists only inside these namespaces); each node's interface is one end of a veth
# pair whose other end (p<i>) is a port of the bridge br0 in the namespace <prefix>-br. Names are
# unique per run (pid + random), so parallel test runs never meet. Everything is removed on exit
# (trap), and the whole test ends itself after HOSTS_MAX_S seconds (before ctest's TIMEOUT would
# kill it without a chance to clean up).
#
# Functions (every test script sources this file, then calls hosts_require and hosts_up):
#   hosts_require                 exit 77 ("SKIPPED: why") where namespaces cannot be made
#   hosts_up N                    N nodes; sets HOST_NS[i], HOST_IF[i], HOST_ADDR[i], MASTER_ADDR
#   hosts_exec I CMD...           CMD inside node I
#   hosts_start_ranks K LOG -- CMD...  K ranks of CMD in every node, started by this script with
#                                 torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK, ...,
#                                 GLOO_SOCKET_IFNAME = the node's interface); rank r's output goes
#                                 to LOG.r; sets HOST_PIDS
#   hosts_launch K LOG -- CMD...  one `hmoe launch --nnodes N --node-rank i ...` per node (LOG.n<i>)
#   hosts_launch_node I K LOG -- CMD...  the same for node I alone
#   hosts_run_nodes LOG -- CMD... CMD once per node (LOG.n<i>) with HOSTS_NODE=i
#   hosts_wait_for_file FILE BOUND_S [LOGS...]  waits for FILE, fails the test after BOUND_S
#   hosts_wait BOUND_S            waits (at most BOUND_S) for HOST_PIDS; sets HOST_RCS, HOST_WAIT_S
#   hosts_link_down I / hosts_link_up I     the bridge port of node I (a pulled cable)
#   hosts_rate_limit I RATE       tc tbf on node I's interface (e.g. 100mbit)
#   hosts_random_drop I PERCENT   nftables: drop PERCENT % of node I's packets, both directions
#   hosts_iface_bytes I           bytes sent + received by node I's interface
#   hosts_down                    removes everything (also run by the trap)
set -u

: "${HOSTS_MAX_S:=230}"     # the whole test's bound (below the ctest TIMEOUT of the netns tests)
: "${HOSTS_SUBNET:=10.213.0}"
: "${HOSTS_PORT:=29500}"    # free in every run: each run has its own namespaces
HOSTS_PREFIX="hmoe-netns-$$-$RANDOM"
HOST_NS=()
HOST_IF=()
HOST_ADDR=()
HOST_PIDS=()
HOST_RCS=()
HOSTS_BRIDGE=""
HOSTS_WATCHDOG=""

hosts_log() { echo "[hosts] $*" >&2; }

hosts_skip() {
  echo "SKIPPED: $*"
  exit 77
}

hosts_require() {
  command -v ip > /dev/null || hosts_skip "the ip command (iproute2) is missing"
  local probe="$HOSTS_PREFIX-probe" err
  if ! err=$(ip netns add "$probe" 2>&1); then
    hosts_skip "cannot create a network namespace (needs CAP_NET_ADMIN; uid $(id -u)): $err"
  fi
  ip netns del "$probe" 2> /dev/null
}

# Namespaces of earlier runs whose script is gone (killed without a chance to clean up).
hosts_remove_stale() {
  local ns pid
  for ns in $(ip netns list 2> /dev/null | awk '{print $1}' | grep '^hmoe-netns-'); do
    pid=${ns#hmoe-netns-}
    pid=${pid%%-*}
    if ! kill -0 "$pid" 2> /dev/null; then
      hosts_kill_in "$ns"
      ip netns del "$ns" 2> /dev/null
    fi
  done
}

# Ends the processes inside namespace $1 (every one of them was started by a test of this file).
hosts_kill_in() {
  local pids
  pids=$(ip netns pids "$1" 2> /dev/null)
  [ -n "$pids" ] && kill -KILL $pids 2> /dev/null
  return 0
}

hosts_down() {
  trap - EXIT INT TERM
  if [ -n "$HOSTS_WATCHDOG" ]; then  # the watchdog subshell and its sleep
    kill $(cat "/proc/$HOSTS_WATCHDOG/task/$HOSTS_WATCHDOG/children" 2> /dev/null) \
      "$HOSTS_WATCHDOG" 2> /dev/null
  fi
  local ns
  for ns in "${HOST_NS[@]}" $HOSTS_BRIDGE; do
    hosts_kill_in "$ns"
  done
  for pid in "${HOST_PIDS[@]}"; do kill -KILL "$pid" 2> /dev/null; done
  for ns in "${HOST_NS[@]}" $HOSTS_BRIDGE; do
    ip netns del "$ns" 2> /dev/null
  done
  HOST_NS=()
  HOSTS_BRIDGE=""
}

hosts_up() {
  local n=$1 i
  hosts_remove_stale
  trap 'rc=$?; hosts_down; exit $rc' EXIT
  trap 'hosts_log "interrupted"; exit 130' INT
  trap 'hosts_log "ended by the watchdog after ${HOSTS_MAX_S} s"; exit 124' TERM
  (sleep "$HOSTS_MAX_S" && kill -TERM $$) > /dev/null 2>&1 &
  HOSTS_WATCHDOG=$!
  HOSTS_BRIDGE="$HOSTS_PREFIX-br"
  ip netns add "$HOSTS_BRIDGE" || exit 1
  ip -n "$HOSTS_BRIDGE" link add br0 type bridge || exit 1
  ip -n "$HOSTS_BRIDGE" link set br0 up
  for ((i = 0; i < n; i++)); do
    HOST_NS[i]="$HOSTS_PREFIX-n$i"
    HOST_IF[i]="hn$i"
    HOST_ADDR[i]="$HOSTS_SUBNET.$((i + 1))"
    ip netns add "${HOST_NS[i]}" || exit 1
    ip -n "$HOSTS_BRIDGE" link add "p$i" type veth peer name "${HOST_IF[i]}" \
      netns "${HOST_NS[i]}" || exit 1
    ip -n "$HOSTS_BRIDGE" link set "p$i" master br0 up
    ip -n "${HOST_NS[i]}" link set lo up
    ip -n "${HOST_NS[i]}" addr add "${HOST_ADDR[i]}/24" dev "${HOST_IF[i]}"
    ip -n "${HOST_NS[i]}" link set "${HOST_IF[i]}" up
  done
  MASTER_ADDR=${HOST_ADDR[0]}
  # The bridge forwards once its ports leave the learning state (at once without STP).
  local deadline=$((SECONDS + 20))
  until [ "$(bridge -n "$HOSTS_BRIDGE" link show | grep -c 'state forwarding')" = "$n" ]; do
    ((SECONDS > deadline)) && { hosts_log "bridge ports not forwarding after 20 s"; exit 1; }
    sleep 0.2
  done
  hosts_log "$n nodes up: ${HOST_ADDR[*]} (namespaces $HOSTS_PREFIX-*)"
}

hosts_exec() {
  local i=$1
  shift
  ip netns exec "${HOST_NS[i]}" "$@"
}

# The variables every rank gets from the node it runs in.
hosts_node_env() {
  local i=$1
  echo "MASTER_ADDR=$MASTER_ADDR MASTER_PORT=$HOSTS_PORT NODE_RANK=$i GROUP_RANK=$i"
  echo "GLOO_SOCKET_IFNAME=${HOST_IF[i]} OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1"
}

hosts_start_ranks() {
  local k=$1 log=$2 n=${#HOST_NS[@]} i l
  shift 3  # K LOG --
  HOST_PIDS=()
  for ((i = 0; i < n; i++)); do
    for ((l = 0; l < k; l++)); do
      local r=$((i * k + l))
      # shellcheck disable=SC2046
      ip netns exec "${HOST_NS[i]}" env $(hosts_node_env "$i") RANK=$r WORLD_SIZE=$((n * k)) \
        LOCAL_RANK=$l LOCAL_WORLD_SIZE=$k "$@" > "$log.$r" 2>&1 &
      HOST_PIDS+=($!)
    done
  done
}

hosts_launch() {
  local k=$1 log=$2 n=${#HOST_NS[@]} i
  shift 3  # K LOG --
  HOST_PIDS=()
  for ((i = 0; i < n; i++)); do hosts_launch_node "$i" "$k" "$log" -- "$@"; done
}

# Node I alone (adds its launcher's pid to HOST_PIDS); HOSTS_LAUNCH_FLAGS: more `hmoe launch` flags;
# HOSTS_NO_IFNAME=1: no GLOO_SOCKET_IFNAME (Gloo binds the address on the route to the master).
hosts_launch_node() {
  local i=$1 k=$2 log=$3 n=${#HOST_NS[@]} ifname=GLOO_SOCKET_IFNAME=${HOST_IF[$1]}
  shift 4  # I K LOG --
  [ "${HOSTS_NO_IFNAME:-0}" = 1 ] && ifname=HMOE_NETNS_NODE=$i
  ip netns exec "${HOST_NS[i]}" env "$ifname" \
    "$HMOE" launch --nnodes "$n" --node-rank "$i" --master-addr "$MASTER_ADDR" \
    --master-port "$HOSTS_PORT" --nproc-per-node "$k" ${HOSTS_LAUNCH_FLAGS[@]+"${HOSTS_LAUNCH_FLAGS[@]}"} \
    -- "$@" > "$log.n$i" 2>&1 &
  HOST_PIDS+=($!)
}

# CMD once in every node (LOG.n<i>), with HOSTS_NODE=<i>, MASTER_ADDR, MASTER_PORT and
# GLOO_SOCKET_IFNAME set; sets HOST_PIDS.
hosts_run_nodes() {
  local log=$1 n=${#HOST_NS[@]} i
  shift 2  # LOG --
  HOST_PIDS=()
  for ((i = 0; i < n; i++)); do
    ip netns exec "${HOST_NS[i]}" env HOSTS_NODE="$i" MASTER_ADDR="$MASTER_ADDR" \
      MASTER_PORT="$HOSTS_PORT" GLOO_SOCKET_IFNAME="${HOST_IF[i]}" "$@" > "$log.n$i" 2>&1 &
    HOST_PIDS+=($!)
  done
}

# Waits (at most BOUND_S) until file $1 exists; fails the test otherwise.
hosts_wait_for_file() {
  local deadline=$((SECONDS + $2))
  until [ -e "$1" ]; do
    ((SECONDS < deadline)) || hosts_fail "$1 did not appear within $2 s" "${@:3}"
    sleep 0.2
  done
}

hosts_wait() {
  local bound=$1 start=$SECONDS p
  HOST_RCS=()
  for p in "${HOST_PIDS[@]}"; do
    while kill -0 "$p" 2> /dev/null && ((SECONDS - start < bound)); do sleep 0.2; done
    if kill -0 "$p" 2> /dev/null; then
      hosts_log "pid $p still runs after ${bound} s: ending it"
      kill -KILL "$p" 2> /dev/null
    fi
    wait "$p"
    HOST_RCS+=($?)
  done
  HOST_WAIT_S=$((SECONDS - start))
}

hosts_link_down() { ip -n "$HOSTS_BRIDGE" link set "p$1" down; }
hosts_link_up() { ip -n "$HOSTS_BRIDGE" link set "p$1" up; }

hosts_rate_limit() {
  hosts_exec "$1" tc qdisc replace dev "${HOST_IF[$1]}" root tbf rate "$2" burst 64kb latency 100ms
}

hosts_random_drop() {
  local i=$1 pct=$2 ifname=${HOST_IF[$1]}
  hosts_exec "$i" nft -f - << EOF
table inet hmoe_fault {
  chain out { type filter hook output priority 0; policy accept; oifname "$ifname" numgen random mod 100 < $pct counter drop; }
  chain in { type filter hook input priority 0; policy accept; iifname "$ifname" numgen random mod 100 < $pct counter drop; }
}
EOF
}

# Packets the random-drop rules of node I dropped (both directions).
hosts_dropped_packets() {
  hosts_exec "$1" nft list table inet hmoe_fault 2> /dev/null |
    awk '/counter packets/ {for (f = 1; f < NF; f++) if ($f == "packets") s += $(f + 1)} END {print s + 0}'
}

hosts_iface_bytes() {
  local i=$1 d=/sys/class/net/${HOST_IF[$1]}/statistics
  hosts_exec "$i" sh -c "echo \$((\$(cat $d/tx_bytes) + \$(cat $d/rx_bytes)))"
}

# Fails the test with a message (and the logs named after it).
hosts_fail() {
  local msg=$1 f
  shift
  for f in "$@"; do
    [ -f "$f" ] && { echo "---- $f"; tail -n 40 "$f"; }
  done
  echo "FAIL: $msg"
  exit 1
}
