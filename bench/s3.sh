#!/usr/bin/env bash
# Benchmark: wabackup against restic on the same generated dataset, both
# storing to S3 — a versitygw gateway on the loopback interface, started by
# this script on a free port with its root in bench/out/s3/ (the same disk
# as the dataset) and stopped when the script exits. Prints a Markdown
# table, like bench/run.sh does for local repositories.
#
#   bench/s3.sh [--db-mb 200] [--media-mb 800] [--keep]
#
# Needs: go, versitygw (installed with go install if missing), restic
# (apt-get install restic), GNU time (apt-get install time).
# Measured, each once, with warm page caches: a first backup, a re-run with
# nothing changed, a restore; and a second first backup (into a fresh
# bucket) with --db-check quick, since the default integrity_check of a
# large database costs seconds of CPU. The gateway runs on the same cores
# as the tool measured; its CPU time is not in the numbers.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
OUT=bench/out            # the dataset is shared with bench/run.sh
S3OUT=$OUT/s3            # everything else of this script
bench_setup "$S3OUT" "$@"
[ "$RUNS" = 1 ] || { echo "--runs: only bench/run.sh repeats its series" >&2; exit 2; }

VGW=$(command -v versitygw || true)
if [ -z "$VGW" ]; then
  VGW="$(go env GOPATH | cut -d: -f1)/bin/versitygw"
  [ -x "$VGW" ] || go install github.com/versity/versitygw/cmd/versitygw@v1.8.0
fi

ROOT="$S3OUT/vgw-root"
rm -rf "$ROOT" "$S3OUT/restore-"* "$S3OUT/cache" "$S3OUT/tmp" "$S3OUT/sidecar"
mkdir -p "$ROOT" "$S3OUT/cache" "$S3OUT/tmp"

# --- the gateway -----------------------------------------------------------
export AWS_ACCESS_KEY_ID="bench$RANDOM$RANDOM" AWS_SECRET_ACCESS_KEY="secret$RANDOM$RANDOM$RANDOM$RANDOM"
VGW_PID=""
stop_gateway() {
  if [ -n "$VGW_PID" ]; then
    kill "$VGW_PID" 2>/dev/null || true
    wait "$VGW_PID" 2>/dev/null || true
    VGW_PID=""
  fi
}
cleanup() {
  stop_gateway
  if [ "$KEEP" = 0 ]; then rm -rf "$ROOT" "$S3OUT/restore-"* "$S3OUT/tmp" "$S3OUT/sidecar" "$S3OUT/cache"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null ||
    echo $((20000 + RANDOM % 40000))
}
# versitygw's posix backend keeps metadata in extended attributes, or in a
# sidecar directory where the file system has none.
BACKEND=(posix)
if ! python3 -c 'import os,sys; os.setxattr(sys.argv[1], "user.wabackup.probe", b"1"); os.removexattr(sys.argv[1], "user.wabackup.probe")' "$ROOT" 2>/dev/null; then
  mkdir -p "$S3OUT/sidecar"
  BACKEND+=(--sidecar "$S3OUT/sidecar")
fi
BACKEND+=("$ROOT")
PORT=""
for attempt in 1 2 3 4 5; do
  p=$(free_port)
  ROOT_ACCESS_KEY=$AWS_ACCESS_KEY_ID ROOT_SECRET_KEY=$AWS_SECRET_ACCESS_KEY \
    "$VGW" --port "127.0.0.1:$p" --quiet "${BACKEND[@]}" > "$S3OUT/versitygw.log" 2>&1 &
  VGW_PID=$!
  for _ in $(seq 200); do
    if curl -s -o /dev/null "http://127.0.0.1:$p/"; then PORT=$p; break; fi
    kill -0 "$VGW_PID" 2>/dev/null || break
    sleep 0.05
  done
  [ -n "$PORT" ] && break
  stop_gateway
done
[ -n "$PORT" ] || { echo "versitygw did not start:"; cat "$S3OUT/versitygw.log"; exit 1; } >&2
EP="127.0.0.1:$PORT"
echo "versitygw $("$VGW" --version 2>/dev/null | awk '/Version/ {print $3; exit}') on $EP, root $ROOT" >&2

# --- the runs ---------------------------------------------------------------
export RESTIC_PASSWORD=bench-password
export TMPDIR="$S3OUT/tmp" XDG_CACHE_HOME="$PWD/$S3OUT/cache"
WREPO="s3:http://$EP/wabackup"
QREPO="s3:http://$EP/wabackup-quick"
RREPO="s3:http://$EP/restic"

"$W" init --repo "$WREPO" --s3-create-bucket --key-out "$S3OUT/key.txt" --force -q
"$W" init --repo "$QREPO" --s3-create-bucket --key-out "$S3OUT/key-quick.txt" --force -q
restic init -r "$RREPO" -q

measure wabackup-backup "$W" backup --repo "$WREPO" --key-file "$S3OUT/key.txt" --db "$DB" --media "$MEDIA" -q
measure restic-backup restic -r "$RREPO" backup -q "$DB" "$MEDIA"
measure wabackup-rerun "$W" backup --repo "$WREPO" --key-file "$S3OUT/key.txt" --db "$DB" --media "$MEDIA" -q
measure restic-rerun restic -r "$RREPO" backup -q "$DB" "$MEDIA"
measure wabackup-restore "$W" restore latest --repo "$WREPO" --key-file "$S3OUT/key.txt" --target "$S3OUT/restore-wabackup" -q
measure restic-restore restic -r "$RREPO" restore latest --target "$S3OUT/restore-restic" -q
# Like-for-like with restic, whose restore does not make files durable.
measure wabackupns-restore "$W" restore latest --repo "$WREPO" --key-file "$S3OUT/key.txt" --target "$S3OUT/restore-wabackup-nosync" --no-sync -q
measure wabackupq-backup "$W" backup --repo "$QREPO" --key-file "$S3OUT/key-quick.txt" --db "$DB" --media "$MEDIA" --db-check quick -q

# Sanity: the media restored by each tool equals the source.
diff -r "$MEDIA" "$S3OUT/restore-wabackup/Media" >/dev/null || { echo "wabackup restore differs" >&2; exit 1; }
RMEDIA=$(find "$S3OUT/restore-restic" -type d -name Media -print -quit)
[ -n "$RMEDIA" ] && diff -r "$MEDIA" "$RMEDIA" >/dev/null || { echo "restic restore differs" >&2; exit 1; }

WSIZE=$(size "$ROOT/wabackup"); RSIZE=$(size "$ROOT/restic")
{
  echo "| measure (S3, versitygw on loopback) | wabackup | restic $(restic version | awk '{print $2}') | wabackup / restic |"
  echo "|---|---|---|---|"
  for m in backup rerun restore; do
    w=$(get wabackup-$m 2); r=$(get restic-$m 2)
    echo "| $m time (s) | $w | $r | $(ratio "$w" "$r") |"
  done
  w=$(get wabackupq-backup 2); r=$(get restic-backup 2)
  echo "| backup time, --db-check quick (s) | $w | $r | $(ratio "$w" "$r") |"
  w=$(get wabackupns-restore 2); r=$(get restic-restore 2)
  echo "| restore time, --no-sync (s) | $w | $r | $(ratio "$w" "$r") |"
  for m in backup rerun restore; do
    w=$(cpu wabackup-$m); r=$(cpu restic-$m)
    echo "| $m CPU user+sys (s) | $w | $r | $(ratio "$w" "$r") |"
  done
  w=$(cpu wabackupq-backup); r=$(cpu restic-backup)
  echo "| backup CPU user+sys, --db-check quick (s) | $w | $r | $(ratio "$w" "$r") |"
  for m in backup rerun restore; do
    w=$(get wabackup-$m 3); r=$(get restic-$m 3)
    echo "| $m peak RSS (MB) | $(mb "$w") | $(mb "$r") | $(ratio "$w" "$r") |"
  done
  w=$(get wabackupq-backup 3); r=$(get restic-backup 3)
  echo "| backup peak RSS, --db-check quick (MB) | $(mb "$w") | $(mb "$r") | $(ratio "$w" "$r") |"
  echo "| bucket size (MiB) | $(mib "$WSIZE") | $(mib "$RSIZE") | $(ratio "$WSIZE" "$RSIZE") |"
} | tee "$S3OUT/results.md"
echo "dataset: $DB_MB MB database + $MEDIA_MB MB media ($(du -sh "$DATA" | cut -f1)); S3: versitygw on 127.0.0.1, plain HTTP; $(nproc) cores; load average before: $LOAD0; $(date -u +%F)"
