-- dht_sup.lua — the supervisor of a node's DHT process.
--
--   dht_sup        one_for_one
--   └─ dht         dht_server, registered "dht"
--
-- A restarted DHT process starts empty and joins again through the seed.
-- Its node never went down, so the other nodes still count it as holding
-- their keys: the other replicas serve them, and gets give it back those
-- that are read (read repair).
local supervisor = require "erlangen.supervisor"

local dht_sup = {}

dht_sup.NAME = "dht_sup"

-- Starts the tree linked to the caller; opts as dht_server.start_link.
-- Returns the supervisor's pid, or nil and the reason.
function dht_sup.start_link(opts)
  return supervisor.start_link{
    strategy = "one_for_one", intensity = 5, period = 10, name = dht_sup.NAME,
    children = {{id = "dht", start = {"dht_server.start_link", opts}}},
  }
end

return dht_sup
