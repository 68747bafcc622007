#!/usr/bin/env bash
# Unlock and passphrase change on an empty vault and on one holding 1 GiB:
# both should cost one KDF run, whatever the vault holds. Interleaved runs,
# median per row, in one go (ratios matter; absolute times drift here).
# Usage: scripts/bench-unlock.sh [ROUNDS]   (builds the release binary)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-5}"
cargo build --quiet --release -p coffer-cli
bin="${CARGO_TARGET_DIR:-target}/release/coffer"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export COFFER_SPACE="$work/space"

for v in empty full; do
  COFFER_PASSPHRASE=pw "$bin" --vault "$v" init --name u >/dev/null
done
COFFER_PASSPHRASE=pw "$bin" --vault full app add data >/dev/null
head -c $((1 << 30)) /dev/zero | COFFER_PASSPHRASE=pw "$bin" --vault full files put data big.bin - >/dev/null
# Let the 1 GiB reach the disk first: its writeback would slow the fsyncs
# that unlock and passwd make, which is not what this row measures.
sync

kdf=$("$bin" --vault empty --json info | python3 -c 'import json,sys; print(json.load(sys.stdin)["slots"][0]["kdf"])')
declare -A times
timeit() { local s e; s=$(date +%s%N); "$@" >/dev/null; e=$(date +%s%N); python3 -c "print(($e - $s) / 1e9)"; }
for ((i = 0; i < rounds; i++)); do
  for v in empty full; do
    times[unlock-$v]+="$(COFFER_PASSPHRASE=pw timeit "$bin" --vault "$v" verify) "
    times[passwd-$v]+="$(COFFER_PASSPHRASE=pw COFFER_NEW_PASSPHRASE=pw timeit "$bin" --vault "$v" passwd) "
  done
done
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo "KDF of the slot: $kdf ($rounds interleaved rounds; passwd includes calibrating the new slot's KDF)"
echo
echo "| operation | empty vault | vault holding 1 GiB | ratio |"
echo "|---|---|---|---|"
for op in unlock passwd; do
  a=$(echo "${times[$op-empty]}" | median)
  b=$(echo "${times[$op-full]}" | median)
  printf '| %s | %.3f s | %.3f s | %.2f× |\n' "$op" "$a" "$b" "$(python3 -c "print($b / $a)")"
done
