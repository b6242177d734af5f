#!/usr/bin/env bash
# bench/interleave.sh SHAPE COUNT [ROUNDS [EXTRA]] — one shape, erlangen and
# BEAM alternately, each round a fresh process of one repetition, and the
# medians of both and their ratio. Not part of the tests, and not what
# bench/run.sh reports: run.sh repeats a shape inside one process, and on a
# shared VM a process keeps the fast or slow placement it started with, so
# a median over fresh processes says more about a change that is close to a
# target. EXTRA is the shape's extra argument (the ring's size).
#   bash bench/interleave.sh oneway 300000 10
#   bash bench/interleave.sh ring 20000 6 1000
set -u
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
shape=${1:?usage: bench/interleave.sh SHAPE COUNT [ROUNDS [EXTRA]]}
count=${2:?usage: bench/interleave.sh SHAPE COUNT [ROUNDS [EXTRA]]}
rounds=${3:-10}
extra=${4:-}
exe=${BENCH_ERLANGEN:-build/erlangen}
[ -x "$exe" ] || { echo "interleave: $exe is not built (bash tools/setup.sh build)" >&2; exit 1; }
command -v escript >/dev/null || { echo "interleave: escript (erlang-base) is not installed" >&2; exit 1; }

# The raw-thread floor too, for the shapes it has (built as bench/run.sh does).
floor=
case $shape in
  pingpong|ring|spawn)
    mkdir -p build/bench
    gcc -O2 -Wall -pthread -o build/bench/floor bench/floor.c && floor=build/bench/floor ;;
esac

ours=() beam=() flo=() unit=
for ((i = 1; i <= rounds; i++)); do
  line=$("$exe" bench/erlangen.lua "$shape" "$count" 1 $extra | head -1)
  ours+=("$(cut -f2 <<<"$line")"); unit=$(cut -f3 <<<"$line")
  beam+=("$(escript bench/beam.escript "$shape" "$count" 1 $extra | head -1 | cut -f2)")
  # the floor of a round is its fastest hand-off mode, as in bench/report.lua
  [ -n "$floor" ] && flo+=("$("$floor" "$shape" "$count" 1 $extra |
    awk -v s="$shape" '$1 == s || index($1, s "_") == 1 { if (m == "" || $2 + 0 < m + 0) m = $2 } END { print m }')")
  echo "round $i: erlangen ${ours[-1]}  BEAM ${beam[-1]}${floor:+  floor ${flo[-1]}} $unit" >&2
done
median() { printf '%s\n' "$@" | sort -g | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
m_ours=$(median "${ours[@]}")
m_beam=$(median "${beam[@]}")
m_floor=$([ -n "$floor" ] && median "${flo[@]}")
awk -v s="$shape" -v o="$m_ours" -v b="$m_beam" -v f="$m_floor" -v u="$unit" -v n="$rounds" 'BEGIN {
  printf "%s, %d alternating fresh processes: erlangen %g, BEAM %g", s, n, o, b
  if (f != "") printf ", floor %g", f
  printf " %s; erlangen / BEAM = %.2f", u, o / b
  if (f != "") printf ", erlangen / floor = %.2f", o / f
  printf "\n" }'
