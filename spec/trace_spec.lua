-- erlangen.trace: the events of a traced process (send, receive, spawn,
-- exit, link) reach its tracer in order; "all" traces every process but the
-- tracer; a flooded tracer drops and counts while the traced process goes
-- on; a tracer that ends stops the tracing; bad arguments.
local erlangen = require "erlangen"
local H = require "spec.helpers"

local self = erlangen.self

local ALL = {send = true, ["receive"] = true, spawn = true, exit = true, link = true}

local function is_trace(pid, event)
  return function(m)
    return type(m) == "table" and m[1] == "trace" and (pid == nil or m[2] == pid) and (event == nil or m[3] == event)
  end
end

-- The next n trace messages of pid, as "event detail" strings; sends also
-- say whether they went to `to`.
local function events_of(pid, n, to)
  local got = {}
  for _ = 1, n do
    local m = H.recv(is_trace(pid), "trace event " .. (#got + 1) .. " after " .. H.show(got))
    local detail = m[4]
    if type(detail) == "table" then detail = tostring(detail[1]) .. ":" .. tostring(detail[3]) end
    if m[3] == "send" and to then detail = detail .. (m[5] == to and " to" or " elsewhere") end
    got[#got + 1] = m[3] .. " " .. tostring(detail)
  end
  return got
end

describe("erlangen.trace", function()
  before_each(H.before)
  after_each(function()
    erlangen.trace("all", false)
    H.after()
  end)

  it("delivers the events of a traced ping-pong in order, with each message and its destination", function()
    local pong = erlangen.spawn(function()
      while true do
        local m = erlangen.receive()
        erlangen.send(m[2], {"pong", m[2], m[3]})
      end
    end)
    local ping = erlangen.spawn(function(to)
      erlangen.receive(function(m) return m == "go" end)
      for i = 1, 3 do
        erlangen.send(to, {"ping", erlangen.self(), i})
        erlangen.receive()
      end
    end, pong)
    assert.is_true(erlangen.trace(ping, ALL, self()))
    erlangen.send(ping, "go")
    assert.are.same({"receive go", "send ping:1 to", "receive pong:1", "send ping:2 to", "receive pong:2",
                     "send ping:3 to", "receive pong:3", "exit normal"}, events_of(ping, 8, pong))
    H.refute_message(is_trace(), "a trace of an untraced process")
    erlangen.exit(pong, "kill")
  end)

  it("traces only the events asked for: spawn, link and unlink, and an exit with its reason", function()
    local p = erlangen.spawn(function(parent)
      erlangen.receive(function(m) return m == "go" end)
      erlangen.send(parent, "not traced")
      erlangen.link(parent)
      erlangen.unlink(parent)
      local child = erlangen.spawn(function() end)
      erlangen.send(parent, {"child", child})
      erlangen.exit("enough")
    end, self())
    erlangen.trace(p, {spawn = true, link = true, exit = true}, self())
    erlangen.send(p, "go")
    local child = H.recv(H.tagged("child"), "the child")[2]
    local seen = {}
    for _ = 1, 4 do
      local m = H.recv(is_trace(p), "a trace of p")
      seen[#seen + 1] = {m[3], m[4]}
    end
    assert.are.same({{"link", self()}, {"unlink", self()}, {"spawn", child}, {"exit", "enough"}}, seen)
  end)

  it("with \"all\" traces every process, new ones too, but the tracer", function()
    local tracer = self()
    erlangen.trace("all", {spawn = true, exit = true}, tracer)
    local a = erlangen.spawn(function() erlangen.spawn(function() end) end)
    local m = H.recv(is_trace(a, "spawn"), "a's spawn")
    local b = m[4]
    H.recv(is_trace(b, "exit"), "the exit of a's child")
    H.recv(is_trace(a, "exit"), "a's exit")
    erlangen.spawn(function() end)   -- the tracer's own spawn is not traced
    H.refute_message(is_trace(tracer), "a trace of the tracer itself")
    erlangen.trace("all", false)
    local c = erlangen.spawn(function() end)
    H.refute_message(is_trace(c), "a trace after trace(\"all\", false)")
  end)

  it("stops with trace(pid, false)", function()
    local p = erlangen.spawn(function()
      while true do erlangen.receive() end
    end)
    erlangen.trace(p, {["receive"] = true}, self())
    erlangen.send(p, 1)
    H.recv(is_trace(p, "receive"), "the first receive")
    erlangen.trace(p, false)
    erlangen.send(p, 2)
    H.refute_message(is_trace(p), "a trace after trace(pid, false)")
    erlangen.exit(p, "kill")
  end)

  it("drops and counts what a flooded tracer cannot take, and the traced process never waits for it", function()
    local tracer = erlangen.spawn_opt({mailbox = 16}, function()
      erlangen.receive(function(m) return m == "never" end)
    end)
    local sink = H.idle({mailbox = 100000})
    local p = erlangen.spawn(function(to, parent)
      erlangen.receive(function(m) return m == "go" end)
      for i = 1, 5000 do erlangen.send(to, i) end
      erlangen.send(parent, "sent all")
    end, sink, self())
    erlangen.trace(p, {send = true}, tracer)
    erlangen.send(p, "go")
    H.recv(function(m) return m == "sent all" end, "the traced process's 5,000 sends")
    -- 5,001 sends traced ("sent all" too, whose trace may come just after it)
    H.eventually(function() return erlangen.info(tracer).dropped == 5001 - 16 end, "the drops counted")
    assert.are.equal(16, erlangen.info(tracer).mailbox)
    erlangen.exit(tracer, "kill")
  end)

  it("stops tracing when the tracer ends", function()
    local tracer = erlangen.spawn(function() erlangen.receive() end)
    local p = erlangen.spawn(function()
      while true do erlangen.receive() end
    end)
    erlangen.trace(p, {["receive"] = true}, tracer)
    local ref = erlangen.monitor(tracer)
    erlangen.exit(tracer, "kill")
    H.await_down(ref)
    erlangen.send(p, 1)
    H.eventually(function() return erlangen.info(p).received == 1 end, "p's receive")
    erlangen.trace(p, {["receive"] = true}, self())   -- traced again, to a live tracer
    erlangen.send(p, 2)
    assert.are.equal(2, H.recv(is_trace(p, "receive"), "the receive")[4])
    erlangen.exit(p, "kill")
  end)

  it("refuses bad arguments", function()
    local p = H.idle()
    local function err(...)
      local args = table.pack(...)
      return H.error_of(function() erlangen.trace(table.unpack(args, 1, args.n)) end)
    end
    assert.matches("bad argument #1 to 'trace'", err("x", ALL, self()), 1, true)
    assert.matches("bad argument #2 to 'trace' (table expected", err(p, 1, self()), 1, true)
    assert.matches("trace: unknown event 'call'", err(p, {call = true}, self()), 1, true)
    assert.matches("bad argument #3 to 'trace'", err(p, ALL, "me"), 1, true)
    assert.matches("trace: the tracer", err(p, ALL, H.dead_pid()), 1, true)
    assert.matches("trace: <", err(H.dead_pid(), ALL, self()), 1, true)
    assert.matches("a process cannot trace itself", err(p, ALL, p), 1, true)
  end)
end)
