-- Kills that reach code Lua runs with hooks off: xpcall message handlers
-- and __gc finalizers, directly and inside coroutines, and what process
-- states keep of stock xpcall, setmetatable and finalizers while they do.
local erlangen = require "erlangen"
local H = require "spec.helpers"

local self = erlangen.self

local TSAN = "under ThreadSanitizer: asynchronous signals are deferred"

-- Spawns `body(parent)`, waits for its "ready", sends exit(pid, reason) and
-- returns the DOWN reason and the seconds from the exit call to the DOWN.
local function exit_after_ready(body, reason)
  local pid, ref = erlangen.spawn_monitor(body, self())
  H.recv(H.equals("ready"), "the victim to start its loop")
  local t0 = erlangen.now()
  erlangen.exit(pid, reason or "kill")
  local got = H.await_down(ref, "the DOWN of the victim")
  return got, erlangen.now() - t0
end

-- Runs `fn()` in a process of its own (whose xpcall and setmetatable are the
-- kernel's) and returns what it returned, packed; raises with its error.
local function in_process(fn)
  local pid, ref = erlangen.spawn_monitor(function(parent)
    erlangen.send(parent, {"result", table.pack(pcall(fn))})
  end, self())
  local r = H.recv(H.tagged("result"), "the process's result")[2]
  H.await_down(ref, "the end of " .. tostring(pid))
  if not r[1] then error("the process raised: " .. tostring(r[2]), 2) end
  return table.pack(table.unpack(r, 2, r.n))
end

-- A loop that tells the parent "ready" on its first entry only, then spins
-- without calling anything. (A call into erlangen raises for a doomed
-- process, so a loop that called one on every entry would end anyway.)
local function spinner(parent)
  local told = false
  return function()
    if not told then told = true; erlangen.send(parent, "ready") end
    while true do end
  end
end

describe("a kill", function()
  before_each(H.before)
  after_each(H.after)

  it("ends a loop in an xpcall message handler within milliseconds", function()
    if H.under_tsan() then return pending(TSAN) end
    local reason, dt = exit_after_ready(function(parent)
      xpcall(error, spinner(parent))
    end)
    assert.are.equal("killed", reason)
    assert.is_true(dt < 0.5, "took " .. dt .. " s")
  end)

  it("ends a loop in the protected function of an xpcall whose handler loops too", function()
    if H.under_tsan() then return pending(TSAN) end
    local reason, dt = exit_after_ready(function(parent)
      xpcall(spinner(parent), function() while true do end end)
    end)
    assert.are.equal("killed", reason)
    assert.is_true(dt < 0.5, "took " .. dt .. " s")
  end)

  it("ends a loop in an xpcall message handler inside a coroutine", function()
    if H.under_tsan() then return pending(TSAN) end
    local reason, dt = exit_after_ready(function(parent)
      coroutine.wrap(function() xpcall(error, spinner(parent)) end)()
    end)
    assert.are.equal("killed", reason)
    assert.is_true(dt < 0.5, "took " .. dt .. " s")
  end)

  it("ends a loop in a __gc finalizer within milliseconds", function()
    if H.under_tsan() then return pending(TSAN) end
    local reason, dt = exit_after_ready(function(parent)
      setmetatable({}, {__gc = spinner(parent)})
      collectgarbage()
    end)
    assert.are.equal("killed", reason)
    assert.is_true(dt < 0.5, "took " .. dt .. " s")
  end)

  it("ends a loop in a __gc finalizer that a collection inside a coroutine runs", function()
    if H.under_tsan() then return pending(TSAN) end
    local reason, dt = exit_after_ready(function(parent)
      coroutine.wrap(function()
        setmetatable({}, {__gc = spinner(parent)})
        collectgarbage()
      end)()
    end)
    assert.are.equal("killed", reason)
    assert.is_true(dt < 0.5, "took " .. dt .. " s")
  end)

  it("ends a loop in a finalizer set with debug.setmetatable", function()
    if H.under_tsan() then return pending(TSAN) end
    local reason, dt = exit_after_ready(function(parent)
      debug.setmetatable({}, {__gc = spinner(parent)})
      collectgarbage()
    end)
    assert.are.equal("killed", reason)
    assert.is_true(dt < 0.5, "took " .. dt .. " s")
  end)

  it("ends a loop in a finalizer that runs as the process's state closes, as killed", function()
    if H.under_tsan() then return pending(TSAN) end
    local reason, dt = exit_after_ready(function(parent)
      KEPT = setmetatable({}, {__gc = spinner(parent)})   -- a global: collected at the close
    end)
    assert.are.equal("killed", reason)
    assert.is_true(dt < 0.5, "took " .. dt .. " s")
  end)

  it("ends a loop in the finalizer's xpcall handler", function()
    if H.under_tsan() then return pending(TSAN) end
    local reason, dt = exit_after_ready(function(parent)
      setmetatable({}, {__gc = function() xpcall(error, spinner(parent)) end})
      collectgarbage()
    end)
    assert.are.equal("killed", reason)
    assert.is_true(dt < 0.5, "took " .. dt .. " s")
  end)
end)

describe('exit(pid, "shutdown") to a process that does not trap exits', function()
  before_each(H.before)
  after_each(H.after)

  it("ends a loop in an xpcall message handler with reason shutdown", function()
    if H.under_tsan() then return pending(TSAN) end
    local reason, dt = exit_after_ready(function(parent)
      xpcall(error, spinner(parent))
    end, "shutdown")
    assert.are.equal("shutdown", reason)
    assert.is_true(dt < 0.5, "took " .. dt .. " s")
  end)

  it("ends a loop in a __gc finalizer with reason shutdown", function()
    if H.under_tsan() then return pending(TSAN) end
    local reason, dt = exit_after_ready(function(parent)
      setmetatable({}, {__gc = spinner(parent)})
      collectgarbage()
    end, "shutdown")
    assert.are.equal("shutdown", reason)
    assert.is_true(dt < 0.5, "took " .. dt .. " s")
  end)
end)

describe("xpcall in a process", function()
  before_each(H.before)
  after_each(H.after)

  it("returns false and the handler's value for an ordinary error", function()
    local r = in_process(function()
      return xpcall(function() error("boom", 0) end, function(m) return "handled " .. m, "dropped" end)
    end)
    assert.are.same({n = 2, false, "handled boom"}, r)
  end)

  it("returns true and every result when nothing fails", function()
    local r = in_process(function()
      return xpcall(function(...) return ... end, print, 1, nil, 3)
    end)
    assert.are.same({n = 4, true, 1, nil, 3}, r)
  end)

  it("hands the handler a non-string error value unchanged", function()
    local r = in_process(function()
      local e = {code = 7}
      return xpcall(function() error(e) end, function(x) return x == e and x.code end)
    end)
    assert.are.same({n = 2, false, 7}, r)
  end)

  it("lets the handler see erlangen.exit's exit object", function()
    local r = in_process(function()
      return xpcall(function() erlangen.exit("bye") end, function(x) return type(x) == "table" and x.reason end)
    end)
    assert.are.same({n = 2, false, "bye"}, r)
  end)

  it("gives a traceback in the handler that names the erroring function", function()
    local r = in_process(function()
      local function failing_step() error("deep") end
      return xpcall(function() failing_step() end, function(m) return debug.traceback(m, 2) end)
    end)
    assert.is_false(r[1])
    assert.matches("deep\nstack traceback:", r[2], 1, true)
    assert.matches("'failing_step'", r[2], 1, true)
  end)

  it("says error in error handling when the handler itself fails", function()
    local r = in_process(function()
      return xpcall(function() error("first") end, function() error("again") end)
    end)
    assert.are.same({n = 2, false, "error in error handling"}, r)
  end)

  it("refuses a handler that is not a function", function()
    local r = in_process(function() return pcall(xpcall, print, 42) end)
    assert.are.same({n = 2, false, "bad argument #2 to 'xpcall' (function expected, got number)"}, r)
  end)

  it("handles a stack overflow with debug.traceback as its handler", function()
    local r = in_process(function()
      local function rec() return 1 + rec() end
      return xpcall(rec, debug.traceback)
    end)
    assert.is_false(r[1])
    assert.matches("stack overflow", r[2], 1, true)
  end)

  it("lets a coroutine yield across it and resume", function()
    local r = in_process(function()
      local co = coroutine.wrap(function(a)
        return xpcall(function() local b = coroutine.yield(a + 1); return b * 2 end, print)
      end)
      local first = co(10)
      return first, co(21)
    end)
    assert.are.same({n = 3, 11, true, 42}, r)
  end)

  it("calls the handler for an error raised after a yield inside it", function()
    local r = in_process(function()
      local co = coroutine.wrap(function()
        return xpcall(function() coroutine.yield(); error("late", 0) end, function(m) return "handled " .. m end)
      end)
      co()
      return co()
    end)
    assert.are.same({n = 2, false, "handled late"}, r)
  end)
end)

describe("finalizers in a process", function()
  before_each(H.before)
  after_each(H.after)

  it("still run when their object is collected", function()
    local r = in_process(function()
      local ran = {}
      local mt = {__gc = function(o) ran[#ran + 1] = o.n end}
      setmetatable({n = 1}, mt)
      setmetatable({n = 2}, mt)
      collectgarbage()
      table.sort(ran)
      return table.concat(ran, ",")
    end)
    assert.are.same({n = 1, "1,2"}, r)
  end)

  it("may fail with only a warning: the process goes on", function()
    local r = in_process(function()
      setmetatable({}, {__gc = function() error("in gc") end})
      collectgarbage()
      return "went on"
    end)
    assert.are.same({n = 1, "went on"}, r)
  end)

  it("run one inside another when a finalizer calls a __gc by hand", function()
    local r = in_process(function()
      local log = {}
      local inner = {__gc = function(o) log[#log + 1] = "inner " .. tostring(o) end}
      setmetatable({}, inner)
      setmetatable({}, {__gc = function()
        log[#log + 1] = "outer"
        inner.__gc("by hand")
        log[#log + 1] = "outer again"
      end})
      collectgarbage()
      return table.concat(log, ", ")
    end)
    assert.matches("outer, inner by hand, outer again", r[1], 1, true)
  end)

  it("keep running after one of them failed", function()
    local r = in_process(function()
      local ran = 0
      local ok_mt = {__gc = function() ran = ran + 1 end}
      setmetatable({}, ok_mt)
      collectgarbage()
      setmetatable({}, {__gc = function() error("in gc") end})
      collectgarbage()
      setmetatable({}, ok_mt)
      setmetatable({}, ok_mt)
      collectgarbage()
      return ran
    end)
    assert.are.same({n = 1, 3}, r)
  end)

  it("close their to-be-closed variables when they fail", function()
    local r = in_process(function()
      local closed = false
      setmetatable({}, {__gc = function()
        local _ <close> = setmetatable({}, {__close = function() closed = true end})
        error("in gc")
      end})
      collectgarbage()
      return closed
    end)
    assert.are.same({n = 1, true}, r)
  end)

  it("cannot yield: the yield fails inside the finalizer, which can catch it", function()
    local r = in_process(function()
      local got
      setmetatable({}, {__gc = function() got = table.pack(pcall(coroutine.yield)) end})
      collectgarbage()
      return got[1], got[2]
    end)
    assert.are.same({n = 2, false, "attempt to yield across a C-call boundary"}, r)
  end)

  it("leave getmetatable returning the metatable that was set", function()
    local r = in_process(function()
      local mt = {__gc = function() end, __index = {x = 1}}
      local o = setmetatable({}, mt)
      return getmetatable(o) == mt, o.x, type(mt.__gc)
    end)
    assert.are.same({n = 3, true, 1, "function"}, r)
  end)

  it("leave a metatable's __gc callable by hand, with its arguments", function()
    local r = in_process(function()
      local mt = setmetatable({}, {__gc = function(...) return select("#", ...), ... end})
      return getmetatable(mt).__gc("a", "b")
    end)
    assert.are.same({n = 3, 2, "a", "b"}, r)
  end)

  it("keep setmetatable's checks and __metatable's protection", function()
    local r = in_process(function()
      local locked = setmetatable({}, {__metatable = "locked"})
      return select(2, pcall(setmetatable, locked, {})), getmetatable(locked),
        select(2, pcall(setmetatable, {}, 1))
    end)
    assert.are.same({n = 3, "cannot change a protected metatable", "locked",
      "bad argument #2 to 'setmetatable' (nil or table expected, got number)"}, r)
  end)
end)

describe("a loop where no kill can land", function()
  -- A __gc set after setmetatable is not wrapped (doc/semantics.md): the
  -- finalizer runs with hooks off, so only the node's stop ends the wait.
  local BIN = os.getenv("ERLANGEN_BIN") or "build/erlangen"
  local GRACE = 0.2
  local SCRIPT = [[
    local erlangen = require "erlangen"
    local me = erlangen.self()
    erlangen.spawn(function()
      local mt = {__gc = true}
      setmetatable({}, mt)
      mt.__gc = function() erlangen.send(me, "looping"); while true do end end
      collectgarbage()
    end)
    print(erlangen.receive(5))
  ]]

  it("does not keep the node from exiting after the grace period and the kill's 2 s", function()
    local path = os.tmpname()
    local f = assert(io.open(path, "w")); f:write(SCRIPT); f:close()
    local t0 = erlangen.now()
    local out = io.popen(string.format("ERLANGEN_GRACE=%g timeout -k 2 20 '%s' '%s'", GRACE, BIN, path))
    local text = out:read("a")
    local ok, _, code = out:close()
    local dt = erlangen.now() - t0
    os.remove(path)
    assert.are.equal("looping\n", text)
    assert.is_true(ok, "exit status " .. tostring(code))
    assert.is_true(dt < GRACE + 2 + 2, "took " .. dt .. " s")
  end)
end)
