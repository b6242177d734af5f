-- kv_sup.lua — the supervision tree of the key-value service.
--
--   kv_sup                 one_for_one
--   ├─ logger              erlangen.log's logger, linked in as a worker
--   ├─ store               kv_store: the erlangen.server holding the table
--   └─ kv_conn_sup         rest_for_one
--      ├─ pool             simple_one_for_one of kv_conn workers (temporary)
--      └─ acceptor         kv_acceptor: the listening socket
--
-- one_for_one at the top: the store, the logger and the connection side fail
-- independently (workers find the store by name). rest_for_one below: if the
-- pool dies, every connection is gone and the acceptor is restarted after it,
-- so it never hands a connection to a pool that is not there; if only the
-- acceptor dies, open connections stay.
--
-- Names: only processes that end at once when their supervisor is killed
-- have one (kv_sup, kv_store, kv_conn_sup, and erlangen.log). The pool has
-- none: it traps exits and stops its workers before it ends, so after a kill
-- of kv_conn_sup the new pool would find the name still taken, its start
-- would fail, and the retries would use up kv_sup's restart intensity.
-- The acceptor has a name and waits for it (see kv_acceptor.lua).
local erlangen = require "erlangen"
local supervisor = require "erlangen.supervisor"
local log = require "erlangen.log"
local kv_boot = require "kv_boot"

local kv_sup = {}

kv_sup.NAME = "kv_sup"

-- Start function of the logger child. erlangen.log starts its logger on
-- demand, unlinked, and registers it as "erlangen.log"; here the supervisor
-- starts it (or takes the one already running) and links it, so a killed
-- logger is started again at once and the logger is stopped last.
function kv_sup.start_logger(sink)
  local pid = log.logger()
  if sink then assert(log.set_sink(sink)) end
  erlangen.link(pid)
  return pid
end

-- The connection side: the pool, then the acceptor.
function kv_sup.start_conn_sup(opts)
  return supervisor.start_link{
    strategy = "rest_for_one", intensity = 5, period = 10, name = "kv_conn_sup",
    children = {
      {id = "pool", type = "supervisor", start = kv_boot.start("kv_sup.start_pool")},
      {id = "acceptor", shutdown = 2,
       start = kv_boot.start("kv_acceptor.start_link", {host = opts.host, port = opts.port})},
    },
  }
end

function kv_sup.start_pool()
  return supervisor.start_link{
    strategy = "simple_one_for_one",
    children = {
      {id = "connection", restart = "temporary", shutdown = 2,
       start = kv_boot.start("kv_conn.start_link")},
    },
  }
end

-- Starts the whole tree linked to the caller: opts = {port=, host=, log_file=}.
-- Returns the top supervisor's pid, or nil and the reason.
function kv_sup.start_link(opts)
  return supervisor.start_link{
    strategy = "one_for_one", intensity = 10, period = 10, name = kv_sup.NAME,
    children = {
      {id = "logger", shutdown = 2,
       start = kv_boot.start("kv_sup.start_logger", opts.log_file and {file = opts.log_file} or nil)},
      {id = "store", start = kv_boot.start("kv_store.start_link")},
      {id = "connections", type = "supervisor",
       start = kv_boot.start("kv_sup.start_conn_sup", {host = opts.host, port = opts.port})},
    },
  }
end

return kv_sup
