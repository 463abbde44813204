#!/usr/bin/env bash
# Benchmark over a shaped link (issue 24): wabackup against restic, both
# storing to S3 (versitygw) through toxiproxy, which adds latency and caps
# the bandwidth of every connection, as a home uplink would; and wabackup
# alone against the Google Drive emulator behind the same shaping (restic
# has no Google Drive backend). Prints a Markdown table of times, ratios and
# store requests, with the issue's targets.
#
#   bench/wan.sh [--db-mb 40] [--media-mb 150] [--latency-ms 15] [--jitter-ms 0]
#                [--up-mbit 20] [--down-mbit 100] [--shape-first] [--no-drive]
#                [--base-port N] [--keep]
#
# The issue's figures are for --db-mb 187 --media-mb 800 (a realistic chat
# database with indexes and FTS5, and media); the small default finishes in
# a few minutes.
#
# The chain, every server on 127.0.0.1 on its own port:
#
#   client ── toxiproxy (shaped) ── reqcount ── versitygw            (S3)
#   client ── toxiproxy (shaped) ── reqcount ── drive emulator       (Drive)
#
# toxiproxy (github.com/Shopify/toxiproxy/v2 v2.12.0: toxiproxy-server from
# scripts/test.sh, or go install'ed into bench/out/tools/) shapes each client connection: --latency-ms each way
# (so a round trip costs twice that), --up-mbit from client to server and
# --down-mbit back, per connection (a tool with N connections gets N times
# the bandwidth; there is no shared-uplink model). reqcount (bench/cmd/
# reqcount) is a reverse proxy that counts the requests it forwards by kind
# and the body bytes each way: the same counter for both tools. Each run's
# requests are also traced, one line each, in bench/out/wan/trace-*.txt,
# and summed by kind and key prefix in bench/out/wan/requests.md.
#
# The scenario, on a private copy of the generated dataset (bench/out/
# data-…, shared with the other scripts, stays untouched), as in bench/
# nightly.sh: a first backup with each tool (over the link without shaping
# unless --shape-first: the issue's targets are on the nights and the
# restore, and 1 GB through 20 Mbit/s takes minutes); then two nights, each
# one day of use (testdata/gen --day K) followed by a backup with each tool;
# a run with nothing changed; and a restore of the chat database alone
# (msgstore.db) from the latest snapshot into an empty directory with an
# empty cache (XDG_CACHE_HOME), as on a new machine, compared byte for byte
# with the source. wabackup runs with its defaults (--db-check auto,
# --s3-connections 4, restore made durable); restic 0.19.1 with its own
# (5 S3 connections). The bucket of each tool is its own.
#
# wabackup runs with --json; when its summary carries "requests" (its own
# count of store requests) that count is shown beside the proxy's.
#
# Drive: the emulator (cmd/wabackup-drive-emulator) runs in memory; the
# login is a token minted by the emulator (/_emu/mint) and written to a
# private XDG_CONFIG_HOME with no expiry, so no run spends a request on
# refreshing it (a real nightly run refreshes its access token once). Its
# API call count is the emulator's own (/_emu/stats, every Drive and OAuth
# call) and matches the proxy's.
#
# Ports: free ones are picked (--base-port N uses N…N+6 and stops if one is
# busy). Every process the script starts is stopped when it exits.
# Needs: go, curl, python3; installs restic 0.19.1, versitygw 1.8.0 and
# toxiproxy 2.12.0 with go install and GNU time with apt-get if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
OUT=bench/out/wan
DB_MB=40 MEDIA_MB=150 KEEP=0
LAT_MS=15 JITTER_MS=0 UP_MBIT=20 DOWN_MBIT=100 SHAPE_FIRST=0 DRIVE=1 BASE_PORT=""
usage() {
  echo "usage: $0 [--db-mb N] [--media-mb N] [--latency-ms N] [--jitter-ms N] [--up-mbit N] [--down-mbit N] [--shape-first] [--no-drive] [--base-port N] [--keep]" >&2
  exit 2
}
while [ $# -gt 0 ]; do
  case "$1" in
    --db-mb) DB_MB=$2; shift 2 ;;
    --media-mb) MEDIA_MB=$2; shift 2 ;;
    --latency-ms) LAT_MS=$2; shift 2 ;;
    --jitter-ms) JITTER_MS=$2; shift 2 ;;
    --up-mbit) UP_MBIT=$2; shift 2 ;;
    --down-mbit) DOWN_MBIT=$2; shift 2 ;;
    --shape-first) SHAPE_FIRST=1; shift ;;
    --no-drive) DRIVE=0; shift ;;
    --base-port) BASE_PORT=$2; shift 2 ;;
    --keep) KEEP=1; shift ;;
    *) usage ;;
  esac
done
for v in "$DB_MB" "$MEDIA_MB" "$LAT_MS" "$JITTER_MS" "$UP_MBIT" "$DOWN_MBIT" ${BASE_PORT:+"$BASE_PORT"}; do
  [[ "$v" =~ ^[0-9]+(\.[0-9]+)?$ ]] || { echo "not a number: $v" >&2; usage; }
done
# Mbit/s as toxiproxy's KB/s (1 KB = 1,000 bytes in its bandwidth toxic).
UP_KBS=$(awk -v m="$UP_MBIT" 'BEGIN { printf "%d", m * 125 }')
DOWN_KBS=$(awk -v m="$DOWN_MBIT" 'BEGIN { printf "%d", m * 125 }')

# --- processes: every one is recorded and stopped on exit --------------------
PIDS=()
NAMES=()
cleanup() {
  local i
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
    kill "${PIDS[$i]}" 2>/dev/null || true
  done
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
    wait "${PIDS[$i]}" 2>/dev/null || true
  done
  PIDS=()
  if [ "$KEEP" = 0 ]; then
    rm -rf "$OUT/vgw-root" "$OUT/sidecar" "$OUT/data" "$OUT/restore-"* "$OUT/cache"* "$OUT/tmp" "$OUT/config"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p "$OUT"
BENCH_OUT=$OUT # where bench/lib.sh's measure keeps its times and logs
# Tools: restic, GNU time, wabackup and the dataset generator (bench/lib.sh),
# then versitygw, toxiproxy, the emulator and reqcount.
bench_tools
VGW=$(command -v versitygw || true)
if [ -z "$VGW" ]; then
  VGW="$(go env GOPATH | cut -d: -f1)/bin/versitygw"
  if [ ! -x "$VGW" ]; then
    echo "==> go install versitygw@v1.8.0" >&2
    go install github.com/versity/versitygw/cmd/versitygw@v1.8.0
  fi
fi
# toxiproxy: the toxiproxy-server that scripts/test.sh installs if it is
# this version, else its command (called "server") go install'ed into a
# directory of its own, where it shadows nothing in $GOPATH/bin.
TOXI_VERSION=v2.12.0
is_toxi() { go version -m "$1" 2>/dev/null | grep -q "toxiproxy/v2[[:space:]]*$TOXI_VERSION"; }
TOXI=$(command -v toxiproxy-server || true)
if [ -z "$TOXI" ] || ! is_toxi "$TOXI"; then
  TOXI_DIR="$PWD/bench/out/tools/toxiproxy-$TOXI_VERSION"
  TOXI="$TOXI_DIR/server"
  if ! is_toxi "$TOXI"; then
    echo "==> go install toxiproxy@$TOXI_VERSION" >&2
    GOBIN="$TOXI_DIR" go install "github.com/Shopify/toxiproxy/v2/cmd/server@$TOXI_VERSION"
  fi
fi
go build -o "$OUT/bin/reqcount" ./bench/cmd/reqcount
go build -o "$OUT/bin/wabackup-drive-emulator" ./cmd/wabackup-drive-emulator
DATA="bench/out/data-${DB_MB}-${MEDIA_MB}"
bench_data "$DATA" --db-mb "$DB_MB" --media-mb "$MEDIA_MB"

# --- ports ---------------------------------------------------------------------
port_busy() { ! python3 -c 'import socket,sys; s=socket.socket(); s.bind(("127.0.0.1", int(sys.argv[1])))' "$1" 2>/dev/null; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PORT_NAMES=(versitygw reqcount-s3 toxiproxy-api toxiproxy-s3 drive-emulator reqcount-drive toxiproxy-drive)
declare -A PORT
i=0
for n in "${PORT_NAMES[@]}"; do
  if [ -n "$BASE_PORT" ]; then
    p=$((BASE_PORT + i))
    if port_busy "$p"; then echo "port $p (for $n, --base-port $BASE_PORT + $i) is busy on 127.0.0.1: choose another --base-port" >&2; exit 1; fi
  else
    p=$(free_port)
  fi
  PORT[$n]=$p
  i=$((i + 1))
done

# start NAME LOG CMD...: runs CMD in the background, recorded for cleanup.
start() {
  local name=$1 log=$2; shift 2
  "$@" > "$log" 2>&1 &
  PIDS+=($!)
  NAMES+=("$name")
}
# ready NAME URL LOG: waits up to 20 s until URL answers; stops with the log
# if the process ended (a busy port among other reasons) or never answered.
ready() {
  local name=$1 url=$2 log=$3 pid=${PIDS[${#PIDS[@]}-1]}
  for _ in $(seq 400); do
    if curl -s -o /dev/null "$url"; then return 0; fi
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "$name did not start (is its port busy?):" >&2; cat "$log" >&2; exit 1
    fi
    sleep 0.05
  done
  echo "$name did not answer at $url within 20 s:" >&2; cat "$log" >&2; exit 1
}
# listening PORT NAME: the port must not be taken by a process of another
# kind between the check and the start (a race with free_port).
listening() { if ! port_busy "$1"; then echo "$2: nothing listens on 127.0.0.1:$1" >&2; exit 1; fi; }

rm -rf "$OUT/vgw-root" "$OUT/sidecar" "$OUT/data" "$OUT/restore-"* "$OUT/cache"* "$OUT/tmp" "$OUT/config" "$OUT"/trace-*.txt "$OUT"/*.log "$OUT"/req-*.json "$OUT"/emu-*.json "$OUT"/day*.txt "$OUT"/results.md "$OUT"/requests.md "$OUT"/toxi-answer
mkdir -p "$OUT/vgw-root" "$OUT/tmp" "$OUT/cache" "$OUT/cache-drive" "$OUT/config/wabackup"
ROOT="$OUT/vgw-root"

# versitygw, as in bench/s3.sh (posix backend; a sidecar without xattrs).
export AWS_ACCESS_KEY_ID="bench$RANDOM$RANDOM" AWS_SECRET_ACCESS_KEY="secret$RANDOM$RANDOM$RANDOM$RANDOM"
BACKEND=(posix)
if ! python3 -c 'import os,sys; os.setxattr(sys.argv[1], "user.wabackup.probe", b"1"); os.removexattr(sys.argv[1], "user.wabackup.probe")' "$ROOT" 2>/dev/null; then
  mkdir -p "$OUT/sidecar"
  BACKEND+=(--sidecar "$OUT/sidecar")
fi
BACKEND+=("$ROOT")
start versitygw "$OUT/versitygw.log" env ROOT_ACCESS_KEY="$AWS_ACCESS_KEY_ID" ROOT_SECRET_KEY="$AWS_SECRET_ACCESS_KEY" \
  "$VGW" --port "127.0.0.1:${PORT[versitygw]}" --quiet "${BACKEND[@]}"
ready versitygw "http://127.0.0.1:${PORT[versitygw]}/" "$OUT/versitygw.log"
start reqcount-s3 "$OUT/reqcount-s3.log" "$OUT/bin/reqcount" --listen "127.0.0.1:${PORT[reqcount-s3]}" \
  --upstream "http://127.0.0.1:${PORT[versitygw]}" --api s3 --trace "$OUT/trace-s3.txt"
ready reqcount-s3 "http://127.0.0.1:${PORT[reqcount-s3]}/_reqcount" "$OUT/reqcount-s3.log"
if [ "$DRIVE" = 1 ]; then
  EMU_CLIENT=bench-wan.apps.googleusercontent.com EMU_SECRET=bench-wan-secret
  start drive-emulator "$OUT/drive-emulator.log" "$OUT/bin/wabackup-drive-emulator" --listen "127.0.0.1:${PORT[drive-emulator]}" \
    --client-id "$EMU_CLIENT" --client-secret "$EMU_SECRET" --access-token-ttl 48h
  ready drive-emulator "http://127.0.0.1:${PORT[drive-emulator]}/_emu/stats" "$OUT/drive-emulator.log"
  start reqcount-drive "$OUT/reqcount-drive.log" "$OUT/bin/reqcount" --listen "127.0.0.1:${PORT[reqcount-drive]}" \
    --upstream "http://127.0.0.1:${PORT[drive-emulator]}" --api drive --trace "$OUT/trace-drive.txt"
  ready reqcount-drive "http://127.0.0.1:${PORT[reqcount-drive]}/_reqcount" "$OUT/reqcount-drive.log"
fi
start toxiproxy "$OUT/toxiproxy.log" "$TOXI" -host 127.0.0.1 -port "${PORT[toxiproxy-api]}"
TOXI_API="http://127.0.0.1:${PORT[toxiproxy-api]}"
ready toxiproxy "$TOXI_API/version" "$OUT/toxiproxy.log"

# api METHOD PATH [JSON]: one call to toxiproxy's API; stops on an error.
api() {
  local code
  code=$(curl -s -o "$OUT/toxi-answer" -w '%{http_code}' -X "$1" ${3:+-H 'Content-Type: application/json' -d "$3"} "$TOXI_API$2")
  case "$code" in 2??) ;; *) echo "toxiproxy: $1 $2 ${3:-}: HTTP $code: $(cat "$OUT/toxi-answer")" >&2; exit 1 ;; esac
}
# proxy NAME LISTEN-PORT UPSTREAM-PORT
proxy() {
  api POST /proxies "{\"name\":\"$1\",\"listen\":\"127.0.0.1:$2\",\"upstream\":\"127.0.0.1:$3\",\"enabled\":true}"
  listening "$2" "toxiproxy's $1 proxy"
}
proxy s3 "${PORT[toxiproxy-s3]}" "${PORT[reqcount-s3]}"
[ "$DRIVE" = 0 ] || proxy drive "${PORT[toxiproxy-drive]}" "${PORT[reqcount-drive]}"
PROXIES="s3"; [ "$DRIVE" = 0 ] || PROXIES="s3 drive"

# shape on|off: adds or removes the toxics on every proxy: the bandwidth cap
# of each direction, then the latency each way; a zero leaves a toxic out.
# The order matters. toxiproxy chains a connection's toxics through
# channels, and the latency toxic's input holds 1,024 chunks of up to
# 32 KiB: put first, it lets the server run up to 32 MiB ahead of the
# client, far beyond what a real link's TCP window holds (30 ms at
# 100 Mbit/s is 375 KB), and the tail of every open-ended range the client
# stops reading is sent by the server anyway. The bandwidth toxic first
# (unbuffered) takes from the server only at the link's rate; the latency
# toxic after it then delays each chunk by what is left of the latency
# after the chunk's wait for bandwidth (it counts from when the chunk was
# read), so a bulk transfer's last byte lands about size/rate after the
# request, not latency + size/rate: at most one latency per transfer lost.
SHAPED=0
shape() {
  local p
  [ "$1" = on ] && [ "$SHAPED" = 1 ] && return 0
  [ "$1" = off ] && [ "$SHAPED" = 0 ] && return 0
  for p in $PROXIES; do
    if [ "$1" = on ]; then
      [ "$UP_KBS" = 0 ] || api POST "/proxies/$p/toxics" "{\"name\":\"bw_up\",\"type\":\"bandwidth\",\"stream\":\"upstream\",\"attributes\":{\"rate\":$UP_KBS}}"
      [ "$DOWN_KBS" = 0 ] || api POST "/proxies/$p/toxics" "{\"name\":\"bw_down\",\"type\":\"bandwidth\",\"stream\":\"downstream\",\"attributes\":{\"rate\":$DOWN_KBS}}"
      if [ "$LAT_MS" != 0 ] || [ "$JITTER_MS" != 0 ]; then
        api POST "/proxies/$p/toxics" "{\"name\":\"lat_up\",\"type\":\"latency\",\"stream\":\"upstream\",\"attributes\":{\"latency\":$LAT_MS,\"jitter\":$JITTER_MS}}"
        api POST "/proxies/$p/toxics" "{\"name\":\"lat_down\",\"type\":\"latency\",\"stream\":\"downstream\",\"attributes\":{\"latency\":$LAT_MS,\"jitter\":$JITTER_MS}}"
      fi
    else
      for t in lat_up lat_down bw_up bw_down; do
        curl -s -o /dev/null -X DELETE "$TOXI_API/proxies/$p/toxics/$t" || true
      done
    fi
  done
  if [ "$1" = on ]; then SHAPED=1; else SHAPED=0; fi
}

echo "versitygw $("$VGW" --version 2>/dev/null | awk '/Version/ {print $3; exit}'), toxiproxy $TOXI_VERSION, restic $(restic version | awk '{print $2}'); ports: $(for n in "${PORT_NAMES[@]}"; do printf '%s=%s ' "$n" "${PORT[$n]}"; done)" >&2

# --- repositories ---------------------------------------------------------------
export RESTIC_PASSWORD=bench-password
export TMPDIR="$PWD/$OUT/tmp" XDG_CACHE_HOME="$PWD/$OUT/cache" XDG_CONFIG_HOME="$PWD/$OUT/config"
S3EP="127.0.0.1:${PORT[toxiproxy-s3]}"
WREPO="s3:http://$S3EP/wabackup"
RREPO="s3:http://$S3EP/restic"
COPY="$PWD/$OUT/data"   # absolute: restic records absolute paths
mkdir -p "$COPY" && cp -a "$DATA/." "$COPY/" # (the contents: $DATA may be a symlink)
"$W" init --repo "$WREPO" --s3-create-bucket --key-out "$OUT/key.txt" --force -q
restic init -r "$RREPO" -q
if [ "$DRIVE" = 1 ]; then
  DEP="http://127.0.0.1:${PORT[toxiproxy-drive]}"
  export WABACKUP_GDRIVE_ENDPOINT="$DEP"
  DREPO="gdrive://appdata/wan"
  # The login: a refresh and an access token minted by the emulator, saved
  # where `wabackup login gdrive` saves them, with the token URL through the
  # shaped proxy.
  curl -sf "http://127.0.0.1:${PORT[drive-emulator]}/_emu/mint" > "$OUT/tmp/mint.json"
  python3 - "$OUT/tmp/mint.json" "$XDG_CONFIG_HOME/wabackup/gdrive-token.json" "$DEP" "$EMU_CLIENT" "$EMU_SECRET" <<'EOF'
import json, os, sys
m = json.load(open(sys.argv[1]))
dep = sys.argv[3]
tok = {"client_id": sys.argv[4], "client_secret": sys.argv[5],
       "auth_url": dep + "/auth", "token_url": dep + "/token", "revoke_url": dep + "/revoke",
       "scopes": ["https://www.googleapis.com/auth/drive.appdata", "https://www.googleapis.com/auth/drive.file"],
       "token": {"access_token": m["access_token"], "token_type": "Bearer", "refresh_token": m["refresh_token"]}}
fd = os.open(sys.argv[2], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
os.write(fd, json.dumps(tok).encode())
os.close(fd)
EOF
  "$W" init --repo "$DREPO" --key-out "$OUT/key-drive.txt" --force -q
fi

# --- the runs -------------------------------------------------------------------
# counts NAME PROXY: resets the counter behind PROXY before a run ...
reset_counts() {
  curl -sf -X POST "http://127.0.0.1:${PORT[reqcount-$1]}/_reqcount/reset" > /dev/null
  curl -sf -X POST "http://127.0.0.1:${PORT[reqcount-$1]}/_reqcount/mark?name=$2" > /dev/null
}
# ... and saves what it counted (and the emulator's call counts) after it.
save_counts() {
  curl -sf "http://127.0.0.1:${PORT[reqcount-$1]}/_reqcount" > "$OUT/req-$2.json"
  if [ "$1" = drive ]; then curl -sf "http://127.0.0.1:${PORT[drive-emulator]}/_emu/stats" > "$OUT/emu-$2.json"; fi
}
# objects BUCKET PREFIX: how many objects the bucket holds below PREFIX/.
objects() { if [ -d "$ROOT/$1/$2" ]; then find "$ROOT/$1/$2" -type f | wc -l; else echo 0; fi; }
emu_files() { curl -sf "http://127.0.0.1:${PORT[drive-emulator]}/_emu/stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["files"])'; }

# run TOOL NAME: one measured run of TOOL (wabackup, restic, drive) named
# TOOL-NAME: a backup of the private copy, or with NAME=restore a restore of
# msgstore.db alone with an empty cache into an empty directory.
run() {
  local tool=$1 name=$2 ctr=s3 packs0 cache
  [ "$tool" = drive ] && ctr=drive
  case "$tool" in
    wabackup) packs0=$(objects wabackup data) ;;
    restic) packs0=$(objects restic data) ;;
    drive) packs0=$(emu_files) ;;
  esac
  [ "$tool" != drive ] || curl -sf "http://127.0.0.1:${PORT[drive-emulator]}/_emu/stats" > "$OUT/emu-$tool-$name-before.json"
  reset_counts "$ctr" "$tool-$name"
  if [ "$name" = restore ]; then
    cache="$PWD/$OUT/cache-cold-$tool"
    rm -rf "$cache" "$OUT/restore-$tool"; mkdir -p "$cache"
    case "$tool" in
      wabackup) measure "$tool-$name" env XDG_CACHE_HOME="$cache" "$W" restore latest --repo "$WREPO" --key-file "$OUT/key.txt" --include msgstore.db --target "$OUT/restore-$tool" --json ;;
      restic) measure "$tool-$name" env XDG_CACHE_HOME="$cache" restic -r "$RREPO" restore latest --include "$COPY/msgstore.db" --target "$OUT/restore-$tool" -q ;;
      drive) measure "$tool-$name" env XDG_CACHE_HOME="$cache" "$W" restore latest --repo "$DREPO" --key-file "$OUT/key-drive.txt" --include msgstore.db --target "$OUT/restore-$tool" --json ;;
    esac
  else
    case "$tool" in
      wabackup) measure "$tool-$name" "$W" backup --repo "$WREPO" --key-file "$OUT/key.txt" --db "$COPY/msgstore.db" --media "$COPY/Media" --json ;;
      restic) measure "$tool-$name" restic -r "$RREPO" backup -q "$COPY/msgstore.db" "$COPY/Media" ;;
      drive) measure "$tool-$name" env XDG_CACHE_HOME="$PWD/$OUT/cache-drive" "$W" backup --repo "$DREPO" --key-file "$OUT/key-drive.txt" --db "$COPY/msgstore.db" --media "$COPY/Media" --json ;;
    esac
  fi
  save_counts "$ctr" "$tool-$name"
  case "$tool" in
    wabackup) note "$tool-$name-newpacks" $(( $(objects wabackup data) - packs0 )) ;;
    restic) note "$tool-$name-newpacks" $(( $(objects restic data) - packs0 )) ;;
    drive) note "$tool-$name-newpacks" $(( $(emu_files) - packs0 )) ;;
  esac
  echo "  $tool-$name: $(get "$tool-$name" 2) s, $(req "$tool-$name" total) requests" >&2
}
# req RUN FIELD: a field of the proxy's count of RUN ("–" if none).
req() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get(sys.argv[2], "–"))' "$OUT/req-$1.json" "$2" 2>/dev/null || echo "–"; }
# kinds RUN: the count by kind, "list/get/head/put/delete".
kinds() { python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print("/".join(str(d[k]) for k in ("list","get","head","put","delete")) + (" +%d auth" % d["auth"] if d.get("auth") else ""))' "$OUT/req-$1.json"; }
# self RUN: the request count (and bytes down) wabackup's --json summary
# reports ("" if none).
self() {
  python3 - "$BENCH_OUT/$1.log" <<'EOF' 2>/dev/null || true
import json, sys
total = ""
for line in open(sys.argv[1]):
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("message_type") == "summary" and isinstance(m.get("requests"), dict):
        r = m["requests"]
        total = str(r.get("total", sum(v for v in r.values() if isinstance(v, int))))
        down = m.get("bytes_down", r.get("bytes_down"))
        if isinstance(down, int):
            total += ", %.1f MiB down" % (down / 1048576)
print(total)
EOF
}
# emucalls RUN: the emulator's API calls during RUN (sum over its ops).
emucalls() {
  python3 -c 'import json,sys
a = json.load(open(sys.argv[1]))["calls"]
b = json.load(open(sys.argv[2]))["calls"]
print(sum(b.values()) - sum(a.values()))' "$OUT/emu-$1-before.json" "$OUT/emu-$1.json"
}

TOOLS="wabackup restic"; [ "$DRIVE" = 0 ] || TOOLS="wabackup restic drive"
echo "==> first backups ($([ "$SHAPE_FIRST" = 1 ] && echo shaped || echo unshaped))" >&2
[ "$SHAPE_FIRST" = 1 ] && shape on
for t in $TOOLS; do run "$t" first; done
shape on
for k in 1 2; do
  "$GEN" --out "$COPY" --seed 1 --day "$k" > "$OUT/day$k.txt"
  echo "==> night $k: $(sed "s|^$COPY: ||" "$OUT/day$k.txt")" >&2
  for t in $TOOLS; do run "$t" "night$k"; done
done
echo "==> nothing changed" >&2
for t in $TOOLS; do run "$t" nochange; done
echo "==> restore of msgstore.db, empty cache" >&2
for t in $TOOLS; do run "$t" restore; done
shape off

# The day ended with a checkpoint: msgstore.db alone is the state.
cmp "$COPY/msgstore.db" "$OUT/restore-wabackup/msgstore.db" || { echo "FAIL: wabackup's restored msgstore.db differs" >&2; exit 1; }
cmp "$COPY/msgstore.db" "$OUT/restore-restic$COPY/msgstore.db" || { echo "FAIL: restic's restored msgstore.db differs" >&2; exit 1; }
[ "$DRIVE" = 0 ] || cmp "$COPY/msgstore.db" "$OUT/restore-drive/msgstore.db" || { echo "FAIL: wabackup's msgstore.db restored from Drive differs" >&2; exit 1; }

# --- where the requests went: by run, kind and key prefix (from the traces) ---
# (Drive: a "list" with q=name… is the lookup of one file's id by its name.)
{
  echo "| run | kind | key prefix | requests | MiB up | MiB sent by the server |"
  echo "|---|---|---|---|---|---|"
  for f in "$OUT/trace-s3.txt" "$OUT/trace-drive.txt"; do
    [ -f "$f" ] || continue
    awk -v drive="$([ "$f" = "$OUT/trace-drive.txt" ] && echo 1 || echo 0)" '
      BEGIN { run = "(init)" }
      /^# reset/ { next }
      /^# / { run = $2; next }
      {
        split($4, p, "[/?]")
        if (drive) pre = ($2 == "list" ? ($4 ~ /[?&]q=name/ ? "(file id by name)" : "(folder listing)") : "")
        else pre = (p[3] == "" ? "(bucket)" : p[3] "/")
        k = run SUBSEP $2 SUBSEP pre
        if (!(k in n)) order[++m] = k
        n[k]++; up[k] += $7; down[k] += $8
      }
      END {
        for (i = 1; i <= m; i++) {
          split(order[i], f, SUBSEP)
          printf "| %s | %s | %s | %d | %.1f | %.1f |\n", f[1], f[2], f[3], n[order[i]], up[order[i]] / 1048576, down[order[i]] / 1048576
        }
      }' "$f"
  done
} > "$OUT/requests.md"

# --- the table ------------------------------------------------------------------
row() { echo "| $1 | $2 | $3 | $(ratio "$2" "$3") | ${4:-} |"; }
reqcell() { local s; s=$(self "$1"); echo "$(req "$1" total) ($(kinds "$1"))${s:+; self-reported $s}"; }
RV=$(restic version | awk '{print $2}')
{
  echo "| measure (S3: versitygw behind toxiproxy) | wabackup | restic $RV | wabackup / restic | target (issue 24) |"
  echo "|---|---|---|---|---|"
  row "first backup time (s), $([ "$SHAPE_FIRST" = 1 ] && echo shaped || echo "link not shaped")" "$(get wabackup-first 2)" "$(get restic-first 2)"
  wt=0 rt=0
  for k in 1 2; do
    w=$(get "wabackup-night$k" 2); r=$(get "restic-night$k" 2)
    row "night $k backup time (s)" "$w" "$r"
    wt=$(add "$wt" "$w"); rt=$(add "$rt" "$r")
  done
  row "**nights 1+2 time (s)**" "$wt" "$rt" "$(target "$(ratio "$wt" "$rt")" 0.4 "≤ 0.40")"
  row "no-change run time (s)" "$(get wabackup-nochange 2)" "$(get restic-nochange 2)"
  w=$(get wabackup-restore 2); r=$(get restic-restore 2)
  row "**msgstore.db restore, empty cache, time (s)**" "$w" "$r" "$(target "$(ratio "$w" "$r")" 0.8 "≤ 0.80")"
  echo "| requests (list/get/head/put/delete) | | | | |"
  row "first backup requests" "$(reqcell wabackup-first)" "$(reqcell restic-first)"
  for k in 1 2; do
    np=$(get "wabackup-night$k-newpacks" 2)
    lim=$((30 + np))
    echo "| **night $k requests** | $(reqcell "wabackup-night$k") | $(reqcell "restic-night$k") | $(ratio "$(req "wabackup-night$k" total)" "$(req "restic-night$k" total)") | $(target "$(req "wabackup-night$k" total)" "$lim" "≤ 30 + $np new packs = $lim") |"
  done
  echo "| **no-change run requests** | $(reqcell wabackup-nochange) | $(reqcell restic-nochange) | $(ratio "$(req wabackup-nochange total)" "$(req restic-nochange total)") | $(target "$(req wabackup-nochange total)" 15 "≤ 15") |"
  r=$(req restic-restore total); lim=$(awk -v r="$r" 'BEGIN { printf "%.1f", 1.2 * r + 5 }')
  echo "| **msgstore.db restore requests, empty cache** | $(reqcell wabackup-restore) | $(reqcell restic-restore) | $(ratio "$(req wabackup-restore total)" "$r") | $(target "$(req wabackup-restore total)" "$lim" "≤ 1.2 × $r + 5 = $lim") |"
  for k in 1 2; do
    echo "| night $k MiB up / down | $(mib "$(req "wabackup-night$k" bytes_up)") / $(mib "$(req "wabackup-night$k" bytes_down)") | $(mib "$(req "restic-night$k" bytes_up)") / $(mib "$(req "restic-night$k" bytes_down)") | | |"
  done
  echo "| restore MiB sent by the server (more than the client reads: toxiproxy buffers up to 32 MiB of each response) | $(mib "$(req wabackup-restore bytes_down)") | $(mib "$(req restic-restore bytes_down)") | $(ratio "$(req wabackup-restore bytes_down)" "$(req restic-restore bytes_down)") | |"
  echo "| connections opened: nights 1+2, restore | $(add "$(req wabackup-night1 connections)" "$(req wabackup-night2 connections)"), $(req wabackup-restore connections) | $(add "$(req restic-night1 connections)" "$(req restic-night2 connections)"), $(req restic-restore connections) | | |"
  if [ "$DRIVE" = 1 ]; then
    echo
    echo "| measure (Google Drive emulator behind toxiproxy; restic has no Drive backend) | wabackup | API calls (emulator) | requests (proxy: list/get/head/put/delete) | target (issue 24) |"
    echo "|---|---|---|---|---|"
    for n in first night1 night2 nochange restore; do
      calls=$(emucalls "drive-$n")
      case "$n" in
        first) label="first backup$([ "$SHAPE_FIRST" = 1 ] && echo ", shaped" || echo ", link not shaped")"; tg="" ;;
        night*) nf=$(get "drive-$n-newpacks" 2); label="**night ${n#night}**"; tg=$(target "$calls" $((30 + nf)) "≤ 30 + $nf new files = $((30 + nf))") ;;
        nochange) label="no-change run"; tg="" ;;
        restore) label="msgstore.db restore, empty cache"; tg="" ;;
      esac
      echo "| $label | $(get "drive-$n" 2) s | $calls | $(reqcell "drive-$n") | $tg |"
    done
    echo "| nights 1+2 time (s) | $(add "$(get drive-night1 2)" "$(get drive-night2 2)") | | | |"
  fi
} | tee "$OUT/results.md"
echo
echo "link: $LAT_MS ms each way$([ "$JITTER_MS" = 0 ] || echo " ± $JITTER_MS ms"), $UP_MBIT Mbit/s up and $DOWN_MBIT Mbit/s down per connection (toxiproxy $TOXI_VERSION); dataset: $DB_MB MB database + $MEDIA_MB MB media ($(du -sh "$DATA/" | cut -f1)); restored msgstore.db identical; $(nproc) cores; load average before: $LOAD0; $(date -u +%F)"
for k in 1 2; do sed "s|^$COPY: |night $k: |" "$OUT/day$k.txt"; done
echo "requests by run, kind and key prefix: $OUT/requests.md; one line per request: $OUT/trace-*.txt"
