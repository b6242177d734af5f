-- erlangen side of the bench: one shape per run, so a hang or crash in one
-- shape cannot take the others down (bench/run.sh runs each under `timeout`).
--
-- Usage: build/erlangen bench/erlangen.lua SHAPE COUNT REPS [RING_SIZE]
--   SHAPE: pingpong | oneway | ring | spawn | procs | codec
-- Prints one tab-separated line per measurement:
--   shape <TAB> median <TAB> unit <TAB> samples...
-- The same shapes are written in Erlang in bench/beam.escript and with raw
-- pthreads in bench/floor.c.
local E = require "erlangen"
package.path = (arg[0]:match("^(.*)/") or ".") .. "/?.lua;" .. package.path
local report = require("bench_lib").report

local shape, count, reps = arg[1], tonumber(arg[2]), tonumber(arg[3] or 5)

local function rep(name, unit, f)
  local v = {}
  for i = 1, reps do v[i] = f() end
  report(name, unit, v)
end

local function rss_kib()
  for line in io.lines("/proc/self/status") do
    local kib = line:match("^VmRSS:%s+(%d+)")
    if kib then return tonumber(kib) end
  end
end

-- Wait for the DOWN of each ref in `refs` (a set); other messages are an error.
local function await_downs(refs, n)
  for _ = 1, n do
    local m = assert(E.receive(30))
    assert(type(m) == "table" and m[1] == "DOWN" and refs[m[2]], "unexpected message")
  end
end

-- ping-pong: round trips between the caller and an echo process
local function pingpong(n)
  local echo, ref = E.spawn_monitor(function(parent)
    while true do
      local m = E.receive()
      if m == "stop" then return end
      E.send(parent, m)
    end
  end, E.self())
  local t0 = E.now()
  for i = 1, n do
    E.send(echo, i)
    local r = E.receive()
    assert(r == i, "ping-pong: wrong reply")
  end
  local dt = E.now() - t0
  E.send(echo, "stop")
  await_downs({ [ref] = true }, 1)
  return dt / n * 1e6
end

-- one-way: the caller streams small tables into a bounded mailbox (the
-- default capacity, 1024); send waits for space instead of dropping
local function oneway(n)
  local rx, ref = E.spawn_monitor(function(parent, n)
    for _ = 1, n do
      local m = E.receive()
      assert(m.tag == "x")
    end
    E.send(parent, "done")
  end, E.self(), n)
  local t0 = E.now()
  local dropped = 0
  for i = 1, n do
    if not E.send(rx, { seq = i, tag = "x" }, 30) then dropped = dropped + 1 end
  end
  assert(dropped == 0, "one-way: " .. dropped .. " messages not delivered")
  assert(E.receive(60) == "done", "one-way: no done")
  local dt = E.now() - t0
  await_downs({ [ref] = true }, 1)
  return n / dt
end

-- ring: `size` processes, a token passed `hops` times; start-up not timed
local function ring(size, hops)
  hops = (hops + size - 1) // size * size
  local refs = {}
  local first = E.self()
  for _ = 1, size - 1 do
    local pid, ref = E.spawn_monitor(function(next)
      while true do
        local t = E.receive()
        E.send(next, t == "stop" and t or t - 1)
        if t == "stop" then return end
      end
    end, first)
    first, refs[ref] = pid, true
  end
  local t0 = E.now()
  E.send(first, hops - 1)
  while true do
    local t = E.receive()
    if t <= 0 then break end
    E.send(first, t - 1)
  end
  local dt = E.now() - t0
  E.send(first, "stop")  -- goes round; each member exits once it passed it on
  for _ = 1, size do
    local m = assert(E.receive(30), "ring: teardown timed out")
    assert(m == "stop" or (type(m) == "table" and m[1] == "DOWN" and refs[m[2]]),
           "ring: unexpected message")
  end
  return dt / hops * 1e6
end

-- spawn + exit: spawn a process that returns at once, wait for its DOWN
local function spawn_exit(n)
  local t0 = E.now()
  for _ = 1, n do
    local _, ref = E.spawn_monitor(function() end)
    local m = E.receive()
    assert(m[1] == "DOWN" and m[2] == ref and m[4] == "normal", "spawn: bad DOWN")
  end
  return (E.now() - t0) / n * 1e6
end

-- live processes: spawn up to n idle processes blocked in receive, in
-- batches, each reporting ready before it blocks; RSS delta / count
local function procs(n)
  collectgarbage()
  local r0 = rss_kib()
  local me = E.self()
  local pids, refs, alive, err = {}, {}, 0, nil
  local t0 = E.now()
  local batch = 500
  while alive < n and not err do
    local started = 0
    for _ = 1, math.min(batch, n - alive) do
      local ok, pid, ref = pcall(E.spawn_monitor, function(parent)
        E.send(parent, "ready", 60)
        E.receive()
      end, me)
      if not ok then err = tostring(pid) break end
      started = started + 1
      pids[#pids + 1], refs[ref] = pid, true
    end
    for _ = 1, started do
      local m = E.receive(60)
      if m == "ready" then
        alive = alive + 1
      else  -- a DOWN: the process could not start
        err = err or ("a process died: " .. tostring(m and m[4] or "timeout"))
      end
    end
  end
  local dt = E.now() - t0
  local r1 = rss_kib()
  report("procs", "procs", { alive })
  if alive > 0 then
    report("procs_rss", "KiB/proc", { (r1 - r0) / alive })
    report("procs_spawn", "us/spawn", { dt / #pids * 1e6 })
  end
  if err then io.stderr:write("procs: stopped at ", alive, ": ", err, "\n") end
  for _, pid in ipairs(pids) do E.send(pid, "stop", 30) end
  local downs = 0
  while downs < #pids do
    local m = E.receive(60)
    if not m then break end
    if type(m) == "table" and m[1] == "DOWN" then downs = downs + 1 end
  end
end

-- codec: erlangen.encode + erlangen.decode
local function small() return { id = 42, name = "alice", active = true, score = 3.5 } end

local function nested()
  local users = {}
  for i = 1, 12 do
    users[i] = { id = i, name = "user" .. i, email = "user" .. i .. "@example.org",
                 admin = i % 3 == 0, score = i * 1.5, tags = { "a", "bb", "ccc" } }
  end
  return { kind = "roster", version = 3, users = users }
end

local function codec(t, n)
  local encode, decode = E.encode, E.decode
  local t0 = E.now()
  for _ = 1, n do
    local u = decode(encode(t))
    if u == nil then error("codec: decode gave nil") end
  end
  return (E.now() - t0) / n * 1e6
end

if shape == "pingpong" then
  rep("pingpong", "us/rt", function() return pingpong(count) end)
elseif shape == "oneway" then
  rep("oneway", "msg/s", function() return oneway(count) end)
elseif shape == "ring" then
  local size = tonumber(arg[4] or 1000)
  rep("ring", "us/hop", function() return ring(size, count) end)
elseif shape == "spawn" then
  rep("spawn", "us/spawn", function() return spawn_exit(count) end)
elseif shape == "procs" then
  procs(count)
elseif shape == "codec" then
  local s, t = small(), nested()
  rep("codec_small", "us/op", function() return codec(s, count) end)
  rep("codec_1k", "us/op", function() return codec(t, count // 10) end)
  report("codec_1k_bytes", "bytes", { #E.encode(t) })
else
  io.stderr:write("usage: erlangen bench/erlangen.lua ",
                  "pingpong|oneway|ring|spawn|procs|codec COUNT [REPS [RING_SIZE]]\n")
  os.exit(2)
end
