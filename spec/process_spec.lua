-- Processes: spawn and its variants, copying functions into a new process,
-- self, is_alive, processes, info, configure, refs and time.
local erlangen = require "erlangen"
local echo = require "echo"            -- spec/fixtures/echo.lua
local H = require "spec.helpers"

local self = erlangen.self

describe("a process", function()
  before_each(H.before)
  after_each(H.after)

  describe("started with erlangen.spawn", function()
    it("runs the function with the arguments given to spawn", function()
      erlangen.spawn(function(parent, a, b)
        erlangen.send(parent, {"args", a, b})
      end, self(), 1, "two")
      assert.are.same({"args", 1, "two"}, H.recv(H.tagged("args"), "the child's arguments"))
    end)

    it("runs Lua's generational collector, which the process may switch off", function()
      erlangen.spawn(function(parent)
        local was = collectgarbage("incremental")
        local now = collectgarbage("generational")
        erlangen.send(parent, {"gc", was, now})
      end, self())
      assert.are.same({"gc", "generational", "incremental"}, H.recv(H.tagged("gc"), "the child's collector mode"))
    end)

    it("keeps nil arguments in place", function()
      erlangen.spawn(function(parent, ...)
        erlangen.send(parent, {"args", select("#", ...), (select(2, ...))})
      end, self(), 1, nil, 3)
      local m = H.recv(H.tagged("args"), "the child's argument count")
      assert.are.equal(3, m[2])
      assert.are.equal(nil, m[3])
    end)

    it("returns a pid that prints like <0.N>", function()
      local pid = H.idle()
      assert.matches("^<%d+%.%d+>$", tostring(pid))
    end)

    it("returns the pid that the new process gets from self()", function()
      local pid = erlangen.spawn(function(parent)
        erlangen.send(parent, {"me", erlangen.self()})
      end, self())
      assert.are.equal(pid, H.recv(H.tagged("me"), "the child's self()")[2])
    end)

    it("never reuses a pid", function()
      local seen = {}
      for i = 1, 50 do
        local pid = H.dead_pid()
        local s = tostring(pid)
        assert.is_nil(seen[s], "pid " .. s .. " given out twice (spawn #" .. i .. ")")
        seen[s] = true
      end
    end)

    it("runs the function in its own state, leaving the caller's globals alone", function()
      caller_only_global = "caller"
      finally(function() caller_only_global = nil; _G.caller_only_global = nil end)
      erlangen.spawn(function(parent)
        child_only_global = "child"
        erlangen.send(parent, {"saw", type(caller_only_global)})
      end, self())
      assert.are.same({"saw", "nil"}, H.recv(H.tagged("saw"), "the child's view of globals"))
      assert.is_nil(rawget(_G, "child_only_global"))
      assert.is_nil(child_only_global)
    end)

    it("gives every process a fresh state, even when its thread is reused", function()
      local leftovers = {}
      for i = 1, 20 do
        local _, ref = erlangen.spawn_monitor(function(parent)
          erlangen.send(parent, {"leftover", rawget(_G, "spawned_leftover")})
          spawned_leftover = "dirty"
          package.loaded.spawned_leftover = true
        end, self())
        local m = H.recv(H.tagged("leftover"), "process " .. i .. "'s report")
        if m[2] ~= nil then leftovers[#leftovers + 1] = i end
        H.await_down(ref)
      end
      assert.are.same({}, leftovers)
    end)

    it("binds an _ENV upvalue to the new process's globals", function()
      erlangen.spawn(function(parent)
        erlangen.send(parent, {"env", _ENV == _G, type(rawget(_G, "erlangen")),
                               rawget(_G, "erlangen") == package.loaded.erlangen,
                               type(print), type(string.format)})
      end, self())
      assert.are.same({"env", true, "table", true, "function", "function"},
        H.recv(H.tagged("env"), "the child's _ENV report"))
    end)

    it("copies upvalues as they were at the time of the spawn", function()
      local n, t = 41, {x = 1}
      erlangen.spawn(function(parent)
        erlangen.send(parent, {"up", n + 1, t.x})
      end, self())
      t.x = 2
      assert.are.same({"up", 42, 1}, H.recv(H.tagged("up"), "the child's upvalues"))
    end)

    it("copies functions reached through upvalues", function()
      local function triple(x) return 3 * x end
      erlangen.spawn(function(parent)
        erlangen.send(parent, {"r", triple(14)})
      end, self())
      assert.are.same({"r", 42}, H.recv(H.tagged("r"), "the helper's result"))
    end)

    it("copies a recursive local function", function()
      local function fact(k) if k <= 1 then return 1 end return k * fact(k - 1) end
      erlangen.spawn(function(parent)
        erlangen.send(parent, {"fact", fact(10)})
      end, self())
      assert.are.same({"fact", 3628800}, H.recv(H.tagged("fact"), "fact(10)"))
    end)

    it("copies mutually recursive functions (a cycle through upvalues)", function()
      local is_even, is_odd
      function is_even(k) if k == 0 then return true end return is_odd(k - 1) end
      function is_odd(k) if k == 0 then return false end return is_even(k - 1) end
      erlangen.spawn(function(parent)
        erlangen.send(parent, {"parity", is_even(10), is_odd(7), is_even(3)})
      end, self())
      assert.are.same({"parity", true, true, false}, H.recv(H.tagged("parity"), "the parity results"))
    end)

    it("keeps two copied closures sharing one upvalue", function()
      local count = 0
      local function inc() count = count + 1 end
      local function get() return count end
      erlangen.spawn(function(parent)
        inc(); inc()
        erlangen.send(parent, {"count", get()})
      end, self())
      assert.are.same({"count", 2}, H.recv(H.tagged("count"), "the shared counter"))
    end)

    it("copies functions passed as arguments or held in argument tables", function()
      erlangen.spawn(function(parent, f, ops)
        erlangen.send(parent, {"r", f(2), ops.neg(5)})
      end, self(), function(x) return x + 1 end, {neg = function(x) return -x end})
      assert.are.same({"r", 3, -5}, H.recv(H.tagged("r"), "the results of the copied functions"))
    end)

    it("keeps a table shared between an upvalue and an argument shared", function()
      local shared = {}
      erlangen.spawn(function(parent, arg)
        erlangen.send(parent, {"same", arg == shared})
      end, self(), shared)
      assert.are.same({"same", true}, H.recv(H.tagged("same"), "the identity check"))
    end)

    it("finds a module upvalue (local erlangen = require 'erlangen') again by name", function()
      erlangen.spawn(function(parent)
        erlangen.send(parent, {"mod", erlangen == package.loaded.erlangen})
      end, self())
      assert.are.same({"mod", true}, H.recv(H.tagged("mod"), "the module identity check"))
    end)

    it("finds the string module and its C functions again by name", function()
      local str, fmt = string, string.format
      erlangen.spawn(function(parent)
        erlangen.send(parent, {"str", fmt("%03d", 7), str.upper("a"),
                               str == package.loaded.string, fmt == package.loaded.string.format})
      end, self())
      assert.are.same({"str", "007", "A", true, true}, H.recv(H.tagged("str"), "the string results"))
    end)

    it("finds base library C functions such as type and tostring by name", function()
      local ty, tostr = type, tostring
      erlangen.spawn(function(parent)
        erlangen.send(parent, {"base", ty(1), tostr(12)})
      end, self())
      assert.are.same({"base", "number", "12"}, H.recv(H.tagged("base"), "the base results"))
    end)

    it("finds an erlangen C function such as erlangen.send by name", function()
      local send = erlangen.send
      erlangen.spawn(function(parent)
        send(parent, {"sent", send == package.loaded.erlangen.send})
      end, self())
      assert.are.same({"sent", true}, H.recv(H.tagged("sent"), "the message sent through the upvalue"))
    end)

    it("finds a module loaded through package.path again by name", function()
      erlangen.spawn(function(parent)
        erlangen.send(parent, {"echo", echo.double(21), echo == package.loaded.echo})
      end, self())
      assert.are.same({"echo", 42, true}, H.recv(H.tagged("echo"), "the fixture module results"))
    end)

    describe("refuses an unsendable value, naming where it was found", function()
      it("for a userdata in an argument", function()
        local before = #erlangen.processes()
        local f = io.tmpfile()
        local err = H.error_of(function() erlangen.spawn(function() end, {conn = f}) end)
        f:close()
        assert.matches("args%[%d+%]%.conn: cannot send userdata", err)
        assert.are.equal(before, #erlangen.processes())
      end)

      it("for a coroutine in an argument", function()
        local co = coroutine.create(function() end)
        local err = H.error_of(function() erlangen.spawn(function() end, {co = co}) end)
        assert.matches("args%[%d+%]%.co: cannot send", err)
        assert.is_truthy(err:find("thread", 1, true) or err:find("coroutine", 1, true),
          "expected the message to name a thread/coroutine, got: " .. err)
      end)

      it("for a C function that belongs to no loaded module", function()
        local iter = string.gmatch("a b", "%a")
        local err = H.error_of(function() erlangen.spawn(function() end, {iter = iter}) end)
        assert.matches("args%[%d+%]%.iter: cannot send", err)
        assert.matches("function", err)
      end)

      it("for a userdata upvalue, naming the upvalue", function()
        local tmp_handle = io.tmpfile()
        local err = H.error_of(function()
          erlangen.spawn(function() return tmp_handle end)
        end)
        tmp_handle:close()
        assert.matches("cannot send userdata", err)
        assert.matches("tmp_handle", err, 1, true)
      end)

      it("for a coroutine upvalue, naming the upvalue", function()
        local worker_co = coroutine.create(function() end)
        local err = H.error_of(function()
          erlangen.spawn(function() return worker_co end)
        end)
        assert.matches("worker_co", err, 1, true)
        assert.matches("cannot send", err, 1, true)
      end)

      it("for a userdata nested in an upvalue table, naming the whole path", function()
        local cfg = {db = {conn = io.tmpfile()}}
        local err = H.error_of(function()
          erlangen.spawn(function() return cfg end)
        end)
        cfg.db.conn:close()
        assert.matches("cfg", err, 1, true)
        assert.matches("db.conn: cannot send userdata", err, 1, true)
      end)
    end)

    it("raises a bad-argument error for a number in place of the function", function()
      local err = H.error_of(function() erlangen.spawn(42) end)
      assert.matches("bad argument #1 to 'spawn'", err, 1, true)
    end)

    it("raises a bad-argument error when given no function", function()
      local err = H.error_of(function() erlangen.spawn() end)
      assert.matches("bad argument #1 to 'spawn'", err, 1, true)
    end)
  end)

  describe("started from a \"module.function\" string", function()
    it("requires the module in the new process and calls the function", function()
      local pid = erlangen.spawn("echo.start", self(), "t1")
      local m = H.recv(H.tagged("started"), "the echo server's greeting")
      assert.are.equal("t1", m[2])
      assert.are.equal(pid, m[3])
      erlangen.send(pid, {"ping", 1})
      assert.are.same({"ping", 1}, H.recv(H.tagged("ping"), "the echoed message"))
    end)

    it("splits the module from the function at the last dot", function()
      erlangen.spawn("fixture.nested.hello", self())
      assert.are.same({"hello", "fixture.nested"}, H.recv(H.tagged("hello"), "the nested module's hello"))
    end)

    it("returns a pid for an unknown module, which becomes the exit reason", function()
      local pid, ref = erlangen.spawn_monitor("no_such_module_xyz.start")
      assert.matches("^<%d+%.%d+>$", tostring(pid))
      local reason = H.await_down(ref)
      assert.are.equal("string", type(reason))
      assert.matches("no_such_module_xyz", reason, 1, true)
    end)

    it("returns a pid for an unknown function, which becomes the exit reason", function()
      local _, ref = erlangen.spawn_monitor("echo.no_such_function")
      local reason = H.await_down(ref)
      assert.are.equal("string", type(reason))
      assert.matches("no_such_function", reason, 1, true)
    end)

    it("returns a pid when the name is not a function, which becomes the exit reason", function()
      local _, ref = erlangen.spawn_monitor("echo.version")
      local reason = H.await_down(ref)
      assert.are_not.equal("normal", reason)
    end)

    it("does not raise for a string without a dot", function()
      local ok, pid = pcall(erlangen.spawn, "nodot")
      assert.is_true(ok, "spawn raised: " .. tostring(pid))
      assert.matches("^<%d+%.%d+>$", tostring(pid))
    end)
  end)

  describe("package paths", function()
    local saved_path, saved_cpath, dir
    before_each(function()
      saved_path, saved_cpath = package.path, package.cpath
      dir = os.tmpname()
      os.remove(dir)
      assert(os.execute("mkdir " .. H.quote(dir)))
      local f = assert(io.open(dir .. "/path_worker.lua", "w"))
      f:write([[
local erlangen = require "erlangen"
local M = {}
function M.start(parent, depth)
  if depth > 0 then erlangen.spawn("path_worker.start", parent, depth - 1) return end
  erlangen.send(parent, {"paths", package.path, package.cpath})
end
return M
]])
      f:close()
    end)
    after_each(function()
      package.path, package.cpath = saved_path, saved_cpath
      os.remove(dir .. "/path_worker.lua")
      os.remove(dir)
    end)

    local function paths_of(spawn_it)
      spawn_it()
      local m = H.recv(H.tagged("paths"), "the child's paths")
      return m[2], m[3]
    end

    it("are the spawner's: a module found on the spawner's package.path is found by the child", function()
      package.path = dir .. "/?.lua;" .. package.path
      package.cpath = dir .. "/?.so;" .. package.cpath
      local path, cpath = paths_of(function() erlangen.spawn("path_worker.start", self(), 0) end)
      assert.are.equal(package.path, path)
      assert.are.equal(package.cpath, cpath)
    end)

    it("pass on to the child's own children", function()
      package.path = dir .. "/?.lua;" .. package.path
      local path = paths_of(function() erlangen.spawn("path_worker.start", self(), 2) end)
      assert.are.equal(package.path, path)
    end)

    it("are what spawn_opt says: a string, or false for the node's default", function()
      package.path = dir .. "/?.lua;" .. package.path
      local path, cpath = paths_of(function()
        erlangen.spawn_opt({path = package.path, cpath = "/x/?.so"}, "path_worker.start", self(), 0)
      end)
      assert.are.equal(package.path, path)
      assert.are.equal("/x/?.so", cpath)
      local default_path
      erlangen.spawn_opt({path = false}, function(parent)
        erlangen.send(parent, {"paths", package.path})
      end, self())
      default_path = H.recv(H.tagged("paths"), "the default path")[2]
      assert.is_nil(default_path:find(dir, 1, true))
      local _, ref = erlangen.spawn_opt({path = false, monitor = true}, "path_worker.start", self(), 0)
      assert.matches("module 'path_worker' not found", H.await_down(ref), 1, true)
    end)

    it("refuses a path option that is not a string or false", function()
      assert.matches("spawn_opt: option 'path' must be a string, or false",
                     H.error_of(erlangen.spawn_opt, {path = true}, function() end), 1, true)
      assert.matches("spawn_opt: option 'cpath' must be a string, or false",
                     H.error_of(erlangen.spawn_opt, {cpath = 1}, function() end), 1, true)
    end)
  end)

  describe("ending", function()
    it("exits with \"normal\" when its function returns", function()
      local _, ref = erlangen.spawn_monitor(function() end)
      assert.are.equal("normal", H.await_down(ref))
    end)

    it("exits with the error message when its function raises a string", function()
      local _, ref = erlangen.spawn_monitor(function() error("boom") end)
      local reason = H.await_down(ref)
      assert.matches(":%d+: boom$", reason)
    end)

    it("exits with the error value itself when its function raises a table", function()
      local _, ref = erlangen.spawn_monitor(function() error({code = 7}) end)
      assert.are.same({code = 7}, H.await_down(ref))
    end)

    it("reports an uncaught error on stderr with the pid, the reason and a traceback", function()
      local script = os.tmpname()
      local f = assert(io.open(script, "w"))
      f:write([[
local E = require "erlangen"
local pid, ref = E.spawn_monitor(function() error("kaboom_marker") end)
io.stdout:write("PID ", tostring(pid), "\n"); io.stdout:flush()
E.receive(function(m) return type(m) == "table" and m[2] == ref end, 5)
]])
      f:close()
      finally(function() os.remove(script) end)
      -- spec/run names the build's interpreter (needed for sanitizer builds,
      -- whose module a stock lua5.4 cannot load); else the stock lua5.4.
      local lua = os.getenv("ERLANGEN_BIN") or "lua5.4"
      local p = assert(io.popen(lua .. " " .. script .. " 2>&1"))
      local out = p:read("a"); p:close()
      local pid = out:match("PID (<[%d.]+>)")
      assert.is_truthy(pid, "the script did not print its child's pid; output:\n" .. out)
      local report = out:gsub("PID <[%d.]+>\n", "", 1)
      assert.matches(pid, report, 1, true)
      assert.matches("kaboom_marker", report, 1, true)
      assert.matches("traceback", report, 1, true)
    end)

    it("survives runaway pcall recursion on the default stack, ending with an error", function()
      local _, ref = erlangen.spawn_monitor(function()
        local function dive() local ok, err = pcall(dive); error(err, 0) end
        dive()
      end)
      local reason = H.await_down(ref, "the recursing process to end", 20)
      assert.are.equal("string", type(reason))
      assert.matches("overflow", reason, 1, true)
    end)
  end)

  describe("started with erlangen.spawn_link", function()
    it("is linked to the caller in both directions", function()
      local pid = erlangen.spawn_link(function() erlangen.receive() end)
      assert.are.equal(1, H.count(erlangen.info(pid).links, self()))
      assert.are.equal(1, H.count(erlangen.info(self()).links, pid))
    end)

    it("delivers the child's crash to a trapping caller as an EXIT message", function()
      erlangen.trap_exit(true)
      local pid = erlangen.spawn_link(function() error("linked boom") end)
      local m = H.recv(H.is_exit(pid), "the EXIT of the linked child")
      assert.matches("linked boom$", m[3])
    end)
  end)

  describe("started with erlangen.spawn_monitor", function()
    it("returns the pid and a ref, and the ref's DOWN arrives when it ends", function()
      local pid, ref = erlangen.spawn_monitor(function() end)
      assert.matches("^#Ref<%d+%.%d+>$", tostring(ref))
      assert.are.same({"DOWN", ref, pid, "normal"}, H.recv(H.is_down(ref), "the DOWN message"))
    end)

    it("does not link the caller", function()
      local pid = erlangen.spawn_monitor(function() erlangen.receive() end)
      assert.are.equal(0, H.count(erlangen.info(self()).links, pid))
    end)
  end)

  describe("started with erlangen.spawn_opt", function()
    it("returns only a pid without the monitor option", function()
      assert.are.equal(1, select("#", erlangen.spawn_opt({}, function() end)))
    end)

    it("starts a process with no parent with {parent = false}, still linked to the caller if asked", function()
      erlangen.trap_exit(true)
      local pid = erlangen.spawn_opt({parent = false, link = true}, function() erlangen.receive() end)
      local info = erlangen.info(pid)
      assert.is_nil(info.parent)
      assert.is_true(H.contains(info.links, self()))
      assert.are.equal(self(), erlangen.info(erlangen.spawn(function() erlangen.receive() end)).parent)
      assert.matches("spawn_opt: option 'parent' can only be false",
                     H.error_of(erlangen.spawn_opt, {parent = true}, function() end), 1, true)
      erlangen.exit(pid, "kill")
      H.recv(H.is_exit(pid), "the EXIT")
    end)

    it("starts the stdlib's on-demand services as roots, not as children of their first user", function()
      local user = erlangen.spawn(function(parent)
        require("erlangen.log").info("hello from the first user")
        erlangen.send(parent, "logged")
        erlangen.receive()
      end, self())
      H.recv(function(m) return m == "logged" end, "the first log")
      local logger = erlangen.whereis("erlangen.log")
      assert.is_truthy(logger)
      assert.is_nil(erlangen.info(logger).parent)
      erlangen.exit(user, "kill")
    end)

    it("links with {link = true}", function()
      erlangen.trap_exit(true)
      local pid = erlangen.spawn_opt({link = true}, function() error("opt boom") end)
      local m = H.recv(H.is_exit(pid), "the EXIT of the child spawned with link")
      assert.matches("opt boom$", m[3])
    end)

    it("monitors with {monitor = true}, returning pid and ref", function()
      local pid, ref = erlangen.spawn_opt({monitor = true}, function() end)
      assert.are.same({"DOWN", ref, pid, "normal"}, H.recv(H.is_down(ref), "the DOWN message"))
    end)

    it("sets the mailbox capacity with {mailbox = n}", function()
      local pid = H.idle({mailbox = 5})
      assert.are.equal(5, erlangen.info(pid).capacity)
    end)

    it("registers the name with {name = ...} before spawn returns", function()
      local pid = H.idle({name = "spawn_opt_named"})
      assert.are.equal(pid, erlangen.whereis("spawn_opt_named"))
      assert.are.equal("spawn_opt_named", erlangen.info(pid).name)
    end)

    it("raises 'already registered' and starts nothing when the name is taken", function()
      H.idle({name = "spawn_opt_taken"})
      local before = #erlangen.processes()
      local err = H.error_of(function() H.idle({name = "spawn_opt_taken"}) end)
      assert.matches("already registered", err, 1, true)
      assert.are.equal(before, #erlangen.processes())
    end)

    it("starts the process trapping exits with {trap_exit = true}", function()
      local pid = erlangen.spawn_opt({trap_exit = true}, function(parent)
        erlangen.send(parent, {"trap", erlangen.trap_exit(true)})
        erlangen.receive()
      end, self())
      assert.is_true(erlangen.info(pid).trap_exit)
      assert.are.same({"trap", true}, H.recv(H.tagged("trap"), "the child's previous trap_exit"))
    end)

    it("combines link, monitor and name", function()
      local pid, ref = erlangen.spawn_opt({link = true, monitor = true, name = "spawn_opt_all"},
        function() erlangen.receive() end)
      assert.are.equal(pid, erlangen.whereis("spawn_opt_all"))
      assert.are.equal(1, H.count(erlangen.info(self()).links, pid))
      assert.matches("^#Ref<", tostring(ref))
    end)

    it("raises \"spawn_opt: unknown option 'x'\" for an unknown option", function()
      local err = H.error_of(function() erlangen.spawn_opt({x = 1}, function() end) end)
      assert.matches("spawn_opt: unknown option 'x'", err, 1, true)
    end)

    it("raises a bad-argument error when the options are not a table", function()
      local err = H.error_of(function() erlangen.spawn_opt("link", function() end) end)
      assert.matches("bad argument #1 to 'spawn_opt'", err, 1, true)
    end)

    it("raises an error naming the option when an option has the wrong type", function()
      local err = H.error_of(function() erlangen.spawn_opt({mailbox = "big"}, function() end) end)
      assert.matches("mailbox", err, 1, true)
    end)
  end)

  describe("erlangen.self", function()
    it("is a live pid in the busted thread, which require made a process", function()
      assert.matches("^<%d+%.%d+>$", tostring(self()))
      assert.is_true(erlangen.is_alive(self()))
    end)

    it("returns an equal pid on every call", function()
      assert.are.equal(self(), self())
      local t = {[self()] = "me"}
      assert.are.equal("me", t[self()])
    end)
  end)

  describe("pids", function()
    it("received in a message are == to the original and work as table keys", function()
      local pid = erlangen.spawn(function(parent)
        erlangen.send(parent, {"me", erlangen.self()})
      end, self())
      local keyed = {[pid] = "child"}
      local got = H.recv(H.tagged("me"), "the child's pid")[2]
      assert.are.equal(pid, got)
      assert.are.equal("child", keyed[got])
    end)
  end)

  describe("erlangen.type, is_pid and is_ref", function()
    it("name pids and refs, and give Lua's type for anything else", function()
      local pid = erlangen.spawn(function() end)
      assert.are.equal("pid", erlangen.type(pid))
      assert.are.equal("pid", erlangen.type(self()))
      assert.are.equal("ref", erlangen.type(erlangen.ref()))
      assert.are.equal("ref", erlangen.type(erlangen.alias()))
      for _, v in ipairs{{1, "number"}, {"<0.1>", "string"}, {{}, "table"}, {true, "boolean"},
                         {print, "function"}, {io.stdout, "userdata"}} do
        assert.are.equal(v[2], erlangen.type(v[1]))
      end
      assert.are.equal("nil", erlangen.type(nil))
      assert.has_error(function() erlangen.type() end, "bad argument #1 to 'type' (value expected)")
      assert.is_true(erlangen.is_pid(pid))
      assert.is_false(erlangen.is_pid(erlangen.ref()))
      assert.is_false(erlangen.is_pid("<0.1>"))
      assert.is_false(erlangen.is_pid(io.stdout))
      assert.is_false(erlangen.is_pid())
      assert.is_true(erlangen.is_ref(erlangen.ref()))
      assert.is_false(erlangen.is_ref(pid))
      assert.is_false(erlangen.is_ref({}))
    end)
  end)

  describe("erlangen.is_alive", function()
    it("is true for a running process", function()
      assert.is_true(erlangen.is_alive(H.idle()))
    end)

    it("is false once the process's DOWN has arrived", function()
      assert.is_false(erlangen.is_alive(H.dead_pid()))
    end)

    it("raises a bad-argument error for a non-pid", function()
      local err = H.error_of(function() erlangen.is_alive("x") end)
      assert.matches("bad argument #1 to 'is_alive'", err, 1, true)
    end)
  end)

  describe("erlangen.processes", function()
    it("lists the caller and every live process", function()
      local pid = H.idle()
      local all = erlangen.processes()
      assert.are.equal(1, H.count(all, self()))
      assert.are.equal(1, H.count(all, pid))
    end)

    it("no longer lists a process once its DOWN has arrived", function()
      local dead = H.dead_pid()
      assert.are.equal(0, H.count(erlangen.processes(), dead))
    end)
  end)

  describe("erlangen.info", function()
    it("returns nil for a dead pid", function()
      assert.is_nil(erlangen.info(H.dead_pid()))
    end)

    it("reports status \"running\" for the caller", function()
      assert.are.equal("running", erlangen.info(self()).status)
    end)

    it("reports status \"waiting\" for a process in erlangen.sleep", function()
      local pid = erlangen.spawn(function() erlangen.sleep(30) end)
      H.eventually(function() return erlangen.info(pid).status == "waiting" end,
        "status \"waiting\" of a sleeping process")
      erlangen.exit(pid, "kill")
    end)

    it("reports status \"waiting\" for a process blocked in receive", function()
      local pid = H.idle()
      H.eventually(function() return erlangen.info(pid).status == "waiting" end,
        "status \"waiting\" of an idle process")
    end)

    it("counts the messages a process sent and received", function()
      local pid = erlangen.spawn(function(parent)
        for _ = 1, 3 do erlangen.send(parent, {"echo", erlangen.receive()}) end
        erlangen.receive(function(m) return m == "never" end, 0.01)   -- nothing taken
        erlangen.receive()
      end, self())
      for i = 1, 3 do erlangen.send(pid, i) end
      for _ = 1, 3 do H.recv(H.tagged("echo"), "an echo") end
      H.eventually(function() return erlangen.info(pid).status == "waiting" end, "the last receive")
      local info = erlangen.info(pid)
      assert.are.equal(3, info.sent)
      assert.are.equal(3, info.received)
      assert.is_true(math.type(info.sent) == "integer")
      erlangen.send(pid, "done")
    end)

    it("reports when it started, its CPU time and its node", function()
      local t0 = erlangen.system_time()
      local pid = erlangen.spawn(function()
        local x = 0
        for i = 1, 2e6 do x = x + i end
        erlangen.receive()
      end)
      H.eventually(function() return erlangen.info(pid).status == "waiting" end, "the busy loop's end")
      local info = erlangen.info(pid)
      assert.is_true(info.started >= t0 - 1 and info.started <= erlangen.system_time(),
                     "started " .. tostring(info.started) .. ", spawned at " .. t0)
      assert.is_true(info.cpu > 0 and info.cpu < 60, "cpu " .. tostring(info.cpu))
      assert.are.equal(erlangen.node(), info.node)
      local mine = erlangen.info(self())
      assert.is_true(mine.cpu > 0)
      erlangen.exit(pid, "kill")
    end)

    it("reports the registered name, or nil without one", function()
      local named = H.idle({name = "info_named"})
      assert.are.equal("info_named", erlangen.info(named).name)
      assert.is_nil(erlangen.info(H.idle()).name)
    end)

    it("counts queued messages, including those selective receive passed over", function()
      local pid = H.idle()
      for i = 1, 3 do assert.is_true((erlangen.send(pid, i))) end
      assert.are.equal(3, erlangen.info(pid).mailbox)
    end)

    it("reports the default capacity of 1024 and no drops for a new process", function()
      local i = erlangen.info(H.idle())
      assert.are.equal(1024, i.capacity)
      assert.are.equal(0, i.dropped)
    end)

    it("lists links on both sides", function()
      local pid = H.idle()
      erlangen.trap_exit(true)
      erlangen.link(pid)
      assert.are.same({self()}, erlangen.info(pid).links)
      assert.are.equal(1, H.count(erlangen.info(self()).links, pid))
    end)

    it("lists the pids a process monitors and the pids monitoring it", function()
      local pid = H.idle()
      erlangen.monitor(pid)
      assert.are.equal(1, H.count(erlangen.info(self()).monitors, pid))
      assert.are.same({self()}, erlangen.info(pid).monitored_by)
    end)

    it("reports trap_exit as a boolean", function()
      assert.is_false(erlangen.info(self()).trap_exit)
      erlangen.trap_exit(true)
      assert.is_true(erlangen.info(self()).trap_exit)
    end)

    it("reports the memory of a spawned process's state in bytes", function()
      local pid = H.idle()
      H.eventually(function() return erlangen.info(pid).status == "waiting" end,
        "the process to be running its function")
      local mem = erlangen.info(pid).memory
      assert.are.equal("integer", math.type(mem))
      assert.is_true(mem > 0, "expected memory > 0, got " .. mem)
    end)

    -- Under a stock lua5.4 the busted thread was attached by require, so the
    -- kernel did not create (and does not measure) its state.
    local stock_lua = arg and type(arg[-1]) == "string" and arg[-1]:match("lua[%d.]*$")
    if stock_lua then
      it("reports memory 0 for the busted thread, whose state the kernel did not create", function()
        assert.are.equal(0, erlangen.info(self()).memory)
      end)
    end

    it("raises a bad-argument error for a non-pid", function()
      local err = H.error_of(function() erlangen.info(1) end)
      assert.matches("bad argument #1 to 'info'", err, 1, true)
    end)
  end)

  describe("erlangen.configure", function()
    it("returns the current values when called without an argument", function()
      local now = erlangen.configure()
      assert.are.equal("table", type(now))
      assert.are.equal(erlangen.configure({}).mailbox, now.mailbox)
      assert.is_true(math.type(now.stack_size) == "integer" and now.stack_size > 0)
    end)

    it("sets the default mailbox capacity of new processes and returns the old value", function()
      local old = erlangen.configure({mailbox = 7})
      finally(function() erlangen.configure(old) end)
      assert.are.equal(1024, old.mailbox)
      assert.are.equal(7, erlangen.info(H.idle()).capacity)
    end)

    it("does not change the capacity of existing processes", function()
      local pid = H.idle()
      local old = erlangen.configure({mailbox = 9})
      finally(function() erlangen.configure(old) end)
      assert.are.equal(1024, erlangen.info(pid).capacity)
    end)

    it("returns the previous values, so passing them back restores the defaults", function()
      local old = erlangen.configure({mailbox = 11, max_depth = 50})
      local mid = erlangen.configure(old)
      assert.are.equal(11, mid.mailbox)
      assert.are.equal(50, mid.max_depth)
      assert.are.equal(1024, erlangen.info(H.idle()).capacity)
    end)

    it("lets C recursion as deep as Lua allows end the process with an error, not the node", function()
      local old = erlangen.configure({stack_size = 512 * 1024})
      finally(function() erlangen.configure(old) end)
      local _, ref = erlangen.spawn_monitor(function()
        local function deep(n) return (string.gsub("x", "x", function() return deep(n + 1) end)) end
        deep(1)
      end)
      assert.matches("stack overflow", H.await_down(ref, "the DOWN of the deep recursion"))
    end)

    it("refuses a max_message of 4 GiB or more (an entry's length is 32 bits), naming the key", function()
      local err = H.error_of(function() erlangen.configure({max_message = 1 << 32}) end)
      assert.matches("'max_message' is out of range", err, 1, true)
      local old = erlangen.configure({max_message = (1 << 32) - 1})
      finally(function() erlangen.configure(old) end)
      assert.are.equal((1 << 32) - 1, erlangen.configure().max_message)
    end)

    it("refuses a stack size below 512 KiB, naming the key", function()
      local err = H.error_of(function() erlangen.configure({stack_size = 256 * 1024}) end)
      assert.matches("stack_size", err, 1, true)
    end)

    it("accepts a stack size, and processes still run with it", function()
      local old = erlangen.configure({stack_size = 512 * 1024})
      finally(function() erlangen.configure(old) end)
      assert.are.equal("integer", math.type(old.stack_size))
      erlangen.spawn(function(parent)
        erlangen.send(parent, {"ran", string.format("%5.2f", 1.5)})
      end, self())
      assert.are.same({"ran", " 1.50"}, H.recv(H.tagged("ran"), "the small-stack process's reply"))
    end)

    it("raises an error naming an unknown key", function()
      local err = H.error_of(function() erlangen.configure({mailbox_size = 3}) end)
      assert.matches("mailbox_size", err, 1, true)
    end)

    it("raises an error naming a key given a value of the wrong type", function()
      local err = H.error_of(function() erlangen.configure({max_depth = "deep"}) end)
      assert.matches("max_depth", err, 1, true)
    end)

    it("raises a bad-argument error when not given a table", function()
      local err = H.error_of(function() erlangen.configure(3) end)
      assert.matches("bad argument #1 to 'configure'", err, 1, true)
    end)
  end)

  describe("erlangen.ref", function()
    it("returns a ref that prints like #Ref<0.N>", function()
      assert.matches("^#Ref<%d+%.%d+>$", tostring(erlangen.ref()))
    end)

    it("returns a different ref on every call", function()
      local a, b = erlangen.ref(), erlangen.ref()
      assert.are_not.equal(a, b)
      assert.are_not.equal(tostring(a), tostring(b))
    end)

    it("survives a message and stays == to the original, also as a table key", function()
      local r = erlangen.ref()
      local keyed = {[r] = "mine"}
      erlangen.send(self(), {"ref", r})
      local got = H.recv(H.tagged("ref"), "the ref sent to self")[2]
      assert.are.equal(r, got)
      assert.are.equal("mine", keyed[got])
    end)
  end)

  describe("time", function()
    it("erlangen.now never goes backwards", function()
      local last = erlangen.now()
      assert.are.equal("number", type(last))
      for _ = 1, 10000 do
        local t = erlangen.now()
        assert.is_true(t >= last, "now() went from " .. last .. " back to " .. t)
        last = t
      end
    end)

    it("erlangen.sleep pauses for at least the given seconds", function()
      local t0 = erlangen.now()
      erlangen.sleep(0.05)
      local dt = erlangen.now() - t0
      assert.is_true(dt >= 0.049 and dt < 2, "expected about 0.05 s, slept " .. dt)
    end)

    it("erlangen.sleep raises a bad-argument error for NaN or a negative time, instead of hanging", function()
      for _, t in ipairs({0/0, -1}) do
        local err = H.error_of(function() erlangen.sleep(t) end)
        assert.matches("bad argument #1", err, 1, true)
      end
    end)

    it("erlangen.sleep raises a bad-argument error for a non-number", function()
      local err = H.error_of(function() erlangen.sleep("long") end)
      assert.matches("bad argument #1 to 'sleep'", err, 1, true)
    end)
  end)
end)

describe("process introspection for the standard library", function()
  before_each(H.before)
  after_each(H.after)

  it("erlangen.info reports the spawner as parent", function()
    local pid = H.idle()
    assert.are.equal(self(), erlangen.info(pid).parent)
  end)

  it("erlangen.info reports the parent of a grandchild as the child that spawned it", function()
    local child = erlangen.spawn(function(to)
      local grandchild = erlangen.spawn(function() erlangen.receive() end)
      erlangen.send(to, {"grandchild", grandchild})
      erlangen.receive()
    end, self())
    local grandchild = H.recv(H.tagged("grandchild"), "the grandchild's pid")[2]
    assert.are.equal(child, erlangen.info(grandchild).parent)
    erlangen.exit(grandchild, "kill")
  end)

  it("erlangen.set_label sets the label that erlangen.info reports, and nil clears it", function()
    local pid = erlangen.spawn(function(to)
      erlangen.set_label("worker 7")
      erlangen.send(to, "labelled")
      erlangen.receive(H.equals("clear"))
      erlangen.set_label(nil)
      erlangen.send(to, "cleared")
      erlangen.receive()
    end, self())
    H.recv(H.equals("labelled"), "the labelled notice")
    assert.are.equal("worker 7", erlangen.info(pid).label)
    erlangen.send(pid, "clear")
    H.recv(H.equals("cleared"), "the cleared notice")
    assert.is_nil(erlangen.info(pid).label)
  end)

  it("erlangen.set_label raises a bad-argument error for a non-string or an over-long label", function()
    assert.matches("bad argument #1 to 'set_label'",
      H.error_of(function() erlangen.set_label({}) end), 1, true)
    assert.matches("longer than 256",
      H.error_of(function() erlangen.set_label(string.rep("x", 257)) end), 1, true)
  end)

  it("erlangen.system_time is wall-clock seconds since the epoch", function()
    local before = os.time()
    local t = erlangen.system_time()
    local after = os.time()
    assert.are.equal("number", type(t))
    assert.is_true(t >= before and t < after + 1, "system_time " .. t .. " outside [" .. before .. ", " .. after + 1 .. ")")
  end)

  it("sends an uncaught crash to the process registered as \"erlangen.log\"", function()
    erlangen.register("erlangen.log", self())
    local pid = erlangen.spawn(function() error("crash for the logger") end)
    local r = H.recv(H.tagged("$log"), "the crash report")
    erlangen.unregister("erlangen.log")
    assert.are.equal("error", r[2])
    assert.are.equal("process crashed", r[3])
    assert.matches("crash for the logger", r[4].reason, 1, true)
    assert.matches("stack traceback", r[4].traceback, 1, true)
    assert.are.equal(pid, r[5])
    assert.is_true(math.abs(r[6] - erlangen.system_time()) < 60)
  end)

  it("does not report a process that ends with erlangen.exit", function()
    erlangen.register("erlangen.log", self())
    local _, ref = erlangen.spawn_monitor(function() erlangen.exit("on purpose") end)
    assert.are.equal("on purpose", H.await_down(ref))
    erlangen.unregister("erlangen.log")
    H.refute_message(H.tagged("$log"), "a crash report for erlangen.exit", 0.1)
  end)
end)
