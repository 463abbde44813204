#!/usr/bin/env bash
# The main job: build wabackup, back up the bundled sample chat data
# (testdata/sample) to a local repository, restore it elsewhere and check
# that the restore is byte-identical. Needs only Go.
#
#   scripts/demo.sh [WORKDIR]     (default: a fresh temporary directory)
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-$(mktemp -d -t wabackup-demo.XXXXXX)}
mkdir -p "$WORK"
BIN="$WORK/wabackup"
echo "==> building wabackup"
go build -o "$BIN" ./cmd/wabackup
SAMPLE=testdata/sample
REPO="$WORK/repo"
export XDG_CONFIG_HOME="$WORK/config"   # keep the demo away from your own settings

echo "==> wabackup init --repo $REPO"
"$BIN" init --repo "$REPO" --key-out "$WORK/key.txt"

echo "==> wabackup backup (the two databases + media)"
"$BIN" backup --repo "$REPO" --key-file "$WORK/key.txt" --db "$SAMPLE/msgstore.db" --db "$SAMPLE/wa.db" --media "$SAMPLE/Media"
echo "==> again: unchanged files are not read"
"$BIN" backup --repo "$REPO" --key-file "$WORK/key.txt" --db "$SAMPLE/msgstore.db" --db "$SAMPLE/wa.db" --media "$SAMPLE/Media"
"$BIN" snapshots --repo "$REPO" --key-file "$WORK/key.txt"

echo "==> wabackup check --read-data"
"$BIN" check --read-data --repo "$REPO" --key-file "$WORK/key.txt"

echo "==> wabackup restore latest (as on a new machine: only the repository and the key)"
"$BIN" restore latest --repo "$REPO" --key-file "$WORK/key.txt" --target "$WORK/restored"

echo "==> comparing"
diff -r "$SAMPLE/Media" "$WORK/restored/Media"
cmp "$SAMPLE/msgstore.db" "$WORK/restored/msgstore.db"
cmp "$SAMPLE/wa.db" "$WORK/restored/wa.db"
echo "OK: media and databases restored byte-identically into $WORK/restored"
