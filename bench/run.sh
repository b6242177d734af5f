#!/usr/bin/env bash
# bench/run.sh [SECTION...] — builds erlangen and the raw-thread floor, runs
# every bench shape in erlangen, BEAM (when `erl` is installed) and the
# floor, and prints Markdown tables with medians, ratios and targets. Not
# part of the tests.
#
# Sections: `local` (one node: ping-pong, one-way, ring, spawn, processes,
# codec; table in build/bench/results.md) and `dist` (two nodes on loopback:
# remote ping-pong and one-way; table in build/bench/dist.md). No argument
# runs both; `bash bench/run.sh dist` runs only the distribution bench.
#
# Environment: BENCH_REPS (default 5) repetitions per shape;
#              BENCH_OUT (default build/bench) where the raw results go;
#              BENCH_TIMEOUT (default 120) seconds allowed per erlangen shape;
#              BENCH_NO_BEAM=1 skips BEAM as if `erl` were missing;
#              BENCH_ERLANGEN the executable (default build/erlangen, else
#              build/lua/erlangen).
# Takes about a minute (local) plus half a minute (dist) on the 2-core
# reference machine.
set -u
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

run_local=0
run_dist=0
[ $# -eq 0 ] && set -- local dist
for s in "$@"; do
  case $s in
    local) run_local=1 ;;
    dist) run_dist=1 ;;
    *) echo "usage: bash bench/run.sh [local] [dist]" >&2; exit 2 ;;
  esac
done

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
DIST_PINGPONG=5000 # remote round trips
DIST_ONEWAY=200000 # messages to another node

# The build lock shared with everyone building in this tree.
locked() { if command -v flock >/dev/null; then flock /tmp/erlangen-build.lock "$@"; else "$@"; fi; }
if ! locked bash tools/setup.sh build; then
  echo "bench: the build failed; erlangen columns will be empty" >&2
fi
exe=${BENCH_ERLANGEN:-build/erlangen}
[ -x "$exe" ] || [ -n "${BENCH_ERLANGEN:-}" ] || exe=build/lua/erlangen
mkdir -p "$out"

have_beam=0
if [ -z "${BENCH_NO_BEAM:-}" ] && command -v erl >/dev/null && command -v escript >/dev/null; then
  have_beam=1
else
  echo "bench: erl not installed; BEAM columns will be empty" >&2
fi

# header LOAD_AT_START: the lines above each table
header() {
  echo "erlangen bench, $(date -u +%Y-%m-%d), $(nproc) cores, $(uname -sr);" \
       "$reps runs per shape, medians;"
  echo "load average $1 at the start, $(cut -d' ' -f1-3 /proc/loadavg) at the end"
  if [ "$have_beam" = 1 ]; then
    echo "BEAM: OTP $(erl -noshell -eval 'io:format("~s", [erlang:system_info(otp_release)]), halt().')," \
         "$(erl -noshell -eval 'io:format("~b", [erlang:system_info(schedulers_online)]), halt().') schedulers"
  else
    echo "BEAM: not installed"
  fi
}

# ---- local: one node (bench/erlangen.lua, bench/beam.escript, bench/floor.c) ----
if [ "$run_local" = 1 ]; then
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
  header "$load0"
  echo
  lua5.4 bench/report.lua "$out/erlangen.tsv" "$out/beam.tsv" "$out/floor.tsv"
} | tee "$out/results.md"
fi

# ---- dist: two nodes on loopback (bench/dist.lua, bench/dist_beam.erl) ----
# Each shape starts its own pair of nodes: BEAM's pair, then erlangen's, back
# to back. Rows: dist_pingpong (µs per round trip), dist_oneway (msg/s).
if [ "$run_dist" = 1 ]; then
: >"$out/dist_erlangen.tsv"
: >"$out/dist_beam.tsv"
dload0=$(cut -d' ' -f1-3 /proc/loadavg)
dist_bench() {
  local shape=$1 count=$2 rc=0
  echo "== dist $shape" >&2
  if [ "$have_beam" = 1 ]; then
    timeout "$limit" escript bench/dist_beam.erl "$shape" "$count" "$reps" >"$out/dist_$shape.beam" ||
      echo "bench: BEAM dist shape $shape failed (exit $?)" >&2
    tee -a "$out/dist_beam.tsv" <"$out/dist_$shape.beam" >&2
  fi
  : >"$out/dist_$shape.tsv"
  if [ -x "$exe" ]; then
    timeout "$limit" "$exe" bench/dist.lua "$shape" "$count" "$reps" >"$out/dist_$shape.tsv" || rc=$?
  else
    rc=127
  fi
  tee -a "$out/dist_erlangen.tsv" <"$out/dist_$shape.tsv" >&2
  if [ "$rc" -ne 0 ]; then
    local why="exit $rc"
    [ "$rc" -eq 124 ] && why="timeout ${limit}s"
    [ "$rc" -eq 127 ] && why="not built"
    echo "bench: erlangen dist shape $shape failed ($why)" >&2
    grep -q "^dist_$shape	" "$out/dist_$shape.tsv" ||
      printf 'dist_%s\tFAIL (%s)\t\t\n' "$shape" "$why" >>"$out/dist_erlangen.tsv"
  fi
}
dist_bench pingpong "$DIST_PINGPONG"
dist_bench oneway "$DIST_ONEWAY"

echo >&2
{
  header "$dload0"
  echo
  lua5.4 bench/dist_report.lua "$out/dist_erlangen.tsv" "$out/dist_beam.tsv"
} | tee "$out/dist.md"
fi
