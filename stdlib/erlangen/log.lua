-- erlangen.log — leveled, structured logging through one logger process.
--
-- The logger is started on demand, unlinked, and registered as
-- "erlangen.log", the name the kernel sends uncaught process crashes to. A
-- log call copies its record into the logger's bounded mailbox with a short
-- timeout and never waits longer: when the logger cannot keep up, records are
-- dropped, the kernel counts them in the logger's `info().dropped`, and the
-- logger reports how many were lost. The logger traps exits only to write
-- what it holds before it ends; the kernel stops it after every other process
-- (kernel.h, KERN_LOGGER_NAME), so a program's last records are written.
local erlangen = require "erlangen"
local gen = require "erlangen.gen"
local svc = require "erlangen.service"

local log = {}

local NAME = "erlangen.log"
local MAILBOX = 1024          -- the logger's mailbox bound
local SEND_WAIT = 0.05        -- seconds a log call waits for room, then drops
local CALL_TIMEOUT = 5        -- seconds a synchronous request waits for its answer
local SINK_TIMEOUT = 0.1      -- default wait for room in a process sink

local SYSLOG_PATH = "/dev/log"  -- the local syslog socket (journald listens there too)
local SYSLOG_MAX = 16384        -- bytes of a syslog datagram; longer records are cut

local LEVELS = {debug = 1, info = 2, notice = 3, warning = 4, error = 5}
local LEVEL_NAMES = {"debug", "info", "notice", "warning", "error"}
local SEVERITY = {debug = 7, info = 6, notice = 5, warning = 4, error = 3}  -- RFC 5424's numbers
local FACILITY = {user = 1, daemon = 3, local0 = 16, local1 = 17, local2 = 18, local3 = 19,
                  local4 = 20, local5 = 21, local6 = 22, local7 = 23}

-- Values ----------------------------------------------------------------------

-- Wall-clock seconds since the epoch, for timestamps.
local function wall_time()
  return erlangen.system_time and erlangen.system_time() or os.time()
end

local typename = erlangen.type

-- Formatting -----------------------------------------------------------------------

-- "2024-05-01T12:00:00.123Z": ISO-8601, UTC, milliseconds (truncated).
local function timestamp(t)
  local ms = math.floor(t * 1000)
  return os.date("!%Y-%m-%dT%H:%M:%S", ms // 1000) .. string.format(".%03dZ", ms % 1000)
end

local ESCAPES = {["\\"] = "\\\\", ['"'] = '\\"', ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t"}

local function quote(s)
  return '"' .. s:gsub('[%c\\"]', function(c)
    return ESCAPES[c] or string.format("\\%03d", c:byte())
  end) .. '"'
end

-- A string is written bare when it cannot be mistaken for anything else.
local function render_string(s)
  if s ~= "" and not s:find("[^%w%.%-_/:<>#@+,%%]") then return s end
  return quote(s)
end

local function key_order(a, b)
  local ta, tb = type(a), type(b)
  if ta ~= tb then return ta < tb end
  if ta == "number" or ta == "string" then return a < b end
  return tostring(a) < tostring(b)
end

-- One value on one line: strings bare or quoted, tables as {1,2,k=v} with
-- keys sorted, cut at depth 3 and at 20 entries.
local function render(v, depth)
  local t = type(v)
  if t == "string" then return render_string(v) end
  if t == "number" then
    if math.type(v) == "integer" then return tostring(v) end
    return string.format("%.14g", v)
  end
  if t ~= "table" then return tostring(v) end
  depth = depth or 0
  if depth >= 3 then return "{...}" end
  local parts, n = {}, #v
  for i = 1, n do parts[i] = render(v[i], depth + 1) end
  local keys = {}
  for k in pairs(v) do
    if not (math.type(k) == "integer" and k >= 1 and k <= n) then keys[#keys + 1] = k end
  end
  table.sort(keys, key_order)
  for _, k in ipairs(keys) do
    local ks = type(k) == "string" and k:match("^[%a_][%w_]*$") and k or "[" .. render(k, depth + 1) .. "]"
    parts[#parts + 1] = ks .. "=" .. render(v[k], depth + 1)
  end
  if #parts > 20 then
    parts = table.move(parts, 1, 20, 1, {}); parts[21] = "..."
  end
  return "{" .. table.concat(parts, ",") .. "}"
end

local function indent(s, prefix)
  return prefix .. s:gsub("\n", "\n" .. prefix)
end

-- A record without its timestamp and level: the pid, the text and the fields
-- as key=value sorted by key. A text or string value spanning several lines
-- continues on indented lines below, so every line but the first starts with
-- a space.
local function body(text, fields, pid)
  local head, rest = text:match("^([^\n]*)\n(.*)$")
  local line = {tostring(pid), head or text}
  local tail = {}
  if rest then tail[1] = indent(rest, "    ") end
  local keys = {}
  for k in pairs(fields) do keys[#keys + 1] = k end
  table.sort(keys, key_order)
  for _, k in ipairs(keys) do
    local v, ks = fields[k], type(k) == "string" and k or render(k)
    if type(v) == "string" and v:find("\n") then
      tail[#tail + 1] = "  " .. ks .. ":\n" .. indent(v:gsub("\n$", ""), "    ")
    else
      line[#line + 1] = ks .. "=" .. render(v)
    end
  end
  local s = table.concat(line, " ")
  if #tail > 0 then s = s .. "\n" .. table.concat(tail, "\n") end
  return s
end

-- The text of one record: the timestamp, the level, then its body.
local function format(level, text, fields, pid, time)
  return timestamp(time) .. " " .. string.format("%-7s", level) .. " " .. body(text, fields, pid)
end

log.format = format

-- Syslog ---------------------------------------------------------------------------

-- The OS process id, for the syslog tag.
local function os_pid()
  local f = io.open("/proc/self/stat")
  local pid = f and f:read("n")
  if f then f:close() end
  return pid and math.tointeger(pid) or 0
end

-- A datagram socket connected to the syslog socket at `path`, or nil and why.
local function syslog_connect(path)
  local ok, unix = pcall(require, "socket.unix")
  if not ok then return nil, "the syslog sink needs luasocket (socket.unix)" end
  local s, err = unix.dgram()
  if not s then return nil, err end
  local done, cerr = s:connect(path)
  if not done then s:close(); return nil, path .. ": " .. tostring(cerr) end
  return s
end

-- One record as a syslog datagram, in the form syslog(3) sends to /dev/log:
-- "<PRI>Mmm dd hh:mm:ss ident[pid]: body". The priority carries the level.
local function syslog_datagram(sink, rec)
  local pri = sink.facility * 8 + SEVERITY[rec.level]
  local d = string.format("<%d>%s %s[%d]: %s", pri, os.date("%b %e %H:%M:%S", math.floor(rec.time)),
    sink.ident, sink.os_pid, body(rec.text, rec.fields, rec.pid))
  if #d > SYSLOG_MAX then d = d:sub(1, SYSLOG_MAX - 3) .. "..." end
  return d
end

-- The logger process --------------------------------------------------------------

-- The body of the logger. Its state: the level, the sink and the drop count
-- it last reported. Messages it takes:
--   {"$log", level, text, fields, pid, time}     a record (also from the kernel)
--   {"$log_ctl", op, reply_to, arg}              set_level, level, set_sink, flush
-- Answers go to reply_to as {reply_to, value [, err]}.
local function logger()
  erlangen.set_label("logger")
  local self = erlangen.self()
  local threshold = LEVELS.info
  local sink = {kind = "stderr"}
  local reported = 0   -- drops already reported

  local function close(s)
    if s.kind == "file" then s.file:close() elseif s.kind == "syslog" then s.socket:close() end
  end

  -- Sends one datagram; a syslog daemon that restarted is connected to again once.
  local function syslog_send(rec)
    local d = syslog_datagram(sink, rec)
    local ok, err = sink.socket:send(d)
    if ok then return true end
    local again = syslog_connect(sink.path)
    if not again then return nil, err end
    sink.socket:close(); sink.socket = again
    return again:send(d)
  end

  local emit
  -- The sink failed: this line and the next go to stderr, with a record
  -- that says why.
  local function fall_back(line, level, text, fields)
    close(sink); sink = {kind = "stderr"}
    io.stderr:write(line, "\n")
    emit(level, text, fields)
  end

  local function write(rec, line)
    if sink.kind == "stderr" then
      io.stderr:write(line, "\n")
    elseif sink.kind == "file" then
      local ok, err = sink.file:write(line, "\n")
      if ok then ok, err = sink.file:flush() end
      if not ok then
        fall_back(line, "error", "log file failed, logging to stderr", {path = sink.path, reason = tostring(err)})
      end
    elseif sink.kind == "syslog" then
      local ok, err = syslog_send(rec)
      if not ok then
        fall_back(line, "error", "syslog failed, logging to stderr", {path = sink.path, reason = tostring(err)})
      end
    else
      local sent, why = erlangen.send(sink.pid, {"log", line, rec}, sink.timeout)
      if not sent and why == "noproc" then
        fall_back(line, "warning", "log sink process is gone, logging to stderr", {sink = sink.pid})
      end
    end
  end

  emit = function(level, text, fields, pid, time)
    if (LEVELS[level] or LEVELS.error) < threshold then return end
    local rec = {level = level, text = text, fields = fields, pid = pid or self,
                 time = time or wall_time()}
    write(rec, format(rec.level, rec.text, rec.fields, rec.pid, rec.time))
  end

  -- A record from anyone: take what makes sense of it rather than fail.
  local function take(m)
    local level = LEVELS[m[2]] and m[2] or "error"
    local text = type(m[3]) == "string" and m[3] or render(m[3])
    local fields = type(m[4]) == "table" and m[4] or {value = m[4]}
    local time = type(m[6]) == "number" and m[6] or wall_time()
    emit(level, text, fields, m[5], time)
  end

  local function open_sink(spec)
    if spec.file then
      local f, err = io.open(spec.file, "a")
      if not f then return nil, err end
      f:setvbuf("line")
      return {kind = "file", file = f, path = spec.file}
    elseif spec.syslog then
      local path = spec.path or SYSLOG_PATH
      local socket, err = syslog_connect(path)
      if not socket then return nil, err end
      return {kind = "syslog", socket = socket, path = path, ident = spec.ident or "erlangen",
              facility = FACILITY[spec.facility or "user"], os_pid = os_pid()}
    elseif spec.pid then
      return {kind = "process", pid = spec.pid, timeout = spec.timeout or SINK_TIMEOUT}
    end
    return {kind = "stderr"}
  end

  local function control(op, arg)
    if op == "set_level" then
      local old = LEVEL_NAMES[threshold]
      threshold = LEVELS[arg]
      return old
    elseif op == "level" then
      return LEVEL_NAMES[threshold]
    elseif op == "set_sink" then
      local new, err = open_sink(arg)
      if not new then return nil, err end
      close(sink); sink = new
      return true
    elseif op == "flush" then
      return true
    end
    return nil, "unknown request " .. tostring(op)
  end

  local function check_drops()
    local info = erlangen.info(self)
    local lost = info and info.dropped - reported or 0
    if lost > 0 then
      reported = reported + lost
      emit("warning", lost .. " log messages dropped", {dropped = lost})
    end
  end

  local function handle(m)
    if type(m) ~= "table" then return end
    local ok, err = true, nil
    if m[1] == "$log" then
      ok, err = pcall(take, m)
    elseif m[1] == "$log_ctl" then
      local ok2, v, e = pcall(control, m[2], m[4])
      if not ok2 then v, e = nil, tostring(v) end
      erlangen.send(m[3], {m[3], v, e}, SINK_TIMEOUT)
    end
    if not ok then io.stderr:write("erlangen.log: cannot write a record: ", tostring(err), "\n") end
  end

  -- It traps exits from its start (spawn_opt), so that an exit signal ends it
  -- as it would a process that does not trap exits, but only once what is
  -- queued is written: the signal's EXIT comes after the records sent before
  -- it, and those already behind it are written too.
  while true do
    local m = erlangen.receive()
    if type(m) == "table" and m[1] == "EXIT" and (m[3] ~= "normal" or m[2] == self) then
      for _ = 1, MAILBOX do
        local rest = erlangen.receive(0)
        if rest == nil then break end
        handle(rest)
      end
      check_drops()
      close(sink)
      erlangen.exit(m[3])
    end
    handle(m)
    check_drops()
  end
end

-- Talking to the logger ------------------------------------------------------------

-- The logger's pid, started if needed.
local function ensure()
  return svc.ensure(NAME, {mailbox = MAILBOX, trap_exit = true}, logger, "erlangen.log: cannot start the logger")
end

-- A synchronous request (gen.call). A logger that dies before it answers
-- (killed, or found dying by whereis) is started again and asked once more.
local function call(fname, op, arg)
  for _ = 1, 2 do
    local m, kind = gen.call(ensure(), function(alias) return {"$log_ctl", op, alias, arg} end,
                             CALL_TIMEOUT)
    if m then return m[2], m[3] end
    if kind == "timeout" then
      error(string.format("%s: the logger did not answer within %gs", fname, CALL_TIMEOUT), 3)
    end
  end
  error(fname .. ": the logger keeps dying", 3)
end

-- A copy of `fields` that the codec accepts: values it refuses (userdata,
-- coroutines, C functions, tables holding them) become their rendering.
local function sendable(fields)
  local out = {}
  for k, v in pairs(fields) do
    local key = (type(k) == "string" or type(k) == "number") and k or render(k)
    local t = type(v)
    if t == "string" or t == "number" or t == "boolean" or erlangen.is_pid(v)
      or (t == "table" and pcall(erlangen.encode, v)) then
      out[key] = v
    else
      out[key] = render(v)
    end
  end
  return out
end

local function is_codec_error(e)
  return type(e) == "string" and (e:find("cannot send", 1, true) or e:find("nesting deeper", 1, true)
    or e:find("larger than", 1, true)) ~= nil
end

local function record(fname, level, text, fields)
  if type(text) ~= "string" then
    error(string.format("bad argument #1 to '%s' (string expected, got %s)", fname, typename(text)), 3)
  end
  if fields ~= nil and type(fields) ~= "table" then
    error(string.format("bad argument #2 to '%s' (table of fields expected, got %s)",
      fname, typename(fields)), 3)
  end
  local rec = {"$log", level, text, fields or {}, erlangen.self(), wall_time()}
  for _ = 1, 2 do
    local ok, sent, why = pcall(erlangen.send, erlangen.whereis(NAME) or ensure(), rec, SEND_WAIT)
    if not ok then
      if not is_codec_error(sent) then error(sent, 0) end
      rec[4] = sendable(fields)
      ok, sent, why = pcall(erlangen.send, erlangen.whereis(NAME) or ensure(), rec, SEND_WAIT)
      if not ok then
        if not is_codec_error(sent) then error(sent, 0) end
        return false
      end
    end
    if sent then return true end
    if why ~= "noproc" then return false end   -- full: dropped, and counted by the kernel
  end
  return false
end

-- The API ----------------------------------------------------------------------------

-- log.debug/info/notice/warning/error(text [, fields]) → true if the record
-- was queued, false if it was dropped.
for _, level in ipairs(LEVEL_NAMES) do
  log[level] = function(text, fields)
    local queued = record(level, level, text, fields)   -- not a tail call: errors name the caller
    return queued
  end
end

-- log.report(level, text, fields): as log[level], but it never raises: when
-- the record cannot be handed to the logger (it cannot be started, the node
-- is stopping), it goes to stderr as one line. For the stdlib's own reports
-- (supervisor, server), which must not fail because logging did.
function log.report(level, text, fields)
  if pcall(log[level], text, fields) then return end
  local parts = {}
  for k, v in pairs(fields or {}) do parts[#parts + 1] = tostring(k) .. "=" .. tostring(v) end
  table.sort(parts)
  pcall(io.stderr.write, io.stderr, string.format("[%s] %s %s: %s\n", level, tostring(erlangen.self()),
    text, table.concat(parts, " ")))
end

local function check_level(fname, level)
  if LEVELS[level] == nil then
    error(string.format("bad argument #1 to '%s' (level must be one of debug, info, notice, " ..
      "warning, error; got %s)", fname, type(level) == "string" and quote(level) or typename(level)), 3)
  end
end

-- Records below `level` are discarded by the logger. Returns the previous level.
function log.set_level(level)
  check_level("set_level", level)
  return (call("set_level", "set_level", level))
end

-- The logger's level.
function log.level()
  return (call("level", "level"))
end

-- Where formatted records go. `spec` is one of
--   {stderr = true}                  standard error (the default)
--   {file = path}                    appended to the file, flushed per record
--   {pid = p [, timeout = seconds]}  sent to p as {"log", line, record}; p is a
--                                    pid of any node, an alias, a name or
--                                    {name, node}
--   {syslog = true [, ident = s] [, facility = f] [, path = p]}
--                                    one datagram per record to the local
--                                    syslog socket (journald's too), /dev/log
--                                    unless `path`; ident "erlangen", facility
--                                    "user", "daemon" or "local0".."local7"
-- Returns true once the logger uses the new sink, or nil and a message when
-- the file or the syslog socket cannot be opened (the old sink stays).
function log.set_sink(spec)
  if type(spec) ~= "table" then
    error("bad argument #1 to 'set_sink' (table expected, got " .. typename(spec) .. ")", 2)
  end
  local kinds = 0
  for k, v in pairs(spec) do
    if k == "stderr" then
      if v ~= true then error("set_sink: option 'stderr' must be true", 2) end
    elseif k == "file" then
      if type(v) ~= "string" or v == "" then error("set_sink: option 'file' must be a path", 2) end
    elseif k == "pid" then
      if not gen.is_address(v) then
        error("set_sink: option 'pid' must be a pid, name or {name, node}, got " .. typename(v), 2)
      end
    elseif k == "timeout" then
      if type(v) ~= "number" or not (v >= 0) then
        error("set_sink: option 'timeout' must be a non-negative number", 2)
      end
    elseif k == "syslog" then
      if v ~= true then error("set_sink: option 'syslog' must be true", 2) end
    elseif k == "ident" or k == "path" then
      if type(v) ~= "string" or v == "" then
        error("set_sink: option '" .. k .. "' must be a non-empty string", 2)
      end
    elseif k == "facility" then
      if FACILITY[v] == nil then
        error("set_sink: option 'facility' must be user, daemon or local0..local7, got " ..
          (type(v) == "string" and quote(v) or typename(v)), 2)
      end
    else
      error("set_sink: unknown option '" .. tostring(k) .. "'", 2)
    end
    if k == "stderr" or k == "file" or k == "pid" or k == "syslog" then kinds = kinds + 1 end
  end
  if kinds ~= 1 then error("set_sink: give exactly one of 'stderr', 'file', 'pid' and 'syslog'", 2) end
  if spec.timeout and not spec.pid then error("set_sink: option 'timeout' goes with 'pid'", 2) end
  for _, k in ipairs{"ident", "facility", "path"} do
    if spec[k] and not spec.syslog then error("set_sink: option '" .. k .. "' goes with 'syslog'", 2) end
  end
  local ok, err = call("set_sink", "set_sink", {stderr = spec.stderr, file = spec.file,
    pid = spec.pid, timeout = spec.timeout, syslog = spec.syslog, ident = spec.ident,
    facility = spec.facility, path = spec.path})
  if not ok then return nil, err end
  return true
end

-- Returns once every record the caller sent before has been written.
function log.flush()
  call("flush", "flush")
  return true
end

-- The logger's pid, started if needed.
function log.logger()
  return ensure()
end

return log
