-- examples/dht/node.lua — one DHT node: a distribution node with a
-- supervised DHT process registered as "dht".
--
-- usage: erlangen examples/dht/node.lua NAME@HOST KEY_FILE [SEED]
--   NAME@HOST  the node's name; it listens on HOST, any free port, without
--              the port mapper, so peers reach it as NAME@HOST:PORT
--   KEY_FILE   the cluster key (mode 0600)
--   SEED       "name@host:port" of a node to join through ("-" or none for the first)
-- $DHT_REFRESH and $DHT_TIMEOUT set the DHT process's refresh period and
-- request timeout in seconds (dht_server.DEFAULTS otherwise).
-- It prints its address "NAME@HOST:PORT" on a line, then runs until its
-- standard input ends (so it dies with the launcher that holds the other
-- end) or its supervisor gives up. Its folder goes on package.path before
-- the node starts: the processes it spawns, and those other nodes spawn on
-- it, find the example's modules there.
local erlangen = require "erlangen"

local dir = (arg and arg[0] or ""):match("^(.*)/[^/]*$") or "."
package.path = dir .. "/?.lua;" .. package.path
local dht_sup = require "dht_sup"

local function fail(msg)
  io.stderr:write("dht node: ", msg, "\n")
  os.exit(2)
end

local name, key_file, seed = arg[1], arg[2], arg[3]
if not name or not key_file then fail("usage: node.lua NAME@HOST KEY_FILE [SEED]") end
if seed == "" or seed == "-" then seed = nil end
local host = name:match("@([^@:]+)$")
if not host then fail("the name must be NAME@HOST, got " .. name) end
-- With DHT_PORT_MAPPER=1 (demo.sh --observe, which runs a port mapper of
-- its own) the node registers, so an observer can reach it by name alone.
local ok, full, port = pcall(erlangen.start_node, {name = name, listen = host .. ":0",
                                                  key_file = key_file,
                                                  port_mapper = os.getenv("DHT_PORT_MAPPER") == "1"})
if not ok then fail(tostring(full)) end
local addr = full .. ":" .. port

erlangen.trap_exit(true)
local function seconds(var)
  local v = os.getenv(var)
  if v == nil or v == "" then return nil end
  local n = tonumber(v)
  if not n or n <= 0 then fail(var .. " must be a positive number of seconds, got " .. v) end
  return n
end
local sup, why = dht_sup.start_link{addr = addr, seed = seed, refresh = seconds("DHT_REFRESH"),
                                    timeout = seconds("DHT_TIMEOUT")}
if not sup then fail("the DHT did not start: " .. tostring(why and why[2] and why[2][3] or why)) end
io.write(addr, "\n")
io.stdout:flush()

-- The end of standard input ends the node.
erlangen.spawn(function()
  io.read("a")
  os.exit(0)
end)
while true do
  local m = erlangen.receive()
  if type(m) == "table" and m[1] == "EXIT" and m[2] == sup then
    fail("the DHT supervisor exited: " .. tostring(m[3]))
  end
end
