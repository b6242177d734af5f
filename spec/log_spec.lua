-- erlangen.log: levels and the level filter, the record and its line,
-- the stderr, file, process and syslog sinks, crash reports from the kernel,
-- drop counting, the logger's restart on demand, nothing lost when the
-- program ends, bad arguments.
local erlangen = require "erlangen"
local log = require "erlangen.log"
local H = require "spec.helpers"

local self = erlangen.self

local ISO = "%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d%d%dZ"

-- Kills a logger left running from before the test, so the test starts from
-- the defaults (level info, sink stderr).
local function fresh_logger()
  local old = erlangen.whereis("erlangen.log")
  if old then
    erlangen.exit(old, "kill")
    H.exit_reason(old)
  end
end

-- Makes the calling process the sink and returns after the logger uses it.
local function sink_to_self()
  fresh_logger()
  assert.is_true(log.set_sink{pid = self()})
end

-- The next {"log", line, record} the sink (this process) received.
local function next_line(what)
  local m = H.recv(H.tagged("log"), what or "a log line")
  return m[2], m[3]
end

local function read_all(path) return assert(H.read_file(path), "cannot read " .. path) end

-- Runs `code` in a fresh `erlangen` interpreter with `log` in scope and
-- returns what it wrote to stderr.
local function run(code)
  local bin = assert(os.getenv("ERLANGEN_BIN"), "ERLANGEN_BIN is set by spec/run")
  local file = os.tmpname()
  local f = assert(io.open(file, "w"))
  f:write('local log = require "erlangen.log"\n', code, "\n")
  f:close()
  local p = assert(io.popen(string.format("timeout 20 %s %s 2>&1 >/dev/null", bin, file)))
  local out = p:read("a")
  p:close()
  os.remove(file)
  return out
end

-- Runs `code` as a script with `log` in scope, in a fresh `erlangen`
-- interpreter or (how = "lua") a stock lua5.4 that requires the module.
-- Returns what it wrote to stderr and its exit status.
local function run_script(code, how)
  local bin = assert(os.getenv("ERLANGEN_BIN"), "ERLANGEN_BIN is set by spec/run")
  local file = os.tmpname()
  local f = assert(io.open(file, "w"))
  f:write('local erlangen = require "erlangen"\nlocal log = require "erlangen.log"\n', code, "\n")
  f:close()
  local p = assert(io.popen(string.format("timeout 20 %s %s 2>&1 >/dev/null; echo \"status $?\"",
    how == "lua" and "lua5.4" or bin, file)))
  local out = p:read("a")
  p:close()
  os.remove(file)
  local status = tonumber(out:match("status (%d+)\n$"))
  return out:gsub("status %d+\n$", ""), status
end

-- The numbers i of the lines "... record i=<i>" in `out`, as a set, and how
-- many lines there were.
local function records_in(out)
  local seen, lines = {}, 0
  for i in out:gmatch("record i=(%d+)\n") do seen[tonumber(i)] = true; lines = lines + 1 end
  return seen, lines
end

-- The first number in 1..n missing from `seen`, or nil.
local function first_missing(seen, n)
  for i = 1, n do if not seen[i] then return i end end
  return nil
end

describe("erlangen.log", function()
  before_each(H.before)
  after_each(H.after)

  describe("levels", function()
    it("are debug, info, notice, warning and error, each written with its name", function()
      sink_to_self()
      log.set_level("debug")
      local levels = {"debug", "info", "notice", "warning", "error"}
      for _, level in ipairs(levels) do log[level]("at " .. level) end
      log.flush()
      for _, level in ipairs(levels) do
        local line, rec = next_line("the " .. level .. " record")
        assert.are.equal(level, rec.level)
        assert.are.equal("at " .. level, rec.text)
        assert.matches("^" .. ISO .. " " .. level .. " +<[%d.]+> at " .. level .. "$", line)
      end
    end)

    it("discard records below info by default", function()
      sink_to_self()
      assert.are.equal("info", log.level())
      log.debug("hidden")
      log.info("shown")
      log.flush()
      local _, rec = next_line("the info record")
      assert.are.equal("shown", rec.text)
      assert.are.same({}, H.peek())
    end)

    it("discard records below the level set", function()
      sink_to_self()
      log.set_level("warning")
      log.info("hidden")
      log.notice("hidden")
      log.warning("kept")
      log.error("kept too")
      log.flush()
      assert.are.equal("kept", select(2, next_line()).text)
      assert.are.equal("kept too", select(2, next_line()).text)
      assert.are.same({}, H.peek())
    end)

    it("set_level returns the previous level and level() the current one", function()
      fresh_logger()
      assert.are.equal("info", log.set_level("error"))
      assert.are.equal("error", log.level())
      assert.are.equal("error", log.set_level("debug"))
      assert.are.equal("debug", log.level())
    end)
  end)

  describe("a record", function()
    it("carries the text, the fields, the caller's pid and a timestamp", function()
      sink_to_self()
      local before = erlangen.system_time()
      assert.is_true(log.info("hello", {user = "ann", n = 3}))
      log.flush()
      local after = erlangen.system_time()
      local line, rec = next_line()
      assert.are.same({user = "ann", n = 3}, rec.fields)
      assert.are.equal(self(), rec.pid)
      assert(rec.time >= before and rec.time <= after,
        string.format("time %f is not within [%f, %f]", rec.time, before, after))
      local stamp = os.date("!%Y-%m-%dT%H:%M:%S", math.floor(rec.time))
      assert.are.equal(stamp, line:sub(1, #stamp))
      assert.are.equal(string.format("info    %s hello n=3 user=ann", tostring(self())),
        line:sub(26))
    end)

    it("keeps the fields of a table argument as sent, nested tables included", function()
      sink_to_self()
      log.notice("nested", {a = {1, 2, {b = "c"}}})
      log.flush()
      local _, rec = next_line()
      assert.are.same({a = {1, 2, {b = "c"}}}, rec.fields)
    end)

    it("replaces field values that cannot be sent by their rendering", function()
      sink_to_self()
      assert.is_true(log.info("odd", {f = io.stdout, n = 1}))
      log.flush()
      local _, rec = next_line()
      assert.are.equal(1, rec.fields.n)
      assert.matches("^\"?file", rec.fields.f)
    end)
  end)

  describe("the line format", function()
    local pid = self()
    local p = tostring(pid)

    it("is an ISO-8601 UTC timestamp with milliseconds, the level, the pid, the text", function()
      assert.are.equal("2023-11-14T22:13:20.123Z warning " .. p .. " hi",
        log.format("warning", "hi", {}, pid, 1700000000.1239))
    end)

    it("puts the fields after the text as key=value sorted by key", function()
      local line = log.format("info", "t", {zeta = 1, alpha = "x", mid = true, [1] = "first"}, pid, 0)
      assert.are.equal("1970-01-01T00:00:00.000Z info    " .. p ..
        " t 1=first alpha=x mid=true zeta=1", line)
    end)

    it("quotes strings with spaces or special characters and escapes them", function()
      local line = log.format("info", "t", {a = "two words", b = 'q"uote', c = "", d = "tab\there"}, pid, 0)
      assert.are.equal("1970-01-01T00:00:00.000Z info    " .. p ..
        ' t a="two words" b="q\\"uote" c="" d="tab\\there"', line)
    end)

    it("renders tables compactly with sorted keys", function()
      local line = log.format("info", "t", {t = {1, 2, k = "v", [10] = {x = 1}}, p = pid}, pid, 0)
      assert.are.equal("1970-01-01T00:00:00.000Z info    " .. p ..
        " t p=" .. p .. " t={1,2,[10]={x=1},k=v}", line)
    end)

    it("continues multi-line text and values on indented lines", function()
      local line = log.format("error", "first\nsecond", {reason = "r", traceback = "a\n\tb\n"}, pid, 0)
      assert.are.equal("1970-01-01T00:00:00.000Z error   " .. p .. " first reason=r\n" ..
        "    second\n" ..
        "  traceback:\n" ..
        "    a\n" ..
        "    \tb", line)
    end)
  end)

  describe("the file sink", function()
    it("appends one line per record and keeps what the file held", function()
      fresh_logger()
      local path = os.tmpname()
      local f = assert(io.open(path, "w")); f:write("before\n"); f:close()
      assert.is_true(log.set_sink{file = path})
      log.info("one", {k = 1})
      log.warning("two")
      log.flush()
      local text = read_all(path)
      os.remove(path)
      local lines = {}
      for l in text:gmatch("[^\n]+") do lines[#lines + 1] = l end
      assert.are.equal(3, #lines, "file held: " .. text)
      assert.are.equal("before", lines[1])
      assert.matches("^" .. ISO .. " info    <[%d.]+> one k=1$", lines[2])
      assert.matches("^" .. ISO .. " warning <[%d.]+> two$", lines[3])
    end)

    it("cannot be opened: set_sink returns nil and a message, and the old sink stays", function()
      sink_to_self()
      local ok, err = log.set_sink{file = "/nonexistent-dir/log.txt"}
      assert.is_nil(ok)
      assert.matches("nonexistent%-dir", err)
      log.info("still here")
      log.flush()
      assert.are.equal("still here", select(2, next_line()).text)
    end)
  end)

  describe("the process sink", function()
    it("sends {\"log\", line, record} to the process", function()
      sink_to_self()
      log.error("to a process", {x = 1})
      log.flush()
      local m = H.recv(H.tagged("log"), "the record")
      assert.are.equal("string", type(m[2]))
      assert.are.same({"error", "to a process", {x = 1}, self()},
        {m[3].level, m[3].text, m[3].fields, m[3].pid})
      assert.are.equal("number", type(m[3].time))
    end)

    it("reaches a sink given by name and by {name, node}", function()
      fresh_logger()
      erlangen.register("log_spec_sink", self())
      for _, dest in ipairs({"log_spec_sink", {"log_spec_sink", erlangen.node()}}) do
        assert.is_true(log.set_sink{pid = dest})
        log.notice("to " .. H.show(dest))
        log.flush()
        local m = H.recv(H.tagged("log"), "the record sent to " .. H.show(dest))
        assert.are.equal("to " .. H.show(dest), m[3].text)
      end
    end)

    it("is replaced by stderr when its process is gone", function()
      local out = run([[
        local p, ref = erlangen.spawn_monitor(function() end)
        erlangen.receive(function(m) return type(m) == "table" and m[2] == ref end)
        log.set_sink{pid = p}
        log.info("nowhere")
        log.info("next")
        log.flush()]])
      local lines = {}
      for l in out:gmatch("[^\n]+") do lines[#lines + 1] = l end
      assert.are.equal(3, #lines, "stderr held: " .. out)
      assert.matches("^" .. ISO .. " info    <[%d.]+> nowhere$", lines[1])
      assert.matches("^" .. ISO .. " warning <[%d.]+> log sink process is gone, logging to stderr sink=<[%d.]+>$",
        lines[2])
      assert.matches("^" .. ISO .. " info    <[%d.]+> next$", lines[3])
    end)
  end)

  describe("the stderr sink", function()
    it("is the default", function()
      local out = run('log.info("on stderr", {k = 1}); log.flush()')
      assert.matches("^" .. ISO .. " info    <[%d.]+> on stderr k=1\n$", out)
    end)
  end)

  describe("crash reports", function()
    it("of a plain spawned process arrive through the logger", function()
      sink_to_self()
      local pid, ref = erlangen.spawn_monitor(function() error("boom") end)
      H.await_down(ref)
      log.flush()
      local line, rec = next_line("the crash report")
      assert.are.equal("error", rec.level)
      assert.are.equal("process crashed", rec.text)
      assert.are.equal(pid, rec.pid)
      assert.matches("boom$", rec.fields.reason)
      assert.matches("^" .. ISO .. " error   " .. tostring(pid) .. " process crashed reason=", line)
    end)
  end)

  describe("the syslog sink", function()
    local unix = require "socket.unix"

    -- A datagram socket bound at a fresh path, standing in for /dev/log.
    local function fake_syslog()
      local path = os.tmpname()
      os.remove(path)
      local s = assert(unix.dgram())
      assert(s:bind(path))
      s:settimeout(H.TIMEOUT)
      return s, path
    end

    it("sends one datagram per record as syslog(3) does, the level as its priority", function()
      fresh_logger()
      local s, path = fake_syslog()
      assert.is_true(log.set_sink{syslog = true, path = path, ident = "spec", facility = "local3"})
      log.warning("disk low", {free = 12})
      log.info("second")
      log.flush()
      local d1, d2 = s:receive(), s:receive()
      log.set_sink{stderr = true}
      s:close(); os.remove(path)
      -- local3 = 19: warning 19*8+4, info 19*8+6.
      assert.matches("^<156>%u%l%l [ %d]%d %d%d:%d%d:%d%d spec%[%d+%]: " .. tostring(self()) ..
        " disk low free=12$", d1)
      assert.matches("^<158>%u%l%l [ %d]%d %d%d:%d%d:%d%d spec%[%d+%]: " .. tostring(self()) .. " second$", d2)
    end)

    it("is refused with a message naming the socket when nothing listens there", function()
      fresh_logger()
      local ok, err = log.set_sink{syslog = true, path = "/nonexistent/dev-log"}
      assert.is_nil(ok)
      assert.matches("^/nonexistent/dev%-log: ", err)
    end)

    it("falls back to stderr, saying why, when the syslog socket goes away", function()
      local out = run([[
        local unix = require "socket.unix"
        local path = os.tmpname(); os.remove(path)
        local s = assert(unix.dgram()); assert(s:bind(path))
        assert(log.set_sink{syslog = true, path = path})
        log.info("to syslog"); log.flush()
        s:close(); os.remove(path)
        log.info("after")
        log.flush()]])
      assert.matches("^" .. ISO .. " info    <[%d.]+> after\n" .. ISO ..
        " error   <[%d.]+> syslog failed, logging to stderr path=/tmp/[^ ]+ reason=", out)
    end)
  end)

  describe("drops", function()
    -- A sink with room for one line that reads nothing until it gets the
    -- exit signal "go" (trapped: it needs no mailbox room), then reports the
    -- "dropped" records to the spec.
    local function blocking_sink(parent)
      erlangen.trap_exit(true)
      erlangen.receive(function(m) return type(m) == "table" and m[1] == "EXIT" and m[3] == "go" end)
      while true do
        local m = erlangen.receive()
        if type(m) == "table" and m[1] == "log" and m[3].text:find("dropped", 1, true) then
          erlangen.send(parent, {"dropped", m[3].fields.dropped, m[2]})
        end
      end
    end

    it("are counted by the logger, which says how many were lost", function()
      fresh_logger()
      local sink = erlangen.spawn_opt({mailbox = 1}, blocking_sink, self())
      -- The logger waits up to 30 s for room in the sink: it is stuck.
      assert.is_true(log.set_sink{pid = sink, timeout = 30})
      log.info("fills the sink")
      -- The logger holds at most two records (one sent, one waiting for the
      -- sink) and its mailbox 1024 more: the rest are refused.
      local refused = 0
      for i = 1, 1 + 1024 + 6 do
        if not log.info("flood", {i = i}) then refused = refused + 1 end
      end
      assert(refused >= 5, "expected at least 5 refused log calls, got " .. refused)
      erlangen.exit(sink, "go")
      local m = H.recv(H.tagged("dropped"), "the dropped report")
      assert.are.equal(refused, m[2])
      assert.matches(" warning <[%d.]+> " .. refused .. " log messages dropped dropped=" .. refused .. "$", m[3])
      log.flush()   -- the logger is done with the flood before the sink goes
    end)
  end)

  describe("at the end of a program", function()
    it("writes every record logged by the main chunk, in 20 runs of 1,000 records", function()
      local runs = H.sanitizer() and 5 or 20
      for run_no = 1, runs do
        local out = run_script('for i = 1, 1000 do log.info("record", {i = i}) end')
        local seen, lines = records_in(out)
        assert.are.equal(1000, lines, "run " .. run_no .. " lost records; first missing: " ..
          tostring(first_missing(seen, 1000)))
      end
    end)

    it("writes every record when the main chunk calls os.exit(1), and exits 1", function()
      local runs = H.sanitizer() and 3 or 10
      for run_no = 1, runs do
        local out, status = run_script('for i = 1, 1000 do log.info("record", {i = i}) end os.exit(1)')
        local seen, lines = records_in(out)
        assert.are.equal(1, status)
        assert.are.equal(1000, lines, "run " .. run_no .. " lost records; first missing: " ..
          tostring(first_missing(seen, 1000)))
      end
    end)

    it("writes every record under a stock lua5.4, at the end and at os.exit", function()
      if H.sanitizer() then return pending("a stock lua5.4 cannot load a sanitizer build") end
      for _, tail in ipairs{"", "os.exit(3)"} do
        for run_no = 1, 10 do
          local out, status = run_script('for i = 1, 1000 do log.info("record", {i = i}) end ' .. tail, "lua")
          local _, lines = records_in(out)
          assert.are.equal(tail == "" and 0 or 3, status)
          assert.are.equal(1000, lines, "run " .. run_no .. " (" .. tail .. ") lost records: " .. out:sub(1, 300))
        end
      end
    end)

    it("writes the crash report of a process that crashed just before the end", function()
      for run_no = 1, 10 do
        local out = run_script([[
          log.logger()
          local pid, ref = erlangen.spawn_monitor(function() error("boom at the end") end)
          erlangen.receive(function(m) return type(m) == "table" and m[2] == ref end, 5)]])
        assert.matches(" error   <[%d.]+> process crashed reason=\"[^\n]*boom at the end\"", out,
          1, false, "run " .. run_no)
      end
    end)

    it("writes the records that processes log while they handle shutdown", function()
      local out = run_script([[
        local pids = {}
        for i = 1, 5 do
          pids[i] = erlangen.spawn_opt({trap_exit = true}, function()
            erlangen.receive(function(m) return type(m) == "table" and m[1] == "EXIT" end)
            log.info("stopping", {n = i})
          end)
        end
        log.info("main done")]])
      assert.matches("main done", out, 1, true)
      for i = 1, 5 do assert.matches(" stopping n=" .. i .. "\n", out, 1, true) end
    end)
  end)

  describe("the logger", function()
    it("ends on an exit signal only after writing the records queued before it", function()
      sink_to_self()
      local logger = erlangen.whereis("erlangen.log")
      local ref = erlangen.monitor(logger)
      for i = 1, 100 do log.info("queued", {i = i}) end
      erlangen.exit(logger, "shutdown")
      for i = 1, 100 do
        local _, rec = next_line("record " .. i)
        assert.are.equal(i, rec.fields.i)
      end
      assert.are.equal("shutdown", H.await_down(ref))
    end)

    it("ignores a normal exit signal from a linked process, as if it did not trap exits", function()
      sink_to_self()
      local logger = erlangen.whereis("erlangen.log")
      local p, ref = erlangen.spawn_monitor(function() erlangen.link(logger) end)
      H.await_down(ref)
      log.info("still here")
      local line = next_line("a line after the linked exit")
      assert.matches("still here$", line)
      assert.are.equal(logger, erlangen.whereis("erlangen.log"))
    end)

    it("is registered as erlangen.log", function()
      local pid = log.logger()
      assert.are.equal(pid, erlangen.whereis("erlangen.log"))
    end)

    it("is started again after it was killed", function()
      sink_to_self()
      local old = log.logger()
      erlangen.exit(old, "kill")
      H.exit_reason(old)
      assert.is_true(log.debug("again"))   -- below the new logger's level: not written
      local new = erlangen.whereis("erlangen.log")
      assert.is_truthy(new)
      assert.are_not.equal(old, new)
      assert.is_true(log.set_sink{pid = self()})   -- the sink went with the old logger
      log.info("seen")
      log.flush()
      assert.are.equal("seen", select(2, next_line()).text)
    end)

    it("is started once when several processes race to start it", function()
      fresh_logger()
      for i = 1, 8 do
        erlangen.spawn(function(parent)
          log.flush()
          erlangen.send(parent, {"logged", i, erlangen.whereis("erlangen.log")})
        end, self())
      end
      local first
      for _ = 1, 8 do
        local m = H.recv(H.tagged("logged"), "a racing process")
        first = first or m[3]
        assert.are.equal(first, m[3])
      end
    end)
  end)

  describe("bad arguments", function()
    local function err_of(fn, ...) return tostring(H.error_of(fn, ...)) end
    local here = "log_spec.lua:%d+: "

    it("refuse a text that is not a string", function()
      local e = err_of(function() log.info(nil) end)
      assert.matches(here .. "bad argument #1 to 'info' %(string expected, got nil%)", e)
      e = err_of(function() log.error({}) end)
      assert.matches(here .. "bad argument #1 to 'error' %(string expected, got table%)", e)
    end)

    it("refuse fields that are not a table", function()
      local e = err_of(function() log.warning("x", "k=v") end)
      assert.matches(here .. "bad argument #2 to 'warning' %(table of fields expected, got string%)", e)
    end)

    it("refuse an unknown level", function()
      local e = err_of(function() log.set_level("verbose") end)
      assert.matches(here .. "bad argument #1 to 'set_level' %(level must be one of", e)
      e = err_of(function() log.set_level(3) end)
      assert.matches("got number", e, 1, true)
    end)

    it("refuse a sink that is not one of stderr, file, pid and syslog", function()
      local cases = {
        {nil, "bad argument #1 to 'set_sink' %(table expected, got nil%)"},
        {{}, "set_sink: give exactly one of"},
        {{file = "a", pid = self()}, "set_sink: give exactly one of"},
        {{file = 3}, "set_sink: option 'file' must be a path"},
        {{pid = 42}, "set_sink: option 'pid' must be a pid, name or {name, node}, got number"},
        {{pid = {"sink", "nohost"}}, "set_sink: option 'pid' must be a pid, name or {name, node}, got table"},
        {{stderr = 1}, "set_sink: option 'stderr' must be true"},
        {{pid = self(), timeout = -1}, "set_sink: option 'timeout' must be a non%-negative number"},
        {{file = "a", timeout = 1}, "set_sink: option 'timeout' goes with 'pid'"},
        {{colour = true}, "set_sink: unknown option 'colour'"},
        {{syslog = 1}, "set_sink: option 'syslog' must be true"},
        {{syslog = true, ident = ""}, "set_sink: option 'ident' must be a non%-empty string"},
        {{syslog = true, facility = "kern"}, "set_sink: option 'facility' must be user, daemon or local0..local7, got \"kern\""},
        {{file = "a", ident = "x"}, "set_sink: option 'ident' goes with 'syslog'"},
        {{syslog = true, file = "a"}, "set_sink: give exactly one of"},
      }
      for _, c in ipairs(cases) do
        local e = err_of(function() log.set_sink(c[1]) end)
        assert.matches(here .. c[2], e)
      end
    end)
  end)
end)
