# shellcheck shell=bash disable=SC2034 # (variables for the scripts that source this)
# Shared by the bench scripts (sourced, not run): arguments, the generated
# datasets, the timed runs and the table helpers.
#
# After bench_setup OUTDIR "$@": DB_MB, MEDIA_MB, KEEP, RUNS, DATA, DB,
# MEDIA are set, the dataset exists, wabackup is built to $W and the dataset
# generator to $GEN, and measure/note/get/cpu/mb/ratio write and read
# OUTDIR/times. A measurement taken several times (--runs) reads as its
# median. Scripts with other options (bench/many.sh) parse their own and
# call bench_tools and bench_data themselves.

bench_setup() {
  BENCH_OUT=$1; shift
  DB_MB=200 MEDIA_MB=800 KEEP=0 RUNS=1
  while [ $# -gt 0 ]; do
    case "$1" in
      --db-mb) DB_MB=$2; shift 2 ;;
      --media-mb) MEDIA_MB=$2; shift 2 ;;
      --keep) KEEP=1; shift ;;
      --runs) RUNS=$2; shift 2 ;;
      *) echo "usage: $0 [--db-mb N] [--media-mb N] [--runs N] [--keep]" >&2; exit 2 ;;
    esac
  done
  bench_tools
  # The dataset is shared by the scripts.
  DATA="bench/out/data-${DB_MB}-${MEDIA_MB}"
  bench_data "$DATA" --db-mb "$DB_MB" --media-mb "$MEDIA_MB"
  DB="$DATA/msgstore.db"
  MEDIA="$DATA/Media"
  return 0
}

# bench_tools: checks for restic and GNU time, builds wabackup to $W and the
# dataset generator to $GEN (in $BENCH_OUT/bin), and empties
# $BENCH_OUT/times.
bench_tools() {
  # The current restic, built from its module (Debian's is 0.14): the
  # comparison is with what users run today.
  export PATH="$(go env GOPATH)/bin:$PATH"
  if ! restic version 2>/dev/null | grep -q ' 0\.19\.1 '; then
    echo "==> go install restic@v0.19.1" >&2
    go install github.com/restic/restic/cmd/restic@v0.19.1
  fi
  if [ ! -x /usr/bin/time ]; then
    echo "==> apt-get install time" >&2
    apt-get install -y -qq time >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq time >/dev/null; }
  fi
  mkdir -p "$BENCH_OUT/bin"
  W="$BENCH_OUT/bin/wabackup"
  GEN="$BENCH_OUT/bin/gen"
  # As released: pure Go (no cgo, so no libc thread stacks in the RSS).
  CGO_ENABLED=0 go build -o "$W" ./cmd/wabackup
  go build -o "$GEN" ./testdata/gen
  go test -c -o "$BENCH_OUT/bin/gather.test" ./pkg/gather
  : > "$BENCH_OUT/times"
  # BENCH_NICE=-10 runs both tools at a higher priority than anything else
  # on the machine (root only), for a fairer figure on a shared machine.
  NICE=()
  [ -n "${BENCH_NICE:-}" ] && NICE=(nice -n "$BENCH_NICE")
  return 0
}

# bench_data DIR GEN-OPTIONS...: generates a dataset into DIR (seed 1)
# unless DIR already holds one made with the same options by the same
# generator (the hash of its sources, kept in DIR/.done).
bench_data() {
  local dir=$1; shift
  local stamp
  stamp="$(find testdata/gen -name '*.go' ! -name '*_test.go' | sort | xargs cat | sha256sum | cut -c1-16) $*"
  if [ ! -f "$dir/.done" ] || [ "$(cat "$dir/.done")" != "$stamp" ]; then
    rm -rf "$dir"
    "$GEN" --out "$dir" --seed 1 "$@"
    echo "$stamp" > "$dir/.done"
  fi
}

# measure NAME CMD...: runs CMD after a sync and appends
# "NAME seconds maxrss_kb user_s sys_s" to $BENCH_OUT/times.
measure() {
  local name=$1; shift
  sync
  "${NICE[@]}" /usr/bin/time -f "$name %e %M %U %S" -a -o "$BENCH_OUT/times" "$@" > "$BENCH_OUT/$name.log" 2>&1 || { echo "$name failed:"; cat "$BENCH_OUT/$name.log"; exit 1; }
}
# note NAME VALUE: records a figure other than a run's (get NAME 2 reads it).
note() { echo "$1 $2" >> "$BENCH_OUT/times"; }

# median: the median of the numbers on standard input, one a line.
median() { sort -g | awk '{v[NR]=$1} END {if (NR==0) exit; if (NR%2) print v[(NR+1)/2]; else printf "%.2f\n", (v[NR/2]+v[NR/2+1])/2}'; }
# get NAME FIELD: one field of a measurement (2 seconds, 3 RSS in KiB),
# the median if it was taken several times.
get() { awk -v n="$1" '$1==n {print $'"$2"'}' "$BENCH_OUT/times" | median; }
# span NAME FIELD: the lowest and highest value, "a–b" (or one value).
span() { awk -v n="$1" '$1==n {print $'"$2"'}' "$BENCH_OUT/times" | sort -g | awk 'NR==1 {lo=$1} {hi=$1} END {if (lo==hi) print lo; else print lo "–" hi}'; }
# cpu NAME: user + system seconds (median).
cpu() { awk -v n="$1" '$1==n {printf "%.2f\n", $4+$5}' "$BENCH_OUT/times" | median; }
# mb KIB: kibibytes as whole megabytes (as /usr/bin/time's RSS is read).
mb() { awk -v k="$1" 'BEGIN{printf "%.0f", k/1024}'; }
# mib BYTES: bytes as MiB, one decimal.
mib() { awk -v b="$1" 'BEGIN{printf "%.1f", b/1048576}'; }
# size PATH: bytes stored below PATH.
size() { du -sb "$1" | cut -f1; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b == 0) print "–"; else printf "%.2f", a/b }'; }
# add A B...: the sum of numbers; sub A B: A - B.
add() { awk 'BEGIN { s = 0; for (i = 1; i < ARGC; i++) s += ARGV[i]; printf "%.15g\n", s }' "$@"; }
sub() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.15g\n", a - b }'; }
# target VALUE LIMIT TEXT: "TEXT ✓" if VALUE ≤ LIMIT, else "TEXT ✗".
target() { awk -v v="$1" -v l="$2" -v t="$3" 'BEGIN { if (v == "–" || v == "") print t " ?"; else print t (v + 0 <= l + 0 ? " ✓" : " ✗") }'; }
