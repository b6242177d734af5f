#!/usr/bin/env bash
# bench/hop_lines.sh [EXE] — what a hop of the ring touches. Runs a ring of
# 50 processes for 2,000 hops under valgrind's lackey, then counts per hop
# the instructions and the data lines and pages a process finds cold in a
# ring of 1,000 (not touched in the ten hops before), and lists the code
# addresses that make the most of those first touches, with function and
# line where they are erlangen's own. Deterministic, unlike the timings:
# a change's effect on the ring's memory traffic shows here even when the
# machine's noise hides it in bench/run.sh. Needs valgrind; ~1 minute.
# The trace (~1 GB) goes to $TMPDIR and is removed afterwards.
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
exe=${1:-$root/build/erlangen}
command -v valgrind >/dev/null || { echo "hop_lines: valgrind is not installed (apt-get install valgrind)" >&2; exit 1; }
[ -x "$exe" ] || { echo "hop_lines: $exe is not built" >&2; exit 1; }
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
gcc -O2 -o "$tmp/hop_lines" "$root/bench/hop_lines.c"
valgrind --tool=lackey --trace-mem=yes --log-file="$tmp/trace" "$exe" "$root/bench/erlangen.lua" ring 2000 1 50 >/dev/null 2>&1
# valgrind maps a position-independent executable at 0x108000 (amd64);
# send's entry marks the hops.
base=0x108000
off=$(nm "$exe" | awk '$3 == "l_send" { print $1 }')
[ -n "$off" ] || { echo "hop_lines: no l_send symbol in $exe" >&2; exit 1; }
marker=$(printf %x $((16#$off + base)))
hops=$(grep -c "^I  0*$marker," "$tmp/trace" || true)
[ "$hops" -gt 400 ] || { echo "hop_lines: marker $marker seen $hops times; is the load base $base right?" >&2; exit 1; }
"$tmp/hop_lines" "$marker" 10 200 $((hops - 100)) < "$tmp/trace" > "$tmp/out"
head -1 "$tmp/out"
echo "first touches per hop by code address (erlangen's own resolved):"
tail -n +2 "$tmp/out" | while read -r ip n; do
  a=$((16#$ip))
  if [ $a -lt $((0x4000000)) ]; then
    where=$(addr2line -f -s -e "$exe" "$(printf %x $((a - base)))" | paste -sd' ')
  else
    where="(a library: Lua, libc)"
  fi
  printf '%6s  %s\n' "$n" "$where"
done
