-- kv_conn.lua — a connection worker: one process per client, started by the
-- acceptor through the simple_one_for_one pool, speaking the line protocol.
--
-- The worker adopts the fd the acceptor accepted (see kv_acceptor.lua): a
-- fresh socket.tcp() has no fd of its own in luasocket 3.x, setfd() gives it
-- the client's, and the metatable of luasocket's "tcp{client}" class (kept in
-- the Lua registry under that name) makes it a connected client object.
-- When the worker ends for any reason, its lua_State is closed, the object
-- is collected and the connection closes: a killed worker drops its client.
local erlangen = require "erlangen"
local socket = require "socket"
local log = require "erlangen.log"
local observer = require "erlangen.observer"
local kv_boot = require "kv_boot"
local kv_store = require "kv_store"

local kv_conn = {}

kv_conn.MAX_LINE = 4096      -- bytes; a longer line ends the connection
kv_conn.POLL = 0.25          -- seconds a worker waits in select; a kill lands within it
kv_conn.SEND_TIMEOUT = 5     -- seconds a reply may wait for the client to read
kv_conn.IDLE_TIMEOUT = 600   -- seconds without a line before the worker closes

-- Start function of the pool's child spec; `fd` is appended by start_child.
function kv_conn.start_link(fd)
  return kv_boot.spawn_ack("kv_conn.loop", fd)
end

-- A luasocket client object for an accepted fd.
function kv_conn.adopt(fd)
  local mt = debug.getregistry()["tcp{client}"]
  if type(mt) ~= "table" then error("kv_conn: luasocket's tcp{client} class not found", 2) end
  local c = socket.tcp()      -- AF_UNSPEC: no fd yet
  c:setfd(fd)
  debug.setmetatable(c, mt)
  return c
end

local function pid_by_text(text)
  for _, p in ipairs(erlangen.processes()) do
    if tostring(p) == text then return p end
  end
end

-- Runs a store call; returns its result, or nil and a short reason.
local function store(fn, ...)
  local ok, res = pcall(fn, ...)
  if ok then return true, res end
  return false, type(res) == "table" and tostring(res[1]) or tostring(res)
end

-- The commands: each takes the rest of the line and returns the reply lines
-- (a string or a list), or nil to close the connection after `last`; and
-- optionally a function to run once the reply is sent.
local commands = {}

function commands.PING() return "PONG" end

function commands.PUT(args)
  local key, value = args:match("^(%S+) (.*)$")
  if not key then return "ERROR usage: PUT key value" end
  local ok, why = store(kv_store.put, key, value)
  return ok and "OK" or "ERROR store unavailable (" .. why .. ")"
end

function commands.GET(args)
  local key = args:match("^(%S+)$")
  if not key then return "ERROR usage: GET key" end
  local ok, value = store(kv_store.get, key)
  if not ok then return "ERROR store unavailable (" .. value .. ")" end
  return value == nil and "NOT_FOUND" or "VALUE " .. value
end

function commands.DEL(args)
  local key = args:match("^(%S+)$")
  if not key then return "ERROR usage: DEL key" end
  local ok, had = store(kv_store.del, key)
  if not ok then return "ERROR store unavailable (" .. had .. ")" end
  return had and "OK" or "NOT_FOUND"
end

function commands.KEYS(args)
  if args ~= "" then return "ERROR usage: KEYS" end
  local ok, keys = store(kv_store.keys)
  if not ok then return "ERROR store unavailable (" .. keys .. ")" end
  return #keys == 0 and "KEYS" or "KEYS " .. table.concat(keys, " ")
end

function commands.SELF() return "PID " .. tostring(erlangen.self()) end

function commands.WHEREIS(args)
  local pid = args ~= "" and erlangen.whereis(args)
  return pid and "PID " .. tostring(pid) or "NOT_FOUND"
end

function commands.TREE()
  local text = observer.text{root = "kv_sup", ascii = true} or "no process kv_sup\n"
  local lines = {}
  for line in text:gmatch("[^\n]+") do lines[#lines + 1] = line end
  lines[#lines + 1] = "END"
  return lines
end

function commands.KILL(args)
  local pid = args:match("^<") and pid_by_text(args) or (args ~= "" and erlangen.whereis(args))
  if not pid then return "NOT_FOUND" end
  log.notice("kill requested", {target = args, pid = pid})
  -- Reply first: the target may be this worker or one of its supervisors.
  return "OK " .. tostring(pid), function() erlangen.exit(pid, "kill") end
end

function commands.CRASH()
  error("CRASH requested by the client", 0)
end

function commands.QUIT() return nil, "BYE" end

-- The reply lines for one request line, whether to keep the connection, and
-- what to do after replying (or nil).
local function handle(line)
  local cmd, args = line:match("^%s*(%S+)%s?(.-)%s*$")
  if not cmd then return {}, true end
  local f = commands[cmd:upper()]
  if not f then return {"ERROR unknown command " .. cmd}, true end
  local reply, extra = f(args)
  if reply == nil then return {extra}, false end
  return type(reply) == "table" and reply or {reply}, true, extra
end

-- Sends the lines; false if the client is gone.
local function send_lines(c, lines)
  if #lines == 0 then return true end
  c:settimeout(kv_conn.SEND_TIMEOUT)
  local ok = c:send(table.concat(lines, "\r\n") .. "\r\n")
  return ok ~= nil
end

-- Closes after a refusal without losing it: closing a socket that still
-- holds unread bytes makes the kernel reset the connection, and a reset
-- can discard the refusal before the client reads it. So the write side is
-- shut first and what the client still sends is read and dropped, bounded
-- in bytes and time, until it closes its side.
local DRAIN_BYTES, DRAIN_SECONDS = 1 << 20, 1

local function close_refusing(c, text)
  send_lines(c, {text})
  c:shutdown("send")
  c:settimeout(0.05)
  local deadline, drained = erlangen.now() + DRAIN_SECONDS, 0
  while drained < DRAIN_BYTES and erlangen.now() < deadline do
    local data, err, partial = c:receive(8192)
    drained = drained + #(data or partial or "")
    if err == "closed" then break end
  end
  c:close()
end

-- The process body: acknowledge, adopt the fd, then serve lines until the
-- client closes, says QUIT, stays idle too long or sends a line too long.
function kv_conn.loop(starter, fd)
  erlangen.set_label("connection")
  -- Acknowledge before adopting: a worker that dies before its ack never
  -- owned the fd, so the acceptor may close it (see kv_acceptor.lua).
  kv_boot.ack(starter)
  local c = kv_conn.adopt(fd)
  local buf, idle_since = "", erlangen.now()
  while true do
    local ready = socket.select({c}, nil, kv_conn.POLL)
    if #ready > 0 then
      c:settimeout(0)
      local data, err, partial = c:receive(kv_conn.MAX_LINE)
      data = data or partial
      if data and #data > 0 then
        buf = buf .. data
        idle_since = erlangen.now()
      elseif err == "closed" then
        return
      end
      while true do
        local line, rest = buf:match("^([^\n]*)\n(.*)$")
        if not line then break end
        buf = rest
        line = line:gsub("\r$", "")
        if #line > kv_conn.MAX_LINE then
          close_refusing(c, "ERROR line too long")
          return
        end
        local lines, keep, after = handle(line)
        if not send_lines(c, lines) or not keep then c:close(); return end
        if after then after() end
      end
      if #buf > kv_conn.MAX_LINE then
        close_refusing(c, "ERROR line too long")
        return
      end
      if err == "closed" then return end
    elseif erlangen.now() - idle_since > kv_conn.IDLE_TIMEOUT then
      send_lines(c, {"ERROR idle timeout"})
      c:close()
      return
    end
  end
end

return kv_conn
