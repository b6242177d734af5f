-- erlangen.log — leveled, structured logging through one logger process.
--
-- The logger is started on demand, unlinked, and registered as
-- "erlangen.log", the name the kernel sends uncaught process crashes to. A
-- log call copies its record into the logger's bounded mailbox with a short
-- timeout and never waits longer: when the logger cannot keep up, records are
-- dropped, the kernel counts them in the logger's `info().dropped`, and the
-- logger reports how many were lost.
local erlangen = require "erlangen"
local svc = require "erlangen.service"

local log = {}

local NAME = "erlangen.log"
local MAILBOX = 1024          -- the logger's mailbox bound
local SEND_WAIT = 0.05        -- seconds a log call waits for room, then drops
local CALL_TIMEOUT = 5        -- seconds a synchronous request waits for its answer
local SINK_TIMEOUT = 0.1      -- default wait for room in a process sink

local LEVELS = {debug = 1, info = 2, notice = 3, warning = 4, error = 5}
local LEVEL_NAMES = {"debug", "info", "notice", "warning", "error"}

-- Values ----------------------------------------------------------------------

-- Wall-clock seconds since the epoch, for timestamps.
local function wall_time()
  return erlangen.system_time and erlangen.system_time() or os.time()
end

local function is_pid(v)
  return type(v) == "userdata" and tostring(v):match("^<%d+%.%d+>$") ~= nil
end

local function typename(v)
  if is_pid(v) then return "pid" end
  return type(v)
end

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

-- The text of one record: its first line holds the timestamp, the level, the
-- pid, the text and the fields as key=value sorted by key. A text or string
-- value spanning several lines continues on indented lines below, so every
-- line of a record but the first starts with a space.
local function format(level, text, fields, pid, time)
  local head, rest = text:match("^([^\n]*)\n(.*)$")
  local line = {timestamp(time), string.format("%-7s", level), tostring(pid), head or text}
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

log.format = format

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
    if s.kind == "file" then s.file:close() end
  end

  local emit
  local function write(rec, line)
    if sink.kind == "stderr" then
      io.stderr:write(line, "\n")
    elseif sink.kind == "file" then
      local ok, err = sink.file:write(line, "\n")
      if ok then ok, err = sink.file:flush() end
      if not ok then
        local path = sink.path
        close(sink); sink = {kind = "stderr"}
        io.stderr:write(line, "\n")
        emit("error", "log file failed, logging to stderr", {path = path, reason = tostring(err)})
      end
    else
      local sent, why = erlangen.send(sink.pid, {"log", line, rec}, sink.timeout)
      if not sent and why == "noproc" then
        local gone = sink.pid
        sink = {kind = "stderr"}
        io.stderr:write(line, "\n")
        emit("warning", "log sink process is gone, logging to stderr", {sink = gone})
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

  while true do
    local m = erlangen.receive()
    if type(m) == "table" then
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
    check_drops()
  end
end

-- Talking to the logger ------------------------------------------------------------

-- The logger's pid, started if needed.
local function ensure()
  return svc.ensure(NAME, {mailbox = MAILBOX}, logger, "erlangen.log: cannot start the logger")
end

-- A synchronous request (see erlangen.service's ask). A logger that dies before it
-- answers (killed, or found dying by whereis) is started again and asked
-- once more.
local function call(fname, op, arg)
  for _ = 1, 2 do
    local m, gone = svc.ask(ensure(), function(alias) return {"$log_ctl", op, alias, arg} end,
                                CALL_TIMEOUT)
    if m then return m[2], m[3] end
    if not gone then
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
    if t == "string" or t == "number" or t == "boolean" or is_pid(v)
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
--   {pid = p [, timeout = seconds]}  sent to p as {"log", line, record}
-- Returns true once the logger uses the new sink, or nil and a message when
-- the file cannot be opened (the old sink stays).
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
      if not is_pid(v) then error("set_sink: option 'pid' must be a pid, got " .. typename(v), 2) end
    elseif k == "timeout" then
      if type(v) ~= "number" or not (v >= 0) then
        error("set_sink: option 'timeout' must be a non-negative number", 2)
      end
    else
      error("set_sink: unknown option '" .. tostring(k) .. "'", 2)
    end
    if k ~= "timeout" then kinds = kinds + 1 end
  end
  if kinds ~= 1 then error("set_sink: give exactly one of 'stderr', 'file' and 'pid'", 2) end
  if spec.timeout and not spec.pid then error("set_sink: option 'timeout' goes with 'pid'", 2) end
  local ok, err = call("set_sink", "set_sink", {stderr = spec.stderr, file = spec.file,
    pid = spec.pid, timeout = spec.timeout})
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
