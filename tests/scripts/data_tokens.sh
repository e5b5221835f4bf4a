#!/bin/sh
# `hmoe train` on token ids end to end: a uint32 token file written here (ids 200..1019, none a
# byte), two ranks (dp 2, ep 2) train 4 steps on it with --data-tokens / --token-dtype /
# --vocab-size; an id past --vocab-size, --data given too, and an unknown --token-dtype are
# refused naming the value; generation (bytes) is refused on the token model.
# Usage: data_tokens.sh HMOE WORK_DIR
hmoe=$1
work=$2/data-tokens-test
fail() { echo "FAIL: $*"; exit 1; }
rm -rf "$work"
mkdir -p "$work"
# 64 ids 200 + 13 k as little-endian uint32 (printf's octal escapes), doubled to 2048 ids.
k=0
while [ $k -lt 64 ]; do
  id=$((200 + 13 * k))
  printf "$(printf '\\%03o\\%03o\\000\\000' $((id % 256)) $((id / 256)))"
  k=$((k + 1))
done > "$work/tokens.bin"
i=0
while [ $i -lt 5 ]; do
  cat "$work/tokens.bin" "$work/tokens.bin" > "$work/twice.bin" && mv "$work/twice.bin" "$work/tokens.bin"
  i=$((i + 1))
done
[ "$(wc -c < "$work/tokens.bin")" -eq 8192 ] || fail "token file of $(wc -c < "$work/tokens.bin") bytes"
tiny="--nproc 2 --tp 1 --dp 2 --pp 1 --ep 2 --d-model 32 --n-heads 2 --n-layers 2 --context 32
  --seq-len 32 --batch-size 8 --micro-batches 1 --no-progress --token-dtype uint32"
# shellcheck disable=SC2086
"$hmoe" train $tiny --steps 4 --data-tokens "$work/tokens.bin" --vocab-size 1024 \
  --out "$work/run" > "$work/run.log" 2>&1 || { cat "$work/run.log"; fail "training on token ids"; }
cat "$work/run.log"
grep -q '^done: 4 steps' "$work/run.log" || fail "no 'done: 4 steps'"
grep -q 'accuracy' "$work/run.log" && fail "a byte task accuracy was reported for token data"
grep -q '"step": 4' "$work/run/metrics.jsonl" || fail "no step 4 in metrics.jsonl"
expect_refusal() {  # expect_refusal NEEDLE COMMAND...
  needle=$1
  shift
  out=$("$@" 2>&1) && { echo "$out"; fail "accepted: $*"; }
  echo "$out" | grep -q -- "$needle" || { echo "$out"; fail "\"$needle\" not in the refusal of: $*"; }
  echo "refused as expected: $(echo "$out" | grep -m1 -- "$needle")"
}
# shellcheck disable=SC2086
expect_refusal "token id 1006 at position 62 (of 2048 uint32 ids) is not below vocab_size 1000" \
  "$hmoe" train $tiny --steps 1 --data-tokens "$work/tokens.bin" --vocab-size 1000 --out "$work/bad"
# shellcheck disable=SC2086
expect_refusal "exclude each other" "$hmoe" train $tiny --steps 1 --data-tokens "$work/tokens.bin" \
  --vocab-size 1024 --data "$work/run.log" --out "$work/bad"
expect_refusal 'token_dtype: expected one of "uint16", "uint32", got "int8"' \
  "$hmoe" train --print-config --token-dtype int8
expect_refusal "vocabulary has 1024 token ids" "$hmoe" generate --checkpoint "$work/run" --prompt "a"
echo "data tokens: trained on token ids and refused what it should"
