#!/bin/sh
# Bad command-line values are refused with a message naming them and a non-zero exit: --nproc 0
# for plan and verify, plan's --cores below 1 or not a number, an invalid configuration under
# --print-config (every problem listed), --config given a directory, and generate's NaN
# temperature or negative --max-new.
# Usage: cli_refusals.sh HMOE WORK_DIR
hmoe=$1
work=$2/cli-refusals-test
fail() { echo "FAIL: $*"; exit 1; }
rm -rf "$work"
mkdir -p "$work"
expect_refusal() {  # expect_refusal NEEDLE COMMAND...
  needle=$1
  shift
  out=$("$@" 2>&1) && { echo "$out"; fail "accepted: $*"; }
  echo "$out" | grep -q -- "$needle" || { echo "$out"; fail "\"$needle\" not in the refusal of: $*"; }
  echo "refused as expected: $* -> $(echo "$out" | grep -m1 -- "$needle")"
}
expect_refusal "nproc" "$hmoe" plan --nproc 0
expect_refusal "nproc" "$hmoe" verify --nproc 0
expect_refusal "cores: expected an integer >= 1, got \"0\"" "$hmoe" plan --nproc 4 --cores 0
expect_refusal "cores: expected an integer >= 1, got \"-2\"" "$hmoe" plan --nproc 4 --cores -2
expect_refusal "cores: expected an integer >= 1, got \"2.5\"" "$hmoe" plan --nproc 4 --cores 2.5
expect_refusal "cores: expected an integer >= 1, got \"two\"" "$hmoe" plan --nproc 4 --cores two
expect_refusal "# invalid: config key \`n_heads\` = 3 must divide" "$hmoe" train --print-config --n-heads 3 --lr -1
out=$("$hmoe" train --print-config --n-heads 3 --lr -1 2>&1)
[ "$(echo "$out" | grep -c '^# invalid:')" -ge 2 ] || { echo "$out"; fail "--print-config did not list every problem"; }
expect_refusal "is a directory" "$hmoe" train --config "$work"
# A tiny checkpoint to generate from.
"$hmoe" train --nproc 1 --tp 1 --dp 1 --pp 1 --ep 1 --d-model 32 --n-heads 2 --n-layers 2 \
  --batch-size 8 --micro-batches 1 --steps 1 --no-eval --train-lines 200 --eval-per-task 2 \
  --no-progress --out "$work/run" > /dev/null 2>&1 || fail "tiny training run"
expect_refusal "temperature should be a finite number" "$hmoe" generate --checkpoint "$work/run" --prompt "a" --temperature nan
expect_refusal "max_new (--max-new) should be >= 0, got -5" "$hmoe" generate --checkpoint "$work/run" --prompt "a" --max-new -5
echo "cli refusals: all refused by name"
