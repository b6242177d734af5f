#!/usr/bin/env bash
# tools/test.sh [--tsan]
# Installs what is missing (tools/setup.sh --test, tools/browser_setup.sh),
# builds, and runs every test twice: the plain build (busted under the stock
# lua5.4, plus the C tests) and an AddressSanitizer+UndefinedBehaviorSanitizer
# build (busted inside its erlangen interpreter), then runs each libFuzzer
# target for 10 s. Ends with one line "N passed, N failed" over all of it;
# exits non-zero on any failure. The #install specs (meson install, luarocks
# make, the .deb; several builds) and the #big ones (the 20-node DHT demo,
# whose timeouts a sanitizer's slowdown on 2 cores would trip) run once, in
# the plain suite. Progress shows as it goes: one line per C test and per
# spec file (spec/run).
# --tsan instead runs the specs against a ThreadSanitizer build.
set -u
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
total_pass=0; total_fail=0
failures=$(mktemp); trap 'rm -f "$failures"' EXIT
suite() {  # suite NAME BUILD [spec/run args...]
  local name=$1 build=$2; shift 2
  echo "== $name" >&2
  local out log="$root/$build/suite.log"
  spec/run "$build" "$@" 2>&1 | tee "$log" >&2
  out=$(tail -1 "$log")
  # Names of failed tests, listed again just above the summary line.
  grep "^not ok" "$log" | sed "s/^/[$name] /" >> "$failures"
  local p f
  p=$(echo "$out" | sed -n 's/^\([0-9]*\) passed, \([0-9]*\) failed$/\1/p')
  f=$(echo "$out" | sed -n 's/^\([0-9]*\) passed, \([0-9]*\) failed$/\2/p')
  if [ -z "$p" ]; then p=0; f=1; fi
  total_pass=$((total_pass + p)); total_fail=$((total_fail + f))
}
if [ "${1:-}" = "--tsan" ]; then
  bash tools/setup.sh build-tsan -Db_sanitize=thread -Db_lundef=false -Dbuildtype=debug || exit 1
  ERLANGEN_SANITIZER=tsan TSAN_OPTIONS="halt_on_error=1 report_signal_unsafe=0" \
    suite tsan build-tsan --via-erlangen --exclude-tags=big,install
else
  bash tools/setup.sh --test build || { echo "0 passed, 1 failed"; exit 1; }
  bash tools/browser_setup.sh || { echo "0 passed, 1 failed"; exit 1; }   # chromium, playwright-core
  bash tools/setup.sh build-asan -Db_sanitize=address,undefined -Db_lundef=false \
    || { echo "0 passed, 1 failed"; exit 1; }
  suite plain build
  # A small quarantine keeps RSS meaningful for the specs that watch memory.
  ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:quarantine_size_mb=8" UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1" \
    suite asan+ubsan build-asan --via-erlangen --exclude-tags=big,install
  # Every libFuzzer target (tools/fuzz.sh --list) for 10 s: one check each.
  echo "== fuzz (10 s per target)" >&2
  bash tools/fuzz.sh 10 > build/fuzz.log 2>&1
  for t in $(bash tools/fuzz.sh --list); do
    if grep -q "^Done $t:" build/fuzz.log; then
      echo "ok - fuzz $t: $(grep "^Done $t:" build/fuzz.log)" >&2
      total_pass=$((total_pass + 1))
    else
      echo "not ok - fuzz $t failed:" >&2
      echo "[fuzz] not ok - $t" >> "$failures"
      sed -n "/^FAIL $t:/,/^\(Done\|FAIL\) /p" build/fuzz.log | grep -v "^Done " | head -40 >&2
      total_fail=$((total_fail + 1))
    fi
  done
fi
cat "$failures"
echo "$total_pass passed, $total_fail failed"
[ "$total_fail" -eq 0 ]
