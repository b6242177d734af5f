-- Distribution bench report: joins the erlangen and BEAM results of the
-- two-node shapes into one Markdown table, with each target and whether it
-- was met.
--
-- Usage: lua5.4 bench/dist_report.lua ERLANGEN.tsv BEAM.tsv
-- Each input holds lines `shape <TAB> median <TAB> unit <TAB> samples`
-- (bench/dist.lua, bench/dist_beam.erl); a missing or empty BEAM file (no
-- `erl`) leaves its columns empty and its targets "n/a".

package.path = (arg[0]:match("^(.*)/") or ".") .. "/?.lua;" .. package.path
local lib = require "bench_lib"
local load = lib.load

local ours, beam = load(arg[1]), load(arg[2])

-- shape, label, unit, target: { op, limit of ours ÷ BEAM, text }
local rows = {
  { "dist_pingpong", "remote ping-pong round trip", "µs", { "<=", 1.0, "≤ 1.0× BEAM" } },
  { "dist_oneway", "remote one-way throughput, {seq=i, tag=\"x\"}", "msg/s", { ">=", 3, "≥ 3× BEAM" } },
}

local function fmt(x)
  if x == nil then return "—" end
  if x >= 1e5 then return string.format("%.3g", x) end
  if x >= 100 then return string.format("%.0f", x) end
  if x >= 10 then return string.format("%.1f", x) end
  return string.format("%.3g", x)
end

local function spread(t) return lib.spread(t, fmt) end

print("| shape | median | unit | runs | BEAM | BEAM runs | ÷ BEAM | target | result |")
print("|---|---:|---|---|---:|---|---:|---|---|")
local tally = {}
for _, row in ipairs(rows) do
  local shape, label, unit, target = row[1], row[2], row[3], row[4]
  local m, b = ours[shape] and ours[shape].med, beam[shape] and beam[shape].med
  local r = m and b and b ~= 0 and m / b or nil
  local op, limit, text = target[1], target[2], target[3]
  local result = lib.verdict(tally, ours[shape] and not m, r, op, limit, b == nil)
  local mtext = m and fmt(m) or (ours[shape] and ours[shape].raw) or "—"
  print(string.format("| %s | %s | %s | %s | %s | %s | %s | %s | %s |", label, mtext, unit,
                      spread(ours[shape]), fmt(b), spread(beam[shape]),
                      r and string.format("%.2f×", r) or "—", text, result))
end
print()
print(lib.summary(tally))
