-- erlangen.timer: send_after, send_interval, cancel and sleep over one timer
-- service; deadline order, never early, 10,000 pending timers, bad arguments.
local erlangen = require "erlangen"
local timer = require "erlangen.timer"
local H = require "spec.helpers"

local self = erlangen.self

-- Receives `n` messages {tag, i, deadline}, checking on arrival that the
-- deadline has passed; returns them in arrival order.
local function collect(tag, n)
  local got = {}
  for k = 1, n do
    local m = H.recv(H.tagged(tag), string.format("timer message %d of %d", k, n))
    local now = erlangen.now()
    assert(now >= m[3], string.format("message %d arrived %.6fs before its deadline", m[2], m[3] - now))
    got[#got + 1] = m
  end
  return got
end

local function shuffled(n)
  local t = {}
  for i = 1, n do t[i] = i end
  for i = n, 2, -1 do
    local j = math.random(i)
    t[i], t[j] = t[j], t[i]
  end
  return t
end

-- Starts `n` timers to `dest` at the absolute deadlines base + i * step
-- (i = 1..n, in shuffled order unless `in_order`); the messages are
-- {tag, i, deadline}. Then waits until the service has taken every request
-- and checks that the first deadline had not passed by then: a timer that
-- reaches the service after an earlier deadline has fired may rightly come
-- after it, so the order check needs them all pending first.
local function start_timers(dest, tag, n, base, step, in_order)
  local order = {}
  for i = 1, n do order[i] = i end
  if not in_order then order = shuffled(n) end
  for _, i in ipairs(order) do
    local deadline = base + i * step
    timer.send_after(deadline, dest, {tag, i, deadline}, {abs = true})
  end
  local pending = timer.stats().pending   -- after every request above
  assert(erlangen.now() < base + step,
    "the service took the requests after the first deadline; the order check needs a later base")
  return pending
end

describe("erlangen.timer", function()
  before_each(H.before)
  after_each(H.after)

  describe("send_after", function()
    it("delivers the message to a pid once the time has passed", function()
      local before = erlangen.now()
      timer.send_after(0.05, self(), {"t", 1, before + 0.05})
      collect("t", 1)
    end)

    it("delivers to a registered name", function()
      erlangen.register("timer_spec_dest", self())
      local before = erlangen.now()
      timer.send_after(0.02, "timer_spec_dest", {"named", 1, before + 0.02})
      collect("named", 1)
    end)

    it("delivers to {name, node} of this node and to an alias", function()
      erlangen.register("timer_spec_dest", self())
      local before = erlangen.now()
      timer.send_after(0.02, {"timer_spec_dest", erlangen.node()}, {"named", 1, before + 0.02})
      collect("named", 1)
      local alias = erlangen.alias()
      before = erlangen.now()
      timer.send_after(0.02, alias, {"aliased", 1, before + 0.02})
      collect("aliased", 1)
      erlangen.unalias(alias)
    end)

    it("returns a ref without waiting for the service", function()
      local tref = timer.send_after(10, self(), "later")
      assert.is_truthy(tostring(tref):match("^#Ref<"), "expected a ref, got " .. H.show(tref))
    end)

    it("fires timers with shuffled deadlines in deadline order", function()
      start_timers(self(), "ord", 200, erlangen.now() + 0.3, 0.001)
      local got = collect("ord", 200)
      for k, m in ipairs(got) do
        assert(m[2] == k, string.format("arrival %d was timer %d", k, m[2]))
      end
    end)

    it("fires timers with equal deadlines in creation order", function()
      start_timers(self(), "seq", 100, erlangen.now() + 0.2, 0, true)
      local got = collect("seq", 100)
      for k, m in ipairs(got) do
        assert(m[2] == k, string.format("arrival %d was timer %d", k, m[2]))
      end
    end)

    it("takes an absolute deadline on the erlangen.now() clock", function()
      local deadline = erlangen.now() + 0.03
      timer.send_after(deadline, self(), {"abs", 1, deadline}, {abs = true})
      collect("abs", 1)
    end)

    it("never delivers before the deadline", function()
      for i = 1, 200 do
        local before = erlangen.now()
        local s = math.random() * 0.05
        timer.send_after(s, self(), {"early", i, before + s})
      end
      collect("early", 200)   -- checks now >= deadline on each arrival
    end)

    it("fires a zero delay at once", function()
      local before = erlangen.now()
      timer.send_after(0, self(), {"zero", 1, before})
      collect("zero", 1)
    end)

    it("drops a message for a dead pid and keeps serving", function()
      timer.send_after(0, H.dead_pid(), "lost")
      local before = erlangen.now()
      timer.send_after(0.01, self(), {"after", 1, before + 0.01})
      collect("after", 1)
    end)
  end)

  describe("cancel", function()
    it("returns the seconds that were left", function()
      local tref = timer.send_after(5, self(), "never")
      local left = timer.cancel(tref)
      assert.are.equal("number", type(left))
      assert(left > 4 and left <= 5, "expected between 4 and 5 seconds left, got " .. left)
    end)

    it("stops a timer from firing", function()
      local tref = timer.send_after(0.05, self(), "cancelled")
      assert.is_truthy(timer.cancel(tref))
      -- A later timer: had the first one not been cancelled, it would come first.
      timer.send_after(0.1, self(), "witness")
      local m = H.recv(function(x) return x == "cancelled" or x == "witness" end, "the witness timer")
      assert.are.equal("witness", m)
    end)

    it("returns false for a timer that has fired", function()
      local tref = timer.send_after(0, self(), "fired")
      H.recv(H.equals("fired"), "the timer's message")
      assert.is_false(timer.cancel(tref))
    end)

    it("returns false for a timer cancelled already", function()
      local tref = timer.send_after(5, self(), "x")
      assert.is_truthy(timer.cancel(tref))
      assert.is_false(timer.cancel(tref))
    end)

    it("returns false for a ref that is no timer", function()
      timer.service()
      assert.is_false(timer.cancel(erlangen.ref()))
    end)
  end)

  describe("send_interval", function()
    it("fires repeatedly, each tick at or after start + k * interval", function()
      local start = erlangen.now()
      local tref = timer.send_interval(0.02, self(), "tick")
      for k = 1, 5 do
        H.recv(H.equals("tick"), "tick " .. k)
        local now = erlangen.now()
        assert(now >= start + k * 0.02, string.format("tick %d came %.6fs early", k, start + k * 0.02 - now))
      end
      timer.cancel(tref)
    end)

    it("stops when cancelled", function()
      local tref = timer.send_interval(0.01, self(), "tick")
      H.recv(H.equals("tick"), "the first tick")
      local left = timer.cancel(tref)
      assert(type(left) == "number" and left <= 0.01, "expected the time to the next tick, got " .. H.show(left))
      H.drain()   -- ticks sent before the cancel
      -- Any further tick would have a deadline before the witness's.
      timer.send_after(0.05, self(), "witness")
      local m = H.recv(function(x) return x == "tick" or x == "witness" end, "the witness timer")
      assert.are.equal("witness", m)
    end)

    it("is removed when its destination pid ends", function()
      local dest = H.idle()
      timer.send_interval(0.01, dest, "tick")
      assert.are.equal(1, timer.stats().pending)
      erlangen.send(dest, "stop")
      H.exit_reason(dest)
      H.eventually(function() return timer.stats().pending == 0 end, "the interval to be removed")
    end)

    it("to a name is removed when the process that started it ends", function()
      local owner = erlangen.spawn(function()
        timer.send_interval(0.01, "timer_spec_nobody", "tick")
        erlangen.receive(function(m) return m == "stop" end)
      end)
      H.eventually(function() return timer.stats().pending == 1 end, "the interval to start")
      erlangen.send(owner, "stop")
      H.exit_reason(owner)
      H.eventually(function() return timer.stats().pending == 0 end, "the interval to be removed")
    end)
  end)

  describe("with 10,000 pending timers", function()
    -- A collector with room for every message checks order and deadlines.
    local function collector(parent, n)
      local last, early, disorder = 0, 0, 0
      for _ = 1, n do
        local m = erlangen.receive()
        if erlangen.now() < m[3] then early = early + 1 end
        if m[2] ~= last + 1 then disorder = disorder + 1 end
        last = m[2]
      end
      erlangen.send(parent, {"collected", last, early, disorder})
    end

    it("fires them all in deadline order from one process of modest size", function()
      local n = 10000
      local service = timer.service()
      local count = #erlangen.processes()
      local dest = erlangen.spawn_opt({mailbox = n + 10}, collector, self(), n)
      -- Time for the 10,000 requests to reach the service before the first
      -- deadline; ThreadSanitizer makes each one many times slower.
      local base = erlangen.now() + (H.under_tsan() and 8 or 2)
      local pending = start_timers(dest, "big", n, base, 0.0001)
      assert.are.equal(n, pending)
      assert.are.equal(count + 1, #erlangen.processes(), "processes besides the collector appeared")
      local memory = erlangen.info(service).memory
      assert(memory < 16 * 1024 * 1024, "the service holds " .. memory .. " bytes for 10,000 timers")
      local m = H.recv(H.tagged("collected"), "the collector's report", base - erlangen.now() + 10)
      assert.are.same({"collected", n, 0, 0}, m)
      assert.are.same({pending = 0, dropped = 0}, timer.stats())
    end)
  end)

  describe("the service", function()
    it("is one registered process", function()
      local pid = timer.service()
      assert.are.equal(pid, erlangen.whereis("erlangen.timer"))
      assert.are.equal(pid, timer.service())
    end)

    it("is started again after it was killed", function()
      local pid = timer.service()
      erlangen.exit(pid, "kill")
      H.exit_reason(pid)   -- a request queued to it before it died would be lost with it
      local before = erlangen.now()
      timer.send_after(0.01, self(), {"again", 1, before + 0.01})
      collect("again", 1)
      assert.are_not.equal(pid, erlangen.whereis("erlangen.timer"))
    end)

    it("is started once when several processes race to start it", function()
      local old = erlangen.whereis("erlangen.timer")
      if old then
        erlangen.exit(old, "kill")
        H.exit_reason(old)
      end
      for i = 1, 8 do
        erlangen.spawn(function(parent)
          local before = erlangen.now()
          timer.send_after(0.01, parent, {"race", i, before + 0.01})
        end, self())
      end
      collect("race", 8)
      local services = 0
      for _, p in ipairs(erlangen.processes()) do
        local info = erlangen.info(p)
        if info and info.label == "timer" then services = services + 1 end
      end
      assert.are.equal(1, services)
    end)
  end)

  describe("sleep", function()
    it("waits at least the given time", function()
      local before = erlangen.now()
      timer.sleep(0.03)
      assert(erlangen.now() >= before + 0.03, "woke early")
    end)
  end)

  describe("bad arguments", function()
    local function err_of(fn, ...) return tostring(H.error_of(fn, ...)) end
    local here = "timer_spec.lua:%d+: "

    it("refuses negative, NaN, infinite and non-number seconds", function()
      for _, s in ipairs({-1, 0 / 0, math.huge, "1"}) do
        local e = err_of(function() timer.send_after(s, self(), "x") end)
        assert.matches(here .. "bad argument #1 to 'send_after' %(seconds", e)
      end
    end)

    it("refuses a zero or negative interval", function()
      for _, s in ipairs({0, -0.5}) do
        local e = err_of(function() timer.send_interval(s, self(), "x") end)
        assert.matches(here .. "bad argument #1 to 'send_interval' %(seconds must be a positive", e)
      end
    end)

    it("refuses a destination that is not a pid, an alias, a name or {name, node}", function()
      for _, c in ipairs({{{}, "table"}, {"", "an empty name"}, {42, "number"}, {true, "boolean"},
                          {{"t", "nohost"}, "{name, node} with node \"nohost\""}}) do
        local e = err_of(function() timer.send_after(1, c[1], "x") end)
        assert.matches(here, e)
        assert.matches("bad argument #2 to 'send_after' (pid, name or {name, node} expected, got "
          .. c[2] .. ")", e, 1, true)
      end
      local e = err_of(function() timer.send_interval(1, nil, "x") end)
      assert.matches(here, e)
      assert.matches("bad argument #2 to 'send_interval' (pid, name or {name, node} expected, got nil)",
        e, 1, true)
    end)

    it("refuses a nil message and an unsendable one", function()
      local e = err_of(function() timer.send_after(1, self(), nil) end)
      assert.matches(here .. "bad argument #3 to 'send_after' %(message expected, got nil%)", e)
      e = err_of(function() timer.send_after(1, self(), {conn = io.stdout}) end)
      assert.matches(here .. "bad argument #3 to 'send_after' %(msg.conn: cannot send userdata%)", e)
    end)

    it("refuses a tref that is not a ref", function()
      for _, t in ipairs({"ref", 1, {}}) do
        local e = err_of(function() timer.cancel(t) end)
        assert.matches(here .. "bad argument #1 to 'cancel' %(tref expected", e)
      end
      local e = err_of(function() timer.cancel(self()) end)
      assert.matches("tref expected, got pid", e, 1, true)
    end)

    it("refuses a negative sleep", function()
      local e = err_of(function() timer.sleep(-1) end)
      assert.matches(here .. "bad argument #1 to 'sleep'", e)
    end)
  end)
end)
