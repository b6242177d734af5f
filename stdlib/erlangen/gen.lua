-- erlangen.gen — what the behaviours share (OTP's gen.erl): process
-- addresses, call with monitor + alias + timeout, start with
-- acknowledgement, argument errors. Internal to the stdlib (server,
-- supervisor, service, timer, log, observer); doc/server.md describes the
-- behaviour users see.
--
-- Addresses. A process is addressed by
--   a pid (of this node or another), an alias (a ref), a registered name
--   (a string), or {name, node} (a name registered on `node`, which may be
--   this node).
--
-- Interface:
--   gen.FOREVER
--       Seconds that stand for "infinity" where erlangen.send wants a number.
--   gen.show(v) -> string
--       A short readable rendering of any value, for error texts and logs.
--   gen.arg_error(n, fname, msg [, level=2])
--       Raises "bad argument #n to 'fname' (msg)"; `level` as error()'s,
--       counted from the caller of arg_error.
--   gen.check_address(v, n, fname [, level=2]) -> v
--       Returns v if it is an address, else raises
--       "bad argument #n to 'fname' (pid, name or {name, node} expected, got X)".
--   gen.is_address(v) -> boolean
--   gen.node_of(addr) -> string
--       The node the address points at (this node for a local name).
--   gen.resolve(addr) -> dest | nil
--       What to send to and monitor: a pid for a pid or a name of this node
--       (nil when nobody has the name), the alias for an alias, and
--       {name, node} unchanged for a name on another node.
--   gen.call(addr, msg_of, timeout) -> reply | nil, kind, detail
--       Sends msg_of(alias) to addr, waiting up to `timeout` seconds (nil:
--       forever) for room and then for a reply: any table whose [1] is
--       `alias`, returned whole. The caller monitors the destination while
--       it waits (an alias cannot be monitored: it ends only by a reply,
--       "noproc" from send, or the timeout). Once call returns, the alias
--       is inactive and the monitor gone with its DOWN, so a late reply
--       never reaches the mailbox. kind is one of
--         "noproc"        no such process (detail: its node)
--         "noconnection"  its node cannot be reached (detail: the node)
--         "exit"          it exited while we waited (detail: the reason)
--         "timeout"       no reply within `timeout`
--         "calling_self"  addr is the caller
--         "badarg"        the request cannot be sent (detail: send's error,
--                         naming the path in the request table)
--   gen.start(o) -> pid | nil, reason
--       Spawns o.body ("module.function") with
--       spawn_opt(o.spawn + {monitor = true}, o.body, ack, table.unpack(o.args))
--       and waits up to o.timeout seconds (nil: forever) for the new
--       process's gen.ack. Returns the pid once acknowledged; on a failed
--       start the process is dead and the caller's mailbox holds nothing of
--       it (no ack, no DOWN, no EXIT of a link). reason: the ack's reason,
--       the exit reason, "timeout" (the process was unlinked and killed),
--       or {"already_started", pid} when o.spawn.name is taken. Any other
--       spawn error raises "<o.fname>: <error>", args[i] renamed
--       o.arg_names[i]; o.level is error()'s level as seen from the caller
--       of gen.start.
--   gen.ack(ack, ok [, reason])
--       In the started process: tells its starter that init succeeded
--       (ok true) or failed with `reason`; a failing process unlinks its
--       parent first and exits after the ack.
--
-- Wire forms: a start acknowledgement is {ack, true} or {ack, false,
-- reason}, sent to the alias `ack`.
local erlangen = require "erlangen"

local gen = {}

local FOREVER = 1e9          -- seconds: "infinity" where send wants a number
gen.FOREVER = FOREVER
local ACK_SPACE_WAIT = 5     -- seconds an ack may wait for room in the starter's mailbox

-- Values -----------------------------------------------------------------------

function gen.show(v, depth)
  depth = depth or 0
  if type(v) == "string" then return string.format("%q", v) end
  if type(v) ~= "table" or depth > 2 then
    local ok, s = pcall(tostring, v)
    return ok and s or "?"
  end
  local mt = getmetatable(v)
  if mt and mt.__tostring then
    local ok, s = pcall(tostring, v)
    if ok then return s end
  end
  local parts, n = {}, #v
  for i = 1, n do parts[#parts + 1] = gen.show(v[i], depth + 1) end
  for k, x in pairs(v) do
    if not (math.type(k) == "integer" and k >= 1 and k <= n) then
      parts[#parts + 1] = "[" .. gen.show(k, depth + 1) .. "]=" .. gen.show(x, depth + 1)
    end
    if #parts > 12 then parts[#parts + 1] = "..."; break end
  end
  return "{" .. table.concat(parts, ", ") .. "}"
end

function gen.arg_error(n, fname, msg, level)
  error(string.format("bad argument #%d to '%s' (%s)", n, fname, msg), (level or 2) + 1)
end

-- Addresses ---------------------------------------------------------------------

-- The node syntax the kernel accepts: name@host or name@host:port.
local function is_node_name(s)
  return type(s) == "string" and s:match("^[^@%s]+@[^@%s]+$") ~= nil
end

local function is_remote_name(v)
  return type(v) == "table" and getmetatable(v) == nil and type(v[1]) == "string" and v[1] ~= ""
    and is_node_name(v[2]) and v[3] == nil
end

function gen.is_address(v)
  return erlangen.is_pid(v) or erlangen.is_ref(v) or (type(v) == "string" and v ~= "")
    or is_remote_name(v)
end

function gen.check_address(v, n, fname, level)
  if gen.is_address(v) then return v end
  local got = erlangen.type(v)
  if v == "" then got = "an empty name"
  elseif type(v) == "table" and type(v[1]) == "string" and type(v[2]) == "string" then
    got = "{name, node} with " .. (v[1] == "" and "an empty name" or "node " .. gen.show(v[2]))
  end
  gen.arg_error(n, fname, "pid, name or {name, node} expected, got " .. got, (level or 2) + 1)
end

function gen.node_of(addr)
  if type(addr) == "table" then return addr[2] end
  if type(addr) == "string" then return erlangen.node() end
  return erlangen.node(addr)
end

function gen.resolve(addr)
  if type(addr) == "string" then return erlangen.whereis(addr) end
  if type(addr) == "table" then
    if addr[2] == erlangen.node() then return erlangen.whereis(addr[1]) end
    return addr
  end
  return addr
end

-- Call -----------------------------------------------------------------------------

local function is_remote(dest)
  return type(dest) == "table" or erlangen.node(dest) ~= erlangen.node()
end

function gen.call(addr, msg_of, timeout)
  local dest = gen.resolve(addr)
  if dest == nil then return nil, "noproc", gen.node_of(addr) end
  if dest == erlangen.self() then return nil, "calling_self" end
  local mref = not erlangen.is_ref(dest) and erlangen.monitor(dest) or nil
  local alias = erlangen.alias()
  local function done()
    erlangen.unalias(alias)   -- from here on, no reply can enter the mailbox
    if mref then erlangen.demonitor(mref, true) end
  end
  local deadline = timeout and erlangen.now() + timeout
  local ok, sent, why = pcall(erlangen.send, dest, msg_of(alias), timeout or FOREVER)
  if not ok then done(); return nil, "badarg", tostring(sent) end
  if not sent and why ~= "full" then   -- "full": the wait for room used up the timeout
    done()
    if why == "noconnection" then return nil, "noconnection", gen.node_of(addr) end
    return nil, "noproc", gen.node_of(addr)
  end
  local m = erlangen.receive(function(x)
    return type(x) == "table" and (x[1] == alias or (mref ~= nil and x[1] == "DOWN" and x[2] == mref))
  end, deadline and math.max(0, deadline - erlangen.now()))
  done()
  if m == nil then return nil, "timeout" end
  if m[1] == alias then return m end
  local reason = m[4]
  if reason == "noproc" then return nil, "noproc", gen.node_of(addr) end
  if reason == "noconnection" and is_remote(dest) then
    return nil, "noconnection", gen.node_of(addr)
  end
  return nil, "exit", reason
end

-- Start ----------------------------------------------------------------------------

function gen.ack(ack, ok, reason)
  if ok then return erlangen.send(ack, {ack, true}, ACK_SPACE_WAIT) end
  return erlangen.send(ack, {ack, false, reason}, ACK_SPACE_WAIT)
end

function gen.start(o)
  local sopts = {}
  for k, v in pairs(o.spawn) do sopts[k] = v end
  sopts.monitor = true
  local args, name, link = o.args or {n = 0}, sopts.name, sopts.link
  local ack, ok, pid, mref
  for _ = 1, 3 do  -- a name whose holder dies while we look is retried
    ack = erlangen.alias()
    ok, pid, mref = pcall(erlangen.spawn_opt, sopts, o.body, ack, table.unpack(args, 1, args.n))
    if ok then break end
    erlangen.unalias(ack)
    local msg = tostring(pid)
    if not (name and msg:find("already registered", 1, true)) then
      msg = msg:gsub("^args%[(%d+)%]", function(i)
        return o.arg_names and o.arg_names[tonumber(i) - 1] or nil
      end)
      error(o.fname .. ": " .. msg, (o.level or 1) + 1)
    end
    local holder = erlangen.whereis(name)
    if holder then return nil, {"already_started", holder} end
  end
  if not ok then return nil, {"already_started", erlangen.whereis(name)} end

  local m = erlangen.receive(function(x)
    return type(x) == "table" and (x[1] == ack or (x[1] == "DOWN" and x[2] == mref))
  end, o.timeout)
  if m and m[1] == ack and m[2] == true then
    erlangen.unalias(ack)
    erlangen.demonitor(mref, true)
    return pid
  end
  if m == nil then  -- init took too long: OTP kills it
    if link then erlangen.unlink(pid) end
    erlangen.exit(pid, "kill")
  end
  local down = (m and m[1] == "DOWN") and m
    or erlangen.receive(function(x) return type(x) == "table" and x[1] == "DOWN" and x[2] == mref end)
  erlangen.unalias(ack)   -- drops an ack still queued
  if link then  -- a link's EXIT is queued before the DOWN
    erlangen.receive(function(x) return type(x) == "table" and x[1] == "EXIT" and x[2] == pid end, 0)
  end
  if m == nil then return nil, "timeout" end
  if m[1] == ack then return nil, m[3] end
  return nil, down[4]
end

return gen
