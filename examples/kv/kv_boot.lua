-- kv_boot.lua — runs code of examples/kv/ in any process of the service.
--
-- Every erlangen process starts from a fresh lua_State whose package.path is
-- the default one (plus stdlib/ and LUA_PATH): the path that main.lua sets
-- does not travel to the processes it spawns. So every process of this
-- example is entered through kv_boot.call, which puts the example's folder
-- on package.path first and then calls "module.function". kv_boot.call is a
-- plain Lua function whose only upvalue is _ENV, so it is copied into the
-- new process as bytecode (a module table would be looked up by name there,
-- and could not be found).
local kv_boot = {}

-- The example's folder; set by main.lua, and by kv_boot.call in every other
-- process.
kv_boot.dir = nil

-- Puts `dir` on package.path (once), then returns module.function(...).
function kv_boot.call(dir, name, ...)
  local entry = dir .. "/?.lua"
  if not string.find(package.path, entry, 1, true) then
    package.path = entry .. ";" .. package.path
  end
  require("kv_boot").dir = dir
  local mod, fn = string.match(name, "^(.+)%.([^.]+)$")
  local f = require(mod)[fn]
  if type(f) ~= "function" then error("kv_boot: no function " .. name, 2) end
  return f(...)
end

-- A `start` field for a child spec: {kv_boot.call, dir, name, args...}.
function kv_boot.start(name, ...)
  if not kv_boot.dir then error("kv_boot.start: kv_boot.dir is not set", 2) end
  return {kv_boot.call, kv_boot.dir, name, ...}
end

-- Spawns a process running name(...) linked to the caller and waits until it
-- acknowledges with kv_boot.ack(starter). Returns its pid, or nil and its exit
-- reason if it ended first. This is a start function in the supervisor's sense.
function kv_boot.spawn_ack(name, ...)
  local pid, ref = erlangen.spawn_opt({link = true, monitor = true}, kv_boot.call,
                                      kv_boot.dir, name, erlangen.self(), ...)
  local m = erlangen.receive(function(x)
    return type(x) == "table" and ((x[1] == "kv_ack" and x[2] == pid)
                                   or (x[1] == "DOWN" and x[2] == ref))
  end)
  if m[1] == "DOWN" then return nil, m[4] end
  erlangen.demonitor(ref, true)
  return pid
end

-- Tells the starter of spawn_ack that the calling process is ready.
function kv_boot.ack(starter)
  erlangen.send(starter, {"kv_ack", erlangen.self()})
end

return kv_boot
