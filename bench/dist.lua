-- erlangen side of the distribution bench: two erlangen OS processes, node A
-- (this one) and node B (started by it), linked over loopback with a
-- temporary cluster key. One shape per run, like bench/erlangen.lua.
--
-- Usage: build/erlangen bench/dist.lua SHAPE COUNT REPS
--   SHAPE: pingpong | oneway
--   (build/erlangen bench/dist.lua serve KEY_FILE is node B; A starts it.)
-- Prints one tab-separated line per measurement:
--   shape <TAB> median <TAB> unit <TAB> samples...
-- The same shapes, on two BEAM nodes, are in bench/dist_beam.erl.
local E = require "erlangen"

local HOST = "127.0.0.1"
local NAME_A, NAME_B = "bench_a@" .. HOST, "bench_b@" .. HOST
local TICK = 15          -- seconds; B ends when A has been gone this long
local IDLE = 300         -- seconds B waits for a request before it gives up

local function start(name, key)
  return E.start_node { name = name, listen = HOST .. ":0", key_file = key,
                        port_mapper = false, tick = TICK }
end

-- ---- node B ----

-- echo: sends back to `a` everything it gets, until "stop"
local function echo(a)
  while true do
    local m = E.receive()
    if m == "stop" then return end
    E.send(a, m)
  end
end

-- sink: takes n messages {seq = i, tag = "x"}, then tells `a` how many came
-- and how many were out of sequence
local function sink(a, n)
  local got, out_of_order, expect = 0, 0, 1
  for _ = 1, n do
    local m = E.receive(10)
    if not m then break end
    got = got + 1
    if m.seq ~= expect or m.tag ~= "x" then out_of_order = out_of_order + 1 end
    expect = m.seq + 1
  end
  E.send(a, { "done", got, out_of_order })
end

-- B's main process, registered as "bench": spawns echoes and sinks on
-- request, ends on "stop", when A's node goes down, or after IDLE seconds
-- without a request.
local function serve(key)
  local _, port = start(NAME_B, key)
  E.register("bench", E.self())
  io.write("port ", port, "\n")
  io.flush()
  local watching = false
  while true do
    local m = E.receive(IDLE)
    if m == nil or m == "stop" or (type(m) == "table" and m[1] == "nodedown") then break end
    local kind, from = m[1], m[2]
    if not watching then E.monitor_node(E.node(from)) watching = true end
    if kind == "echo" then
      E.send(from, { "echo", E.spawn(echo, from) })
    elseif kind == "sink" then
      -- A mailbox that holds the whole stream: a message that arrives over a
      -- link at a full mailbox is dropped, and the bench counts every one.
      E.send(from, { "sink", E.spawn_opt({ mailbox = m[3] + 64 }, sink, from, m[3]) })
    end
  end
  os.exit(0)
end

-- ---- node A ----

package.path = (arg[0]:match("^(.*)/") or ".") .. "/?.lua;" .. package.path
local report = require("bench_lib").report

-- A fresh 32-byte key in a file of mode 0600 (os.tmpname uses mkstemp).
local function make_key()
  local path = os.tmpname()
  local rnd = assert(io.open("/dev/urandom", "rb"))
  local bytes = rnd:read(32)
  rnd:close()
  local f = assert(io.open(path, "wb"))
  f:write(bytes)
  f:close()
  assert(os.execute("chmod 600 '" .. path .. "'"))
  return path
end

-- Asks B's "bench" process for a new echo or sink; returns its pid.
local function request(b, kind, ...)
  assert(E.send({ "bench", b }, { kind, E.self(), ... }, 10), "no link to node B")
  local m = assert(E.receive(10), "node B did not answer")
  assert(m[1] == kind, "unexpected answer from node B")
  return m[2]
end

-- ping-pong: n round trips between this process and an echo on node B
local function pingpong(b, n)
  local echo_pid = request(b, "echo")
  for i = 1, 100 do  -- warm-up, not timed
    E.send(echo_pid, i)
    assert(E.receive(10) == i, "ping-pong: no reply")
  end
  local t0 = E.now()
  for i = 1, n do
    E.send(echo_pid, i)
    assert(E.receive(10) == i, "ping-pong: wrong or no reply")
  end
  local dt = E.now() - t0
  E.send(echo_pid, "stop")
  return dt / n * 1e6
end

-- one-way: n tables {seq = i, tag = "x"} streamed to a sink on node B; send
-- waits (up to 30 s) while the link's outgoing buffer is full. The clock
-- stops when the sink reports the last one.
local function oneway(b, n)
  local sink_pid = request(b, "sink", n)
  local refused = 0
  local t0 = E.now()
  for i = 1, n do
    if not E.send(sink_pid, { seq = i, tag = "x" }, 30) then refused = refused + 1 end
  end
  local m = assert(E.receive(60), "one-way: no report from the sink")
  local dt = E.now() - t0
  assert(m[1] == "done", "one-way: unexpected message")
  local got, out_of_order = m[2], m[3]
  if refused > 0 or got ~= n or out_of_order > 0 then
    error(string.format("one-way: %d sent, %d refused, %d received, %d out of order",
                        n, refused, got, out_of_order))
  end
  return n / dt
end

local function main(shape, count, reps)
  local fn = ({ pingpong = pingpong, oneway = oneway })[shape]
  if not fn or not count or not reps then
    io.stderr:write("usage: erlangen bench/dist.lua pingpong|oneway COUNT REPS\n")
    os.exit(2)
  end
  local key = make_key()
  local ok, err = pcall(function()
    start(NAME_A, key)
    local exe = arg[-1] or "build/erlangen"
    local peer = assert(io.popen(string.format("exec '%s' '%s' serve '%s'", exe, arg[0], key)))
    local line = peer:read("l")
    local port = line and line:match("^port (%d+)$")
    if not port then error("node B did not start: " .. tostring(line)) end
    local b = NAME_B .. ":" .. port
    local ok, why = pcall(function()
      assert(E.connect(b))
      local unit = shape == "pingpong" and "us/rt" or "msg/s"
      local v = {}
      for i = 1, reps do v[i] = fn(b, count) end
      report("dist_" .. shape, unit, v)
    end)
    E.send({ "bench", b }, "stop", 1)
    peer:close()
    if not ok then error(why, 0) end
  end)
  os.remove(key)
  if not ok then
    io.stderr:write("dist bench: ", tostring(err), "\n")
    os.exit(1)
  end
end

if arg[1] == "serve" then
  serve(arg[2])
else
  main(arg[1], tonumber(arg[2]), tonumber(arg[3] or 5))
end
