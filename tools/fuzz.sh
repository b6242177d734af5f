#!/usr/bin/env bash
# tools/fuzz.sh [SECONDS]
# Builds the libFuzzer target for the codec decoder with clang
# (-fsanitize=fuzzer,address,undefined) and runs it for SECONDS (default 60)
# on a seed corpus made by the codec's own encoder (tools/setup.sh installs
# clang and libclang-rt-14-dev). Prints libFuzzer's summary.
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
secs=${1:-60}
out=${FUZZ_OUT:-$root/build/fuzz}
mkdir -p "$out/corpus"
bash "$root/tools/setup.sh" build   # installs clang and libclang-rt-14-dev with the rest
clang -g -O1 -fsanitize=fuzzer,address,undefined -D_GNU_SOURCE -I "$root/kernel" \
  $(pkg-config --cflags lua5.4) "$root/spec/fuzz/codec_fuzz.c" "$root/kernel/codec.c" \
  "$root/kernel/term.c" $(pkg-config --libs lua5.4) -lm -o "$out/codec_fuzz"
# Seeds: real encodings of assorted values, made with the erlangen module.
if [ -x "$root/build/erlangen" ]; then
  FUZZ_SEEDS="$out/corpus" "$root/build/erlangen" -e '
    local out = os.getenv("FUZZ_SEEDS")
    local seeds = { {1, 2.5, "s"}, {a = {b = {c = true}}, [10] = -7}, {0/0, -0.0, math.huge},
                    {erlangen.self(), erlangen.ref()}, string.rep("x", 300), {{}, {{}}, {1, {2, {3}}}} }
    local t = {} t.self = t seeds[#seeds + 1] = t
    for i, v in ipairs(seeds) do
      local f = assert(io.open(out .. "/seed" .. i, "wb")); f:write(erlangen.encode(v)); f:close()
    end'
fi
"$out/codec_fuzz" -max_total_time="$secs" -max_len=4096 -print_final_stats=1 "$out/corpus" 2>&1 | tail -25
