# Shared by bench/run.sh and bench/s3.sh (sourced, not run): arguments,
# the generated dataset, the timed runs and the table helpers.
#
# After bench_setup OUTDIR "$@": DB_MB, MEDIA_MB, KEEP, RUNS, DATA, DB,
# MEDIA are set, the dataset exists, wabackup is built to $W, and
# measure/get/cpu/mb/ratio write and read OUTDIR/times. A measurement
# taken several times (--runs) reads as its median.

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
  command -v restic >/dev/null || { echo "restic missing: apt-get install -y restic" >&2; exit 1; }
  [ -x /usr/bin/time ] || { echo "GNU time missing: apt-get install -y time" >&2; exit 1; }
  mkdir -p "$BENCH_OUT/bin"
  W="$BENCH_OUT/bin/wabackup"
  go build -o "$W" ./cmd/wabackup
  # The dataset is shared by both scripts.
  DATA="bench/out/data-${DB_MB}-${MEDIA_MB}"
  if [ ! -f "$DATA/.done" ]; then
    rm -rf "$DATA"
    go run ./testdata/gen --out "$DATA" --db-mb "$DB_MB" --media-mb "$MEDIA_MB" --seed 1
    touch "$DATA/.done"
  fi
  DB="$DATA/msgstore.db"
  MEDIA="$DATA/Media"
  : > "$BENCH_OUT/times"
  # BENCH_NICE=-10 runs both tools at a higher priority than anything else
  # on the machine (root only), for a fairer figure on a shared machine.
  NICE=()
  [ -n "${BENCH_NICE:-}" ] && NICE=(nice -n "$BENCH_NICE")
  return 0
}

# measure NAME CMD...: runs CMD after a sync and appends
# "NAME seconds maxrss_kb user_s sys_s" to $BENCH_OUT/times.
measure() {
  local name=$1; shift
  sync
  "${NICE[@]}" /usr/bin/time -f "$name %e %M %U %S" -a -o "$BENCH_OUT/times" "$@" > "$BENCH_OUT/$name.log" 2>&1 || { echo "$name failed:"; cat "$BENCH_OUT/$name.log"; exit 1; }
}

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
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a/b }'; }
