#!/usr/bin/env bash
# Benchmark: nightly backups of a phone in use, wabackup against restic in
# the same run, local repositories on the same disk. Prints a Markdown table.
#
#   bench/nightly.sh [--db-mb 200] [--media-mb 800] [--runs 1] [--keep]
#
# On a private copy of the generated dataset (bench/out/data-…, shared with
# bench/run.sh, stays untouched): a first backup with each tool, then two
# nights, each one day of use (testdata/gen --day K: 1,500 new messages,
# read-status updates, ~40 MiB of new media, 10 old media files deleted,
# ending with a WAL checkpoint) followed by a backup with each tool.
# Measured per night and for both nights: time, repository bytes added (du
# of the repository before and after), the database's share of them (bytes
# added minus the day's new media bytes) and peak RSS. wabackup runs with
# its default --db-check. Finally the latest wabackup snapshot is restored
# and its msgstore.db compared byte for byte with the source's.
#
# --runs N repeats the whole series N times (fresh copy and repositories
# each time) and reports medians. Needs: go, restic (apt-get install
# restic), GNU time (apt-get install time).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
OUT=bench/out/nightly
bench_setup "$OUT" "$@"
REPOS="$OUT/repos"
COPY="$OUT/data"
export RESTIC_PASSWORD=bench-password
export TMPDIR="$OUT/tmp" XDG_CACHE_HOME="$PWD/$OUT/cache"
NIGHTS="1 2"
# backup TOOL NAME: one measured backup of the private copy.
backup() {
  if [ "$1" = wabackup ]; then
    measure "wabackup-$2" "$W" backup --repo "$REPOS/wabackup" --key-file "$OUT/key.txt" --db "$COPY/msgstore.db" --media "$COPY/Media" -q
  else
    measure "restic-$2" restic -r "$REPOS/restic" backup -q "$COPY/msgstore.db" "$COPY/Media"
  fi
}

for run in $(seq "$RUNS"); do
  if [ "$RUNS" -gt 1 ]; then echo "run $run of $RUNS" >&2; fi
  rm -rf "$REPOS" "$COPY" "$OUT/restore" "$XDG_CACHE_HOME" "$TMPDIR"
  mkdir -p "$REPOS" "$TMPDIR"
  cp -a "$DATA" "$COPY"
  "$W" init --repo "$REPOS/wabackup" --key-out "$OUT/key.txt" --force -q
  restic init -r "$REPOS/restic" -q

  backup wabackup first
  backup restic first
  for k in $NIGHTS; do
    "$GEN" --out "$COPY" --seed 1 --day "$k" > "$OUT/day$k.txt"
    # "... N new media files (BYTES bytes); ..."
    media=$(sed -n 's/.* new media files (\([0-9]*\) bytes).*/\1/p' "$OUT/day$k.txt")
    [ -n "$media" ] || { echo "cannot read the day's summary:"; cat "$OUT/day$k.txt"; exit 1; } >&2
    note "night$k-media" "$media"
    for tool in wabackup restic; do
      before=$(size "$REPOS/$tool")
      backup "$tool" "night$k"
      note "$tool-night$k-added" "$(( $(size "$REPOS/$tool") - before ))"
    done
  done

  # SQLite's quick_check of the last night's database alone (the check
  # every nightly backup runs, on the same engine): a floor under the
  # nightly time.
  measure check-quick env GATHER_PAGES_BENCH_DB="$COPY/msgstore.db" GATHER_PAGES_BENCH_OP=quick "$OUT/bin/gather.test" -test.run '^TestDBPagesMeasure$'

  # The day ended with a checkpoint: msgstore.db alone is the state.
  "$W" restore latest --repo "$REPOS/wabackup" --key-file "$OUT/key.txt" --target "$OUT/restore" -q
  cmp "$COPY/msgstore.db" "$OUT/restore/msgstore.db" ||
    { echo "FAIL: the restored msgstore.db differs from the source's" >&2; exit 1; }
  diff -r "$COPY/Media" "$OUT/restore/Media" >/dev/null ||
    { echo "FAIL: the restored Media differs from the source's" >&2; exit 1; }
done

# row TEXT W R [TARGET]: a table row with the ratio. rowb: the same for
# byte counts, shown in MiB.
row() { echo "| $1 | $2 | $3 | $(ratio "$2" "$3") | ${4:-} |"; }
rowb() { echo "| $1 | $(mib "$2") | $(mib "$3") | $(ratio "$2" "$3") | ${4:-} |"; }
maxof() { awk -v a="$1" -v b="$2" 'BEGIN { print (a + 0 > b + 0 ? a : b) }'; }
{
  echo "| measure | wabackup | restic $(restic version | awk '{print $2}') | wabackup / restic | target |"
  echo "|---|---|---|---|---|"
  row "first backup time (s)" "$(get wabackup-first 2)" "$(get restic-first 2)"
  wt=0 rt=0 wa=0 ra=0 wd=0 rd=0 wpeak=0 rpeak=0 wcpu=0 rcpu=0
  for k in $NIGHTS; do
    w=$(get "wabackup-night$k" 2); r=$(get "restic-night$k" 2)
    row "night $k backup time (s)" "$w" "$r"
    if [ "$RUNS" -gt 1 ]; then echo "| night $k backup time, spread (s) | $(span "wabackup-night$k" 2) | $(span "restic-night$k" 2) | | |"; fi
    wt=$(add "$wt" "$w"); rt=$(add "$rt" "$r")
    wcpu=$(add "$wcpu" "$(cpu "wabackup-night$k")"); rcpu=$(add "$rcpu" "$(cpu "restic-night$k")")
    media=$(get "night$k-media" 2)
    w=$(get "wabackup-night$k-added" 2); r=$(get "restic-night$k-added" 2)
    rowb "night $k bytes added (MiB)" "$w" "$r"
    wa=$(add "$wa" "$w"); ra=$(add "$ra" "$r")
    w=$(sub "$w" "$media"); r=$(sub "$r" "$media")
    rowb "night $k database bytes added (MiB)" "$w" "$r" "$(target "$(ratio "$w" "$r")" 0.1 "≤ 0.10")"
    wd=$(add "$wd" "$w"); rd=$(add "$rd" "$r")
    w=$(get "wabackup-night$k" 3); r=$(get "restic-night$k" 3)
    row "night $k peak RSS (MB)" "$(mb "$w")" "$(mb "$r")" "$(target "$w" 65536 "wabackup ≤ 64 MB")"
    wpeak=$(maxof "$wpeak" "$w"); rpeak=$(maxof "$rpeak" "$r")
  done
  row "nights 1+2 time (s)" "$wt" "$rt" "$(target "$(ratio "$wt" "$rt")" 0.5 "≤ 0.50")"
  q=$(get check-quick 2)
  echo "| quick_check of the database alone, per night (s) | $q | | $(ratio "$q" "$(awk -v t="$rt" 'BEGIN{print t/2}')") of restic's night | |"
  row "nights 1+2 CPU user+sys (s)" "$wcpu" "$rcpu"
  rowb "nights 1+2 bytes added (MiB)" "$wa" "$ra"
  rowb "nights 1+2 database bytes added (MiB)" "$wd" "$rd" "$(target "$(ratio "$wd" "$rd")" 0.1 "≤ 0.10")"
  row "nights peak RSS (MB)" "$(mb "$wpeak")" "$(mb "$rpeak")" "$(target "$wpeak" 65536 "wabackup ≤ 64 MB")"
  row "first backup peak RSS (MB)" "$(mb "$(get wabackup-first 3)")" "$(mb "$(get restic-first 3)")"
  rowb "repository size after night 2 (MiB)" "$(size "$REPOS/wabackup")" "$(size "$REPOS/restic")"
} | tee "$OUT/results.md"
for k in $NIGHTS; do sed "s|^$COPY: |night $k: |" "$OUT/day$k.txt"; done
echo "dataset: $DB_MB MB database + $MEDIA_MB MB media ($(du -sh "$DATA" | cut -f1)); restored msgstore.db identical; $(nproc) cores; load average $(cut -d' ' -f1-3 /proc/loadavg); $(date -u +%F); medians of $RUNS run(s)"
if [ "$KEEP" = 0 ]; then rm -rf "$REPOS" "$COPY" "$OUT/restore" "$TMPDIR" "$XDG_CACHE_HOME"; fi
