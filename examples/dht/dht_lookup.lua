-- dht_lookup.lua — what a DHT process hands to short-lived workers: the
-- iterative lookup, the client operations built on it, and the replication
-- pass.
--
-- A worker gets a copy of what it needs (`cfg`: the own contact, the DHT
-- process's pid, k, alpha, the request timeout) and a snapshot of contacts;
-- it talks to DHT processes only through dht_client requests, so a node that
-- is gone costs a lookup at most one request timeout. It tells its DHT
-- process which nodes answered ({"dht_seen", addrs}): routes are learned
-- from every reply.
--
-- Requests and their replies (addr is the sender's "name@host:port"; an
-- entry is {version = v, value = x}, a tombstone has no value):
--   {"ping", addr}                   -> {"pong", addr}
--   {"find_node", addr, target}      -> {"nodes", addr, {addr, ...}}
--   {"find_value", addr, key}        -> {"nodes", addr, {addr, ...}, entry | nil}
--   {"store", addr, {{key, entry}, ...}} -> {"stored", addr, count}
local erlangen = require "erlangen"
local dht_id = require "dht_id"
local dht_routing = require "dht_routing"
local dht_client = require "dht_client"

local dht_lookup = {}

dht_lookup.MAX_QUERIES = 64  -- requests one lookup sends at most
dht_lookup.BATCH = 32        -- entries in one store request at most

-- The node name of an address ("n1@127.0.0.1:4000" -> "n1@127.0.0.1").
function dht_lookup.node_of(addr) return addr:match("^(.-):%d+$") or addr end

-- Whether v is an address "name@host:port".
function dht_lookup.is_addr(v)
  return type(v) == "string" and #v <= 200 and v:match("^[%w_.-]+@[^:@]+:%d+$") ~= nil
end

local ids = {}   -- addr -> id, one entry per address this process has seen
-- The contact of address `addr`: its id is the hash of its node name, so
-- the port may change (a restarted node) and the id stays.
function dht_lookup.contact(addr)
  local id = ids[addr]
  if not id then id = dht_id.of(dht_lookup.node_of(addr)); ids[addr] = id end
  return {id = id, addr = addr}
end

-- Where to send a request for contact c: the own DHT process by pid.
local function dest_of(cfg, c)
  if c.addr == cfg.me.addr then return cfg.server end
  return {dht_client.NAME, c.addr}
end

-- Whether entry a should replace entry b (b may be nil): a newer version.
function dht_lookup.newer(a, b)
  return b == nil or a.version > b.version
end

-- Whether v is an entry as it travels.
function dht_lookup.is_entry(v)
  return type(v) == "table" and type(v.version) == "number" and v.version == v.version
end

-- Waits for the reply to one of the `pending` requests ({[tag] = {c =
-- contact, deadline =}}); removes it and returns its contact and reply.
-- When none came by the soonest deadline, removes and returns the requests
-- whose deadline has passed as a list of contacts.
local function next_reply(pending)
  local soonest = math.huge
  for _, p in pairs(pending) do soonest = math.min(soonest, p.deadline) end
  local tag, reply = dht_client.response(pending, math.max(0, soonest - erlangen.now()))
  if tag then
    local c = pending[tag].c
    pending[tag] = nil
    return c, reply
  end
  local late, now = {}, erlangen.now()
  for t, p in pairs(pending) do
    if p.deadline <= now then
      dht_client.cancel(t)
      pending[t] = nil
      late[#late + 1] = p.c
    end
  end
  return nil, late
end

-- Sends a request to contact c; adds it to `pending` and returns true, or
-- returns false when send refused it.
local function ask(cfg, pending, c, request)
  local tag = dht_client.request(dest_of(cfg, c), request)
  if not tag then return false end
  pending[tag] = {c = c, deadline = erlangen.now() + cfg.timeout}
  return true
end

-- The iterative lookup of `target`, starting from the contacts `start`.
-- With `key`, it asks find_value and collects the entries of the key.
-- Ends when the k nearest contacts that did not fail have all answered, or
-- after MAX_QUERIES requests. Returns {nearest = the k nearest contacts
-- that answered, best = the newest entry or nil, has = {[addr] = entry}}.
function dht_lookup.lookup(cfg, target, start, key)
  local state, order, listed = {}, {}, {}   -- state: id -> nil | "asked" | "answered" | "failed"
  local function add(c)
    if not listed[c.id] then listed[c.id] = true; order[#order + 1] = c end
  end
  for _, c in ipairs(start) do add(c) end
  local request = key and {"find_value", cfg.me.addr, key} or {"find_node", cfg.me.addr, target}
  local has, best, seen = {}, nil, {}
  local pending, inflight, queries = {}, 0, 0
  while true do
    local live = {}
    for _, c in ipairs(order) do if state[c.id] ~= "failed" then live[#live + 1] = c end end
    local near = dht_routing.nearest(live, target, cfg.k)
    for _, c in ipairs(near) do
      if state[c.id] == nil and inflight < cfg.alpha and queries < dht_lookup.MAX_QUERIES then
        queries = queries + 1
        if ask(cfg, pending, c, request) then state[c.id], inflight = "asked", inflight + 1
        else state[c.id] = "failed" end
      end
    end
    if inflight == 0 then
      -- Nothing in flight: done when the nearest all answered; a refused
      -- send changed `near`, so look again.
      local all = true
      for _, c in ipairs(near) do if state[c.id] ~= "answered" then all = false end end
      if all or queries >= dht_lookup.MAX_QUERIES then break end
    else
      local c, reply = next_reply(pending)
      if not c then
        for _, late in ipairs(reply) do state[late.id] = "failed" end
        inflight = inflight - #reply
      elseif type(reply) == "table" and reply[1] == "nodes" and type(reply[3]) == "table" then
        state[c.id], inflight = "answered", inflight - 1
        seen[#seen + 1] = c.addr
        for i = 1, math.min(#reply[3], 2 * cfg.k) do
          if dht_lookup.is_addr(reply[3][i]) then add(dht_lookup.contact(reply[3][i])) end
        end
        if key and dht_lookup.is_entry(reply[4]) then
          has[c.addr] = reply[4]
          if dht_lookup.newer(reply[4], best) then best = reply[4] end
        end
      else
        state[c.id], inflight = "failed", inflight - 1
      end
    end
  end
  erlangen.send(cfg.server, {"dht_seen", seen})
  local answered = {}
  for _, c in ipairs(order) do if state[c.id] == "answered" then answered[#answered + 1] = c end end
  return {nearest = dht_routing.nearest(answered, target, cfg.k), best = best, has = has}
end

-- Runs the store jobs {{c = contact, entries = {{key, entry}, ...}}, ...}
-- in batches of BATCH entries, 2 * alpha requests in flight. Returns
-- {[addr] = {key, ...}}: what each node confirmed.
function dht_lookup.store(cfg, jobs)
  local batches = {}
  for _, j in ipairs(jobs) do
    for i = 1, #j.entries, dht_lookup.BATCH do
      batches[#batches + 1] = {c = j.c, entries = table.move(j.entries, i,
                               math.min(i + dht_lookup.BATCH - 1, #j.entries), 1, {})}
    end
  end
  local confirmed, pending, inflight, i = {}, {}, 0, 1
  local batch_of = {}   -- the batch of each request in flight, by its contact table
  while i <= #batches or inflight > 0 do
    while inflight < 2 * cfg.alpha and i <= #batches do
      local b = batches[i]
      i = i + 1
      local c = {id = b.c.id, addr = b.c.addr}   -- one table per request: the key of batch_of
      batch_of[c] = b
      if ask(cfg, pending, c, {"store", cfg.me.addr, b.entries}) then inflight = inflight + 1 end
    end
    if inflight > 0 then
      local c, reply = next_reply(pending)
      if not c then
        inflight = inflight - #reply
      else
        inflight = inflight - 1
        if type(reply) == "table" and reply[1] == "stored" then
          local keys = confirmed[c.addr] or {}
          for _, e in ipairs(batch_of[c].entries) do keys[#keys + 1] = e[1] end
          confirmed[c.addr] = keys
        end
      end
    end
  end
  return confirmed
end

-- Client operations ----------------------------------------------------------

local function count(t)
  local n = 0
  for _ in pairs(t) do n = n + 1 end
  return n
end

-- put and delete: the k nearest nodes to the key store the entry.
local function write(cfg, start, key, entry)
  local found = dht_lookup.lookup(cfg, dht_id.of(key), start)
  if #found.nearest == 0 then return {false, "no DHT node answered"} end
  local jobs = {}
  for i, c in ipairs(found.nearest) do jobs[i] = {c = c, entries = {{key, entry}}} end
  local confirmed = dht_lookup.store(cfg, jobs)
  local n = count(confirmed)
  if n == 0 then return {false, "no DHT node stored the key"} end
  return {true, n}
end

-- get: the newest entry among the k nearest nodes (and any asked on the
-- way); those of the k nearest that lack it are given it (read repair).
local function read(cfg, start, key)
  local found = dht_lookup.lookup(cfg, dht_id.of(key), start, key)
  local best = found.best
  if best then
    local jobs = {}
    for _, c in ipairs(found.nearest) do
      if dht_lookup.newer(best, found.has[c.addr]) then jobs[#jobs + 1] = {c = c, entries = {{key, best}}} end
    end
    dht_lookup.store(cfg, jobs)
  elseif #found.nearest == 0 then
    return {false, "no DHT node answered"}
  end
  return {true, best and best.value}
end

-- The body of a client operation's worker: runs `op` and answers `from`
-- (the handle_call caller) with {true, result} or {false, why}.
function dht_lookup.client_op(cfg, from, op, start, key, value)
  local ok, reply = pcall(function()
    if op == "get" then return read(cfg, start, key) end
    local entry = {version = erlangen.system_time(), value = value}   -- delete: no value
    return write(cfg, start, key, entry)
  end)
  if not ok then reply = {false, tostring(reply)} end
  require("erlangen.server").reply(from, reply)
end

-- The replication pass ----------------------------------------------------------

-- The body of the pass worker. First a lookup of the own id (and of
-- `refresh_id` if given) refreshes the neighbourhood; then every entry of
-- `entries` ({key, entry, placed = {[addr] = true}}) is stored on those of
-- the k nodes nearest to its key (the own node included) that have not
-- confirmed it yet. Each confirmation goes to the DHT process as
-- {"dht_placed", addr, {{key, version}, ...}}.
function dht_lookup.pass(cfg, contacts, entries, refresh_id)
  local found = dht_lookup.lookup(cfg, cfg.me.id, contacts)
  if refresh_id then dht_lookup.lookup(cfg, refresh_id, contacts) end
  if #entries == 0 then return end
  local pool, in_pool = {cfg.me}, {[cfg.me.id] = true}
  for _, list in ipairs({found.nearest, contacts}) do
    for _, c in ipairs(list) do
      if not in_pool[c.id] then in_pool[c.id] = true; pool[#pool + 1] = c end
    end
  end
  local todo, by_addr = {}, {}   -- addr -> {{key, entry}, ...}
  for _, e in ipairs(entries) do
    for _, c in ipairs(dht_routing.nearest(pool, dht_id.of(e[1]), cfg.k)) do
      if c.addr ~= cfg.me.addr and not e.placed[c.addr] then
        local list = todo[c.addr]
        if not list then list = {}; todo[c.addr] = list; by_addr[#by_addr + 1] = c end
        list[#list + 1] = {e[1], e[2]}
      end
    end
  end
  local jobs = {}
  for _, c in ipairs(by_addr) do jobs[#jobs + 1] = {c = c, entries = todo[c.addr]} end
  local version = {}
  for _, e in ipairs(entries) do version[e[1]] = e[2].version end
  for addr, keys in pairs(dht_lookup.store(cfg, jobs)) do
    local placed = {}
    for i, k in ipairs(keys) do placed[i] = {k, version[k]} end
    erlangen.send(cfg.server, {"dht_placed", addr, placed})
  end
end

return dht_lookup
