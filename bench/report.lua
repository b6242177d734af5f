-- Bench report: joins the erlangen, BEAM and floor results into one table.
--
-- Usage: lua5.4 bench/report.lua ERLANGEN.tsv BEAM.tsv FLOOR.tsv
-- Each input holds lines `shape <TAB> median <TAB> unit <TAB> samples`; a
-- missing file (no `erl`, say) leaves its columns empty. Prints a Markdown
-- table, one row per shape, with each target and whether it was met.

package.path = (arg[0]:match("^(.*)/") or ".") .. "/?.lua;" .. package.path
local lib = require "bench_lib"
local load = lib.load

local ours, beam, floor = load(arg[1]), load(arg[2]), load(arg[3])

local function val(t, k) return t[k] and t[k].med end

-- the floor of a shape is the fastest of its hand-off modes
local function best(prefix)
  local m
  for _, mode in ipairs { "futex", "spin", "cond" } do
    local v = val(floor, prefix .. "_" .. mode)
    if v and (not m or v < m) then m = v end
  end
  return m
end
local floors = { pingpong = best("pingpong"), ring = best("ring"), spawn = val(floor, "spawn") }

-- shape, label, unit, target: { against, op, limit, text }
local rows = {
  { "pingpong", "ping-pong round trip", "µs", { "beam", "<=", 3, "≤ 3× BEAM" } },
  { "oneway", "one-way throughput, {seq=i, tag=\"x\"}", "msg/s", { "beam", ">=", 0.5, "≥ 0.5× BEAM" } },
  { "ring", "ring of 1,000, per hop", "µs", { "floor", "<=", 1.3, "≤ 1.3× floor" } },
  { "spawn", "spawn + exit (wait for DOWN)", "µs", { "beam", "<=", 15, "≤ 15× BEAM" } },
  { "procs", "processes alive at once", "procs", { "value", ">=", 20000, "≥ 20,000" } },
  { "procs_rss", "RSS per idle process", "KiB", { "value", "<=", 48, "≤ 48 KiB" } },
  { "codec_small", "codec encode+decode, small record", "µs" },
  { "codec_1k", "codec encode+decode, nested table", "µs" },
}

local function fmt(x)
  if x == nil then return "—" end
  if x == math.floor(x) and x < 1e7 then return string.format("%d", x) end
  if x >= 1e5 then return string.format("%.3g", x) end
  if x >= 100 then return string.format("%.0f", x) end
  if x >= 10 then return string.format("%.1f", x) end
  return string.format("%.3g", x)
end

local function ratio(a, b)
  if a and b and b ~= 0 then return a / b end
end

local function rfmt(r) return r and string.format("%.2f×", r) or "—" end

local function spread(t) return lib.spread(t, fmt) end

print("| shape | median | unit | runs | BEAM | ÷ BEAM | floor | ÷ floor | target | result |")
print("|---|---:|---|---|---:|---:|---:|---:|---|---|")
local tally = {}
for _, row in ipairs(rows) do
  local shape, label, unit, target = row[1], row[2], row[3], row[4]
  local m, b, fl = val(ours, shape), val(beam, shape), floors[shape]
  local rb, rf = ratio(m, b), ratio(m, fl)
  local result = ""
  if target then
    local against, op, limit, text = target[1], target[2], target[3], target[4]
    local x = m
    if against == "beam" then x = rb elseif against == "floor" then x = rf end
    result = lib.verdict(tally, ours[shape] and not m, x, op, limit, against == "beam")
    target = text
  end
  local mtext = m and fmt(m) or (ours[shape] and ours[shape].raw) or "—"
  if shape == "codec_1k" and val(ours, "codec_1k_bytes") then
    local bb = val(beam, "codec_1k_bytes")
    label = string.format("%s (%d B encoded%s)", label, val(ours, "codec_1k_bytes"),
                          bb and string.format("; BEAM %d B", bb) or "")
  end
  print(string.format("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |", label, mtext, unit,
                      spread(ours[shape]), fmt(b), rfmt(rb), fmt(fl), rfmt(rf), target or "—",
                      result))
end
print()
print(lib.summary(tally))
