-- spec/dist_spec.lua — distribution across real OS processes on loopback:
-- remote spawn and send, the exit-signal matrix across nodes, monitor_node,
-- a simultaneous connect, node failure (kill -9, a stopped node), a wrong
-- key, a tampering proxy, volume, and a restarted node.
--
-- The busted process is one node ("spec@127.0.0.1", started once); the
-- other nodes are children started and killed through spec/dist_helpers.lua
-- (which says how). The busted process traps exits during this file, so a
-- stray noconnection can never kill it between tests.
--
-- Everything is driven by messages: remote processes are dist_node.puppet,
-- which does what it is told and reports what it receives. Every wait is
-- bounded; only /proc counts (threads, TCP sockets) are polled.

local erlangen = require "erlangen"
local H = require "spec.helpers"
local D = require "spec.dist_helpers"

local HOST, TICK, DETECT = D.HOST, D.TICK, D.DETECT
local KEY, OTHER_KEY = D.KEY, D.OTHER_KEY
local me = D.me   -- name, port, addr of the busted process's node

local self = erlangen.self
local key_file, random_bytes, os_threads, closed_port = D.key_file, D.random_bytes, D.os_threads, D.closed_port
local this_node, start_child, stderr_of, signal = D.this_node, D.start_child, D.stderr_of, D.signal
local kill_child = D.kill_child
local puppet, order, must, finish, reported = D.puppet, D.order, D.must, D.finish, D.reported
local exit_reason_from, local_linker, dead_remote_pid = D.exit_reason_from, D.local_linker, D.dead_remote_pid
local tcp_links, poll = D.tcp_links, D.poll

-- Setup ------------------------------------------------------------------------

describe("distribution", function()
  setup(function() this_node() end)
  teardown(D.teardown)
  before_each(D.before_each)
  after_each(D.after_each)

  describe("nodes", function()
    it("names this node and lists a connected node in nodes()", function()
      assert.are.equal("spec@" .. HOST, erlangen.node())
      local b = start_child()
      assert.is_true(H.contains(erlangen.nodes(), b.name), "nodes() = " .. H.show(erlangen.nodes()))
      assert.are.equal(1, H.count(erlangen.nodes(), b.name))
    end)

    it("refuses to start this node a second time", function()
      local err = H.error_of(function()
        erlangen.start_node{name = "again@" .. HOST, key_file = KEY, port_mapper = false}
      end)
      assert.matches("already started", err)
      assert.are.equal("spec@" .. HOST, erlangen.node())
    end)

    it("refuses to start a node whose key file others can read", function()
      local loose = key_file(random_bytes(32), "644")
      local c = start_child{key_file = loose, connect = false}
      os.remove(loose)
      assert.is_truthy(c.failed, "the node started with a 0644 key file")
      assert.matches("^error ", c.failed)
      assert.matches(loose, c.failed, 1, true)
      assert.matches("group or others", c.failed, 1, true)
    end)

    it("shows the node of a remote pid in tostring and node()", function()
      local b = start_child()
      local p = puppet(b)
      assert.are.equal(b.name, erlangen.node(p))
      assert.matches("^<" .. b.name:gsub("%p", "%%%0") .. "%.%d+>$", tostring(p))
      assert.are.equal(me.name, erlangen.node(self()))
    end)
  end)

  describe("remote spawn", function()
    it("starts a named function on another node", function()
      local b = start_child()
      local p = erlangen.spawn_opt({node = b.name}, "dist_node.echo")
      assert.are.equal(b.name, erlangen.node(p))
      erlangen.send(p, {"ping", self(), "hello"})
      local m = H.recv(H.tagged("pong"), "the pong")
      assert.are.equal("hello", m[2])
      assert.are.equal(p, m[3])
    end)

    it("accepts the node as name@host:port and connects on first use", function()
      local b = start_child{connect = false}
      assert.is_false(H.contains(erlangen.nodes(), b.name))
      local p = erlangen.spawn_opt({node = b.addr}, "dist_node.echo")
      assert.are.equal(b.name, erlangen.node(p))
      assert.is_true(H.contains(erlangen.nodes(), b.name))
      b.joined = true
    end)

    it("passes the arguments, pids and refs among them, intact", function()
      local b = start_child()
      local ref = erlangen.ref()
      local arg = {n = 3, list = {1, 2, {"deep"}}, pid = self(), ref = ref, s = ("x"):rep(1000)}
      local p = erlangen.spawn_opt({node = b.name}, "dist_node.reply_args", self(), arg, 42, "s")
      local m = H.recv(H.tagged("args"), "the arguments back")
      assert.are.equal(p, m[2])
      assert.are.same(arg, m[3])
      assert.are.equal(self(), m[3].pid)
      assert.are.equal(ref, m[3].ref)
      assert.are.equal(42, m[4])
      assert.are.equal("s", m[5])
    end)

    it("links the new process to the caller with link = true", function()
      local b = start_child()
      local p = erlangen.spawn_opt({node = b.name, link = true}, "dist_node.puppet", self())
      finish(p, "die", "bye")
      assert.are.equal("bye", exit_reason_from(p))
    end)

    it("monitors the new process with monitor = true and returns the ref", function()
      local b = start_child()
      local p, ref = erlangen.spawn_opt({node = b.name, monitor = true}, "dist_node.puppet", self())
      assert.are.equal("userdata", type(ref))
      finish(p, "die", {"custom", 1})
      local m = H.recv(H.is_down(ref), "the DOWN")
      assert.are.equal(p, m[3])
      assert.are.same({"custom", 1}, m[4])
    end)

    it("links and monitors at once, and an immediate exit is seen as its reason", function()
      local b = start_child()
      local p, ref = erlangen.spawn_opt({node = b.name, link = true, monitor = true},
                                        "dist_node.reply_args", self())
      assert.are.equal("normal", exit_reason_from(p))
      assert.are.equal("normal", H.await_down(ref))
    end)

    it("starts the new process trapping exits with trap_exit = true", function()
      local b = start_child()
      local p = puppet(b, {trap_exit = true})
      assert.is_true(must(p, "trap_exit", false))   -- the flag it had
      finish(p, "return")
    end)

    it("sends \"abandoned\" through the link when the caller gave up before the reply", function()
      local b = start_child()
      -- A timeout that has passed when the request has left: the reply comes
      -- late, unless this thread lost its core right after sending and the
      -- answer was in before it looked. Then that puppet is ended and the
      -- spawn tried again.
      local err
      for _ = 1, 20 do
        local ok, p = pcall(puppet, b, {link = true, trap_exit = true, timeout = 1e-9})
        if not ok then err = p break end
        erlangen.unlink(p)
        erlangen.exit(p, "kill")
      end
      assert.matches("spawn_opt: on " .. b.name .. ": timeout", err, 1, true)
      -- The new process runs, and its link to this caller is taken down with exit
      -- signal "abandoned": trapping, it gets the EXIT and reports it.
      local m = H.recv(function(m)
        return type(m) == "table" and m[1] == "got" and type(m[3]) == "table" and m[3][1] == "EXIT"
      end, "the abandoned puppet's EXIT")
      assert.are.same({"EXIT", self(), "abandoned"}, m[3])
      -- This side has no link to it: its normal exit sends us nothing.
      local p = m[2]
      local ref = erlangen.monitor(p)
      finish(p, "die", "bye")
      assert.are.equal("bye", H.await_down(ref))
      H.refute_message(H.is_exit(p), "an EXIT from the abandoned process", 0.2)
    end)

    it("ends the remote process with an error for an unknown module", function()
      local b = start_child()
      local _, ref = erlangen.spawn_opt({node = b.name, monitor = true}, "no_such_module_x.f")
      local reason = H.await_down(ref, "the DOWN of the bad spawn")
      assert.are.equal("string", type(reason))
      assert.matches("no_such_module_x", reason)
    end)

    it("refuses a Lua function as the function to run, with a clear error", function()
      local b = start_child()
      local before = #erlangen.processes()
      local err = H.error_of(function() erlangen.spawn_opt({node = b.name}, function() end) end)
      assert.matches("module.function", err, 1, true)
      assert.matches("never cross nodes", err, 1, true)
      assert.are.equal(before, #erlangen.processes())
    end)

    it("refuses a Lua function among the arguments, naming where it was", function()
      local b = start_child()
      local err = H.error_of(function()
        erlangen.spawn_opt({node = b.name}, "dist_node.reply_args", self(), {f = function() end})
      end)
      assert.matches("args[2].f", err, 1, true)
      assert.matches("function", err, 1, true)
      H.refute_message(H.tagged("args"), "a spawn that should not have happened")
    end)

    it("raises for options a remote spawn does not support", function()
      local b = start_child()
      local err = H.error_of(function()
        erlangen.spawn_opt({node = b.name, mailbox = 10}, "dist_node.echo")
      end)
      assert.matches("node", err)
    end)

    it("fails with noconnection, within the tick, on a node nobody listens on", function()
      this_node()
      local t0 = erlangen.now()
      local err = H.error_of(function()
        erlangen.spawn_opt({node = "ghost@" .. HOST .. ":" .. closed_port()}, "dist_node.echo")
      end)
      assert.matches("noconnection", err)
      assert.is_true(erlangen.now() - t0 < DETECT, "took " .. (erlangen.now() - t0) .. " s")
    end)
  end)

  describe("messages to another node", function()
    it("reach a remote pid, and the reply's pids compare equal", function()
      local b = start_child()
      local p = erlangen.spawn_opt({node = b.name}, "dist_node.echo")
      assert.is_true(erlangen.send(p, {"ping", self(), {me = self(), it = p}}))
      local m = H.recv(H.tagged("pong"), "the pong")
      assert.are.equal(self(), m[2].me)
      assert.are.equal(p, m[2].it)
      assert.are.equal(p, m[3])
      local seen = {[p] = true}
      assert.is_true(seen[m[3]], "a remote pid back from the wire is not the same table key")
    end)

    it("reach a registered name as {name, node}", function()
      local b = start_child()
      erlangen.spawn_opt({node = b.name}, "dist_node.registered", self(), "echo_here")
      local r = H.recv(H.tagged("registered"), "the registration")
      assert.is_true(erlangen.send({"echo_here", b.name}, {"ping", self(), 7}))
      local m = H.recv(H.tagged("pong"), "the pong through the name")
      assert.are.equal(7, m[2])
      assert.are.equal(r[3], m[3])
    end)

    it("to {name, this node} are local sends", function()
      this_node()
      erlangen.register("dist_local_name", self())
      assert.is_true(erlangen.send({"dist_local_name", me.name}, "to myself"))
      assert.are.equal("to myself", H.recv(H.equals("to myself"), "the local message"))
    end)

    it("reach a remote alias", function()
      local b = start_child()
      erlangen.spawn_opt({node = b.name}, "dist_node.alias_owner", self())
      local m = H.recv(H.tagged("alias"), "the alias")
      assert.is_true(erlangen.send(m[2], "through the alias"))
      local v = H.recv(H.tagged("via_alias"), "the message through the alias")
      assert.are.equal("through the alias", v[2])
    end)

    it("keep their order from one sender to one receiver", function()
      local b = start_child()
      local p = puppet(b)
      for i = 1, 200 do assert.is_true(erlangen.send(p, i)) end
      for i = 1, 200 do
        local m = H.recv(function(x) return type(x) == "table" and x[1] == "got" end, "message " .. i)
        assert.are.equal(i, m[3])
      end
    end)

    it("refuse a Lua function with a clear error, and queue nothing", function()
      local b = start_child()
      local p = puppet(b)
      local err = H.error_of(function() erlangen.send(p, {fn = function() end}) end)
      assert.matches("msg.fn", err, 1, true)
      assert.matches("never cross nodes", err, 1, true)
      erlangen.send(p, "after")
      local m = reported(p, function() return true end, "the next message")
      assert.are.equal("after", m)
    end)

    it("refuse a Lua function sent to {name, node}", function()
      local b = start_child()
      local err = H.error_of(function() erlangen.send({"ctl", b.name}, function() end) end)
      assert.matches("never cross nodes", err, 1, true)
    end)
  end)

  -- The exit-signal matrix. Remote processes are puppets; local ones are
  -- processes of this node. Reasons: "normal", an error value (a table, so
  -- the codec carries it exactly) and "killed" (from exit(pid, "kill")).
  local ERROR = {"custom", 42}
  local endings = {
    normal = {expect = "normal"},
    error = {expect = ERROR},
    kill = {expect = "killed"},
  }
  local order_of_endings = {"normal", "error", "kill"}

  local function end_remote(p, ending)
    if ending == "normal" then finish(p, "return")
    elseif ending == "error" then finish(p, "error", ERROR)
    else erlangen.exit(p, "kill") end
  end

  describe("a remote process that ends", function()
    for _, ending in ipairs(order_of_endings) do
      local e = endings[ending]
      it("with " .. ending .. ": a trapping linked process gets EXIT and a monitor DOWN", function()
        local b = start_child()
        local p = puppet(b, {link = true})
        local ref = erlangen.monitor(p)
        end_remote(p, ending)
        assert.are.same(e.expect, exit_reason_from(p))
        assert.are.same(e.expect, H.await_down(ref))
      end)

      it("with " .. ending .. ": a non-trapping linked process " ..
         (ending == "normal" and "ignores it" or "dies with it"), function()
        local b = start_child()
        local p = puppet(b)
        -- the linker also monitors p: p's DOWN follows p's exit signal to it
        local l, lref = local_linker(p, true)
        end_remote(p, ending)
        if ending == "normal" then
          local m = H.recv(H.tagged("linker_got"), "the linker to survive")
          assert.is_true(H.is_down()(m[2]), "the linker got " .. H.show(m[2]))
          assert.are.equal("normal", m[2][4])
          assert.is_true(erlangen.is_alive(l))
        else
          assert.are.same(e.expect, H.await_down(lref, "the linker to die"))
        end
      end)
    end
  end)

  describe("a local process that ends", function()
    -- A local process that ends as told: "return", "error" or killed.
    local function local_target()
      return erlangen.spawn(function()
        local how = erlangen.receive()
        if how == "error" then error(ERROR, 0) end
        if how == "wait" then erlangen.receive() end
      end)
    end
    local function end_local(l, ending)
      if ending == "normal" then erlangen.send(l, "return")
      elseif ending == "error" then erlangen.send(l, "error")
      else erlangen.send(l, "wait"); erlangen.exit(l, "kill") end
    end

    for _, ending in ipairs(order_of_endings) do
      local e = endings[ending]
      it("with " .. ending .. ": a trapping remote linked process gets EXIT and a remote monitor DOWN", function()
        local b = start_child()
        local p = puppet(b)
        local l = local_target()
        must(p, "trap_exit", true)
        must(p, "link", l)
        local ref = must(p, "monitor", l)
        end_local(l, ending)
        local x = reported(p, H.is_exit(l), "the remote EXIT")
        assert.are.same(e.expect, x[3])
        local d = reported(p, H.is_down(ref), "the remote DOWN")
        assert.are.equal(l, d[3])
        assert.are.same(e.expect, d[4])
      end)

      it("with " .. ending .. ": a non-trapping remote linked process " ..
         (ending == "normal" and "ignores it" or "dies with it"), function()
        local b = start_child()
        local p = puppet(b)
        local pref = erlangen.monitor(p)
        local l = local_target()
        must(p, "link", l)
        local ref = must(p, "monitor", l)
        end_local(l, ending)
        if ending == "normal" then
          local d = reported(p, H.is_down(ref), "the remote DOWN, after the ignored EXIT")
          assert.are.equal("normal", d[4])
          H.refute_message(H.is_down(pref), "the puppet's death", 0)
        else
          assert.are.same(e.expect, H.await_down(pref, "the remote linked process to die"))
        end
      end)
    end
  end)

  describe("exit(pid, reason) to a remote process", function()
    it("with normal is ignored by a non-trapping one", function()
      local b = start_child()
      local p = puppet(b)
      local ref = erlangen.monitor(p)
      erlangen.exit(p, "normal")
      assert.are.equal(p, must(p, "self"))   -- the order after the signal proves it lived
      H.refute_message(H.is_down(ref), "the DOWN", 0)
    end)

    it("with normal reaches a trapping one as EXIT from the sender", function()
      local b = start_child()
      local p = puppet(b)
      must(p, "trap_exit", true)
      erlangen.exit(p, "normal")
      local x = reported(p, H.is_exit(), "the EXIT")
      assert.are.equal(self(), x[2])
      assert.are.equal("normal", x[3])
    end)

    it("with kill kills a non-trapping one with killed", function()
      local b = start_child()
      local p = puppet(b)
      local ref = erlangen.monitor(p)
      erlangen.exit(p, "kill")
      assert.are.equal("killed", H.await_down(ref))
    end)

    it("with kill kills a trapping one with killed", function()
      local b = start_child()
      local p = puppet(b)
      must(p, "trap_exit", true)
      local ref = erlangen.monitor(p)
      erlangen.exit(p, "kill")
      assert.are.equal("killed", H.await_down(ref))
    end)

    it("with another reason kills a non-trapping one with that reason", function()
      local b = start_child()
      local p = puppet(b)
      local ref = erlangen.monitor(p)
      erlangen.exit(p, {"bye", 1})
      assert.are.same({"bye", 1}, H.await_down(ref))
    end)

    it("with another reason reaches a trapping one as EXIT", function()
      local b = start_child()
      local p = puppet(b)
      must(p, "trap_exit", true)
      erlangen.exit(p, {"bye", 2})
      local x = reported(p, H.is_exit(), "the EXIT")
      assert.are.equal(self(), x[2])
      assert.are.same({"bye", 2}, x[3])
      assert.are.equal(p, must(p, "self"))
    end)
  end)

  describe("exit(pid, reason) from a remote process", function()
    it("reaches a trapping local process as EXIT from the remote pid", function()
      local b = start_child()
      local p = puppet(b)
      must(p, "exit", self(), {"from afar"})
      assert.are.same({"from afar"}, exit_reason_from(p))
    end)

    it("kills a non-trapping local process", function()
      local b = start_child()
      local p = puppet(b)
      local l, ref = erlangen.spawn_monitor(function() erlangen.receive() end)
      must(p, "exit", l, "kill")
      assert.are.equal("killed", H.await_down(ref))
    end)

    it("with normal is ignored by a non-trapping local process", function()
      local b = start_child()
      local p = puppet(b)
      local l, ref = erlangen.spawn_monitor(function()
        while true do
          local m = erlangen.receive()
          erlangen.send(m[1], {"alive", m[2]})
        end
      end)
      must(p, "exit", l, "normal")
      -- the puppet's next message to l comes after its signal
      must(p, "send", l, {self(), "still"})
      assert.are.equal("still", H.recv(H.tagged("alive"), "the local process to answer")[2])
      H.refute_message(H.is_down(ref), "the DOWN", 0)
    end)
  end)

  describe("links and monitors across nodes", function()
    it("unlink stops exit signals in both directions", function()
      local b = start_child()
      local p = puppet(b, {link = true})
      must(p, "trap_exit", true)
      erlangen.unlink(p)
      -- local to remote: a local process that links, unlinks and dies
      local l, lref = local_linker(p)
      must(p, "monitor", l)
      erlangen.send(l, "ignored")   -- the linker reports it
      H.recv(H.tagged("linker_got"), "the linker")
      -- the remote side: unlink from the puppet, then l dies
      must(p, "unlink", l)
      erlangen.exit(l, "boom")
      assert.are.equal("boom", H.await_down(lref))
      local d = reported(p, H.is_down(), "the puppet's DOWN of l")
      assert.are.equal("boom", d[4])
      -- the DOWN came after where an EXIT would have been
      H.refute_message(function(m)
        return type(m) == "table" and m[1] == "got" and type(m[3]) == "table" and m[3][1] == "EXIT"
      end, "an EXIT to the puppet after unlink", 0)
      -- remote to local: this process unlinked p above
      local ref = erlangen.monitor(p)
      erlangen.exit(p, "kill")
      assert.are.equal("killed", H.await_down(ref))
      H.refute_message(H.is_exit(p), "an EXIT after unlink", 0)
    end)

    it("demonitor stops the DOWN", function()
      local b = start_child()
      local p = puppet(b)
      local r1 = erlangen.monitor(p)
      local r2 = erlangen.monitor(p)
      erlangen.demonitor(r1)
      erlangen.exit(p, "kill")
      assert.are.equal("killed", H.await_down(r2))
      H.refute_message(H.is_down(r1), "a DOWN after demonitor", 0)
    end)

    it("a remote demonitor stops the DOWN to the remote watcher", function()
      local b = start_child()
      local p = puppet(b)
      local l = erlangen.spawn(function() erlangen.receive() end)
      local r1 = must(p, "monitor", l)
      local r2 = must(p, "monitor", l)
      must(p, "demonitor", r1)
      erlangen.exit(l, "bye")
      local d = reported(p, H.is_down(r2), "the DOWN of the second monitor")
      assert.are.equal("bye", d[4])
      H.refute_message(function(m)
        return type(m) == "table" and m[1] == "got" and type(m[3]) == "table" and m[3][2] == r1
      end, "a DOWN after demonitor", 0)
    end)

    it("monitor of a dead remote pid gives DOWN noproc", function()
      local b = start_child()
      local dead = dead_remote_pid(b)
      local ref = erlangen.monitor(dead)
      local m = H.recv(H.is_down(ref), "the DOWN")
      assert.are.equal(dead, m[3])
      assert.are.equal("noproc", m[4])
    end)

    it("link to a dead remote pid gives a trapping caller EXIT noproc", function()
      local b = start_child()
      local dead = dead_remote_pid(b)
      erlangen.link(dead)
      assert.are.equal("noproc", exit_reason_from(dead))
    end)

    it("link to a dead remote pid kills a non-trapping caller with noproc", function()
      local b = start_child()
      local dead = dead_remote_pid(b)
      local _, ref = erlangen.spawn_monitor(function(d)
        local ok, err = pcall(erlangen.link, d)   -- raises, or the EXIT comes later
        if not ok then erlangen.exit(err) end
        erlangen.receive()
      end, dead)
      assert.are.equal("noproc", H.await_down(ref))
    end)

    it("a remote process can monitor and link to a dead local pid", function()
      local b = start_child()
      local p = puppet(b)
      local dead = H.dead_pid()
      local ref = must(p, "monitor", dead)
      local d = reported(p, H.is_down(ref), "the DOWN noproc")
      assert.are.equal("noproc", d[4])
      must(p, "trap_exit", true)
      must(p, "link", dead)
      local x = reported(p, H.is_exit(dead), "the EXIT noproc")
      assert.are.equal("noproc", x[3])
    end)
  end)

  describe("monitor_node", function()
    it("sends nodedown when the node is killed", function()
      local b = start_child()
      erlangen.monitor_node(b.name)
      local t0 = erlangen.now()
      kill_child(b)
      local m = H.recv(H.tagged("nodedown"), "the nodedown", DETECT)
      assert.are.equal(b.name, m[2])
      assert.is_true(erlangen.now() - t0 < DETECT)
    end)

    it("sends nodedown at once for a node that cannot be reached", function()
      this_node()
      local name = "nobody@" .. HOST
      local t0 = erlangen.now()
      erlangen.monitor_node(name .. ":" .. closed_port())
      local m = H.recv(H.tagged("nodedown"), "the nodedown", DETECT)
      assert.are.equal(name, m[2])
      assert.is_true(erlangen.now() - t0 < DETECT)
    end)

    it("sends one nodedown per subscription, and monitor_node(node, false) removes one", function()
      local b = start_child()
      erlangen.monitor_node(b.name)
      erlangen.monitor_node(b.name)
      erlangen.monitor_node(b.name)
      erlangen.monitor_node(b.name, false)
      kill_child(b)
      H.recv(H.tagged("nodedown"), "the first nodedown", DETECT)
      H.recv(H.tagged("nodedown"), "the second nodedown", DETECT)
      H.refute_message(H.tagged("nodedown"), "a third nodedown")
    end)

    it("sends nodedown on disconnect, after which nodes() no longer lists the node", function()
      local b = start_child()
      erlangen.monitor_node(b.name)
      assert.is_true(erlangen.disconnect(b.name))
      assert.are.equal(b.name, H.recv(H.tagged("nodedown"), "the nodedown", DETECT)[2])
      assert.is_false(H.contains(erlangen.nodes(), b.name))
      assert.is_false(erlangen.disconnect(b.name))
    end)

    -- b's first report after the disconnect may make a new link before this
    -- node has dropped the old one (the half-open case below).
    it("sends nodedown on disconnect, whose links and monitors see noconnection on both sides", function()
      local b = start_child()
      local p = puppet(b, {link = true})
      local ref = erlangen.monitor(p)
      must(p, "trap_exit", true)
      local pref = must(p, "monitor", self())
      erlangen.monitor_node(b.name)
      assert.is_true(erlangen.disconnect(b.name))
      assert.are.equal(b.name, H.recv(H.tagged("nodedown"), "the nodedown", DETECT)[2])
      assert.are.equal("noconnection", exit_reason_from(p))
      assert.are.equal("noconnection", H.await_down(ref))
      -- the puppet's reports come over a new link that b makes
      local x = reported(p, H.is_exit(self()), "the puppet's EXIT")
      assert.are.equal("noconnection", x[3])
      local d = reported(p, H.is_down(pref), "the puppet's DOWN")
      assert.are.equal("noconnection", d[4])
    end)
  end)

  describe("a simultaneous connect", function()
    it("of two nodes to each other ends with exactly one link", function()
      local b = start_child{prefix = "sa"}
      local c = start_child{prefix = "sb"}
      for round = 1, 3 do
        local pb = erlangen.spawn_opt({node = b.name}, "dist_node.connect_on_go", self(), c.addr)
        local pc = erlangen.spawn_opt({node = c.name}, "dist_node.connect_on_go", self(), b.addr)
        H.recv(function(m) return type(m) == "table" and m[1] == "ready" and m[2] == pb end, "b ready")
        H.recv(function(m) return type(m) == "table" and m[1] == "ready" and m[2] == pc end, "c ready")
        erlangen.send(pb, "go")
        erlangen.send(pc, "go")
        local results = {}
        for _ = 1, 2 do
          local m = H.recv(H.tagged("connected"), "round " .. round .. ": a connect result")
          results[m[2]] = {m[3], m[4]}
        end
        assert.are.same({true}, results[b.name], "round " .. round .. ": b's connect")
        assert.are.same({true}, results[c.name], "round " .. round .. ": c's connect")
        local function state()
          erlangen.spawn_opt({node = b.name}, "dist_node.call", self(), "nodes_b", "nodes")
          erlangen.spawn_opt({node = c.name}, "dist_node.call", self(), "nodes_c", "nodes")
          local nb = H.recv(H.tagged("nodes_b"), "b's nodes")[2]
          local nc = H.recv(H.tagged("nodes_c"), "c's nodes")[2]
          return H.count(nb, c.name), H.count(nc, b.name), tcp_links(b.pid, c.pid)
        end
        local nb, nc, links
        local settled = poll(function()
          nb, nc, links = state()
          return nb == 1 and nc == 1 and links == 1
        end)
        assert.is_true(settled, string.format(
          "round %d: b lists c %d times, c lists b %d times, %d TCP connections between them",
          round, nb, nc, links))
        -- the next round starts from no link
        local wb = erlangen.spawn_opt({node = b.name}, "dist_node.nodedown_watch", self(), c.name)
        H.recv(function(m) return type(m) == "table" and m[1] == "watching" and m[2] == wb end, "the watch")
        erlangen.spawn_opt({node = b.name}, "dist_node.call", self(), "dc", "disconnect", c.name)
        H.recv(H.tagged("dc"), "the disconnect")
        H.recv(H.tagged("nodedown_seen"), "b's nodedown of c", DETECT)
        assert.is_true(poll(function() return tcp_links(b.pid, c.pid) == 0 end),
                       "round " .. round .. ": the link did not close")
      end
    end)
  end)

  describe("a node killed with SIGKILL", function()
    it("fires noconnection on links and monitors to its processes within the tick", function()
      local b = start_child()
      local p1 = puppet(b, {link = true})
      local ref1 = erlangen.monitor(p1)
      local p2 = puppet(b)
      local _, lref = local_linker(p2)
      local t0 = erlangen.now()
      kill_child(b)
      assert.are.equal("noconnection", exit_reason_from(p1, "the EXIT of the linked process", DETECT))
      assert.are.equal("noconnection", H.await_down(ref1, "the DOWN", DETECT))
      assert.are.equal("noconnection", H.await_down(lref, "the non-trapping linker to die", DETECT))
      assert.is_true(erlangen.now() - t0 < DETECT, "took " .. (erlangen.now() - t0) .. " s")
      assert.is_false(H.contains(erlangen.nodes(), b.name))
    end)

    it("leaves nothing hanging: later sends, spawns, links and monitors answer at once", function()
      local b = start_child()
      local p = puppet(b)
      local ref = erlangen.monitor(p)
      kill_child(b)
      assert.are.equal("noconnection", H.await_down(ref, "the DOWN", DETECT))
      local t0 = erlangen.now()
      -- A send never waits for a connect: it is queued for one (and dropped
      -- when it fails), or refused while the node backs off.
      for _, dest in ipairs{p, {"ctl", b.name}} do
        local t1 = erlangen.now()
        local ok, err = erlangen.send(dest, "anyone?", 1)
        assert.is_true(erlangen.now() - t1 < 0.05, "a send took " .. (erlangen.now() - t1) .. " s")
        assert.is_true(ok == true or err == "noconnection", "send gave " .. tostring(ok) .. ", " .. tostring(err))
      end
      local serr = H.error_of(function() erlangen.spawn_opt({node = b.name}, "dist_node.echo") end)
      assert.matches("noconnection", serr)
      local r = erlangen.monitor(p)
      assert.are.equal("noconnection", H.await_down(r, "the DOWN of a new monitor", DETECT))
      erlangen.link(p)
      assert.are.equal("noconnection", exit_reason_from(p, "the EXIT of a new link", DETECT))
      assert.is_true(erlangen.now() - t0 < DETECT, "took " .. (erlangen.now() - t0) .. " s")
    end)
  end)

  describe("a node that stops answering (SIGSTOP)", function()
    it("is noticed by the missing ticks: links and monitors fire noconnection", function()
      local b = start_child()
      local p = puppet(b, {link = true})
      local ref = erlangen.monitor(p)
      erlangen.monitor_node(b.name)
      local t0 = erlangen.now()
      signal(b, "STOP")
      assert.are.equal("noconnection", exit_reason_from(p, "the EXIT", DETECT + 1))
      assert.are.equal("noconnection", H.await_down(ref, "the DOWN", DETECT))
      H.recv(H.tagged("nodedown"), "the nodedown", DETECT)
      local took = erlangen.now() - t0
      assert.is_true(took < DETECT, "took " .. took .. " s")
      assert.is_true(took >= TICK * 0.9, "noticed after " .. took .. " s, before a tick had passed")
    end)
  end)

  describe("the bounded link buffer", function()
    it("makes send return false, full when the peer does not read, and a timeout wait for room", function()
      -- The buffer and the socket buffers (about 16 MiB here) must fill
      -- before the stopped node's silence ends the link (one tick); under
      -- ThreadSanitizer copying them takes longer than that.
      if H.under_tsan() then return pending("too slow under ThreadSanitizer to beat the tick") end
      local b = start_child()
      local p = puppet(b)
      local chunk = ("x"):rep(4 << 20)
      signal(b, "STOP")   -- b reads nothing; this node's link buffer fills
      local sent, ok, err = 0, true, nil
      while ok and sent < 64 do
        ok, err = erlangen.send(p, chunk)
        if ok then sent = sent + 1 end
      end
      assert.is_false(ok, "256 MiB went into the link of a stopped node")
      assert.are.equal("full", err)
      assert.is_true(sent >= 2, "full after only " .. 4 * sent .. " MiB (the buffer is 8 MiB)")
      local t0 = erlangen.now()
      ok, err = erlangen.send(p, chunk, 0.2)
      assert.is_false(ok)
      assert.are.equal("full", err)
      assert.is_true(erlangen.now() - t0 >= 0.2, "send with a timeout did not wait")
    end)

    it("bounds a remote spawn on a node that does not answer by its timeout", function()
      local b = start_child()
      signal(b, "STOP")
      local t0 = erlangen.now()
      local err = H.error_of(function()
        erlangen.spawn_opt({node = b.name, timeout = 0.3}, "dist_node.echo")
      end)
      assert.matches("spawn_opt: on " .. b.name:gsub("%p", "%%%0"), err)
      assert.is_true(err:find("timeout", 1, true) ~= nil or err:find("noconnection", 1, true) ~= nil, err)
      assert.is_true(erlangen.now() - t0 < DETECT, "took " .. (erlangen.now() - t0) .. " s")
    end)
  end)

  describe("a peer with the wrong key", function()
    it("cannot connect: connect returns false and an error", function()
      local x = start_child{key_file = OTHER_KEY, connect = false}
      local t0 = erlangen.now()
      local ok, err = erlangen.connect(x.addr)
      assert.is_false(ok)
      assert.are.equal("string", type(err))
      assert.is_true(#err > 0)
      assert.is_true(erlangen.now() - t0 < DETECT)
      assert.is_false(H.contains(erlangen.nodes(), x.name))
      local serr = H.error_of(function() erlangen.spawn_opt({node = x.name}, "dist_node.echo") end)
      assert.matches("spawn_opt", serr)
    end)

    it("is refused, and the refusing node creates no node, process or thread for it", function()
      local w = start_child()
      local census = function(tag)
        local _, ref = erlangen.spawn_opt({node = w.name, monitor = true}, "dist_node.census", self(), tag)
        local m = H.recv(H.tagged(tag), "the census")
        H.await_down(ref, "the census process to end")
        return m
      end
      local before = census("before")
      local threads = os_threads(w.pid)
      local x = start_child{key_file = OTHER_KEY, connect = w.addr}
      assert.matches("^connect false ", x.connect_line)
      assert.are.equal(threads, os_threads(w.pid), "w's thread count changed")
      local after = census("after")
      assert.are.same({me.name}, after[4], "w's nodes()")
      assert.are.equal(before[2], after[2], "w's process count")
      assert.are.same(before[4], after[4])
      assert.matches("handshake failed", stderr_of(w))
    end)

    it("is reported through erlangen.log on the refusing node when a logger runs", function()
      local log = require "erlangen.log"
      assert.is_true(log.set_sink{pid = self()})
      finally(function() log.set_sink{stderr = true} end)
      local x = start_child{key_file = OTHER_KEY, refused = true}   -- it connects to this node
      assert.matches("^connect false ", x.connect_line)
      local m = H.recv(function(m)
        return type(m) == "table" and m[1] == "log" and m[3].text == "node handshake failed"
      end, "the record of the refused handshake")
      local rec = m[3]
      assert.are.equal("warning", rec.level)
      assert.are.equal(this_node().name, rec.fields.node)
      assert.matches("^127%.0%.0%.1", rec.fields.peer)
      assert.are.equal("string", type(rec.fields.reason))
    end)
  end)

  describe("a link through a tampering proxy", function()
    -- c connects to b through the proxy; a puppet on c and one on b are
    -- linked both ways and monitor each other; both report to this node
    -- over their own links, which the proxy does not touch.
    local function tampered(mode, dir)
      local b = start_child{prefix = "tb"}
      local c = start_child{prefix = "tc"}
      local proxy = erlangen.spawn("dist_proxy.run", self(), b.port)
      local pport = H.recv(H.tagged("proxy"), "the proxy's port")[3]
      local pc = puppet(c)
      must(pc, "trap_exit", true)
      assert.is_true(must(pc, "connect", b.name .. ":" .. pport))
      local pb, ref_c = must(pc, "spawn_opt", {node = b.name, link = true, monitor = true},
                             "dist_node.puppet", self())
      must(pb, "trap_exit", true)
      local ref_b = must(pb, "monitor", pc)
      -- the link works through the proxy
      must(pc, "send", pb, "through")
      assert.are.equal("through", reported(pb, H.equals("through"), "a message through the proxy"))
      erlangen.send(proxy, {"arm", mode, dir})
      -- traffic in both directions, for the proxy to tamper with
      erlangen.send(pc, {"do", "send", pb, "poke"})
      erlangen.send(pb, {"do", "send", pc, "poke"})
      local t = H.recv(H.tagged("tampered"), "the proxy to tamper")
      assert.are.same({"tampered", mode, dir}, t)
      local x = reported(pc, H.is_exit(pb), "c's EXIT", DETECT)
      assert.are.equal("noconnection", x[3])
      local d = reported(pc, H.is_down(ref_c), "c's DOWN", DETECT)
      assert.are.equal("noconnection", d[4])
      x = reported(pb, H.is_exit(pc), "b's EXIT", DETECT)
      assert.are.equal("noconnection", x[3])
      d = reported(pb, H.is_down(ref_b), "b's DOWN", DETECT)
      assert.are.equal("noconnection", d[4])
      assert.is_false(H.contains(must(pc, "nodes"), b.name), "c still lists b")
      assert.is_false(H.contains(must(pb, "nodes"), c.name), "b still lists c")
      H.recv(H.tagged("proxy_closed"), "the proxy to see the link closed", DETECT)
    end

    it("is closed when a byte of a frame is flipped (client to server)", function()
      tampered("flip", "up")
    end)
    it("is closed when a byte of a frame is flipped (server to client)", function()
      tampered("flip", "down")
    end)
    it("is closed when a frame is replayed (client to server)", function()
      tampered("replay", "up")
    end)
    it("is closed when a frame is replayed (server to client)", function()
      tampered("replay", "down")
    end)
    it("is closed when the stream is cut short without a CLOSE frame", function()
      tampered("truncate", "up")
    end)
  end)

  describe("a half-open link", function()
    -- c's end of its link to b closes; b's end stays open and silent, so b
    -- holds its old link until its tick runs out. Erlang lets c reconnect
    -- at once: the new, authenticated link of the same incarnation replaces
    -- the old one (the "alive" answer of its handshake).
    it("does not keep a node from reconnecting at once", function()
      local b = start_child{prefix = "hb"}
      local c = start_child{prefix = "hc"}
      local proxy = erlangen.spawn("dist_proxy.run", self(), b.port)
      local pport = H.recv(H.tagged("proxy"), "the proxy's port")[3]
      local pc = puppet(c)
      must(pc, "trap_exit", true)
      assert.is_true(must(pc, "connect", b.name .. ":" .. pport))
      local pb = must(pc, "spawn_opt", {node = b.name, link = true}, "dist_node.puppet", self())
      erlangen.send(proxy, {"arm", "half_open", "up"})
      H.recv(H.tagged("tampered"), "the proxy to cut c's side")
      assert.are.equal("noconnection", reported(pc, H.is_exit(pb), "c's EXIT", DETECT)[3])
      local t0 = erlangen.now()
      local ok, connected, err = order(pc, "connect", b.addr)
      assert.is_true(ok)
      assert.is_true(connected, string.format("c could not reconnect to b (after %.2f s): %s",
                                              erlangen.now() - t0, tostring(err)))
      local p2 = must(pc, "spawn_opt", {node = b.name}, "dist_node.echo")
      must(pc, "send", p2, {"ping", self(), "over the new link"})
      assert.are.equal("over the new link", H.recv(H.tagged("pong"), "the pong")[2])
    end)
  end)

  describe("volume", function()
    it("delivers 100,000 messages in order, none lost", function()
      local N = 100000
      local b = start_child()
      erlangen.spawn_opt({node = b.name}, "dist_node.seq_sink", self(), N)
      local sink = H.recv(H.tagged("sink"), "the sink")[2]
      for i = 1, N do
        local ok, err = erlangen.send(sink, i, 5)
        if not ok then error("send " .. i .. " failed: " .. tostring(err)) end
      end
      assert.is_true(erlangen.send(sink, "done", 5))
      local r = H.recv(H.tagged("sink_result"), "the sink's count", 60)
      assert.are.same({"sink_result", N, 0, 0, N}, r, "{received, reordered, lost, last}")
    end)
  end)

  describe("a restarted node", function()
    it("treats the pids of its old incarnation as dead and serves the new one", function()
      local b = start_child{prefix = "r"}
      local old = puppet(b)
      local ref = erlangen.monitor(old)
      kill_child(b)
      assert.are.equal("noconnection", H.await_down(ref, "the old incarnation's end", DETECT))
      local b2 = start_child{name = b.name, listen = HOST .. ":" .. b.port}
      assert.are.equal(b.port, b2.port)
      local new = puppet(b2)
      assert.are_not.equal(old, new)
      -- a message to the old pid never reaches anyone of the new incarnation
      local ok, err = erlangen.send(old, "to the old one")
      assert.is_true(ok == true or err == "noproc", "send to an old pid: " .. tostring(err))
      assert.are.equal(new, must(new, "self"))
      H.refute_message(function(m) return type(m) == "table" and m[1] == "got" end,
                       "a message to the old pid delivered in the new incarnation", 0)
      local r = erlangen.monitor(old)
      assert.are.equal("noproc", H.await_down(r, "the DOWN of the old pid"))
      erlangen.link(old)
      assert.are.equal("noproc", exit_reason_from(old, "the EXIT of the old pid"))
      -- and the new incarnation works
      local p = erlangen.spawn_opt({node = b.name}, "dist_node.echo")
      erlangen.send(p, {"ping", self(), "new"})
      local m = H.recv(H.tagged("pong"), "the pong of the new incarnation")
      assert.are.equal(p, m[3])
      assert.are.equal(1, H.count(erlangen.nodes(), b.name))
    end)

    it("replaces the old link at once when it comes back before the old one was noticed", function()
      local b = start_child{prefix = "rs"}
      local old = puppet(b)
      local ref = erlangen.monitor(old)
      signal(b, "STOP")   -- the old incarnation's link stays up here until the tick
      local b2 = start_child{name = b.name}   -- it connects to this node at start
      -- the new link was accepted only after the old one was dropped, so the
      -- DOWN is here already (a tick has not passed: b is merely stopped)
      assert.are.equal("noconnection", H.await_down(ref, "the old incarnation's DOWN", 0))
      assert.are.equal(1, H.count(erlangen.nodes(), b.name))
      local ok, err = erlangen.send(old, "to the old one")
      assert.is_true(ok == true or err == "noproc", "send to an old pid: " .. tostring(err))
      local p = erlangen.spawn_opt({node = b2.addr}, "dist_node.echo")
      erlangen.send(p, {"ping", self(), "new"})
      assert.are.equal(p, H.recv(H.tagged("pong"), "the pong of the new incarnation")[3])
    end)

    it("reports the replaced link through erlangen.log, once the new link is up", function()
      local log = require "erlangen.log"
      assert.is_true(log.set_sink{pid = self()})
      finally(function() log.set_sink{stderr = true} end)
      local b = start_child{prefix = "rl"}
      puppet(b)
      signal(b, "STOP")
      local b2 = start_child{name = b.name}   -- restarted: a new creation
      local m = H.recv(function(m)
        return type(m) == "table" and m[1] == "log" and m[3].text == "lost the link"
          and m[3].fields.peer == b.name
      end, "the record of the replaced link")
      local rec = m[3]
      assert.are.equal("info", rec.level)
      assert.are.equal("restarted", rec.fields.reason)
      local p = erlangen.spawn_opt({node = b2.addr}, "dist_node.echo")
      erlangen.send(p, {"ping", self(), "after"})
      assert.are.equal(p, H.recv(H.tagged("pong"), "the pong over the new link")[3])
    end)
  end)
end)
