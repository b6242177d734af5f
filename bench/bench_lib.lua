-- bench/bench_lib.lua — what the bench scripts share: the result line they
-- print (shape <TAB> median <TAB> unit <TAB> samples) and the reading of those
-- lines by the report scripts. Scripts load it with
--   package.path = (arg[0]:match("^(.*)/") or ".") .. "/?.lua;" .. package.path
-- It is for the scripts' own code only: a function spawned into a process
-- must not capture it (a new state's package.path does not reach bench/).

local lib = {}

function lib.median(v)
  local s = table.move(v, 1, #v, 1, {})
  table.sort(s)
  local n = #s
  if n % 2 == 1 then return s[(n + 1) // 2] end
  return (s[n // 2] + s[n // 2 + 1]) / 2
end

local function g(x)
  if math.type(x) == "integer" then return string.format("%d", x) end
  return string.format("%.4g", x)
end

-- Prints one result line: the median of the samples `v`, then the samples.
function lib.report(name, unit, v)
  local fs = {}
  for i, x in ipairs(v) do fs[i] = g(x) end
  io.write(name, "\t", g(lib.median(v)), "\t", unit, "\t", table.concat(fs, ","), "\n")
  io.flush()
end

-- The result lines of a file, by shape: {med=, raw=, unit=, samples=}; an
-- empty table for a missing file.
function lib.load(path)
  local t = {}
  local f = path and io.open(path)
  if not f then return t end
  for line in f:lines() do
    local shape, med, unit, samples = line:match("^([%w_]+)\t([^\t]*)\t([^\t]*)\t?(.*)$")
    if shape then t[shape] = { med = tonumber(med), raw = med, unit = unit, samples = samples } end
  end
  f:close()
  return t
end

-- "min–max" of the samples behind a median, each written with fmt; "" for
-- one sample or none.
function lib.spread(t, fmt)
  if not t or not t.samples or t.samples == "" then return "" end
  local lo, hi
  for x in t.samples:gmatch("[^,]+") do
    x = tonumber(x)
    if x then lo, hi = math.min(lo or x, x), math.max(hi or x, x) end
  end
  if not lo or lo == hi then return "" end
  return fmt(lo) .. "–" .. fmt(hi)
end

-- The verdict on one target, counted in `tally` (misses, unmeasured):
-- "pass" or "**miss**" for the ratio x against `op limit`, "**miss**
-- (failed)" when the shape ran and failed, "n/a" when x is missing
-- ("n/a (no BEAM)" when BEAM is what is missing).
function lib.verdict(tally, failed, x, op, limit, no_beam)
  local result
  if failed then
    result = "**miss** (failed)"
  elseif x == nil then
    result = no_beam and "n/a (no BEAM)" or "n/a"
  elseif (op == "<=" and x <= limit) or (op == ">=" and x >= limit) then
    result = "pass"
  else
    result = "**miss**"
  end
  if result:find("miss") then tally.misses = (tally.misses or 0) + 1 end
  if result:find("n/a") then tally.unmeasured = (tally.unmeasured or 0) + 1 end
  return result
end

-- The line under a table: how many targets were missed or not measured.
function lib.summary(tally)
  local misses, unmeasured = tally.misses or 0, tally.unmeasured or 0
  local verdict = misses == 0 and "All measured targets met" or misses .. " target(s) missed"
  return verdict .. (unmeasured > 0 and ", " .. unmeasured .. " not measured." or ".")
end

return lib
