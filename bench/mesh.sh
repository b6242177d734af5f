#!/usr/bin/env bash
# bench/mesh.sh [N...] — N erlangen nodes on loopback (default: 20 60 100 200),
# each connecting to every other one; prints, per N, the time to the full
# mesh, threads, RSS and fds per node, and the idle CPU of all nodes
# together over MESH_IDLE seconds at tick MESH_TICK, then the issue's
# targets with PASS or MISS (doc/performance.md, "A mesh of N nodes").
#
# Nodes are bench/mesh_node.lua, started as mesh<i>@127.0.0.1 on free ports
# without the port mapper; each one gets the list name@127.0.0.1:port of all
# and connects to every other (so each pair is connected from both sides).
# Environment:
#   BENCH_ERLANGEN  the erlangen executable (default build/erlangen)
#   MESH_TICK       the nodes' tick (default 60)
#   MESH_IDLE       seconds of the idle CPU measurement (default 10)
#   MESH_TIMEOUT    seconds allowed for the full mesh (default 60 + N)
#   MESH_RESERVE    thread ids kept free for the rest of the host (default
#                   4096): when the host's thread count reaches pid_max minus
#                   this, the run stops, says how far the mesh got, and kills
#                   its nodes, instead of taking the host's last thread ids.
# Every wait is bounded; every node is killed by pid when its N ends, and on
# any exit of this script (trap). Output: one Markdown table on stdout,
# progress on stderr.
set -u
shopt -s nullglob
cd "$(dirname "$0")/.."
exe=${BENCH_ERLANGEN:-build/erlangen}
tick=${MESH_TICK:-60}
idle=${MESH_IDLE:-10}
reserve=${MESH_RESERVE:-4096}
[ -x "$exe" ] || { echo "mesh: no executable $exe (set BENCH_ERLANGEN)" >&2; exit 2; }
[ $# -gt 0 ] || set -- 20 60 100 200
hz=$(getconf CLK_TCK)
pid_max=$(< /proc/sys/kernel/pid_max)
limit=$((pid_max - reserve))
load0=$(cut -d' ' -f1-3 /proc/loadavg)

pids=()      # the nodes of the running N
work=$(mktemp -d /tmp/mesh.XXXXXX)
kill_nodes() {
  local p
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
  pids=()
}
trap 'kill_nodes; rm -rf "$work"' EXIT
trap 'exit 130' INT TERM

say() { echo "mesh: $*" >&2; }
# The waits below run no command (no fork): a host short of thread ids can
# still be watched and cleaned up. Each sets a variable.
exec {pause_fd}<> <(:)
pause() { read -r -t "$1" -u "$pause_fd" _; }                       # sleeps $1 s
uptime_now() { read -r UP _ < /proc/uptime; }                       # UP
host_threads() { local a b c d; read -r a b c d _ < /proc/loadavg; HT=${d#*/}; }   # HT
count_alive() { local p; ALIVE=0; for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && ALIVE=$((ALIVE + 1)); done; }
count_states() {  # MESHED, PARTIAL, LIMIT: nodes in each phase (DIR/INDEX.state)
  local f phase; MESHED=0 PARTIAL=0 LIMIT=0
  for f in "$1"/*.state; do
    read -r phase _ < "$f" || continue
    case $phase in meshed) MESHED=$((MESHED + 1));; partial) PARTIAL=$((PARTIAL + 1));; limit) LIMIT=$((LIMIT + 1));; esac
  done
}
median() { sort -n | awk '{v[NR] = $1} END { if (NR == 0) print "—"; else print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }'; }
maxof() { sort -n | tail -1; }
# field of /proc/PID/status in its unit (kB for VmRSS)
status_of() { local k v; while read -r k v _; do [ "$k" = "$2:" ] && { echo "$v"; return; }; done < "/proc/$1/status"; echo 0; }
fds_of() { local f=("/proc/$1/fd/"*); echo "${#f[@]}"; }
cpu_ticks() {  # utime + stime of PID (fields 14 and 15 of /proc/PID/stat, after the name)
  local s; s=$(< "/proc/$1/stat") || { echo 0; return; }
  s=${s##*) }; set -- $s; echo $(( ${12} + ${13} ))
}

rows=()       # one Markdown row per N
declare -A threads_at meshed_at cpu_at
run() {
  local n=$1 dir="$work/n$1" i key t0 deadline stop="" done_n links
  mkdir -p "$dir"
  key="$dir/key"; head -c 32 /dev/urandom > "$key"; chmod 600 "$key"
  host_threads
  say "N=$n: starting the nodes (host threads $HT, stop at $limit)"
  for ((i = 0; i < n; i++)); do
    "$exe" bench/mesh_node.lua "$dir" "$i" "$n" "$tick" "$key" "$limit" > "$dir/$i.out" 2>&1 &
    pids+=($!)
    host_threads
    [ "$HT" -ge "$limit" ] && { stop="the host's threads reached $HT while starting node $i"; break; }
  done
  # wait for every node's port
  deadline=$(( SECONDS + 30 + n / 5 ))
  while [ -z "$stop" ]; do
    local up=("$dir"/*.up)
    [ ${#up[@]} -ge "$n" ] && break
    [ $SECONDS -ge $deadline ] && stop="only ${#up[@]} of $n nodes started within $((30 + n / 5)) s"
    count_alive
    [ "$ALIVE" -lt ${#pids[@]} ] && stop="a node ended while starting: $(head -3 "$dir"/*.out)"
    pause 0.1
  done
  if [ -z "$stop" ]; then
    : > "$dir/.go"
    for ((i = 0; i < n; i++)); do
      local pid port; read -r pid port < "$dir/$i.up"
      echo "mesh$i@127.0.0.1:$port" >> "$dir/.go"
    done
    uptime_now; t0=$UP
    mv "$dir/.go" "$dir/go"
    say "N=$n: all started; connecting"
    local wait_s=${MESH_TIMEOUT:-$((60 + n))}
    deadline=$(( SECONDS + wait_s ))
    while :; do
      count_states "$dir"
      [ "$MESHED" -ge "$n" ] && break
      host_threads
      if [ "$LIMIT" -gt 0 ] || [ "$HT" -ge "$limit" ]; then
        uptime_now
        stop="the host's threads reached $HT, next to pid_max $pid_max (the run keeps $reserve free), $(awk -v a="$t0" -v b="$UP" 'BEGIN { printf "%.1f", b - a }') s after the connects began"; break
      fi
      [ $SECONDS -ge $deadline ] && { stop="no full mesh within $wait_s s"; break; }
      count_alive
      [ "$ALIVE" -lt "$n" ] && { stop="$((n - ALIVE)) nodes died"; break; }
      [ "$PARTIAL" -gt 0 ] && { stop="$PARTIAL nodes gave up waiting for the mesh"; break; }
      pause 0.1
    done
  fi
  # the figures, at the full mesh or where the run stopped
  local mesh_s="—" th rss fds cpu="—" ok_pids=() p
  [ -z "$stop" ] && mesh_s=$(awk -v t0="$t0" '$1 == "meshed" && $4 - t0 > m { m = $4 - t0 } END { printf "%.2f", m }' /dev/null "$dir"/*.state)
  for p in "${pids[@]}"; do [ -d "/proc/$p" ] && ok_pids+=("$p"); done
  if [ -z "$stop" ]; then
    pause 2   # the last handshakes' threads settle
    local a=0 b=0 ta tb
    for p in "${ok_pids[@]}"; do a=$((a + $(cpu_ticks "$p"))); done; uptime_now; ta=$UP
    pause "$idle"
    for p in "${ok_pids[@]}"; do b=$((b + $(cpu_ticks "$p"))); done; uptime_now; tb=$UP
    cpu=$(awk -v d=$((b - a)) -v hz="$hz" -v s="$(awk -v a="$ta" -v b="$tb" 'BEGIN { print b - a }')" \
          'BEGIN { printf "%.1f", 100 * d / hz / s }')
  fi
  th=$(for p in "${ok_pids[@]}"; do status_of "$p" Threads; done | median)
  local thmax; thmax=$(for p in "${ok_pids[@]}"; do status_of "$p" Threads; done | maxof)
  rss=$(for p in "${ok_pids[@]}"; do status_of "$p" VmRSS; done | median | awk '{ printf "%.1f", $1 / 1024 }')
  fds=$(for p in "${ok_pids[@]}"; do fds_of "$p"; done | median)
  links=$(cat /dev/null "$dir"/*.state | awk '{ print $2 }' | median)
  count_states "$dir"
  local nstates=$MESHED
  kill_nodes
  local status="full mesh"
  if [ -n "$stop" ]; then
    status="**stopped**: $stop; $nstates of $n nodes meshed, median links per node $links of $((n - 1))"
    say "N=$n: $status"
  else
    say "N=$n: full mesh in $mesh_s s; idle CPU $cpu % of one core"
    meshed_at[$n]=1
  fi
  threads_at[$n]=$th
  cpu_at[$n]=$cpu
  rows+=("| $n | $status | $mesh_s | $th (max $thmax) | $rss | $fds | $cpu |")
}

for n in "$@"; do run "$n"; done

echo "erlangen mesh bench, $(date -u +%Y-%m-%d), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')," \
     "$(nproc) cores, $(uname -sr), load $load0 at the start and $(cut -d' ' -f1-3 /proc/loadavg) at the end, tick $tick, pid_max $pid_max;" \
     "$exe; no port mapper, every node connects to every other"
echo
echo "| N | result | time to full mesh (s) | threads per node, median | RSS per node, median (MiB) | fds per node, median | idle CPU of all nodes over ${idle} s (% of one core) |"
echo "|---:|---|---:|---:|---:|---:|---:|"
for r in "${rows[@]}"; do echo "$r"; done
echo
# The targets of issue 13.
verdict() { if [ "$1" = 1 ]; then echo PASS; else echo "**MISS**"; fi; }
if [ -n "${threads_at[200]:-}" ]; then
  echo "- 200 nodes form a full mesh: $(verdict "${meshed_at[200]:-0}")"
else
  echo "- 200 nodes form a full mesh: not run"
fi
ns=($(printf '%s\n' "${!threads_at[@]}" | sort -n))
if [ ${#ns[@]} -ge 2 ]; then
  lo=${ns[0]} hi=${ns[-1]}
  grow=$(awk -v a="${threads_at[$lo]}" -v b="${threads_at[$hi]}" 'BEGIN { print (b + 0 <= a + 2) ? 1 : 0 }')
  echo "- threads per node do not grow with N: ${threads_at[$lo]} at N=$lo, ${threads_at[$hi]} at N=$hi: $(verdict "$grow")"
else
  echo "- threads per node do not grow with N: needs two N"
fi
if [ -n "${cpu_at[100]:-}" ]; then
  ok=$(awk -v c="${cpu_at[100]}" 'BEGIN { print (c != "—" && c + 0 <= 2) ? 1 : 0 }')
  echo "- 100 nodes idle at ≤ 2 % of one core in all: ${cpu_at[100]} %: $(verdict "$ok")"
else
  echo "- 100 nodes idle at ≤ 2 % of one core in all: not run"
fi
