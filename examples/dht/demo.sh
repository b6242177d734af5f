#!/usr/bin/env bash
# examples/dht/demo.sh [--observe] [N] — the Kademlia DHT on N real nodes
# (default 20) on 127.0.0.1:
#   1. N nodes; put 1,000 keys (and read them back);
#   2. kill -9 half of them; get every key;
#   3. add 10 new nodes; get every key again.
# One line per step (see demo.lua). Every node is killed at the end, on an
# error and on an interrupt; a node whose launcher vanished without that
# (kill -9) ends by itself when its standard input, a pipe held here, ends.
# Uses $ERLANGEN_BIN, else the build tree's build/erlangen, else the
# `erlangen` on PATH. DHT_KEYS sets the number of keys (default 1000),
# DHT_REFRESH and DHT_TIMEOUT the nodes' refresh period and request
# timeout in seconds (default 10 and 2, dht_server.lua); with
# DHT_LOGS=DIR the nodes' logs are copied there at the end.
# --observe also starts the web observer (erlangen --observer) connected to
# the cluster and prints its URL: its Message flow page shows the lookups
# hopping between the DHT processes. The demo then waits DHT_OBSERVE_WAIT
# seconds (default 10) before each step, and keeps the cluster up at the
# end until Enter or Ctrl-C.
set -eu
observe=
if [ "${1:-}" = "--observe" ]; then observe=1; shift; fi
n=${1:-20}
case $n in ''|*[!0-9]*) echo "demo.sh: N must be a whole number of nodes, got '$n'" >&2; exit 2 ;; esac
if [ "$n" -lt 2 ]; then echo "demo.sh: N must be at least 2, got $n" >&2; exit 2; fi
keys=${DHT_KEYS:-1000}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
bin=${ERLANGEN_BIN:-}
if [ -z "$bin" ]; then
  if [ -x "$root/build/erlangen" ]; then bin=$root/build/erlangen
  elif command -v erlangen >/dev/null; then bin=$(command -v erlangen)
  else echo "demo.sh: no erlangen: build it (bash tools/setup.sh build) or set ERLANGEN_BIN" >&2; exit 2
  fi
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/dht-demo.XXXXXX")
declare -A pid addr   # node number -> OS pid, "name@host:port"
driver=               # the OS pid of the running step
cleanup() {
  if [ -n "$driver" ]; then kill -9 "$driver" 2>/dev/null || true; fi
  if [ -n "${observer:-}" ]; then kill -9 "$observer" 2>/dev/null || true; wait "$observer" 2>/dev/null || true; fi
  if [ -n "${mapper:-}" ]; then kill -9 "$mapper" 2>/dev/null || true; wait "$mapper" 2>/dev/null || true; fi
  for i in "${!pid[@]}"; do kill -9 "${pid[$i]}" 2>/dev/null || true; done
  for i in "${!pid[@]}"; do wait "${pid[$i]}" 2>/dev/null || true; done
  if [ -n "${DHT_LOGS:-}" ]; then mkdir -p "$DHT_LOGS" && cp "$work"/*.log "$DHT_LOGS"/ 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'echo "demo.sh: interrupted" >&2; exit 130' INT TERM

head -c 32 /dev/urandom > "$work/cluster.key"
chmod 600 "$work/cluster.key"
# Waits (polls of 0.1 s, at most TRIES) until FILE has a line matching
# PATTERN; exits naming WHAT, with LOG's tail, if process PID ends first.
await_output() {  # await_output FILE PATTERN PID TRIES WHAT LOG
  local tries=0
  while ! grep -q "$2" "$1" 2>/dev/null; do
    if ! kill -0 "$3" 2>/dev/null || [ $tries -ge "$4" ]; then
      echo "demo.sh: $5 did not start:" >&2
      tail -n 20 "$6" >&2
      exit 1
    fi
    tries=$((tries + 1))
    sleep 0.1
  done
}

# With --observe the nodes register with a port mapper of the demo's own
# (on a free port, gone at the end), so that the observer, which learns the
# nodes by name from each other, can reach them.
mapper=
if [ -n "$observe" ]; then
  "$bin" --port-mapper --port 0 >"$work/mapper.port" 2>"$work/mapper.log" </dev/null &
  mapper=$!
  await_output "$work/mapper.port" . "$mapper" 100 "the port mapper" "$work/mapper.log"
  export ERLANGEN_PORT_MAPPER_PORT=$(head -n 1 "$work/mapper.port") DHT_PORT_MAPPER=1
fi
mkfifo -m 600 "$work/stdin"
exec 3<>"$work/stdin"   # the nodes' standard input: it ends when this shell does
run=$$-$RANDOM

# Starts node i joining through address $2 ("-" for none) and waits for its address.
start_node() {
  local i=$1 seed=$2
  "$bin" "$here/node.lua" "dht$i@127.0.0.1" "$work/cluster.key" "$seed" \
    <"$work/stdin" >"$work/dht$i.addr" 2>"$work/dht$i.log" 3>&- &
  pid[$i]=$!
}
await_node() {
  local i=$1
  await_output "$work/dht$i.addr" . "${pid[$i]}" 300 "node dht$i" "$work/dht$i.log"
  addr[$i]=$(head -n 1 "$work/dht$i.addr")
}
live() { for i in "${!addr[@]}"; do echo "${addr[$i]}"; done; }

# Runs one step of demo.lua. In the background with a wait: bash runs a
# trap (TERM) only between commands, and a wait is interrupted by it.
step() {  # step put|get LABEL [DEAD...]
  local what=$1 label=$2
  shift 2
  # shellcheck disable=SC2046
  "$bin" "$here/demo.lua" "$work/cluster.key" "$run" "$keys" "$what" "$label" $(live) -- "$@" 3>&- &
  driver=$!
  wait "$driver"
  driver=
}

# With --observe: the observer, connected to node 1 (and through it to the
# nodes it links to); its URL is printed once it serves.
observer=
start_observer() {
  "$bin" --observer "127.0.0.1:${DHT_OBSERVER_PORT:-0}" --connect "${addr[1]}" --key "$work/cluster.key" \
    <&3 >"$work/observer.out" 2>"$work/observer.log" 3>&- &
  observer=$!
  await_output "$work/observer.out" '^observer: ' "$observer" 300 "the observer" "$work/observer.log"
  grep '^observer: ' "$work/observer.out"
}
pause() { if [ -n "$observe" ]; then sleep "${DHT_OBSERVE_WAIT:-10}"; fi; }

# 1. N nodes, each joining through the first.
start_node 1 -
await_node 1
for ((i = 2; i <= n; i++)); do start_node "$i" "${addr[1]}"; done
for ((i = 2; i <= n; i++)); do await_node "$i"; done
if [ -n "$observe" ]; then start_observer; fi
pause
step put "1. $n nodes, put $keys keys"

# 2. kill -9 a random half.
dead=()
for i in $(printf '%s\n' "${!addr[@]}" | shuf -n $((n / 2))); do
  kill -9 "${pid[$i]}"
  wait "${pid[$i]}" 2>/dev/null || true
  dead+=("${addr[$i]}")
  unset "pid[$i]" "addr[$i]"
done
pause
step get "2. killed $((n / 2)) of $n nodes with kill -9" "${dead[@]}"

# 3. 10 new nodes, joining through a node that is still up.
seed=$(live | head -n 1)
for ((i = n + 1; i <= n + 10; i++)); do start_node "$i" "$seed"; done
for ((i = n + 1; i <= n + 10; i++)); do await_node "$i"; done
pause
step get "3. added 10 nodes ($((n - n / 2 + 10)) live)" "${dead[@]}"
if [ -n "$observe" ]; then
  echo "demo.sh: the cluster stays up for the observer; Enter or Ctrl-C ends it"
  read -r _ || true
fi
