#!/usr/bin/env bash
# Benchmark: a media folder of many small files (testdata/gen --many:
# stickers, thumbnails, voice notes, small documents of 2–40 KiB in a few
# hundred folders), wabackup (--media only) against restic in the same run,
# local repositories on the same disk. Prints a Markdown table.
#
#   bench/many.sh [--files 100000] [--runs 1] [--keep]
#
# Measured: a first backup, a re-run with nothing changed (and the bytes it
# adds to the repository, du before and after), a restore (wabackup's
# default, durable; restic's restore), each verified with diff -r. The
# dataset is generated once and kept in bench/out/many-N. --runs N repeats
# the series N times (fresh repositories each time) and reports medians.
# Needs: go, restic (apt-get install restic), GNU time (apt-get install time).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
FILES=100000 RUNS=1 KEEP=0
while [ $# -gt 0 ]; do
  case "$1" in
    --files) FILES=$2; shift 2 ;;
    --runs) RUNS=$2; shift 2 ;;
    --keep) KEEP=1; shift ;;
    *) echo "usage: $0 [--files N] [--runs N] [--keep]" >&2; exit 2 ;;
  esac
done
BENCH_OUT=bench/out/many
bench_tools
DATA="bench/out/many-$FILES"
bench_data "$DATA" --many "$FILES"
MEDIA="$DATA/Media"
OUT=$BENCH_OUT
REPOS="$OUT/repos"
export RESTIC_PASSWORD=bench-password
export TMPDIR="$OUT/tmp" XDG_CACHE_HOME="$PWD/$OUT/cache"

for run in $(seq "$RUNS"); do
  if [ "$RUNS" -gt 1 ]; then echo "run $run of $RUNS" >&2; fi
  rm -rf "$REPOS" "$OUT/restore-"* "$XDG_CACHE_HOME" "$TMPDIR"
  mkdir -p "$REPOS" "$TMPDIR"
  "$W" init --repo "$REPOS/wabackup" --key-out "$OUT/key.txt" --force -q
  restic init -r "$REPOS/restic" -q

  measure wabackup-backup "$W" backup --repo "$REPOS/wabackup" --key-file "$OUT/key.txt" --media "$MEDIA" -q
  measure restic-backup restic -r "$REPOS/restic" backup -q "$MEDIA"
  before=$(size "$REPOS/wabackup")
  measure wabackup-rerun "$W" backup --repo "$REPOS/wabackup" --key-file "$OUT/key.txt" --media "$MEDIA" -q
  note wabackup-rerun-added "$(( $(size "$REPOS/wabackup") - before ))"
  before=$(size "$REPOS/restic")
  measure restic-rerun restic -r "$REPOS/restic" backup -q "$MEDIA"
  note restic-rerun-added "$(( $(size "$REPOS/restic") - before ))"
  # Creating 100,000 files right after deleting as many is slower on
  # some file systems (the inode allocator skips recently freed inodes):
  # the tools take turns at restoring first.
  restore_w() { measure wabackup-restore "$W" restore latest --repo "$REPOS/wabackup" --key-file "$OUT/key.txt" --target "$OUT/restore-wabackup" -q; }
  restore_r() { measure restic-restore restic -r "$REPOS/restic" restore latest --target "$OUT/restore-restic" -q; }
  if [ $((run % 2)) = 1 ]; then restore_w; restore_r; else restore_r; restore_w; fi

  # Sanity: what each tool restored equals the source.
  diff -r "$MEDIA" "$OUT/restore-wabackup/Media" >/dev/null || { echo "FAIL: wabackup's restore differs" >&2; exit 1; }
  RMEDIA=$(find "$OUT/restore-restic" -type d -name Media -print -quit) # below the path backed up
  [ -n "$RMEDIA" ] || { echo "FAIL: restic restored no Media folder" >&2; exit 1; }
  diff -r "$MEDIA" "$RMEDIA" >/dev/null || { echo "FAIL: restic's restore differs" >&2; exit 1; }
done

# row TEXT W R [TARGET]: a table row with the ratio.
row() { echo "| $1 | $2 | $3 | $(ratio "$2" "$3") | ${4:-} |"; }
{
  echo "| measure | wabackup | restic $(restic version | awk '{print $2}') | wabackup / restic | target |"
  echo "|---|---|---|---|---|"
  for m in backup:0.5:"≤ 0.50" rerun:0.3333:"≤ 0.33" restore:0.5:"≤ 0.50"; do
    IFS=: read -r name limit text <<< "$m"
    w=$(get "wabackup-$name" 2); r=$(get "restic-$name" 2)
    row "$name time (s)" "$w" "$r" "$(target "$(ratio "$w" "$r")" "$limit" "$text")"
    if [ "$RUNS" -gt 1 ]; then echo "| $name time, spread (s) | $(span "wabackup-$name" 2) | $(span "restic-$name" 2) | | |"; fi
  done
  for m in backup rerun restore; do
    row "$m CPU user+sys (s)" "$(cpu "wabackup-$m")" "$(cpu "restic-$m")"
  done
  for m in backup rerun restore; do
    w=$(get "wabackup-$m" 3); r=$(get "restic-$m" 3)
    row "$m peak RSS (MB)" "$(mb "$w")" "$(mb "$r")" "$(target "$(ratio "$w" "$r")" 0.5 "≤ 0.50")"
  done
  w=$(get wabackup-rerun-added 2); r=$(get restic-rerun-added 2)
  echo "| re-run bytes added (KiB) | $(awk -v b="$w" 'BEGIN{printf "%.1f", b/1024}') | $(awk -v b="$r" 'BEGIN{printf "%.1f", b/1024}') | $(ratio "$w" "$r") | $(target "$w" 65536 "wabackup ≤ 64 KiB") |"
  w=$(size "$REPOS/wabackup"); r=$(size "$REPOS/restic")
  echo "| repository size (MiB) | $(mib "$w") | $(mib "$r") | $(ratio "$w" "$r") | |"
} | tee "$OUT/results.md"
echo "dataset: $FILES files in $(find "$MEDIA" -mindepth 1 -type d | wc -l) folders, $(du -sh "$MEDIA" | cut -f1) ($(mib "$(size "$MEDIA")") MiB); restores identical; $(nproc) cores; load average $(cut -d' ' -f1-3 /proc/loadavg); $(date -u +%F); medians of $RUNS run(s)"
if [ "$KEEP" = 0 ]; then rm -rf "$REPOS" "$OUT/restore-"* "$TMPDIR" "$XDG_CACHE_HOME"; fi
