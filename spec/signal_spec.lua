-- Exit signals, links and monitors: the Erlang matrix, exit/1 and exit/2,
-- kills that reach busy or blocked processes, max_memory, and EXIT/DOWN
-- delivery to full mailboxes.
local erlangen = require "erlangen"
local H = require "spec.helpers"

local self = erlangen.self

-- How a child ends, for each row of the matrix, and the reason its links and
-- monitors then see ("error" is checked by pattern: Lua prefixes file:line).
local endings = {"normal", "error", "kill", "shutdown"}
local seen_reason = {normal = "normal", kill = "killed", shutdown = "shutdown"}

local function check_reason(ending, reason)
  if ending == "error" then
    assert.are.equal("string", type(reason))
    assert.matches(":%d+: child failed$", reason)
  else
    assert.are.equal(seen_reason[ending], reason)
  end
end

-- The child of the matrix: waits for "go" (so that the observer can report
-- it before a link kills the observer), then ends as `ending` says. For
-- "kill" it waits to be killed by the observer.
local function child_body(ending)
  erlangen.receive(function(m) return m == "go" end)
  if ending == "error" then error("child failed")
  elseif ending == "shutdown" then erlangen.exit("shutdown")
  elseif ending == "kill" then erlangen.receive(function() return false end)
  end
end

-- The observer of the matrix, a process of its own so that it may die.
-- It traps exits or not, links to or monitors a child that ends as `ending`,
-- tells the spec the child's pid, and then reports the EXIT/DOWN it gets, or
-- the spec's "ping" when no signal message came (rightly, if it was ignored).
-- Ping and signal come from different senders, so their order is not fixed:
-- after a ping the observer still gives the signal a moment to arrive.
local function observer(parent, kind, trapping, ending)
  erlangen.trap_exit(trapping)
  local child, ref
  if kind == "link" then
    child = erlangen.spawn_link(child_body, ending)
  else
    child, ref = erlangen.spawn_monitor(child_body, ending)
  end
  erlangen.send(parent, {"child", child, ref})
  if ending == "kill" then erlangen.exit(child, "kill") else erlangen.send(child, "go") end
  local function is_signal(m) return type(m) == "table" and (m[1] == "EXIT" or m[1] == "DOWN") end
  local m = erlangen.receive(function(x) return x == "ping" or is_signal(x) end)
  if m == "ping" then m = erlangen.receive(is_signal, 0.5) or "ping" end
  erlangen.send(parent, {"got", m})
end

-- Runs one cell: returns the observer's report (or nil if it sent none), the
-- observer's own exit reason, the child pid and the monitor ref.
local function run_cell(kind, trapping, ending)
  local obs, obs_ref = erlangen.spawn_monitor(observer, self(), kind, trapping, ending)
  local hello = H.recv(H.tagged("child"), "the observer's child pid")
  local child, ref = hello[2], hello[3]
  H.exit_reason(child)                -- the child has ended (DOWN, maybe noproc)
  erlangen.send(obs, "ping")          -- answered only if the observer lives on
  local report, obs_reason
  while obs_reason == nil do
    local m = H.recv(function(m) return type(m) == "table" and (m[1] == "got" or
      (m[1] == "DOWN" and m[2] == obs_ref)) end, "the observer's report or DOWN")
    if m[1] == "got" then report = m[2] else obs_reason = m[4] end
  end
  return report, obs_reason, child, ref
end

describe("exit signals", function()
  before_each(H.before)
  after_each(H.after)

  describe("the Erlang matrix", function()
    for _, ending in ipairs(endings) do
      local how = ending == "kill" and 'killed with exit(pid, "kill")'
        or ending == "error" and "ending with an error"
        or ending == "shutdown" and 'calling exit("shutdown")'
        or "returning normally"

      it("gives a trapping process linked to a child " .. how .. " an EXIT message", function()
        local report, obs_reason, child = run_cell("link", true, ending)
        assert.are.equal("table", type(report), "no EXIT message reached the observer")
        assert.are.equal("EXIT", report[1])
        assert.are.equal(child, report[2])
        check_reason(ending, report[3])
        assert.are.equal("normal", obs_reason)
      end)

      if ending == "normal" then
        it("leaves a non-trapping process linked to a child " .. how .. " alive", function()
          local report, obs_reason = run_cell("link", false, ending)
          assert.are.equal("ping", report)
          assert.are.equal("normal", obs_reason)
        end)
      else
        it("kills a non-trapping process linked to a child " .. how .. " with the same reason", function()
          local report, obs_reason = run_cell("link", false, ending)
          assert.is_nil(report, "the observer survived and reported " .. H.show(report))
          check_reason(ending, obs_reason)
        end)
      end

      for _, trapping in ipairs({true, false}) do
        local who = trapping and "a trapping" or "a non-trapping"
        it("gives " .. who .. " process monitoring a child " .. how .. " a DOWN message", function()
          local report, obs_reason, child, ref = run_cell("monitor", trapping, ending)
          assert.are.equal("table", type(report), "no DOWN message reached the observer")
          assert.are.equal("DOWN", report[1])
          assert.are.equal(ref, report[2])
          assert.are.equal(child, report[3])
          check_reason(ending, report[4])
          assert.are.equal("normal", obs_reason)
        end)
      end
    end

    it("gives a trapping process linking to a dead pid {\"EXIT\", pid, \"noproc\"}", function()
      local dead = H.dead_pid()
      erlangen.trap_exit(true)
      erlangen.link(dead)
      assert.are.same({"EXIT", dead, "noproc"}, H.recv(H.is_exit(dead), "the noproc EXIT"))
    end)

    it("raises exactly \"noproc\" in a non-trapping process linking to a dead pid", function()
      local dead = H.dead_pid()
      local ok, err = pcall(erlangen.link, dead)
      assert.is_false(ok)
      assert.are.equal("noproc", err)
    end)

    it("gives a process monitoring a dead pid {\"DOWN\", ref, pid, \"noproc\"}", function()
      local dead = H.dead_pid()
      local ref = erlangen.monitor(dead)
      assert.are.same({"DOWN", ref, dead, "noproc"}, H.recv(H.is_down(ref), "the noproc DOWN"))
    end)
  end)

  describe("erlangen.exit(reason)", function()
    it("replaces a reason that can be neither sent nor printed by \"bad exit reason\"", function()
      local _, ref = erlangen.spawn_monitor(function()
        erlangen.exit(setmetatable({co = coroutine.create(print)},
                                   {__tostring = function() error("no way") end}))
      end)
      assert.are.equal("bad exit reason", H.await_down(ref))
    end)

    it("sends a reason that cannot be sent as its tostring", function()
      local _, ref = erlangen.spawn_monitor(function()
        erlangen.exit(setmetatable({co = coroutine.create(print)}, {__tostring = function() return "printable" end}))
      end)
      assert.are.equal("printable", H.await_down(ref))
    end)

    it("ends the caller with the reason", function()
      local _, ref = erlangen.spawn_monitor(function() erlangen.exit("bye") end)
      assert.are.equal("bye", H.await_down(ref))
    end)

    it("accepts a table as the reason", function()
      local _, ref = erlangen.spawn_monitor(function() erlangen.exit({code = 3}) end)
      assert.are.same({code = 3}, H.await_down(ref))
    end)

    it("ends the caller with \"normal\" for exit(\"normal\")", function()
      local _, ref = erlangen.spawn_monitor(function() erlangen.exit("normal") end)
      assert.are.equal("normal", H.await_down(ref))
    end)

    it("runs no code after it", function()
      local _, ref = erlangen.spawn_monitor(function(parent)
        erlangen.exit("stop here")
        erlangen.send(parent, "after exit")
      end, self())
      H.await_down(ref)
      H.refute_message(H.equals("after exit"), "message sent after exit", 0)
    end)

    it("can be caught by pcall, like Erlang's catch", function()
      local _, ref = erlangen.spawn_monitor(function(parent)
        local ok = pcall(erlangen.exit, "caught")
        erlangen.send(parent, {"caught", ok})
      end, self())
      assert.are.same({"caught", false}, H.recv(H.tagged("caught"), "the pcall result"))
      assert.are.equal("normal", H.await_down(ref))
    end)
  end)

  describe("erlangen.exit(pid, reason)", function()
    it("ends a non-trapping process with the reason", function()
      local pid = H.idle()
      local ref = erlangen.monitor(pid)
      erlangen.exit(pid, "go away")
      assert.are.equal("go away", H.await_down(ref))
    end)

    it("is ignored by a non-trapping process when the reason is \"normal\"", function()
      local pid = erlangen.spawn(function(parent)
        erlangen.receive(function(m) return m == "ping" end)
        erlangen.send(parent, "pong")
      end, self())
      erlangen.exit(pid, "normal")
      erlangen.send(pid, "ping")
      assert.are.equal("pong", H.recv(H.equals("pong"), "the pong of the spared process"))
    end)

    it("reaches a trapping process as {\"EXIT\", sender, reason}, and it lives on", function()
      local pid = erlangen.spawn_opt({trap_exit = true}, function(parent)
        erlangen.send(parent, {"got", erlangen.receive()})
      end, self())
      erlangen.exit(pid, "please stop")
      assert.are.same({"got", {"EXIT", self(), "please stop"}}, H.recv(H.tagged("got"), "the forwarded EXIT"))
    end)

    it("reaches a trapping process as {\"EXIT\", sender, \"normal\"} for reason \"normal\"", function()
      local pid = erlangen.spawn_opt({trap_exit = true}, function(parent)
        erlangen.send(parent, {"got", erlangen.receive()})
      end, self())
      erlangen.exit(pid, "normal")
      assert.are.same({"got", {"EXIT", self(), "normal"}}, H.recv(H.tagged("got"), "the forwarded EXIT"))
    end)

    it("with \"kill\" ends even a trapping process, with reason \"killed\"", function()
      local pid = H.idle({trap_exit = true})
      local ref = erlangen.monitor(pid)
      erlangen.exit(pid, "kill")
      assert.are.equal("killed", H.await_down(ref))
    end)

    it("with \"kill\" makes the target's links see \"killed\"", function()
      erlangen.trap_exit(true)
      local pid = erlangen.spawn_link(function() erlangen.receive() end)
      erlangen.exit(pid, "kill")
      assert.are.same({"EXIT", pid, "killed"}, H.recv(H.is_exit(pid), "the EXIT of the killed process"))
    end)

    it("is silently ignored for a dead pid", function()
      local dead = H.dead_pid()
      assert.has_no.errors(function() erlangen.exit(dead, "kill") end)
    end)
  end)

  describe("a kill", function()
    local function kill_after_ready(body)
      local pid, ref = erlangen.spawn_monitor(body, self())
      H.recv(H.equals("ready"), "the victim to start")
      local t0 = erlangen.now()
      erlangen.exit(pid, "kill")
      local reason = H.await_down(ref, "the DOWN of the victim")
      return reason, erlangen.now() - t0
    end

    it("ends a process waiting in receive at once", function()
      local reason, dt = kill_after_ready(function(parent)
        erlangen.send(parent, "ready")
        erlangen.receive()
      end)
      assert.are.equal("killed", reason)
      assert.is_true(dt < 0.5, "took " .. dt .. " s")
    end)

    it("ends a busy loop inside pcall within milliseconds", function()
      if H.under_tsan() then return pending("under ThreadSanitizer: asynchronous signals are deferred") end
      local reason, dt = kill_after_ready(function(parent)
        erlangen.send(parent, "ready")
        pcall(function() while true do end end)
      end)
      assert.are.equal("killed", reason)
      assert.is_true(dt < 0.5, "took " .. dt .. " s")
    end)

    it("ends a loop that keeps entering pcall again", function()
      local reason = kill_after_ready(function(parent)
        erlangen.send(parent, "ready")
        while true do pcall(function() for _ = 1, 1000 do end end) end
      end)
      assert.are.equal("killed", reason)
    end)

    it("ends a busy loop inside a coroutine", function()
      if H.under_tsan() then return pending("under ThreadSanitizer: asynchronous signals are deferred") end
      local reason, dt = kill_after_ready(function(parent)
        local co = coroutine.wrap(function() while true do end end)
        erlangen.send(parent, "ready")
        co()
      end)
      assert.are.equal("killed", reason)
      assert.is_true(dt < 0.5, "took " .. dt .. " s")
    end)

    it("ends a process blocked in a C call when the call returns, before its next statement", function()
      local reason = kill_after_ready(function(parent)
        erlangen.send(parent, "ready")
        os.execute("sleep 0.3")
        erlangen.send(parent, "survived the C call")
      end)
      assert.are.equal("killed", reason)
      H.refute_message(H.equals("survived the C call"), "message sent after the kill", 0)
    end)

    it("ends a process sleeping in erlangen.sleep", function()
      local reason, dt = kill_after_ready(function(parent)
        erlangen.send(parent, "ready")
        erlangen.sleep(10)
      end)
      assert.are.equal("killed", reason)
      assert.is_true(dt < 0.5, "took " .. dt .. " s")
    end)

    it("with another reason also ends a non-trapping busy loop", function()
      if H.under_tsan() then return pending("under ThreadSanitizer: asynchronous signals are deferred") end
      local pid, ref = erlangen.spawn_monitor(function(parent)
        erlangen.send(parent, "ready")
        pcall(function() while true do end end)
      end, self())
      H.recv(H.equals("ready"), "the victim to start")
      erlangen.exit(pid, "stop looping")
      assert.are.equal("stop looping", H.await_down(ref))
    end)
  end)

  describe("erlangen.trap_exit", function()
    it("returns the previous value", function()
      assert.is_false(erlangen.trap_exit(true))
      assert.is_true(erlangen.trap_exit(true))
      assert.is_true(erlangen.trap_exit(false))
      assert.is_false(erlangen.trap_exit(false))
    end)
  end)

  describe("erlangen.link", function()
    it("links both sides", function()
      local pid = H.idle()
      erlangen.trap_exit(true)
      erlangen.link(pid)
      assert.are.equal(1, H.count(erlangen.info(self()).links, pid))
      assert.are.equal(1, H.count(erlangen.info(pid).links, self()))
    end)

    it("is idempotent: linking twice makes one link and one EXIT", function()
      erlangen.trap_exit(true)
      local pid = H.idle()
      erlangen.link(pid); erlangen.link(pid)
      assert.are.equal(1, H.count(erlangen.info(self()).links, pid))
      local ref = erlangen.monitor(pid)
      erlangen.send(pid, "stop")
      H.await_down(ref)
      H.recv(H.is_exit(pid), "the first EXIT")
      H.refute_message(H.is_exit(pid), "second EXIT", 0)
    end)

    it("raises a bad-argument error for a non-pid", function()
      local err = H.error_of(function() erlangen.link("someone") end)
      assert.matches("bad argument #1 to 'link'", err, 1, true)
    end)
  end)

  describe("erlangen.unlink", function()
    it("removes the link on both sides, so no EXIT arrives", function()
      erlangen.trap_exit(true)
      local pid = H.idle()
      erlangen.link(pid)
      erlangen.unlink(pid)
      assert.are.equal(0, H.count(erlangen.info(self()).links, pid))
      assert.are.equal(0, H.count(erlangen.info(pid).links, self()))
      local ref = erlangen.monitor(pid)
      erlangen.send(pid, "stop")
      H.await_down(ref)
      H.refute_message(H.is_exit(pid), "EXIT after unlink", 0)
    end)

    it("is idempotent and accepts an unlinked or dead pid", function()
      local pid = H.idle()
      assert.has_no.errors(function()
        erlangen.unlink(pid); erlangen.unlink(pid)
        erlangen.unlink(H.dead_pid())
      end)
    end)

    it("raises a bad-argument error for a non-pid", function()
      local err = H.error_of(function() erlangen.unlink(7) end)
      assert.matches("bad argument #1 to 'unlink'", err, 1, true)
    end)
  end)

  describe("erlangen.monitor", function()
    it("returns a new ref for each call, and each gets its own DOWN", function()
      local pid = H.idle()
      local r1, r2 = erlangen.monitor(pid), erlangen.monitor(pid)
      assert.are_not.equal(r1, r2)
      erlangen.send(pid, "stop")
      assert.are.same({"DOWN", r1, pid, "normal"}, H.recv(H.is_down(r1), "DOWN for the first ref"))
      assert.are.same({"DOWN", r2, pid, "normal"}, H.recv(H.is_down(r2), "DOWN for the second ref"))
    end)

    it("does not link, so the monitor survives the target's crash", function()
      local pid = erlangen.spawn(function() erlangen.receive(); error("crash") end)
      local ref = erlangen.monitor(pid)
      erlangen.send(pid, "go")
      assert.matches("crash$", H.await_down(ref))
      assert.is_true(erlangen.is_alive(self()))
    end)

    it("raises a bad-argument error for a non-pid", function()
      local err = H.error_of(function() erlangen.monitor({}) end)
      assert.matches("bad argument #1 to 'monitor'", err, 1, true)
    end)
  end)

  describe("erlangen.demonitor", function()
    it("returns true and stops the DOWN from coming", function()
      local pid = H.idle()
      local r1 = erlangen.monitor(pid)
      local r2 = erlangen.monitor(pid)
      assert.is_true(erlangen.demonitor(r1))
      erlangen.send(pid, "stop")
      H.await_down(r2)
      H.refute_message(H.is_down(r1), "DOWN for the removed monitor")
    end)

    it("without flush leaves an already queued DOWN in the mailbox", function()
      local pid = H.idle()
      local ref = erlangen.monitor(pid)
      erlangen.send(pid, "stop")
      local seen = false
      H.eventually(function()
        erlangen.receive(function(m) if H.is_down(ref)(m) then seen = true end return false end, 0.01)
        return seen
      end, "the DOWN to be queued")
      assert.is_true(erlangen.demonitor(ref))
      H.recv(H.is_down(ref), "the DOWN that stayed queued", 0)
    end)

    it("with flush also removes an already queued DOWN", function()
      local pid = H.idle()
      local ref = erlangen.monitor(pid)
      erlangen.send(pid, "stop")
      local seen = false
      H.eventually(function()
        erlangen.receive(function(m) if H.is_down(ref)(m) then seen = true end return false end, 0.01)
        return seen
      end, "the DOWN to be queued")
      assert.is_true(erlangen.demonitor(ref, true))
      H.refute_message(H.is_down(ref), "flushed DOWN", 0)
    end)

    it("returns true for a ref that monitors nothing", function()
      assert.is_true(erlangen.demonitor(erlangen.ref()))
    end)

    it("raises a bad-argument error for a non-ref", function()
      local err = H.error_of(function() erlangen.demonitor("ref") end)
      assert.matches("bad argument #1 to 'demonitor'", err, 1, true)
    end)
  end)

  describe("max_memory", function()
    it("ends a process whose spawn arguments do not fit with reason \"memory\", and the node lives on", function()
      local _, ref = erlangen.spawn_opt({monitor = true, max_memory = 300000},
        function(s) return #s end, string.rep("x", 3000000))
      assert.are.equal("memory", H.await_down(ref, "the DOWN of the process that could not start"))
    end)

    it("ends a process that allocates past it with reason \"memory\"", function()
      local _, ref = erlangen.spawn_opt({monitor = true, max_memory = 4 * 1024 * 1024}, function()
        local hog = {}
        for i = 1, 1e8 do hog[i] = string.rep("x", 100) .. i end
      end)
      assert.are.equal("memory", H.await_down(ref, "the DOWN of the memory hog", 20))
    end)

    it("ends the process even when the allocation fails inside pcall", function()
      local _, ref = erlangen.spawn_opt({monitor = true, max_memory = 4 * 1024 * 1024}, function()
        while true do
          pcall(function()
            local hog = {}
            for i = 1, 1e8 do hog[i] = string.rep("y", 100) .. i end
          end)
        end
      end)
      assert.are.equal("memory", H.await_down(ref, "the DOWN of the memory hog", 20))
    end)

    it("leaves a process under it alone", function()
      local _, ref = erlangen.spawn_opt({monitor = true, max_memory = 64 * 1024 * 1024}, function()
        local t = {}
        for i = 1, 1000 do t[i] = string.rep("z", 100) end
      end)
      assert.are.equal("normal", H.await_down(ref))
    end)

    it("raises an error naming the option when it is not a number", function()
      local err = H.error_of(function() erlangen.spawn_opt({max_memory = "lots"}, function() end) end)
      assert.matches("max_memory", err, 1, true)
    end)
  end)

  describe("a full mailbox", function()
    it("still bounds the EXITs of exit/2 to a trapping process, dropping and counting the rest", function()
      local pid = erlangen.spawn_opt({mailbox = 4, trap_exit = true}, function(parent)
        erlangen.receive(function(m) return m == "go" end)
        local exits = 0
        while erlangen.receive(function(m) return type(m) == "table" and m[1] == "EXIT" end, 0) do
          exits = exits + 1
        end
        erlangen.send(parent, {"exits", exits})
      end, self())
      for i = 1, 50 do erlangen.exit(pid, "flood " .. i) end
      assert.are.equal(46, erlangen.info(pid).dropped)
      erlangen.send(pid, "go")
      assert.are.same({"exits", 4}, H.recv(H.tagged("exits"), "the count of EXITs"))
    end)

    -- The middle process traps exits, links to and monitors a grandchild,
    -- then its mailbox (capacity 2) is filled before the grandchild dies.
    local function middle(parent)
      local g = erlangen.spawn_link(function()
        erlangen.receive(function(m) return m == "die" end)
        error("grandchild gone")
      end)
      local ref = erlangen.monitor(g)
      erlangen.send(parent, {"grandchild", g})
      local exit = erlangen.receive(function(m) return type(m) == "table" and m[1] == "EXIT" end)
      local down = erlangen.receive(function(m) return type(m) == "table" and m[1] == "DOWN" end)
      erlangen.send(parent, {"signals", exit[2] == g, exit[3], down[2] == ref, down[4]})
    end

    it("still takes EXIT and DOWN messages", function()
      local pid = erlangen.spawn_opt({mailbox = 2, trap_exit = true}, middle, self())
      local g = H.recv(H.tagged("grandchild"), "the grandchild's pid")[2]
      assert.is_true((erlangen.send(pid, "a")))
      assert.is_true((erlangen.send(pid, "b")))
      assert.are.same({false, "full"}, {erlangen.send(pid, "c")})
      erlangen.send(g, "die")
      local m = H.recv(H.tagged("signals"), "the middle process's report")
      assert.is_true(m[2], "EXIT came from the wrong pid")
      assert.matches("grandchild gone$", m[3])
      assert.is_true(m[4], "DOWN carried the wrong ref")
      assert.matches("grandchild gone$", m[5])
    end)
  end)
end)
