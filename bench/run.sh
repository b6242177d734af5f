#!/usr/bin/env bash
# bench/run.sh — builds erlangen and the raw-thread floor, runs every bench
# shape in erlangen, BEAM (when `erl` is installed) and the floor, and prints
# one Markdown table with medians, ratios and targets. Not part of the tests.
#
# Environment: BENCH_REPS (default 5) repetitions per shape;
#              BENCH_OUT (default build/bench) where the raw results go;
#              BENCH_TIMEOUT (default 120) seconds allowed per erlangen shape;
#              BENCH_NO_BEAM=1 skips BEAM as if `erl` were missing;
#              BENCH_ERLANGEN the executable (default build/erlangen, else
#              build/lua/erlangen).
# Takes about a minute on the 2-core reference machine.
set -u
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

reps=${BENCH_REPS:-5}
out=${BENCH_OUT:-build/bench}
limit=${BENCH_TIMEOUT:-120}

# Counts per repetition, the same for all three implementations.
PINGPONG=20000     # round trips
ONEWAY=200000      # messages
RING_SIZE=1000     # processes in the ring
RING_HOPS=20000    # hops (rounded up to whole laps)
SPAWNS=5000        # spawn + exit cycles
PROCS=20000        # idle processes to reach
CODEC=100000       # small-record round trips (the 1 KiB table does a tenth)

if ! bash tools/setup.sh build; then
  echo "bench: the build failed; erlangen columns will be empty" >&2
fi
exe=${BENCH_ERLANGEN:-build/erlangen}
[ -x "$exe" ] || [ -n "${BENCH_ERLANGEN:-}" ] || exe=build/lua/erlangen
mkdir -p "$out"
: >"$out/erlangen.tsv"
: >"$out/beam.tsv"
: >"$out/floor.tsv"

load0=$(cut -d' ' -f1-3 /proc/loadavg)
have_floor=0
if gcc -O2 -Wall -pthread -o "$out/floor" bench/floor.c; then
  have_floor=1
else
  echo "bench: could not build bench/floor.c; floor columns will be empty" >&2
fi
have_beam=0
if [ -z "${BENCH_NO_BEAM:-}" ] && command -v erl >/dev/null && command -v escript >/dev/null; then
  have_beam=1
else
  echo "bench: erl not installed; BEAM columns will be empty" >&2
fi

# One shape at a time, the floor, BEAM and erlangen back to back, so that
# drift in the load of a shared machine touches all three alike.
# bench SHAPE COUNT "ROWS IT PRINTS" [RING_SIZE]
bench() {
  local shape=$1 count=$2 rows=$3 rc=0
  shift 3
  echo "== $shape" >&2
  case $shape in
    pingpong|ring|spawn)
      [ "$have_floor" = 1 ] &&
        "$out/floor" "$shape" "$count" "$reps" "$@" | tee -a "$out/floor.tsv" >&2 ;;
  esac
  [ "$have_beam" = 1 ] &&
    timeout "$limit" escript bench/beam.escript "$shape" "$count" "$reps" "$@" |
      tee -a "$out/beam.tsv" >&2
  : >"$out/$shape.tsv"
  if [ -x "$exe" ]; then
    timeout "$limit" "$exe" bench/erlangen.lua "$shape" "$count" "$reps" "$@" \
      >"$out/$shape.tsv" || rc=$?
  else
    rc=127
  fi
  tee -a "$out/erlangen.tsv" <"$out/$shape.tsv" >&2
  if [ "$rc" -ne 0 ]; then
    local why="exit $rc"
    [ "$rc" -eq 124 ] && why="timeout ${limit}s"
    [ "$rc" -eq 127 ] && why="not built"
    echo "bench: erlangen shape $shape failed ($why)" >&2
    for r in $rows; do
      grep -q "^$r	" "$out/$shape.tsv" ||
        printf '%s\tFAIL (%s)\t\t\n' "$r" "$why" >>"$out/erlangen.tsv"
    done
  fi
}
bench pingpong "$PINGPONG" pingpong
bench oneway "$ONEWAY" oneway
bench ring "$RING_HOPS" ring "$RING_SIZE"
bench spawn "$SPAWNS" spawn
bench procs "$PROCS" "procs procs_rss"
bench codec "$CODEC" "codec_small codec_1k"

echo >&2
{
  echo "erlangen bench, $(date -u +%Y-%m-%d), $(nproc) cores, $(uname -sr);" \
       "$reps runs per shape, medians;"
  echo "load average $load0 at the start, $(cut -d' ' -f1-3 /proc/loadavg) at the end"
  if [ "$have_beam" = 1 ]; then
    echo "BEAM: OTP $(erl -noshell -eval 'io:format("~s", [erlang:system_info(otp_release)]), halt().')," \
         "$(erl -noshell -eval 'io:format("~b", [erlang:system_info(schedulers_online)]), halt().') schedulers"
  fi
  echo
  lua5.4 bench/report.lua "$out/erlangen.tsv" "$out/beam.tsv" "$out/floor.tsv"
} | tee "$out/results.md"
