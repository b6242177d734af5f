-- dht_server.lua — the DHT process of a node: an erlangen.server
-- registered as "dht" that holds the routing table and the stored entries.
--
-- Invariants:
--   * handle_call and handle_info never wait: every lookup runs in a worker
--     (dht_lookup), so a node that is gone delays no request here;
--   * a contact enters the routing table only after its node sent this node
--     a message (a request, or a reply to a worker), so a link to it was up,
--     and leaves it at that link's nodedown (erlangen.monitor_nodes);
--   * s.placed[key] is the set of nodes known to hold s.store[key] at its
--     version (this node included); a node's addresses leave every set at
--     its nodedown, and a newer version starts the set afresh;
--   * at most one replication pass runs; a change seen meanwhile runs
--     another after it (s.pass.again).
-- The pass stores every entry on the k nodes nearest to its key that have
-- not confirmed it: it runs after the table changes (a node came or went)
-- and every `refresh` seconds.
local erlangen = require "erlangen"
local server = require "erlangen.server"
local timer = require "erlangen.timer"
local dht_id = require "dht_id"
local dht_routing = require "dht_routing"
local dht_client = require "dht_client"
local dht_lookup = require "dht_lookup"

local dht_server = {}

dht_server.DEFAULTS = {
  k = 4,            -- contacts per bucket, and replicas per key
  alpha = 3,        -- requests a lookup has in flight
  timeout = 2,      -- seconds a request to another DHT process may take
  refresh = 10,     -- seconds between periodic refreshes
  pass_delay = 0.2, -- seconds a pass waits after a change, so a burst of changes makes one pass
}
dht_server.MAILBOX = 16384  -- DHT traffic comes in bursts (a pass stores hundreds of keys)

local OPTIONS = {addr = "string", seed = "string", k = "integer", alpha = "integer",
                 timeout = "number", refresh = "number", pass_delay = "number"}

-- The options with defaults filled in; raises naming a bad one.
local function check_opts(opts, level)
  if type(opts) ~= "table" then error("dht_server: options table expected, got " .. type(opts), level) end
  local o = {}
  for k, v in pairs(opts) do
    local want = OPTIONS[k]
    if not want then error("dht_server: unknown option '" .. tostring(k) .. "'", level) end
    local ok = want == "integer" and math.type(v) == "integer" and v > 0
            or want == "number" and type(v) == "number" and v > 0
            or want == "string" and type(v) == "string"
    if not ok then error("dht_server: option '" .. k .. "' must be a positive " .. want .. ", got " .. tostring(v), level) end
    o[k] = v
  end
  if not dht_lookup.is_addr(o.addr) then
    error("dht_server: option 'addr' must be this node's \"name@host:port\", got " .. tostring(o.addr), level)
  end
  if o.seed ~= nil and not dht_lookup.is_addr(o.seed) then
    error("dht_server: option 'seed' must be a \"name@host:port\", got " .. tostring(o.seed), level)
  end
  for k, v in pairs(dht_server.DEFAULTS) do if o[k] == nil then o[k] = v end end
  return o
end

-- Starts the DHT process linked to the caller (a supervisor's start
-- function). opts: addr (this node's "name@host:port", required), seed (a
-- node to join through), and the DEFAULTS above.
function dht_server.start_link(opts)
  opts = check_opts(opts, 2)
  return server.start_link("dht_server", opts, {name = dht_client.NAME, mailbox = dht_server.MAILBOX})
end

-- The replication pass ---------------------------------------------------------

local function schedule_pass(s)
  if s.pass.worker then s.pass.again = true
  elseif not s.pass.due then
    s.pass.due = true
    timer.send_after(s.opts.pass_delay, erlangen.self(), {"dht_pass"})
  end
end

-- The contacts a lookup of `target` starts from: the k nearest of the
-- table (all of it when target is nil), and the seed while the table holds
-- fewer than k (a node that has not joined yet knows only its seed).
local function starting_points(s, target)
  local list = target and dht_routing.closest(s.table, target, s.opts.k) or dht_routing.contacts(s.table)
  if s.opts.seed and #list < s.opts.k then list[#list + 1] = dht_lookup.contact(s.opts.seed) end
  return list
end

local function start_pass(s)
  s.pass.due = false
  local contacts = starting_points(s)
  local refresh_id
  if s.pass.refresh then
    local used = dht_routing.buckets(s.table)
    refresh_id = dht_id.random_in_bucket(s.me.id, #used > 0 and used[math.random(#used)] or 0)
    s.pass.refresh = false
  end
  local entries = {}
  for key, e in pairs(s.store) do entries[#entries + 1] = {key, e, placed = s.placed[key]} end
  s.pass.worker, s.pass.ref = erlangen.spawn_monitor("dht_lookup.pass", s.cfg, contacts, entries, refresh_id)
end

-- Routes ----------------------------------------------------------------------------

-- Records that the node at `addr` sent a message; a new contact may be
-- nearer to some keys than their holders, so a pass follows.
local function learn(s, addr)
  if not dht_lookup.is_addr(addr) or addr == s.me.addr then return end
  if dht_routing.insert(s.table, dht_lookup.contact(addr)) == "added" then schedule_pass(s) end
end

-- Node `name` went down: it leaves the table and every placed set, and a
-- pass restores the replicas it held.
local function forget(s, name)
  local gone = dht_routing.remove(s.table, dht_id.of(name))
  for _, set in pairs(s.placed) do
    for addr in pairs(set) do
      if dht_lookup.node_of(addr) == name then set[addr] = nil end
    end
  end
  if gone then schedule_pass(s) end
end

-- Keeps `entry` for `key` if it is newer than the one held.
local function keep(s, key, entry)
  if dht_lookup.newer(entry, s.store[key]) then
    s.store[key] = {version = entry.version, value = entry.value}
    s.placed[key] = {[s.me.addr] = true}
  end
end

local function addrs(list)
  local out = {}
  for i, c in ipairs(list) do out[i] = c.addr end
  return out
end

-- The addresses of the k contacts nearest to `target`, but `addr`.
local function nearest_but(s, target, addr)
  local list = dht_routing.closest(s.table, target, s.opts.k + 1)
  local out = {}
  for _, c in ipairs(list) do
    if c.addr ~= addr and #out < s.opts.k then out[#out + 1] = c.addr end
  end
  return out
end

-- Requests ---------------------------------------------------------------------------

local BAD = {false, "bad request"}

-- Requests from other DHT processes (see dht_lookup.lua): each names its
-- sender, which is learned first.
local peer = {}

function peer.ping(s) return {"pong", s.me.addr} end

function peer.find_node(s, req)
  if not dht_id.is_id(req[3]) then return BAD end
  return {"nodes", s.me.addr, nearest_but(s, req[3], req[2])}
end

function peer.find_value(s, req)
  if dht_client.bad_key(req[3]) then return BAD end
  return {"nodes", s.me.addr, nearest_but(s, dht_id.of(req[3]), req[2]), s.store[req[3]]}
end

function peer.store(s, req)
  local list = req[3]
  if type(list) ~= "table" or #list > dht_lookup.BATCH then return BAD end
  for _, e in ipairs(list) do
    if type(e) ~= "table" or dht_client.bad_key(e[1]) or not dht_lookup.is_entry(e[2]) then return BAD end
  end
  for _, e in ipairs(list) do keep(s, e[1], e[2]) end
  return {"stored", s.me.addr, #list}
end

-- Requests from clients: each runs in a worker that answers `from`.
local client = {}

local function start_op(s, from, op, key, value)
  local start = starting_points(s, dht_id.of(key))
  start[#start + 1] = s.me
  erlangen.spawn("dht_lookup.client_op", s.cfg, from, op, start, key, value)
  return server.noreply
end

function client.put(s, req, from)
  local bad = dht_client.bad_key(req[2]) or dht_client.bad_value(req[3])
  if bad then return {false, bad} end
  return start_op(s, from, "put", req[2], req[3])
end

function client.get(s, req, from)
  local bad = dht_client.bad_key(req[2])
  if bad then return {false, bad} end
  return start_op(s, from, "get", req[2])
end

function client.delete(s, req, from)
  local bad = dht_client.bad_key(req[2])
  if bad then return {false, bad} end
  return start_op(s, from, "delete", req[2])
end

-- What this node holds, for tools and the demo: {true, {addr =, pid =, keys =
-- {key, ...} (not the tombstones), contacts =, idle = no pass runs or waits}}.
function client.status(s)
  local keys = {}
  for key, e in pairs(s.store) do
    if e.value ~= nil then keys[#keys + 1] = key end
  end
  table.sort(keys)
  return {true, {addr = s.me.addr, pid = erlangen.self(), keys = keys, contacts = addrs(dht_routing.contacts(s.table)),
                 idle = not s.pass.worker and not s.pass.due}}
end

-- Callbacks ---------------------------------------------------------------------------

function dht_server.init(opts)
  local o = check_opts(opts, 3)
  local me = dht_lookup.contact(o.addr)
  erlangen.monitor_nodes(true)
  local s = {
    opts = o, me = me,
    cfg = {me = me, server = erlangen.self(), k = o.k, alpha = o.alpha, timeout = o.timeout},
    table = dht_routing.new(me.id, o.k),
    store = {}, placed = {},
    pass = {worker = nil, ref = nil, due = false, again = false, refresh = false},
  }
  timer.send_interval(o.refresh, erlangen.self(), {"dht_refresh"})
  schedule_pass(s)   -- the first pass joins the network through the seed
  return s
end

function dht_server.handle_call(req, from, s)
  if type(req) ~= "table" then return BAD, s end
  local op = req[1]
  if peer[op] then
    if not dht_lookup.is_addr(req[2]) then return BAD, s end
    learn(s, req[2])
    return peer[op](s, req), s
  elseif client[op] then
    return client[op](s, req, from), s
  end
  return {false, "unknown request " .. tostring(op)}, s
end

function dht_server.handle_info(m, s)
  if type(m) ~= "table" then return s end
  local tag = m[1]
  if tag == "nodedown" and type(m[2]) == "string" then
    forget(s, m[2])
  elseif tag == "dht_seen" then
    for _, addr in ipairs(m[2]) do learn(s, addr) end
  elseif tag == "dht_placed" then
    for _, kv in ipairs(m[3]) do
      local e = s.store[kv[1]]
      if e and e.version == kv[2] then s.placed[kv[1]][m[2]] = true end
    end
  elseif tag == "dht_pass" then
    start_pass(s)
  elseif tag == "dht_refresh" then
    s.pass.refresh = true
    schedule_pass(s)
  elseif tag == "DOWN" and m[2] == s.pass.ref then
    s.pass.worker, s.pass.ref = nil, nil
    if s.pass.again then
      s.pass.again = false
      schedule_pass(s)
    end
  end
  return s
end

return dht_server
