#!/usr/bin/env bash
# Benchmark: wabackup against restic on the same generated dataset, local
# repositories on the same disk, in the same run. Prints a Markdown table.
#
#   bench/run.sh [--db-mb 200] [--media-mb 800] [--runs 1] [--keep]
#
# --runs N repeats the whole series N times (fresh repositories each
# time) and reports medians, with the spread of the times.
#
# Needs: go, restic (apt-get install restic), GNU time (apt-get install time).
# Both tools make their writes durable: restic fsyncs every pack file; so
# does wabackup (every pack, index, tree and snapshot is fsynced before it
# is renamed into place). Caches are warm for both (the dataset was just
# generated/read); each measurement is one run per series (--runs).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
OUT=bench/out
bench_setup "$OUT" "$@"
REPOS="$OUT/repos"
export RESTIC_PASSWORD=bench-password
export TMPDIR="$OUT/tmp"; mkdir -p "$TMPDIR"
for run in $(seq "$RUNS"); do
  [ "$RUNS" -gt 1 ] && echo "run $run of $RUNS" >&2
  rm -rf "$REPOS" "$OUT/restore-"*
  mkdir -p "$REPOS"

  "$W" init --repo "$REPOS/wabackup" --key-out "$OUT/key.txt" --force -q
  "$W" init --repo "$REPOS/wabackup-quick" --key-out "$OUT/key-quick.txt" --force -q
  restic init -r "$REPOS/restic" -q
  export XDG_CACHE_HOME="$PWD/$OUT/cache"; rm -rf "$XDG_CACHE_HOME"

  # The full integrity check of the database alone (the same engine and
  # page cache as the backup's): the default first backup runs it beside
  # everything else, and should take at most 1.1x as long.
  measure check-full env GATHER_PAGES_BENCH_DB="$DB" GATHER_PAGES_BENCH_OP=full "$OUT/bin/gather.test" -test.run '^TestDBPagesMeasure$'
  measure check-quick env GATHER_PAGES_BENCH_DB="$DB" GATHER_PAGES_BENCH_OP=quick "$OUT/bin/gather.test" -test.run '^TestDBPagesMeasure$'
  measure wabackup-backup "$W" backup --repo "$REPOS/wabackup" --key-file "$OUT/key.txt" --db "$DB" --media "$MEDIA" -q
  measure wabackupquick-backup "$W" backup --repo "$REPOS/wabackup-quick" --key-file "$OUT/key-quick.txt" --db "$DB" --media "$MEDIA" -q --db-check quick
  measure restic-backup restic -r "$REPOS/restic" backup -q "$DB" "$MEDIA"
  measure wabackup-rerun "$W" backup --repo "$REPOS/wabackup" --key-file "$OUT/key.txt" --db "$DB" --media "$MEDIA" -q
  measure restic-rerun restic -r "$REPOS/restic" backup -q "$DB" "$MEDIA"
  measure wabackup-restore "$W" restore latest --repo "$REPOS/wabackup" --key-file "$OUT/key.txt" --target "$OUT/restore-wabackup" -q
  measure restic-restore restic -r "$REPOS/restic" restore latest --target "$OUT/restore-restic" -q
  # restic's restore does not make the files durable; with --no-sync neither
  # does wabackup: the like-for-like figure.
  measure wabackupns-restore "$W" restore latest --repo "$REPOS/wabackup" --key-file "$OUT/key.txt" --target "$OUT/restore-wabackup-nosync" --no-sync -q

  # Sanity: the media restored by each tool equals the source.
  diff -r "$MEDIA" "$OUT/restore-wabackup/Media" >/dev/null || { echo "wabackup restore differs" >&2; exit 1; }
done

WSIZE=$(size "$REPOS/wabackup"); RSIZE=$(size "$REPOS/restic")
{
  echo "| measure | wabackup | restic $(restic version | awk '{print $2}') | wabackup / restic |"
  echo "|---|---|---|---|"
  for m in backup rerun restore; do
    w=$(get wabackup-$m 2); r=$(get restic-$m 2)
    echo "| $m time (s) | $w | $r | $(ratio "$w" "$r") |"
    [ "$RUNS" -gt 1 ] && echo "| $m time, spread (s) | $(span wabackup-$m 2) | $(span restic-$m 2) | |"
  done
  w=$(get wabackupquick-backup 2); r=$(get restic-backup 2)
  echo "| backup time, --db-check quick (s) | $w | $r | $(ratio "$w" "$r") |"
  [ "$RUNS" -gt 1 ] && echo "| backup time, --db-check quick, spread (s) | $(span wabackupquick-backup 2) | $(span restic-backup 2) | |"
  c=$(get check-full 2); w=$(get wabackup-backup 2)
  echo "| full integrity check alone (s) | $c | | |"
  echo "| backup time (default: full check) / full check alone | $(ratio "$w" "$c") | | target ≤ 1.10 |"
  echo "| quick check alone (s) | $(get check-quick 2) | | |"
  w=$(get wabackupns-restore 2); r=$(get restic-restore 2)
  echo "| restore time, --no-sync (s) | $w | $r | $(ratio "$w" "$r") |"
  for m in backup rerun restore; do
    w=$(cpu wabackup-$m); r=$(cpu restic-$m)
    echo "| $m CPU user+sys (s) | $w | $r | $(ratio "$w" "$r") |"
  done
  for m in backup rerun restore; do
    w=$(get wabackup-$m 3); r=$(get restic-$m 3)
    echo "| $m peak RSS (MB) | $(mb "$w") | $(mb "$r") | $(ratio "$w" "$r") |"
  done
  echo "| repository size (MiB) | $(mib "$WSIZE") | $(mib "$RSIZE") | $(ratio "$WSIZE" "$RSIZE") |"
} | tee "$OUT/results.md"
echo "dataset: $DB_MB MB database + $MEDIA_MB MB media ($(du -sh "$DATA" | cut -f1)); $(nproc) cores; $(date -u +%F); medians of $RUNS run(s)"
if [ "$KEEP" = 0 ]; then rm -rf "$REPOS" "$OUT/restore-"* "$TMPDIR"; fi
