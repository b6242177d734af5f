-- kv_store.lua — the key-value table: an erlangen.server registered as "kv_store".
--
-- The table lives only in this server's state: when the server is killed,
-- its supervisor starts a fresh, empty one (the example keeps nothing on
-- disk). Connection workers reach it by name, so they never hold a stale pid.
local erlangen = require "erlangen"
local server = require "erlangen.server"

local kv_store = {}

kv_store.NAME = "kv_store"

-- The callbacks. This table is copied into the server process, so its
-- functions use only stdlib modules (found again by name there), never a
-- module of this folder.
local callbacks = {}

function callbacks.init()
  erlangen.set_label("server kv_store")
  return {}
end

function callbacks.handle_call(req, _, t)
  local op = req[1]
  if op == "get" then
    return t[req[2]], t
  elseif op == "put" then
    t[req[2]] = req[3]
    return true, t
  elseif op == "del" then
    local had = t[req[2]] ~= nil
    t[req[2]] = nil
    return had, t
  elseif op == "keys" then
    local keys = {}
    for k in pairs(t) do keys[#keys + 1] = k end
    table.sort(keys)
    return keys, t
  end
  error("kv_store: unknown request " .. tostring(op))
end

-- Start function for the supervisor: the registered server, linked to it.
function kv_store.start_link()
  return server.start_link(callbacks, nil, {name = kv_store.NAME})
end

-- The client calls, run in the caller. They raise erlangen.server's call
-- errors (noproc while the store restarts, say).
function kv_store.get(key) return server.call(kv_store.NAME, {"get", key}) end
function kv_store.put(key, value) return server.call(kv_store.NAME, {"put", key, value}) end
function kv_store.del(key) return server.call(kv_store.NAME, {"del", key}) end
function kv_store.keys() return server.call(kv_store.NAME, {"keys"}) end

return kv_store
