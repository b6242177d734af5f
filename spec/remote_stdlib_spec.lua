-- The stdlib across nodes: server.call, cast and stop to a server on another
-- node, by its remote pid and by {name, node} (reply, timeout with no late
-- reply, noproc, noconnection, wrong types), from this node and from a third
-- one; timer.send_after to a remote pid and to {name, node}. Servers run on
-- real child nodes (spec/fixtures/remote_stdlib_node.lua).
local erlangen = require "erlangen"
local server = require "erlangen.server"
local timer = require "erlangen.timer"
local observer = require "erlangen.observer"
local H = require "spec.helpers"
local D = require "spec.dist_helpers"

local self = erlangen.self

-- Starts a remote_stdlib_node server on child `c` (registered as `name`
-- if given) and returns its pid; the server reports to this process.
local function remote_server(c, name)
  local _, ref = erlangen.spawn_opt({node = c.name, monitor = true},
                                    "remote_stdlib_node.start", self(), name)
  local m = H.recv(H.tagged("server"), "the server on " .. c.name)
  assert(m[2], "the server on " .. c.name .. " did not start: " .. H.show(m[3]))
  assert.are.equal("normal", H.await_down(ref, "the starter on " .. c.name))
  return m[2]
end

-- The error `fn` raised, which must be a server error of `kind` naming `srv`.
local function server_error(kind, srv, fn)
  local err = H.error_of(fn)
  assert.are.equal("table", type(err), "expected a server error, got " .. H.show(err))
  assert.are.equal(kind, err[1], "the error was " .. tostring(err))
  assert.are.same(srv, err.server)
  return err
end

-- A call to `addr` (the server `srv`) that the server holds times out; the
-- reply it sends afterwards goes out on the same link before the answer to
-- the next call, to the inactive alias, and is dropped.
local function times_out_without_late_reply(srv, addr)
  local err = server_error("timeout", addr, function() server.call(addr, {"hold"}, 0.2) end)
  assert.are.equal(0.2, err[2])
  H.recv(H.tagged("holding"), "the server holding the call")
  server.cast(srv, {"release", "too late"})
  assert.are.same({true}, server.call(addr, {"released"}))
  assert.are.same({}, H.peek())
end

describe("the stdlib across nodes", function()
  setup(D.this_node)
  teardown(D.teardown)
  before_each(D.before_each)
  after_each(D.after_each)

  describe("server.call to a remote pid", function()
    it("returns the reply of the server on the other node", function()
      local c = D.start_child()
      local srv = remote_server(c)
      assert.are.equal(c.name, erlangen.node(srv))
      assert.are.same({1, "two"}, server.call(srv, {"echo", {1, "two"}}))
      assert.are.equal(c.name, server.call(srv, {"node"}))
      assert.are.same({}, H.peek())
    end)

    it("raises a timeout, and the late reply never reaches the mailbox", function()
      local c = D.start_child()
      local srv = remote_server(c)
      times_out_without_late_reply(srv, srv)
    end)

    it("raises noproc naming the node for a pid that has ended", function()
      local c = D.start_child()
      local dead = D.dead_remote_pid(c)
      local err = server_error("noproc", dead, function() server.call(dead, {"echo", 1}) end)
      assert.are.equal(c.name, err.node)
      assert.matches("noproc (no such process on " .. c.name .. ")", tostring(err), 1, true)
      assert.are.same({}, H.peek())
    end)

    it("raises noconnection naming the node when the node is gone", function()
      local c = D.start_child()
      local srv = remote_server(c)
      D.kill_child(c)
      local err = server_error("noconnection", srv, function() server.call(srv, {"echo", 1}, 10) end)
      assert.are.equal(c.name, err.node)
      assert.matches("noconnection (node " .. c.name .. " cannot be reached)", tostring(err), 1, true)
      assert.are.same({}, H.peek())
    end)

    it("applies a cast before a later call, and stops the server", function()
      local c = D.start_child()
      local srv = remote_server(c)
      local mref = erlangen.monitor(srv)
      assert.is_true(server.cast(srv, {"set", "cast from afar"}))
      assert.are.equal("cast from afar", server.call(srv, {"get"}))
      assert.is_true(server.stop(srv, "normal", 10))
      assert.are.equal("normal", H.await_down(mref, "the remote server"))
    end)
  end)

  describe("server.call to {name, node}", function()
    it("returns the reply of the server registered there", function()
      local c = D.start_child()
      local srv = remote_server(c, "remote_stdlib_srv")
      local addr = {"remote_stdlib_srv", c.name}
      assert.are.equal(srv, erlangen.whereis("remote_stdlib_srv", c.name))
      assert.are.equal(c.name, server.call(addr, {"node"}))
      assert.is_true(server.cast(addr, {"set", "by name"}))
      assert.are.equal("by name", server.call(addr, {"get"}))
      assert.are.same({}, H.peek())
    end)

    it("raises a timeout, and the late reply never reaches the mailbox", function()
      local c = D.start_child()
      local srv = remote_server(c, "remote_stdlib_srv")
      times_out_without_late_reply(srv, {"remote_stdlib_srv", c.name})
    end)

    it("raises noproc naming the server and the node for a name nobody has there", function()
      local c = D.start_child()
      local addr = {"remote_stdlib_nobody", c.name}
      local err = server_error("noproc", addr, function() server.call(addr, {"echo", 1}) end)
      assert.are.equal(c.name, err.node)
      assert.matches('server.call({"remote_stdlib_nobody", "' .. c.name .. '"}): noproc (no such process on '
        .. c.name .. ")", tostring(err), 1, true)
      assert.are.same({}, H.peek())
    end)

    it("raises noconnection naming the node for a node that cannot be reached", function()
      local ghost = "ghost@" .. D.HOST .. ":" .. D.closed_port()
      local addr = {"remote_stdlib_srv", ghost}
      local err = server_error("noconnection", addr, function() server.call(addr, {"echo", 1}, 10) end)
      assert.are.equal(ghost, err.node)
      assert.matches("noconnection (node " .. ghost .. " cannot be reached)", tostring(err), 1, true)
      assert.are.same({}, H.peek())
    end)

    it("raises noconnection when the node is lost during the call", function()
      local c = D.start_child()
      remote_server(c, "remote_stdlib_srv")
      local addr = {"remote_stdlib_srv", c.name}
      local caller = erlangen.spawn_link(function(watcher, a)
        local ok, err = pcall(server.call, a, {"hold"}, 30)
        erlangen.send(watcher, {"call_ended", ok, type(err) == "table" and err[1] or tostring(err)})
      end, self(), addr)
      H.recv(H.tagged("holding"), "the server holding the call")
      D.kill_child(c)
      assert.are.same({"call_ended", false, "noconnection"}, H.recv(H.tagged("call_ended"), "the call's end"))
      assert.are.equal("normal", D.exit_reason_from(caller))
    end)

    it("stops the server registered there", function()
      local c = D.start_child()
      local srv = remote_server(c, "remote_stdlib_srv")
      local mref = erlangen.monitor(srv)
      assert.is_true(server.stop({"remote_stdlib_srv", c.name}, "shutdown", 10))
      assert.are.equal("shutdown", H.await_down(mref, "the remote server"))
      server_error("noproc", {"remote_stdlib_srv", c.name},
        function() server.stop({"remote_stdlib_srv", c.name}, "shutdown", 10) end)
    end)
  end)

  describe("server.call from a third node", function()
    it("returns the reply of a server on another child node", function()
      local b, c = D.start_child(), D.start_child()
      local srv = remote_server(c)
      local pb = D.puppet(b)
      assert.is_true(D.must(pb, "connect", c.addr))
      local _, ref = erlangen.spawn_opt({node = b.name, monitor = true}, "remote_stdlib_node.call",
                                        self(), srv, {"node"}, 10)
      assert.are.same({"called", true, c.name}, H.recv(H.tagged("called"), "the call from " .. b.name))
      assert.are.equal("normal", H.await_down(ref, "the caller on " .. b.name))
    end)

    it("reaches a server by {name, node} and gets noproc for a name nobody has there", function()
      local b, c = D.start_child(), D.start_child()
      remote_server(c, "remote_stdlib_srv")
      local pb = D.puppet(b)
      assert.is_true(D.must(pb, "connect", c.addr))
      erlangen.spawn_opt({node = b.name}, "remote_stdlib_node.call", self(),
                         {"remote_stdlib_srv", c.name}, {"echo", "via b"}, 10)
      assert.are.same({"called", true, "via b"}, H.recv(H.tagged("called"), "the call from " .. b.name))
      erlangen.spawn_opt({node = b.name}, "remote_stdlib_node.call", self(),
                         {"remote_stdlib_nobody", c.name}, {"echo", 1}, 10)
      local m = H.recv(H.tagged("called"), "the failed call from " .. b.name)
      assert.are.equal(false, m[2])
      assert.are.equal("noproc", m[3][1])
      assert.are.equal(c.name, m[3].node)
    end)
  end)

  describe("observer with a root on another node", function()
    it("shows the subtree of a remote pid and of {name, node}, built there", function()
      local c = D.start_child()
      local srv = remote_server(c, "remote_stdlib_srv")
      for _, root in ipairs({srv, {"remote_stdlib_srv", c.name}}) do
        local trees, err = observer.tree{root = root}
        assert(trees, "observer.tree of " .. H.show(root) .. ": " .. tostring(err))
        assert.are.equal(1, #trees)
        assert.are.equal(srv, trees[1].pid)
        assert.are.equal("server remote_stdlib_node", trees[1].label)
        assert.are.equal("remote_stdlib_srv", trees[1].name)
      end
      assert.matches("remote_stdlib_srv " .. tostring(srv), observer.text{root = srv}, 1, true)
    end)

    it("returns nil, \"noproc\" or \"noconnection\" for a root that is not there", function()
      local c = D.start_child()
      assert.are.same({nil, "noproc"}, {observer.tree{root = {"remote_stdlib_nobody", c.name}}})
      local ghost = "ghost@" .. D.HOST .. ":" .. D.closed_port()
      assert.are.same({nil, "noconnection"}, {observer.tree{root = {"remote_stdlib_srv", ghost}}})
    end)
  end)

  describe("bad addresses", function()
    it("refuse a {name, node} whose node is not a node name", function()
      for _, addr in ipairs({{"srv", 42}, {"srv", "nohost"}, {"", "b@127.0.0.1"}, {"srv", "b@h", "x"}}) do
        local e = H.error_of(function() server.call(addr, "x") end)
        assert.matches("^[^:]*remote_stdlib_spec.lua:%d+: bad argument #1 to 'call' " ..
          "%(pid, name or {name, node} expected, got ", e)
        e = H.error_of(function() timer.send_after(1, addr, "x") end)
        assert.matches("^[^:]*remote_stdlib_spec.lua:%d+: bad argument #2 to 'send_after' " ..
          "%(pid, name or {name, node} expected, got ", e)
      end
    end)
  end)

  describe("timer.send_after", function()
    it("delivers to a remote pid", function()
      local c = D.start_child()
      local p = D.puppet(c)
      timer.send_after(0.05, p, {"tick", 1})
      local m = D.reported(p, function(x) return type(x) == "table" and x[1] == "tick" end, "the tick")
      assert.are.same({"tick", 1}, m)
    end)

    it("delivers to {name, node}", function()
      local c = D.start_child()
      local _, ref = erlangen.spawn_opt({node = c.name, monitor = true}, "dist_node.registered",
                                        self(), "remote_stdlib_echo")
      local reg = H.recv(H.tagged("registered"), "the registered echo on " .. c.name)
      timer.send_after(0.05, {"remote_stdlib_echo", c.name}, {"ping", self(), 7})
      assert.are.same({"pong", 7, reg[3]}, H.recv(H.tagged("pong"), "the pong of the timed ping"))
      erlangen.exit(reg[3], "kill")
      assert.are.equal("killed", H.await_down(ref, "the echo"))
    end)
  end)
end)
