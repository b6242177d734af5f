-- dht_client.lua — put, get and delete from any process, and the requests
-- that DHT processes send each other.
--
-- A DHT process is an erlangen.server registered as "dht": put, get, delete
-- and status are server.call's to it, so it is addressed as any server is
-- (a pid, "dht" on this node, {"dht", node}) and a failed call raises
-- server.call's error table (server.md, "Errors"). A lookup needs several
-- requests in flight, which server.call does not offer: request and
-- response send the same {"$gen_call", {alias, alias}, request} and take
-- the {alias, reply} (server.md, "Messages on the wire"). Every request has
-- its own alias: once answered or given up, the alias is gone and a late
-- reply is dropped by the kernel, never seen in the mailbox.
local erlangen = require "erlangen"
local server = require "erlangen.server"

local dht_client = {}

dht_client.NAME = "dht"
dht_client.TIMEOUT = 5          -- seconds a put, get or delete waits by default
dht_client.MAX_KEY = 1024       -- bytes in a key
dht_client.MAX_VALUE = 64 * 1024 -- bytes in an encoded value: DHT messages stay small

-- Raises `bad argument #n to 'fname' (msg)` at the caller of put, get,
-- delete or status (arg_error is called from their check).
local function arg_error(n, fname, msg)
  error(string.format("bad argument #%d to '%s' (%s)", n, fname, msg), 4)
end

-- Whether dest is a pid, a name or {name, node}.
local function is_dest(dest)
  if erlangen.is_pid(dest) or type(dest) == "string" then return true end
  return type(dest) == "table" and #dest == 2 and type(dest[1]) == "string" and type(dest[2]) == "string"
         and next(dest, 2) == nil
end

-- An error text for a bad destination, or nil.
local function bad_dest(dest)
  if is_dest(dest) then return nil end
  return "pid, name or {name, node} expected, got " .. erlangen.type(dest)
end

-- An error text for a timeout that is not a number >= 0, or nil.
local function bad_timeout(t)
  if t == nil or (type(t) == "number" and t >= 0) then return nil end
  return "timeout must be a number >= 0, got " .. tostring(t)
end

-- An error text for a key that is not a string of 1 to MAX_KEY bytes, or nil.
function dht_client.bad_key(key)
  if type(key) ~= "string" then return "string key expected, got " .. erlangen.type(key) end
  if #key == 0 or #key > dht_client.MAX_KEY then
    return "key must have 1 to " .. dht_client.MAX_KEY .. " bytes, got " .. #key
  end
  return nil
end

-- An error text for a value that cannot be stored, or nil: not nil, no
-- function (values go to other nodes), at most MAX_VALUE bytes encoded.
function dht_client.bad_value(value)
  if value == nil then return "value expected, got nil" end
  local ok, bytes = pcall(erlangen.encode, value)
  if not ok then return tostring(bytes) end
  if #bytes > dht_client.MAX_VALUE then
    return "value larger than " .. dht_client.MAX_VALUE .. " bytes encoded (" .. #bytes .. ")"
  end
  return nil
end

-- Requests ---------------------------------------------------------------

-- Sends `request` to the DHT process `dest` and returns its tag (an alias),
-- or nil and send's reason ("noproc", "noconnection", "full"). Never waits
-- for a connect.
function dht_client.request(dest, request)
  local tag = erlangen.alias()
  local sent, why = erlangen.send(dest, {"$gen_call", {tag, tag}, request})
  if not sent then
    erlangen.unalias(tag)
    return nil, why
  end
  return tag
end

-- Waits up to `timeout` seconds for the reply to one of the tags in the set
-- `tags` ({[tag] = anything}). Returns the tag and the reply, or nil,
-- "timeout". The answered tag is deactivated; the others stay.
function dht_client.response(tags, timeout)
  local m = erlangen.receive(function(m)
    return type(m) == "table" and m[1] ~= nil and tags[m[1]] ~= nil
  end, timeout)
  if not m then return nil, "timeout" end
  erlangen.unalias(m[1])
  return m[1], m[2]
end

-- Gives up the request `tag`: its reply, if it comes, is dropped.
function dht_client.cancel(tag)
  erlangen.unalias(tag)
end

-- put, get, delete ----------------------------------------------------------

-- Calls the DHT process `dest` with `request` and returns the result of
-- its {true, result} answer; an answer {false, why} raises
-- "dht_client.<fname>: why" at the caller of put, get, delete or status.
-- A failed call raises server.call's error table.
local function operate(fname, dest, timeout, request)
  local reply = server.call(dest, request, timeout)
  if type(reply) ~= "table" or reply[1] ~= true then
    error(string.format("dht_client.%s: %s", fname, tostring(type(reply) == "table" and reply[2] or reply)), 3)
  end
  return reply[2]
end

-- The checks of put, get, delete and status, in argument order: each
-- returns an error text or nil.
local CHECKS = {
  put = {bad_dest, dht_client.bad_key, dht_client.bad_value, bad_timeout},
  get = {bad_dest, dht_client.bad_key, bad_timeout},
  delete = {bad_dest, dht_client.bad_key, bad_timeout},
  status = {bad_dest, bad_timeout},
}

-- Checks the arguments of `fname` (the caller) and raises at its caller.
local function check(fname, ...)
  for i, bad in ipairs(CHECKS[fname]) do
    local msg = bad((select(i, ...)))
    if msg then arg_error(i, fname, msg) end
  end
end

-- Stores `value` under `key` on the k nodes nearest to the key. Returns the
-- number of nodes that stored it. Raises server.call's errors (timeout,
-- noproc, noconnection), and "dht_client.put: no DHT node answered" or
-- "... stored the key".
function dht_client.put(dest, key, value, timeout)
  check("put", dest, key, value, timeout)
  local r = operate("put", dest, timeout or dht_client.TIMEOUT, {"put", key, value})
  return r   -- not a tail call: operate raises at this function\'s caller
end

-- The value stored under `key`, or nil if there is none (never put,
-- deleted, or every node that held it is gone). Raises as put.
function dht_client.get(dest, key, timeout)
  check("get", dest, key, timeout)
  local r = operate("get", dest, timeout or dht_client.TIMEOUT, {"get", key})
  return r   -- not a tail call: operate raises at this function\'s caller
end

-- Deletes `key` (a tombstone replaces the value on the k nearest nodes).
-- Returns the number of nodes that stored the tombstone. Raises as put.
function dht_client.delete(dest, key, timeout)
  check("delete", dest, key, timeout)
  local r = operate("delete", dest, timeout or dht_client.TIMEOUT, {"delete", key})
  return r   -- not a tail call: operate raises at this function\'s caller
end

-- What the DHT process holds: {addr =, pid =, keys = {key, ...}, contacts =
-- {addr, ...}, idle = whether no replication pass runs or waits}.
function dht_client.status(dest, timeout)
  check("status", dest, timeout)
  local r = operate("status", dest, timeout or dht_client.TIMEOUT, {"status"})
  return r   -- not a tail call: operate raises at this function\'s caller
end

return dht_client
