#!/usr/bin/env bash
# Benchmark (acceptance 4 of issue 12): a restore of the generated dataset
# (1 GB by default) interrupted with SIGINT halfway, then run again into
# the same target. Reports the bytes of blobs each run read from the store
# (the restore's store_bytes), what the files not yet complete hold, and
# checks the result byte for byte.
#
#   bench/resume.sh [--db-mb 200] [--media-mb 800]
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
OUT=bench/out/resume
bench_setup "$OUT" "$@"
export TMPDIR="$OUT/tmp"; mkdir -p "$TMPDIR"
export XDG_CACHE_HOME="$PWD/$OUT/cache"
REPO="$OUT/repo"
rm -rf "$REPO" "$OUT/full" "$OUT/part" "$XDG_CACHE_HOME"
"$W" init --repo "$REPO" --key-out "$OUT/key.txt" --force -q
"$W" backup --repo "$REPO" --key-file "$OUT/key.txt" --db "$DB" --media "$MEDIA" -q --db-check quick
# A full restore, timed, for the moment to interrupt at.
start=$(date +%s.%N)
full=$("$W" restore latest --repo "$REPO" --key-file "$OUT/key.txt" --target "$OUT/full" --json | grep '"summary"')
t=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN{print e-s}')
full_bytes=$(echo "$full" | sed 's/.*"store_bytes":\([0-9]*\).*/\1/')
# Interrupted halfway.
"$W" restore latest --repo "$REPO" --key-file "$OUT/key.txt" --target "$OUT/part" -q &
pid=$!
sleep "$(awk -v t="$t" 'BEGIN{print t/2}')"
kill -INT "$pid"
set +e; wait "$pid"; code=$?; set -e
# What is complete: files identical to the full restore.
incomplete=$(cd "$OUT/full" && find . -type f -printf '%s %p\n' | while read -r size path; do
  if ! cmp -s "$path" "../part/$path" 2>/dev/null; then echo "$size"; fi
done | awk '{s+=$1} END {print s+0}')
resumed=$("$W" restore latest --repo "$REPO" --key-file "$OUT/key.txt" --target "$OUT/part" --json | grep '"summary"')
res_bytes=$(echo "$resumed" | sed 's/.*"store_bytes":\([0-9]*\).*/\1/')
kept=$(echo "$resumed" | sed 's/.*"kept":\([0-9]*\).*/\1/')
diff -r "$OUT/full" "$OUT/part" >/dev/null && same=yes || same=NO
echo "| | MiB |"
echo "|---|---|"
echo "| full restore: blobs read from the store | $(mib "$full_bytes") |"
echo "| interrupted after $(awk -v t="$t" 'BEGIN{printf "%.1f", t/2}') s (exit $code): files not complete hold | $(mib "$incomplete") |"
echo "| resumed restore: blobs read from the store ($kept files kept) | $(mib "$res_bytes") |"
echo "| result identical to the full restore | $same |"
rm -rf "$REPO" "$OUT/full" "$OUT/part"
