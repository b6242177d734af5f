-- Messages: send, receive with timeouts, selective receive, bounded
-- mailboxes with backpressure, per-pair ordering and copying.
local erlangen = require "erlangen"
local H = require "spec.helpers"

local self = erlangen.self

-- A process with mailbox capacity `cap` that never takes a message: it waits
-- in a selective receive that nothing matches, so its mailbox only fills.
local function hoarder(cap)
  return erlangen.spawn_opt({mailbox = cap}, function()
    erlangen.receive(function() return false end)
  end)
end

describe("messages", function()
  before_each(H.before)
  after_each(H.after)

  describe("erlangen.send", function()
    it("returns true when the message is queued", function()
      assert.are.same({true}, {erlangen.send(H.idle(), "hi")})
    end)

    it("delivers to the caller's own mailbox", function()
      erlangen.send(self(), "to myself")
      assert.are.equal("to myself", H.recv(nil, "the message sent to self"))
    end)

    it("delivers to a registered name", function()
      local pid = erlangen.spawn(function(parent)
        erlangen.send(parent, {"got", erlangen.receive()})
      end, self())
      erlangen.register("message_by_name", pid)
      assert.is_true((erlangen.send("message_by_name", "hello")))
      assert.are.same({"got", "hello"}, H.recv(H.tagged("got"), "the named process's reply"))
    end)

    it("lets a process that sent only to a name go on receiving", function()
      -- two sends in a row to one name make it send's kept destination, with
      -- no pid seen yet; receive then wakes with that cache half filled
      local pid = erlangen.spawn(function(parent)
        erlangen.register("message_named_twice", parent)
        erlangen.send("message_named_twice", "one")
        erlangen.send("message_named_twice", "two")
        local m = erlangen.receive(5)
        erlangen.send(parent, {"echo", m})
      end, self())
      assert.are.equal("one", H.recv(nil, "the first message by name"))
      assert.are.equal("two", H.recv(nil, "the second message by name"))
      erlangen.sleep(0.05)   -- let it fall asleep in receive
      erlangen.send(pid, "three")
      assert.are.same({"echo", "three"}, H.recv(H.tagged("echo"), "the reply after its wake-up"))
      erlangen.unregister("message_named_twice")
    end)

    it("returns false, \"noproc\" for a dead pid", function()
      assert.are.same({false, "noproc"}, {erlangen.send(H.dead_pid(), "hi")})
    end)

    it("returns false, \"noproc\" for a process that exited after several sends to it", function()
      local pid, ref = erlangen.spawn_monitor(function() erlangen.receive() erlangen.receive() end)
      assert.is_true((erlangen.send(pid, 1)))
      assert.is_true((erlangen.send(pid, 2)))   -- a destination sent to twice in a row is kept
      assert.are.equal("normal", H.await_down(ref))
      assert.are.same({false, "noproc"}, {erlangen.send(pid, 3)})
      assert.are.same({false, "noproc"}, {erlangen.send(pid, 4, 0.1)})
    end)

    it("returns false, \"noproc\" for an unknown name", function()
      assert.are.same({false, "noproc"}, {erlangen.send("nobody_has_this_name", "hi")})
    end)

    it("raises \"bad argument #1 to 'send' (pid, name or alias expected, got boolean)\"", function()
      local err = H.error_of(function() erlangen.send(true, "hi") end)
      assert.matches("bad argument #1 to 'send' (pid, name or alias expected, got boolean)", err, 1, true)
    end)

    it("raises a bad-argument error for a table that is not {name, node}", function()
      local err = H.error_of(function() erlangen.send({}, "hi") end)
      assert.matches("bad argument #1 to 'send' ({name, node} expected)", err, 1, true)
      err = H.error_of(function() erlangen.send({"name", "not a node name"}, "hi") end)
      assert.matches("bad argument #1 to 'send' (bad node name 'not a node name'", err, 1, true)
    end)

    it("sends {name, node} with this node's own name as a local named send", function()
      erlangen.register("message_own_node", self())
      assert.is_true((erlangen.send({"message_own_node", erlangen.node()}, "to my own node")))
      erlangen.unregister("message_own_node")
      assert.are.equal("to my own node", H.recv(nil, "the message sent through {name, node}"))
    end)

    it("does not read another userdata as a pid, even one given a pid's metatable", function()
      local f = io.tmpfile()                 -- a userdata smaller than a pid
      local file_mt = debug.getmetatable(f)
      debug.setmetatable(f, debug.getmetatable(self()))
      local err = H.error_of(function() erlangen.send(f, "hi") end)
      local shown = tostring(f)
      debug.setmetatable(f, file_mt)
      f:close()
      assert.matches("bad argument #1 to 'send' (pid, name or alias expected", err, 1, true)
      assert.matches("^userdata: ", shown)
    end)

    it("still takes a pid whose metatable the debug library took away", function()
      local me = self()
      local mt = debug.getmetatable(me)
      debug.setmetatable(me, nil)
      local ok = erlangen.send(me, "still a pid")
      debug.setmetatable(me, mt)
      assert.is_true(ok)
      assert.are.equal("still a pid", H.recv(nil, "the message sent to the bare pid"))
    end)

    it("raises a bad-argument error for a nil destination", function()
      local err = H.error_of(function() erlangen.send(nil, "hi") end)
      assert.matches("bad argument #1 to 'send'", err, 1, true)
    end)

    it("raises a bad-argument error for a nil message", function()
      local err = H.error_of(function() erlangen.send(self(), nil) end)
      assert.matches("bad argument #2 to 'send'", err, 1, true)
      assert.are.same({}, H.peek())
    end)

    it("raises a bad-argument error for a timeout that is not a number", function()
      local err = H.error_of(function() erlangen.send(self(), "x", "soon") end)
      assert.matches("bad argument #3 to 'send'", err, 1, true)
    end)

    it("raises an error naming the path of a userdata, and queues nothing", function()
      local f = io.tmpfile()
      local err = H.error_of(function() erlangen.send(self(), {conn = f}) end)
      f:close()
      assert.matches("msg.conn: cannot send userdata", err, 1, true)
      assert.are.same({}, H.peek())
    end)

    it("raises an error naming the path of a coroutine nested in the message", function()
      local err = H.error_of(function()
        erlangen.send(self(), {jobs = {first = coroutine.create(print)}})
      end)
      assert.matches("msg.jobs.first: cannot send", err, 1, true)
    end)

    it("raises \"message larger than N bytes\" over the configured size", function()
      local old = erlangen.configure({max_message = 1000})
      finally(function() erlangen.configure(old) end)
      local err = H.error_of(function() erlangen.send(self(), string.rep("x", 5000)) end)
      assert.matches("message larger than 1000 bytes", err, 1, true)
      assert.are.same({}, H.peek())
    end)

    it("holds max_message for a short string, a number and a boolean too", function()
      local old = erlangen.configure({max_message = 20})
      finally(function() erlangen.configure(old) end)
      -- a string of n bytes is n + 5 bytes encoded (header 3, tag, length)
      local err
      for _, n in ipairs({16, 30}) do
        err = H.error_of(function() erlangen.send(self(), string.rep("s", n)) end)
        assert.matches("message larger than 20 bytes", err, 1, true)
      end
      erlangen.configure({max_message = 13})   -- the longest integer is 14 bytes
      err = H.error_of(function() erlangen.send(self(), 1 << 62) end)
      assert.matches("message larger than 13 bytes", err, 1, true)
      assert.is_true(erlangen.send(self(), 1 << 55))   -- 13 bytes
      assert.are.equal(1 << 55, erlangen.receive(0))
      erlangen.configure({max_message = 20})
      assert.is_true(erlangen.send(self(), string.rep("s", 15)))
      assert.is_true(erlangen.send(self(), 2.5))
      assert.is_true(erlangen.send(self(), false))
      assert.are.same({string.rep("s", 15), 2.5, false}, H.drain())
    end)

    it("holds a lowered max_message after larger messages were sent", function()
      -- send reuses its encode buffer: one grown by a large message must not
      -- let a message over the new limit through
      erlangen.send(self(), {string.rep("x", 4000)})
      erlangen.send(self(), string.rep("y", 4000))
      assert.are.equal(4000, #erlangen.receive(0)[1])
      assert.are.equal(4000, #erlangen.receive(0))
      local old = erlangen.configure({max_message = 1000})
      finally(function() erlangen.configure(old) end)
      for _, msg in ipairs({{string.rep("x", 2000)}, string.rep("y", 2000)}) do
        local err = H.error_of(function() erlangen.send(self(), msg) end)
        assert.matches("message larger than 1000 bytes", err, 1, true)
      end
      assert.are.same({}, H.peek())
    end)

    it("raises \"nesting deeper than N\" over the configured depth", function()
      local old = erlangen.configure({max_depth = 10})
      finally(function() erlangen.configure(old) end)
      local err = H.error_of(function() erlangen.send(self(), H.nested(30)) end)
      assert.matches("nesting deeper than 10", err, 1, true)
    end)
  end)

  describe("sent values", function()
    it("arrive as a copy, so the sender may change its table afterwards", function()
      local t = {n = 1, inner = {1, 2}}
      erlangen.send(self(), t)
      t.n = 2; t.inner[1] = 99
      local got = H.recv(nil, "the table sent to self")
      assert.are_not.equal(t, got)
      assert.are.same({n = 1, inner = {1, 2}}, got)
    end)

    it("keep strings, numbers, booleans, pids, refs and nested tables", function()
      local r = erlangen.ref()
      local msg = {"a\0b", 42, 1.5, true, false, self(), r, {deep = {er = "yes"}}, [false] = "key"}
      erlangen.send(self(), msg)
      assert.are.same(msg, H.recv(nil, "the rich message"))
    end)

    it("lose their metatables", function()
      erlangen.send(self(), setmetatable({1}, {__index = function() return "meta" end}))
      local got = H.recv(nil, "the table with a metatable")
      assert.is_nil(getmetatable(got))
      assert.is_nil(got.missing)
    end)

    it("may include a Lua function, which the receiver can call", function()
      local base = 40
      local pid = erlangen.spawn(function(parent)
        local m = erlangen.receive()
        erlangen.send(parent, {"applied", m.fn(2)})
      end, self())
      erlangen.send(pid, {fn = function(x) return base + x end})
      assert.are.same({"applied", 42}, H.recv(H.tagged("applied"), "the result of the sent function"))
    end)
  end)

  describe("erlangen.receive", function()
    it("refuses a receive made while a plain receive decodes its message, keeping the mailbox intact", function()
      package.loaded["receives_on_load"] = nil
      local mod = require "receives_on_load"
      local pid = erlangen.spawn(function(parent)
        erlangen.receive(function(m) return m == "go" end)
        local m = erlangen.receive(5)          -- plain: the first message after "go"
        local loaded = m.f()
        erlangen.send(parent, {"result", loaded.ok, tostring(loaded.err), erlangen.receive(5)})
      end, self())
      erlangen.send(pid, "go")
      erlangen.send(pid, {f = function() return mod end})
      erlangen.send(pid, "after")
      local r = H.recv(H.tagged("result"), "the receiver's result")
      assert.is_false(r[2], "the nested receive should have been refused")
      assert.matches("receive: called inside a match function", r[3], 1, true)
      assert.are.equal("after", r[4])
    end)

    it("keeps its mailbox intact when decoding loads a module that itself calls receive", function()
      local pid = erlangen.spawn(function(parent)
        erlangen.receive(function(m) return m == "go" end)
        local m = erlangen.receive(function(m) return type(m) == "table" end, 5)
        local mod = m.f()   -- loaded in this process while m was being decoded
        erlangen.send(parent, {"result", mod.ok, tostring(mod.err), erlangen.receive(0)})
      end, self())
      local mod = require "receives_on_load"
      erlangen.send(pid, "go")
      erlangen.send(pid, "passed over")
      erlangen.send(pid, {f = function() return mod end})
      local r = H.recv(H.tagged("result"), "the receiver's result")
      assert.is_false(r[2], "the nested receive should have been refused")
      assert.matches("receive: called inside a match function", r[3], 1, true)
      assert.are.equal("passed over", r[4])
    end)

    it("drops a message that cannot be decoded in the receiver, raises, and goes on with the next", function()
      -- A module that exists only in this state: a message holding it (with
      -- a function, so modules travel by name) cannot be rebuilt elsewhere.
      package.loaded["only_in_the_sender"] = {answer = 42}
      local mod = package.loaded["only_in_the_sender"]
      local pid = erlangen.spawn(function(parent)
        local ok, err = pcall(erlangen.receive, 5)
        erlangen.send(parent, {"first", ok, tostring(err)})
        erlangen.send(parent, {"second", erlangen.receive(5)})
      end, self())
      erlangen.send(pid, {mod = mod, f = function() return mod.answer end})
      erlangen.send(pid, "plain")
      local first = H.recv(H.tagged("first"), "the receiver's first result")
      package.loaded["only_in_the_sender"] = nil
      assert.is_false(first[2])
      assert.matches("dropped a message that cannot be decoded", first[3], 1, true)
      assert.matches("only_in_the_sender", first[3], 1, true)
      assert.are.same({"second", "plain"}, H.recv(H.tagged("second"), "the receiver's second result"))
    end)

    it("takes the oldest message first", function()
      for i = 1, 5 do erlangen.send(self(), i) end
      local got = {}
      for _ = 1, 5 do got[#got + 1] = H.recv(nil, "the queued numbers") end
      assert.are.same({1, 2, 3, 4, 5}, got)
    end)

    it("returns nil, \"timeout\" at once for timeout 0 and an empty mailbox", function()
      local t0 = erlangen.now()
      assert.are.same({nil, "timeout"}, {erlangen.receive(0)})
      assert.is_true(erlangen.now() - t0 < 0.5)
    end)

    it("waits the given fraction of a second before returning nil, \"timeout\"", function()
      local t0 = erlangen.now()
      local m, err = erlangen.receive(0.15)
      local dt = erlangen.now() - t0
      assert.is_nil(m)
      assert.are.equal("timeout", err)
      assert.is_true(dt >= 0.149 and dt < 3, "expected to wait about 0.15 s, waited " .. dt)
    end)

    it("waits without limit for a nil timeout until a message arrives", function()
      -- The watchdog guarantees the spec ends even if receive() never returns
      -- for the real message: its message would then be the one received.
      erlangen.spawn(function(parent)
        erlangen.sleep(0.1)
        erlangen.send(parent, "late message")
      end, self())
      erlangen.spawn(function(parent, limit)
        erlangen.sleep(limit)
        erlangen.send(parent, "watchdog")
      end, self(), H.TIMEOUT)
      assert.are.equal("late message", erlangen.receive())
    end)

    it("with a match returns the oldest matching message and keeps the others in order", function()
      for i = 1, 6 do erlangen.send(self(), i) end
      local even = H.recv(function(m) return m % 2 == 0 end, "an even number")
      assert.are.equal(2, even)
      assert.are.same({1, 3, 4, 5, 6}, H.drain())
    end)

    it("with a match and timeout 0 returns nil, \"timeout\" and leaves the mailbox as it was", function()
      erlangen.send(self(), "a"); erlangen.send(self(), "b")
      assert.are.same({nil, "timeout"}, {erlangen.receive(H.equals("z"), 0)})
      assert.are.same({"a", "b"}, H.drain())
    end)

    it("with a match waits for a matching message sent later", function()
      erlangen.send(self(), "not this")
      erlangen.spawn(function(parent) erlangen.send(parent, "this") end, self())
      assert.are.equal("this", H.recv(H.equals("this"), "the later matching message"))
      assert.are.same({"not this"}, H.drain())
    end)

    it("raises a bad-argument error for a first argument that is neither function nor number", function()
      local err = H.error_of(function() erlangen.receive("soon") end)
      assert.matches("bad argument #1 to 'receive'", err, 1, true)
    end)

    it("raises a bad-argument error for a non-number timeout after a match", function()
      local err = H.error_of(function() erlangen.receive(H.equals(1), "soon") end)
      assert.matches("bad argument #2 to 'receive'", err, 1, true)
    end)
  end)

  describe("a bounded mailbox", function()
    it("drops a message sent when it is full and send returns false, \"full\"", function()
      local pid = hoarder(3)
      for i = 1, 3 do assert.are.same({true}, {erlangen.send(pid, i)}) end
      assert.are.same({false, "full"}, {erlangen.send(pid, 4)})
    end)

    it("counts dropped messages in info(pid).dropped and stays at capacity", function()
      local pid = hoarder(3)
      for i = 1, 8 do erlangen.send(pid, i) end
      local info = erlangen.info(pid)
      assert.are.equal(5, info.dropped)
      assert.are.equal(3, info.mailbox)
    end)

    it("counts messages that selective receive passed over against the capacity", function()
      local pid = erlangen.spawn_opt({mailbox = 2}, function()
        erlangen.receive(function(m) return m == "go" end)  -- passes over the rest
      end)
      erlangen.send(pid, "x"); erlangen.send(pid, "y")
      assert.are.same({false, "full"}, {erlangen.send(pid, "go")})
    end)

    it("makes send with a timeout wait for space and then deliver", function()
      -- The receiver drains only after an EXIT signal, which a full mailbox
      -- still accepts; a helper sends it while our send is waiting.
      local pid = erlangen.spawn_opt({mailbox = 2, trap_exit = true}, function(parent)
        erlangen.receive(function(m) return type(m) == "table" and m[1] == "EXIT" end)
        for _ = 1, 3 do erlangen.send(parent, {"drained", erlangen.receive()}) end
      end, self())
      assert.is_true((erlangen.send(pid, "a")))
      assert.is_true((erlangen.send(pid, "b")))
      assert.are.same({false, "full"}, {erlangen.send(pid, "never", 0)})
      erlangen.spawn(function(target)
        erlangen.sleep(0.2)
        erlangen.exit(target, "drain")
      end, pid)
      assert.are.same({true}, {erlangen.send(pid, "c", H.TIMEOUT)})
      local got = {}
      for _ = 1, 3 do got[#got + 1] = H.recv(H.tagged("drained"), "the drained messages")[2] end
      assert.are.same({"a", "b", "c"}, got)
    end)

    it("makes send with a timeout return false, \"full\" when no space appears in time", function()
      local pid = hoarder(1)
      erlangen.send(pid, "fill")
      local t0 = erlangen.now()
      assert.are.same({false, "full"}, {erlangen.send(pid, "late", 0.1)})
      local dt = erlangen.now() - t0
      assert.is_true(dt >= 0.099 and dt < 3, "expected to wait about 0.1 s, waited " .. dt)
    end)

    it("honours a full mailbox when sending by name", function()
      local pid = hoarder(1)
      erlangen.register("full_by_name", pid)
      erlangen.send("full_by_name", 1)
      assert.are.same({false, "full"}, {erlangen.send("full_by_name", 2)})
    end)
  end)

  describe("ordering between two processes", function()
    it("delivers one sender's messages in the order sent", function()
      erlangen.spawn(function(parent)
        for i = 1, 500 do erlangen.send(parent, i) end
      end, self())
      for i = 1, 500 do
        assert.are.equal(i, H.recv(nil, "message " .. i))
      end
    end)

    it("keeps each sender's order when several send at once", function()
      for s = 1, 4 do
        erlangen.spawn(function(parent, tag)
          for i = 1, 200 do erlangen.send(parent, {tag, i}) end
        end, self(), s)
      end
      local last = {0, 0, 0, 0}
      for _ = 1, 800 do
        local m = H.recv(nil, "the senders' messages")
        assert.are.equal(last[m[1]] + 1, m[2])
        last[m[1]] = m[2]
      end
    end)

    it("delivers all messages before the sender's EXIT to a trapping linked receiver", function()
      erlangen.trap_exit(true)
      local pid = erlangen.spawn_link(function(parent)
        for i = 1, 300 do erlangen.send(parent, i) end
        erlangen.exit("done")
      end, self())
      for i = 1, 300 do
        assert.are.equal(i, H.recv(nil, "message " .. i .. " before the EXIT"))
      end
      assert.are.same({"EXIT", pid, "done"}, H.recv(nil, "the EXIT after the messages"))
    end)

    it("delivers all messages before the sender's DOWN to a monitoring receiver", function()
      local pid, ref = erlangen.spawn_monitor(function(parent)
        for i = 1, 300 do erlangen.send(parent, i) end
      end, self())
      for i = 1, 300 do
        assert.are.equal(i, H.recv(nil, "message " .. i .. " before the DOWN"))
      end
      assert.are.same({"DOWN", ref, pid, "normal"}, H.recv(nil, "the DOWN after the messages"))
    end)
  end)
end)
