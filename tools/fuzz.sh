#!/usr/bin/env bash
# tools/fuzz.sh [SECONDS [TARGET...]]
# tools/fuzz.sh --list
# Builds the libFuzzer targets in spec/fuzz/ with clang
# (-fsanitize=fuzzer,address,undefined) and runs each for SECONDS (default
# 60), one after the other:
#   codec      the codec decoder on untrusted bytes
#   frame      the frame decoder (and an encoder round trip)
#   handshake  the handshake responder: msg1, then the confirmation
#   pmap       the port mapper daemon: one client's stream through its protocol
#   pmap_names the port mapper client: a daemon's NAMES reply through pmap_names's parser
# Each starts from its seed corpus spec/fuzz/corpus/<target>/ and keeps what
# it finds in build/fuzz/corpus/<target>/; crash inputs go to
# build/fuzz/<target>-crash-*. Prints one line per target:
#   Done <target>: <N> execs in <S> s, cov <edges>, corpus <inputs>
# or "FAIL <target>: ..." followed by libFuzzer's report. Exits non-zero if
# any target failed to build or found a crash. --list prints the targets.
# (tools/setup.sh installs clang and libclang-rt-14-dev.)
set -u
targets_all="codec frame handshake pmap pmap_names"
if [ "${1:-}" = "--list" ]; then echo $targets_all; exit 0; fi
root=$(cd "$(dirname "$0")/.." && pwd)
secs=${1:-60}
[ $# -gt 0 ] && shift
targets=${*:-$targets_all}
out=${FUZZ_OUT:-$root/build/fuzz}
mkdir -p "$out"
# The targets need only clang and libsodium/lua headers, not the meson build.
command -v clang >/dev/null 2>&1 || bash "$root/tools/setup.sh" build >&2

cflags=(-g -O1 -fsanitize=fuzzer,address,undefined -D_GNU_SOURCE -I "$root/kernel" -I "$root/kernel/net")
build_target() {  # build_target NAME -> $out/NAME_fuzz
  local k="$root/kernel" n="$root/kernel/net" f="$root/spec/fuzz"
  case $1 in
    codec) clang "${cflags[@]}" $(pkg-config --cflags lua5.4) "$f/codec_fuzz.c" "$k/codec.c" "$k/term.c" \
             $(pkg-config --libs lua5.4) -lm -o "$out/codec_fuzz" ;;
    frame) clang "${cflags[@]}" $(pkg-config --cflags libsodium) "$f/frame_fuzz.c" "$n/frame.c" "$n/noise.c" \
             "$n/crypto.c" $(pkg-config --libs libsodium) -ldl -pthread -o "$out/frame_fuzz" ;;
    handshake) clang "${cflags[@]}" $(pkg-config --cflags libsodium) "$f/handshake_fuzz.c" "$n/frame.c" \
             "$n/noise.c" "$n/crypto.c" $(pkg-config --libs libsodium) -ldl -pthread -o "$out/handshake_fuzz" ;;
    pmap|pmap_names)
          mkdir -p "$out/pmap-inc"  # portmap.c wants the meson-made config header: a stand-in
          printf '#define ERLANGEN_BIN_INSTALL "/nonexistent/erlangen"\n#define ERLANGEN_BUILD_ROOT "/nonexistent/"\n' \
            > "$out/pmap-inc/erlangen_config.h"
          if [ "$1" = pmap ]; then  # the daemon, included whole; portmap.c linked
            clang "${cflags[@]}" -I "$out/pmap-inc" "$f/pmap_fuzz.c" "$n/portmap.c" -ldl -pthread \
              -o "$out/pmap_fuzz"
          else  # the client, included whole
            clang "${cflags[@]}" -I "$out/pmap-inc" "$f/pmap_names_fuzz.c" -ldl -pthread \
              -o "$out/pmap_names_fuzz"
          fi ;;
    *) echo "unknown target $1" >&2; return 1 ;;
  esac
}
max_len() { case $1 in frame) echo 8192 ;; handshake) echo 2048 ;; *) echo 4096 ;; esac; }

status=0
for t in $targets; do
  log="$out/$t.log"
  if ! build_target "$t" > "$log" 2>&1; then
    echo "FAIL $t: build failed"; tail -20 "$log"; status=1; continue
  fi
  mkdir -p "$out/corpus/$t"
  seeds=()
  [ -d "$root/spec/fuzz/corpus/$t" ] && seeds=("$root/spec/fuzz/corpus/$t")
  "$out/${t}_fuzz" -max_total_time="$secs" -max_len="$(max_len "$t")" -timeout=10 -print_final_stats=1 \
    -artifact_prefix="$out/$t-" "$out/corpus/$t" "${seeds[@]}" > "$log" 2>&1
  rc=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  took=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -1)
  if [ $rc -eq 0 ] && [ -n "$execs" ] && [ -n "$took" ]; then
    cov=$(sed -n 's/.*DONE *cov: *\([0-9]*\).*/\1/p' "$log" | tail -1)
    corp=$(sed -n 's/.*DONE .*corp: *\([0-9]*\)\/.*/\1/p' "$log" | tail -1)
    echo "Done $t: $execs execs in $took s, cov ${cov:-?}, corpus ${corp:-?}"
  else
    echo "FAIL $t: libFuzzer exited with status $rc (log: $log)"
    grep -E -A12 'ERROR|==[0-9]+==|SUMMARY|runtime error|deadly signal' "$log" | head -60
    status=1
  fi
done
exit $status
