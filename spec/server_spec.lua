-- erlangen.server: start and init, call/cast/info, deferred replies, call
-- errors (timeout without late replies, noproc, a crash, calling self), stop
-- and terminate, parent exits, names, callback modules and bad arguments.
local erlangen = require "erlangen"
local server = require "erlangen.server"
local H = require "spec.helpers"

local self = erlangen.self

-- Callbacks of a small key-value server that reports to arg.parent. The
-- callbacks are copied into the server process: they may use `erlangen` and
-- `server` (found again there by name) but nothing of busted.
local kv = {}

function kv.init(arg)
  if arg.fail then error("init failed: " .. arg.fail) end
  return {parent = arg.parent, data = {}, held = nil}
end

function kv.handle_call(req, from, s)
  local op = req[1]
  if op == "get" then return s.data[req[2]], s end
  if op == "put" then s.data[req[2]] = req[3]; return "ok", s end
  if op == "hold" then                                -- reply later
    s.held = from
    erlangen.send(s.parent, {"held"})
    return server.noreply, s
  end
  if op == "crash" then error("crashed on request") end
  if op == "stop" then return server.stop_with(req[2], "stopping"), s end
  if op == "self_call" then
    local ok, err = pcall(server.call, erlangen.self(), {"get", "x"})
    return {ok, err[1]}, s
  end
  if op == "bad_reply" then return io.stdout, s end
  if op == "alias" then return erlangen.alias(), s end
  return "unknown", s
end

function kv.handle_cast(msg, s)
  if msg[1] == "put" then s.data[msg[2]] = msg[3] end
  if msg[1] == "release" then                       -- answers the held call now
    local sent, why = server.reply(s.held, msg[2])
    erlangen.send(s.parent, {"released", sent, why})
  end
  if msg[1] == "stop" then return server.stop_with(msg[2]), s end
  if msg[1] == "crash" then erlangen.exit(msg[2]) end
  return s
end

function kv.handle_info(msg, s)
  erlangen.send(s.parent, {"info", msg})
  return s
end

function kv.terminate(reason, s)
  erlangen.send(s.parent, {"terminate", reason, s.data.x})
  if s.data.fail_terminate then error("terminate failed") end
end

local function start_kv(opts, extra)
  local arg = {parent = self()}
  for k, v in pairs(extra or {}) do arg[k] = v end
  local pid, reason = server.start(kv, arg, opts)
  assert(pid, "server.start failed: " .. H.show(reason))
  return pid
end

local function is_msg(tag) return H.tagged(tag) end

describe("erlangen.server", function()
  before_each(H.before)
  after_each(H.after)

  describe("call, cast and info", function()
    it("returns the reply of handle_call", function()
      local pid = start_kv()
      assert.are.equal("ok", server.call(pid, {"put", "x", 42}))
      assert.are.equal(42, server.call(pid, {"get", "x"}))
    end)

    it("applies casts in the order they were sent, before a later call", function()
      local pid = start_kv()
      for i = 1, 10 do assert.is_true(server.cast(pid, {"put", "x", i})) end
      assert.are.equal(10, server.call(pid, {"get", "x"}))
    end)

    it("hands any other message to handle_info", function()
      local pid = start_kv()
      erlangen.send(pid, {"hello", 1})
      erlangen.send(pid, "plain")
      assert.are.same({"info", {"hello", 1}}, H.recv(is_msg("info"), "the first info"))
      assert.are.same({"info", "plain"}, H.recv(is_msg("info"), "the second info"))
    end)

    it("reaches a server by its registered name", function()
      local pid = start_kv({name = "server_spec_kv"})
      assert.are.equal(pid, erlangen.whereis("server_spec_kv"))
      server.cast("server_spec_kv", {"put", "x", "by name"})
      assert.are.equal("by name", server.call("server_spec_kv", {"get", "x"}))
    end)

    it("reaches a server by {name, node} when node is this node", function()
      start_kv({name = "server_spec_kv"})
      local addr = {"server_spec_kv", erlangen.node()}
      server.cast(addr, {"put", "x", "by name and node"})
      assert.are.equal("by name and node", server.call(addr, {"get", "x"}))
    end)

    it("reaches a server through an alias the server made", function()
      local pid = start_kv()
      local alias = server.call(pid, {"alias"})
      server.cast(alias, {"put", "x", "by alias"})
      assert.are.equal("by alias", server.call(alias, {"get", "x"}))
      assert.are.same({}, H.peek())
    end)

    it("returns a nil reply as nil", function()
      local pid = start_kv()
      assert.is_nil(server.call(pid, {"get", "missing"}))
    end)

    it("returns false, \"noproc\" from a cast to a dead server instead of raising", function()
      local sent, why = server.cast(H.dead_pid(), {"put", "x", 1})
      assert.are.equal(false, sent)
      assert.are.equal("noproc", why)
      sent, why = server.cast("server_spec_nobody", {"put", "x", 1})
      assert.are.equal(false, sent)
      assert.are.equal("noproc", why)
    end)

    it("leaves no message in the caller's mailbox after calls", function()
      local pid = start_kv()
      for i = 1, 20 do server.call(pid, {"put", "x", i}) end
      assert.are.same({}, H.peek())
    end)
  end)

  describe("deferred replies", function()
    it("answers a call later with server.reply(from, value)", function()
      local pid = start_kv()
      erlangen.spawn(function(parent, srv)
        erlangen.send(parent, {"answer", server.call(srv, {"hold"})})
      end, self(), pid)
      H.recv(is_msg("held"), "the server to hold the call")
      server.cast(pid, {"release", "later"})
      assert.are.same({"released", true}, H.recv(is_msg("released"), "the server's reply report"))
      assert.are.same({"answer", "later"}, H.recv(is_msg("answer"), "the deferred answer"))
    end)
  end)

  describe("call errors", function()
    it("raises a timeout error and never delivers the late reply", function()
      if not erlangen.alias then return pending("needs erlangen.alias from the kernel") end
      local pid = start_kv()
      local err = H.error_of(function() server.call(pid, {"hold"}, 0.1) end)
      assert.are.equal("erlangen.server.error", getmetatable(err).__name)
      assert.are.equal("timeout", err[1])
      assert.are.equal(0.1, err[2])
      assert.are.equal("call", err.op)
      assert.are.equal(pid, err.server)
      assert.are.same({"hold"}, err.request)
      assert.matches("timeout after 0.1 s", tostring(err), 1, true)
      H.recv(is_msg("held"), "the server to hold the call")
      -- the server replies now, to an alias that is no longer active
      server.cast(pid, {"release", "too late"})
      assert.are.same({"released", false, "noproc"}, H.recv(is_msg("released"), "the release report"))
      erlangen.send(self(), "marker")
      assert.are.equal("marker", H.recv(nil, "the marker"))
      assert.are.same({}, H.peek())
    end)

    it("names the reason when the server crashes during the call", function()
      local pid = start_kv()
      local ref = erlangen.monitor(pid)
      local err = H.error_of(function() server.call(pid, {"crash"}) end)
      assert.are.equal("exit", err[1])
      assert.matches("crashed on request$", err[2])
      assert.matches("the server exited with reason .*crashed on request", tostring(err))
      assert.are.equal(err[2], H.await_down(ref))
      assert.are.equal(err[2], H.recv(is_msg("terminate"), "terminate")[2])
      assert.are.same({}, H.drain())
    end)

    it("names the reason when the server is killed during the call", function()
      local pid = start_kv()
      erlangen.spawn(function(parent, srv)
        local ok, err = pcall(server.call, srv, {"hold"})
        erlangen.send(parent, {"result", ok, err[1], err[2]})
      end, self(), pid)
      H.recv(is_msg("held"), "the server to hold the call")
      erlangen.exit(pid, "kill")
      assert.are.same({"result", false, "exit", "killed"}, H.recv(is_msg("result"), "the call error"))
    end)

    it("names the reply when handle_call returns one that cannot be sent", function()
      local pid = start_kv()
      local err = H.error_of(function() server.call(pid, {"bad_reply"}) end)
      assert.are.same({"exit", "reply: cannot send userdata"}, {err[1], err[2]})
    end)

    it("raises noproc for a dead pid", function()
      local dead = H.dead_pid()
      local err = H.error_of(function() server.call(dead, {"get", "x"}) end)
      assert.are.equal("noproc", err[1])
      assert.are.equal(dead, err.server)
      assert.matches("noproc", tostring(err), 1, true)
      assert.are.same({}, H.drain())
    end)

    it("raises noproc for a name nobody has", function()
      local err = H.error_of(function() server.call("server_spec_nobody", {"get", "x"}) end)
      assert.are.equal("noproc", err[1])
      assert.are.equal("server_spec_nobody", err.server)
    end)

    it("raises noproc for a ref that is not an active alias", function()
      local ref = erlangen.ref()
      local err = H.error_of(function() server.call(ref, {"get", "x"}) end)
      assert.are.equal("noproc", err[1])
      assert.are.equal(ref, err.server)
      assert.are.same({}, H.drain())
    end)

    it("raises calling_self when a process calls itself", function()
      local err = H.error_of(function() server.call(self(), "anything") end)
      assert.are.equal("calling_self", err[1])
      assert.are.same({}, H.drain())
    end)

    it("raises calling_self when a server calls itself from a callback", function()
      local pid = start_kv()
      assert.are.same({false, "calling_self"}, server.call(pid, {"self_call"}))
    end)

    it("can be caught with pcall and leaves the monitor removed", function()
      local pid = start_kv()
      local ok, err = pcall(server.call, pid, {"crash"})
      assert.is_false(ok)
      assert.are.equal("exit", err[1])
      assert.are.same({}, erlangen.info(self()).monitors)
    end)
  end)

  describe("start", function()
    it("returns the pid once init has run, with the state init returned", function()
      local pid = start_kv()
      assert.is_true(erlangen.is_alive(pid))
      assert.are.same({}, H.peek())   -- the start acknowledgement is not left behind
      assert.are.same({}, erlangen.info(self()).monitors)
    end)

    it("returns nil and the error of a failing init, and leaves no process", function()
      local pid, reason = server.start({
        init = function(parent)
          erlangen.send(parent, {"init_pid", erlangen.self()})
          error("no database")
        end,
      }, self())
      assert.is_nil(pid)
      assert.matches("no database$", reason)
      local started = H.recv(is_msg("init_pid"), "the init's pid")[2]
      assert.is_false(erlangen.is_alive(started))
      assert.are.same({}, H.drain())
    end)

    it("fails the start with the reason of server.stop_with returned by init", function()
      local pid, reason = server.start({init = function() return server.stop_with({"bad_config", 7}) end})
      assert.is_nil(pid)
      assert.are.same({"bad_config", 7}, reason)
    end)

    it("fails start_link without an EXIT for a trapping caller", function()
      erlangen.trap_exit(true)
      local pid, reason = server.start_link({init = function() error("nope") end})
      assert.is_nil(pid)
      assert.matches("nope$", reason)
      H.refute_message(H.is_exit(), "EXIT from the failed server")
    end)

    it("fails start_link without killing a non-trapping caller", function()
      local caller, ref = erlangen.spawn_monitor(function(parent)
        local pid, reason = server.start_link({init = function() erlangen.exit("bad") end})
        erlangen.send(parent, {"started", pid, reason})
      end, self())
      assert.are.same({"started", nil, "bad"}, H.recv(is_msg("started"), "the start result"))
      assert.are.equal("normal", H.await_down(ref))
      assert.is_false(erlangen.is_alive(caller))
    end)

    it("links start_link's server to the caller", function()
      erlangen.trap_exit(true)
      local pid = assert(server.start_link(kv, {parent = self()}))
      assert.is_true(H.contains(erlangen.info(pid).links, self()))
      assert.is_false(H.contains(erlangen.info(start_kv()).links, self()))
    end)

    it("gives up after opts.timeout, kills the starting server and returns \"timeout\"", function()
      local pid, reason = server.start({
        init = function(parent)
          erlangen.send(parent, {"init_pid", erlangen.self()})
          erlangen.receive(function() return false end)
        end,
      }, self(), {timeout = 0.1})
      assert.is_nil(pid)
      assert.are.equal("timeout", reason)
      local started = H.recv(is_msg("init_pid"), "the init's pid")[2]
      assert.is_false(erlangen.is_alive(started))
      assert.are.same({}, H.drain())
    end)

    it("returns nil, {\"already_started\", pid} for a name in use, without running init", function()
      local first = start_kv({name = "server_spec_once"})
      local pid, reason = server.start({
        init = function(parent) erlangen.send(parent, "second init ran") end,
      }, self(), {name = "server_spec_once"})
      assert.is_nil(pid)
      assert.are.same({"already_started", first}, reason)
      H.refute_message(H.equals("second init ran"), "a second init")
    end)

    it("passes mailbox, max_memory and trap_exit to the process", function()
      local pid = start_kv({mailbox = 7, max_memory = 64 * 1024 * 1024, trap_exit = true})
      local info = erlangen.info(pid)
      assert.are.equal(7, info.capacity)
      assert.is_true(info.trap_exit)
    end)

    it("takes the callbacks from a module given by name", function()
      local pid = assert(server.start("server_counter", 5))
      assert.are.equal(6, server.call(pid, "incr"))
      server.cast(pid, 10)
      assert.are.equal(16, server.call(pid, "get"))
    end)

    it("labels the process with the callback module's name", function()
      if not erlangen.set_label then return pending("needs erlangen.set_label from the kernel") end
      local pid = assert(server.start("server_counter", 0))
      assert.are.equal("server server_counter", erlangen.info(pid).label)
    end)

    it("fails the start with the require error of an unknown module", function()
      local pid, reason = server.start("server_spec_no_such_module", nil)
      assert.is_nil(pid)
      assert.matches("module 'server_spec_no_such_module' not found", reason, 1, true)
    end)

  end)

  describe("stopping", function()
    it("runs terminate with the reason of server.stop and returns true", function()
      local pid = start_kv()
      server.call(pid, {"put", "x", "kept"})
      local ref = erlangen.monitor(pid)
      assert.is_true(server.stop(pid))
      assert.are.same({"terminate", "normal", "kept"}, H.recv(is_msg("terminate"), "terminate"))
      assert.are.equal("normal", H.await_down(ref))
    end)

    it("stops with the given reason", function()
      local pid = start_kv()
      local ref = erlangen.monitor(pid)
      assert.is_true(server.stop(pid, {"shutdown", "maintenance"}, 5))
      assert.are.same({"terminate", {"shutdown", "maintenance"}}, H.recv(is_msg("terminate"), "terminate"))
      assert.are.same({"shutdown", "maintenance"}, H.await_down(ref))
    end)

    it("raises noproc for a dead server or an unknown name", function()
      local err = H.error_of(function() server.stop(H.dead_pid()) end)
      assert.are.equal("noproc", err[1])
      assert.are.equal("stop", err.op)
      err = H.error_of(function() server.stop("server_spec_nobody") end)
      assert.are.equal("noproc", err[1])
    end)

    it("raises the reason when terminate fails", function()
      local pid = start_kv()
      server.call(pid, {"put", "fail_terminate", true})
      local err = H.error_of(function() server.stop(pid) end)
      assert.are.equal("exit", err[1])
      assert.matches("terminate failed$", err[2])
    end)

    it("raises a timeout when the server does not stop in time", function()
      local pid = assert(server.start({
        terminate = function() erlangen.receive(function() return false end) end,
      }))
      local err = H.error_of(function() server.stop(pid, "normal", 0.1) end)
      assert.are.equal("timeout", err[1])
      assert.are.same({}, H.drain())
    end)

    it("stops when handle_call returns server.stop_with, after sending its reply", function()
      local pid = start_kv()
      local ref = erlangen.monitor(pid)
      assert.are.equal("stopping", server.call(pid, {"stop", "done"}))
      assert.are.same({"terminate", "done"}, H.recv(is_msg("terminate"), "terminate"))
      assert.are.equal("done", H.await_down(ref))
    end)

    it("stops when handle_cast returns server.stop_with", function()
      local pid = start_kv()
      local ref = erlangen.monitor(pid)
      server.cast(pid, {"stop", "normal"})
      assert.are.same({"terminate", "normal"}, H.recv(is_msg("terminate"), "terminate"))
      assert.are.equal("normal", H.await_down(ref))
    end)

    it("runs terminate with the error of a failing callback and exits with it", function()
      local pid = start_kv()
      local ref = erlangen.monitor(pid)
      pcall(server.call, pid, {"crash"})
      local t = H.recv(is_msg("terminate"), "terminate")
      assert.matches("crashed on request$", t[2])
      assert.are.equal(t[2], H.await_down(ref))
    end)

    it("runs terminate with the reason of erlangen.exit called in a callback", function()
      local pid = start_kv()
      local ref = erlangen.monitor(pid)
      server.cast(pid, {"crash", {"custom", 1}})
      assert.are.same({"terminate", {"custom", 1}}, H.recv(is_msg("terminate"), "terminate"))
      assert.are.same({"custom", 1}, H.await_down(ref))
    end)

    it("runs terminate when its parent exits, if it traps exits", function()
      local parent = erlangen.spawn(function(spec)
        local pid = server.start_link(kv, {parent = spec}, {trap_exit = true})
        erlangen.send(spec, {"server", pid})
        erlangen.receive(function(m) return m == "go" end)
        erlangen.exit("shutdown")
      end, self())
      local pid = H.recv(is_msg("server"), "the server's pid")[2]
      local ref = erlangen.monitor(pid)
      erlangen.send(parent, "go")
      assert.are.same({"terminate", "shutdown"}, H.recv(is_msg("terminate"), "terminate"))
      assert.are.equal("shutdown", H.await_down(ref))
    end)

    it("runs terminate on a \"shutdown\" exit signal from its parent, if it traps exits", function()
      erlangen.trap_exit(true)   -- the server's exit must not end this (parent) process
      local pid = assert(server.start_link(kv, {parent = self()}, {trap_exit = true}))
      local ref = erlangen.monitor(pid)
      erlangen.exit(pid, "shutdown")   -- what a supervisor sends
      assert.are.same({"terminate", "shutdown"}, H.recv(is_msg("terminate"), "terminate"))
      assert.are.equal("shutdown", H.await_down(ref))
      assert.are.same({"EXIT", pid, "shutdown"}, H.recv(H.is_exit(pid), "the link's EXIT"))
    end)

    it("hands an EXIT from a process other than its parent to handle_info", function()
      local pid = start_kv({trap_exit = true})
      erlangen.exit(pid, "other reason")  -- server.start: it has no parent to obey
      assert.are.same({"info", {"EXIT", self(), "other reason"}}, H.recv(is_msg("info"), "the EXIT info"))
      assert.is_true(erlangen.is_alive(pid))
    end)
  end)

  describe("defaults for missing callbacks", function()
    it("uses the start argument as the state when init is missing", function()
      local pid = assert(server.start({handle_call = function(_, _, s) return s, s end}, "the arg"))
      assert.are.equal("the arg", server.call(pid, "get"))
    end)

    it("crashes the server on a call when handle_call is missing", function()
      local pid = assert(server.start({}))
      local err = H.error_of(function() server.call(pid, "hello") end)
      assert.are.equal("exit", err[1])
      assert.matches("no handle_call callback", err[2], 1, true)
    end)

    it("ignores other messages when handle_info is missing", function()
      local pid = assert(server.start({handle_call = function(r, _, s) return r, s end}))
      erlangen.send(pid, "stray")
      assert.are.equal("still here", server.call(pid, "still here"))
      assert.are.equal(0, erlangen.info(pid).mailbox)
    end)
  end)

  describe("bad arguments", function()
    local pid
    before_each(function() pid = start_kv() end)

    local function check(pattern, fn)
      local err = H.error_of(fn)
      assert.is_string(err)
      assert.matches(pattern, err, 1, true)
      assert.matches("^[^:]*server_spec.lua:%d+:", err)   -- blamed on the caller
    end

    it("names the bad callbacks of start", function()
      check("bad argument #1 to 'start' (callbacks table or module name expected, got number)",
        function() server.start(42) end)
      check("bad argument #1 to 'start_link' (callback 'init' is a number, not a function)",
        function() server.start_link({init = 1}) end)
    end)

    it("names the bad options of start", function()
      check("bad argument #3 to 'start' (options table expected, got string)",
        function() server.start(kv, nil, "fast") end)
      check("bad argument #3 to 'start' (unknown option 'bogus')",
        function() server.start(kv, nil, {bogus = 1}) end)
      check("bad argument #3 to 'start' (option 'mailbox' must be a positive integer, got -1)",
        function() server.start(kv, nil, {mailbox = -1}) end)
      check("bad argument #3 to 'start' (timeout must be a number >= 0 or \"infinity\"",
        function() server.start(kv, nil, {timeout = "soon"}) end)
    end)

    it("names an argument that cannot be sent to the new process", function()
      check("start: arg.file: cannot send userdata",
        function() server.start(kv, {file = io.stdout}) end)
    end)

    it("names the bad server and timeout of call", function()
      check("bad argument #1 to 'call' (pid, name or {name, node} expected, got table)",
        function() server.call({}, "x") end)
      check("bad argument #1 to 'call' (pid, name or {name, node} expected, got {name, node} " ..
        "with node \"nohost\")", function() server.call({"kv", "nohost"}, "x") end)
      check("bad argument #1 to 'call' (pid, name or {name, node} expected, got boolean)",
        function() server.call(true, "x") end)
      check("bad argument #3 to 'call' (timeout must be a number >= 0",
        function() server.call(pid, "x", -1) end)
    end)

    it("names a request that cannot be sent, and leaves nothing behind", function()
      check("bad argument #2 to 'call' (request.f: cannot send userdata)",
        function() server.call(pid, {f = io.stdout}) end)
      assert.are.same({}, erlangen.info(self()).monitors)
      assert.are.same({}, H.peek())
    end)

    it("names the bad arguments of cast, reply, stop and stop_with", function()
      check("bad argument #1 to 'cast' (pid, name or {name, node} expected, got number)",
        function() server.cast(1, "x") end)
      check("bad argument #1 to 'stop' (pid, name or {name, node} expected, got an alias",
        function() server.stop(erlangen.alias()) end)
      check("bad argument #1 to 'reply' (the 'from' of handle_call expected",
        function() server.reply("from", 1) end)
      check("bad argument #3 to 'stop' (timeout must be a number >= 0",
        function() server.stop(pid, "normal", "soon") end)
      check("bad argument #1 to 'stop_with' (reason expected, got nil)",
        function() server.stop_with(nil) end)
    end)
  end)
end)
