#!/usr/bin/env bash
# Benchmark: the cost of pack parity (init --parity N) on the generated
# dataset: a first backup into repositories without parity and with 1 % and
# 3 %, alternated in each run (quick database check, so the check does not
# dominate), and the space the parity objects take. Prints a Markdown table.
#
#   bench/parity.sh [--db-mb 200] [--media-mb 800] [--runs 3] [--keep]
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
OUT=bench/out/parity
bench_setup "$OUT" "$@"
REPOS="$OUT/repos"
export TMPDIR="$OUT/tmp"; mkdir -p "$TMPDIR"
for run in $(seq "$RUNS"); do
  [ "$RUNS" -gt 1 ] && echo "run $run of $RUNS" >&2
  rm -rf "$REPOS"; mkdir -p "$REPOS"
  for p in 0 1 3; do
    "$W" init --repo "$REPOS/p$p" --key-out "$OUT/key$p.txt" --parity "$p" --force -q
  done
  export XDG_CACHE_HOME="$PWD/$OUT/cache"; rm -rf "$XDG_CACHE_HOME"
  for p in 0 1 3; do
    measure "backup-p$p" "$W" backup --repo "$REPOS/p$p" --key-file "$OUT/key$p.txt" --db "$DB" --media "$MEDIA" -q --db-check quick
  done
  for p in 0 1 3; do
    note "size-p$p" "$(size "$REPOS/p$p")"
    note "parity-p$p" "$( [ -d "$REPOS/p$p/parity" ] && size "$REPOS/p$p/parity" || echo 0)"
  done
done
b0=$(get backup-p0 2)
echo "| parity | backup, s | vs none | repository, MiB | parity objects, MiB | space vs none |"
echo "|---|---|---|---|---|---|"
for p in 0 1 3; do
  t=$(get "backup-p$p" 2)
  echo "| $p % | $(span "backup-p$p" 2) | $(ratio "$t" "$b0") | $(mib "$(get "size-p$p" 2)") | $(mib "$(get "parity-p$p" 2)") | $(ratio "$(get "size-p$p" 2)" "$(get size-p0 2)") |"
done
[ "$KEEP" = 1 ] || rm -rf "$REPOS"
