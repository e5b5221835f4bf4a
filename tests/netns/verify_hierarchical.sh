#!/usr/bin/env bash
# verify_hierarchical.sh — `hmoe verify --layouts all --a2a-algorithm hierarchical` over 2 nodes x
# 2 ranks of the test hosts (verify.sh starts them): every layout whose token exchange group fills
# its nodes evenly equals one process with the two-level (Tutel 2DH) exchange between the nodes,
# and the table says which exchange each layout ran: the two-level one where ep spans both nodes
# with 2 ranks on each (tp1.dp4.pp1.ep4.etp1), flat inside a node.
# Usage: verify_hierarchical.sh HMOE WORK_DIR
work=$2/netns-verify-hierarchical
mkdir -p "$work"
bash "$(dirname "$0")/verify.sh" "$1" "$work" 2 --a2a-algorithm hierarchical
rc=$?
[ "$rc" = 0 ] || exit "$rc"
out=$work/netns-verify-2x2/rank.0
grep -q '^tp1\.dp4\.pp1\.ep4\.etp1 .*pass .* a2a=hierarchical$' "$out" || {
  echo "FAIL: ep 4 over 2 nodes did not run the hierarchical exchange" >&2
  cat "$out" >&2
  exit 1
}
grep -q '^tp1\.dp2\.pp1\.ep2\.etp1 .*pass.* a2a=flat$' "$out" || {
  echo "FAIL: ep 2 inside a node should run flat" >&2
  exit 1
}
echo "PASS: verify with the hierarchical all-to-all over 2 nodes x 2 ranks"
