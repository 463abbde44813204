#!/usr/bin/env bash
# Benchmark: key rotate --rewrite (re-encrypt every stored object under a
# new key) against restic copy (read every blob of one repository and
# write it into another), on the same generated dataset, local
# repositories, in the same run. Prints a Markdown table: time, throughput
# of the repository's bytes, peak RSS.
#
#   bench/rotate.sh [--db-mb 200] [--media-mb 800] [--runs 3] [--keep]
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
OUT=bench/out/rotate
bench_setup "$OUT" "$@"
REPOS="$OUT/repos"
export TMPDIR="$OUT/tmp"; mkdir -p "$TMPDIR"
export RESTIC_PASSWORD=bench XDG_CACHE_HOME="$PWD/$OUT/cache"
for run in $(seq "$RUNS"); do
  [ "$RUNS" -gt 1 ] && echo "run $run of $RUNS" >&2
  rm -rf "$REPOS" "$XDG_CACHE_HOME"; mkdir -p "$REPOS"
  "$W" init --repo "$REPOS/wabackup" --key-out "$OUT/key.txt" --force -q
  "$W" backup --repo "$REPOS/wabackup" --key-file "$OUT/key.txt" --db "$DB" --media "$MEDIA" -q --db-check quick
  restic init -r "$REPOS/restic" -q
  restic -r "$REPOS/restic" backup -q "$DB" "$MEDIA"
  restic init -r "$REPOS/restic-copy" --from-repo "$REPOS/restic" --from-password-command "echo bench" --copy-chunker-params -q
  note size-wabackup "$(size "$REPOS/wabackup")"
  note size-restic "$(size "$REPOS/restic")"
  rm -f "$OUT/key2.txt"
  measure wabackup-rewrite "$W" key rotate --rewrite --repo "$REPOS/wabackup" --key-file "$OUT/key.txt" --key-out "$OUT/key2.txt" -q
  measure restic-copy restic -r "$REPOS/restic-copy" copy --from-repo "$REPOS/restic" --from-password-command "echo bench" -q
  "$W" check --read-data --repo "$REPOS/wabackup" --key-file "$OUT/key2.txt" -q
done
wt=$(get wabackup-rewrite 2); rt=$(get restic-copy 2)
ws=$(get size-wabackup 2); rs=$(get size-restic 2)
echo "| measure | wabackup key rotate --rewrite | restic $(restic version | awk '{print $2}') copy | wabackup / restic |"
echo "|---|---|---|---|"
echo "| time (s) | $(span wabackup-rewrite 2) | $(span restic-copy 2) | $(ratio "$wt" "$rt") |"
echo "| repository (MiB) | $(mib "$ws") | $(mib "$rs") | |"
echo "| throughput (MiB/s of the repository) | $(awk -v s="$ws" -v t="$wt" 'BEGIN{printf "%.0f", s/1048576/t}') | $(awk -v s="$rs" -v t="$rt" 'BEGIN{printf "%.0f", s/1048576/t}') | $(ratio "$(awk -v s="$ws" -v t="$wt" 'BEGIN{print s/t}')" "$(awk -v s="$rs" -v t="$rt" 'BEGIN{print s/t}')") |"
echo "| CPU (s) | $(cpu wabackup-rewrite) | $(cpu restic-copy) | |"
echo "| peak RSS (MB) | $(mb "$(get wabackup-rewrite 3)") | $(mb "$(get restic-copy 3)") | $(target "$(mb "$(get wabackup-rewrite 3)")" 64 "≤ 64 MB") |"
[ "$KEEP" = 1 ] || rm -rf "$REPOS"
