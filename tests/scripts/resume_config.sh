#!/bin/sh
# `hmoe train --resume` takes the configuration stored in the checkpoint: a run started with
# non-default keys resumes with no flag but --out, and flags given with --resume are printed as
# overrides. Re-running into an existing run without --resume is refused, and --overwrite moves
# the old run aside. `hmoe checkpoint verify` reports a corrupted shard and exits 1.
# Usage: resume_config.sh HMOE WORK_DIR
hmoe=$1
run=$2/resume-config-test
fail() { echo "FAIL: $*"; exit 1; }
rm -rf "$run" "$run.old-1"
"$hmoe" train --nproc 1 --tp 1 --dp 1 --pp 1 --ep 1 --d-model 32 --n-heads 2 --n-layers 2 \
  --batch-size 8 --micro-batches 1 --steps 4 --lr 0.01 --no-eval --train-lines 500 \
  --eval-per-task 2 --no-progress --stop-after 2 --out "$run" || fail "first run"
out=$("$hmoe" train --resume --out "$run" --no-progress 2>&1) || { echo "$out"; fail "resume"; }
echo "$out"
echo "$out" | grep -q "resume: the configuration of .*step_000002 (no overrides)" || fail "stored configuration not announced"
echo "$out" | grep -q "^done: 4 steps" || fail "resumed run did not reach step 4 (stop_after must not be inherited)"
grep -q '"lr": 0.01' "$run/summary.json" || fail "summary.json lacks the stored lr 0.01"
out=$("$hmoe" train --resume --out "$run" --steps 5 --no-progress 2>&1) || { echo "$out"; fail "resume with an override"; }
echo "$out"
echo "$out" | grep -q "  steps = 5 (checkpoint: 4)" || fail "override not printed"
out=$("$hmoe" train --nproc 1 --tp 1 --dp 1 --pp 1 --ep 1 --steps 1 --out "$run" 2>&1) && fail "clobbering run was not refused"
echo "$out"
echo "$out" | grep -q "already holds a run" || fail "refusal does not say why"
printf 'x' >> "$run/checkpoints/step_000005/rank_0.pt"
out=$("$hmoe" checkpoint verify "$run" 2>&1) && fail "verify passed a corrupted shard"
echo "$out"
echo "$out" | grep -q "^FAIL .*step_000005: .*rank_0.pt is corrupted" || fail "verify did not name the shard"
echo "$out" | grep -q "^--resume would continue from: .*step_000004" || fail "verify did not name the fallback"
echo "resume config: stored configuration, overrides printed, no clobbering, verify"
