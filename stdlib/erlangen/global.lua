-- erlangen.global — names registered across nodes (OTP's global); doc/global.md.
--
-- A name server (an erlangen.server process registered as SERVER) runs on
-- each node that uses global. It holds a replica of every name of the
-- servers it knows, and is authoritative for the names of its own node's
-- processes. Records between servers:
--   {"g_discover", S}               S asks for a sync (answered with one, and
--                                   with a discover back if S was unknown)
--   {"g_sync", S, {name = pid}}     all names of S's node, replacing those
--   {"g_claim", S, ref, name, pid}  S registers name; answered
--   {"g_claimed", S, ref, ok}       false when the name is held by another pid
--   {"g_release", S, name, pid}     name no longer names pid
-- A server learns whether a node runs a server by a remote spawn of
-- global.greet there ({"g_peer", node, S or false} comes back); until every
-- node it greeted has answered and synced, calls wait (so the first answer
-- of a new server already holds the cluster's names).
--
-- Invariants:
--   * Only the server writes the replica, one message at a time: no locks.
--   * A name homed on node N (held by a pid of N) is in the replica only
--     while N's server is known and its link is up: nodedown and the
--     server's DOWN drop all of N's names.
--   * Two registrations of one name (made on two sides of a partition, or
--     at the same moment) meet in a sync; every server keeps the one whose
--     pid's node name is lowest (byte order), so all replicas agree, and the
--     loser's own node tells it {"global_name_conflict", name, winner}.
local erlangen = require "erlangen"
local server = require "erlangen.server"

local global = {}

local SERVER = "global_name_server"
local CALL_TIMEOUT = 10   -- seconds: a call may wait for the greets of a new server
local GREET_TIMEOUT = 5   -- seconds the remote spawn of a greet may take

local node_of = erlangen.node

-- The name server ------------------------------------------------------------------

-- state: names (name -> pid), mine (name -> mref, names of local pids),
-- by_mref (mref -> name), peers (server pid -> {mref, node, synced}),
-- pending (node -> true: greeted, not yet synced), absent (node -> true:
-- runs no server), deferred ({req, from} waiting for pending), claims
-- (ref -> {name, pid, from, waiting = {server pid -> true}, refused}).
local ns = {}

-- The nodes with a link up, as a set.
local function up_nodes()
  local up = {}
  for _, n in ipairs(erlangen.nodes()) do up[n] = true end
  return up
end

-- Sends to the peers on nodes with a link up only: a send to a node
-- without one would connect to it, healing a partition that its maker
-- means to hold; the nodedown of a peer not yet handled comes soon.
local function broadcast(state, msg, except)
  local up = up_nodes()
  for p, peer in pairs(state.peers) do
    if p ~= except and up[peer.node] then erlangen.send(p, msg) end
  end
end

-- Asks `node` whether it runs a name server, from a helper process, so a
-- slow node never holds up this one.
local function greet(state, node)
  if state.pending[node] or state.absent[node] then return end
  for _, peer in pairs(state.peers) do
    if peer.node == node and peer.synced then return end
  end
  state.pending[node] = true
  erlangen.spawn(function(asker, n, timeout)
    local ok, _, ref = pcall(erlangen.spawn_opt, {node = n, monitor = true, timeout = timeout},
                             "erlangen.global.greet", asker)
    if ok then
      local down = erlangen.receive(function(m)
        return type(m) == "table" and m[1] == "DOWN" and m[2] == ref
      end, timeout)
      if down and down[4] == "normal" then return end
    end
    erlangen.send(asker, {"g_peer", n, false})
  end, erlangen.self(), node, GREET_TIMEOUT)
end

local function add_peer(state, p)
  if not state.peers[p] then
    state.peers[p] = {mref = erlangen.monitor(p), node = node_of(p), synced = false}
  end
  return state.peers[p]
end

-- Forgets that `name` names the local pid it was registered for.
local function drop_mine(state, name)
  local mref = state.mine[name]
  if mref then
    erlangen.demonitor(mref, true)
    state.mine[name], state.by_mref[mref] = nil, nil
  end
end

local function release(state, name, pid, except)
  if state.names[name] ~= pid then return false end
  state.names[name] = nil
  drop_mine(state, name)
  broadcast(state, {"g_release", erlangen.self(), name, pid}, except)
  return true
end

local function finish_claim(state, ref)
  local c = state.claims[ref]
  state.claims[ref] = nil
  local ok = not c.refused and state.names[c.name] == c.pid
  if not ok then release(state, c.name, c.pid) end
  server.reply(c.from, ok)
end

-- Peer `p` no longer answers claims.
local function forget_waits(state, p)
  for ref, c in pairs(state.claims) do
    c.waiting[p] = nil
    if next(c.waiting) == nil then finish_claim(state, ref) end
  end
end

-- Drops every server and every name of `node`. No demonitor: the monitor
-- of a peer has fired or will (a demonitor of a pid of a node without a
-- link would connect to that node again).
local function drop_node(state, node)
  for p, peer in pairs(state.peers) do
    if peer.node == node then
      state.peers[p] = nil
      forget_waits(state, p)
    end
  end
  for name, pid in pairs(state.names) do
    if node_of(pid) == node then state.names[name] = nil end
  end
  state.pending[node], state.absent[node] = nil, nil
end

-- The names of this node's processes, as a sync sends them.
local function home_names(state)
  local t = {}
  for name in pairs(state.mine) do t[name] = state.names[name] end
  return t
end

-- Applies the sync of peer `p` (whose node is `node`), resolving clashes.
local function merge(state, p, names)
  local node = node_of(p)
  for name, pid in pairs(state.names) do
    if node_of(pid) == node and names[name] ~= pid then state.names[name] = nil end
  end
  for name, pid in pairs(names) do
    if type(name) == "string" and erlangen.is_pid(pid) and node_of(pid) == node then
      local cur = state.names[name]
      if cur == nil or cur == pid then
        state.names[name] = pid
      elseif node < node_of(cur) then   -- the rule: the lowest node name keeps it
        if state.mine[name] then
          release(state, name, cur)
          erlangen.send(cur, {"global_name_conflict", name, pid})
        end
        state.names[name] = pid
      end
    end
  end
end

local calls = {}

function calls.register(state, from, name, pid)
  if state.names[name] then return false end
  state.names[name] = pid
  local mref = erlangen.monitor(pid)
  state.mine[name], state.by_mref[mref] = mref, name
  local ref, waiting, up = erlangen.ref(), {}, up_nodes()
  for p, peer in pairs(state.peers) do
    if up[peer.node] then waiting[p] = true end
  end
  if next(waiting) == nil then return true end
  state.claims[ref] = {name = name, pid = pid, from = from, waiting = waiting}
  broadcast(state, {"g_claim", erlangen.self(), ref, name, pid})
  return server.noreply
end

function calls.unregister(state, _, name)
  local pid = state.names[name]
  return pid ~= nil and release(state, name, pid)
end

function calls.whereis(state, _, name) return state.names[name] end

function calls.names(state)
  local list = {}
  for name in pairs(state.names) do list[#list + 1] = name end
  table.sort(list)
  return list
end

function calls.sync(state)
  return true
end

local function run(state, req, from)
  local r = calls[req[1]](state, from, table.unpack(req, 2, req.n))
  if r ~= server.noreply then server.reply(from, r) end
end

-- Runs the calls that waited, once no greet is pending.
local function flush(state)
  while next(state.pending) == nil and #state.deferred > 0 do
    local d = table.remove(state.deferred, 1)
    run(state, d[1], d[2])
  end
end

function ns.init()
  erlangen.set_label("global name server")
  local state = {names = {}, mine = {}, by_mref = {}, peers = {}, pending = {}, absent = {},
                 deferred = {}, claims = {}}
  erlangen.monitor_nodes(true)
  for _, node in ipairs(erlangen.nodes()) do greet(state, node) end
  return state
end

function ns.handle_call(req, from, state)
  if req[1] == "sync" then   -- nodes whose nodeup this server has not seen yet
    for _, node in ipairs(erlangen.nodes()) do greet(state, node) end
  end
  state.deferred[#state.deferred + 1] = {req, from}
  flush(state)
  return server.noreply, state
end

function ns.handle_info(m, state)
  if type(m) ~= "table" then return state end
  local tag, p = m[1], m[2]
  if tag == "g_claim" and erlangen.is_pid(p) and type(m[4]) == "string" and erlangen.is_pid(m[5]) then
    local holder = state.names[m[4]]
    local ok = holder == nil or holder == m[5]
    if ok then state.names[m[4]] = m[5] end
    erlangen.send(p, {"g_claimed", erlangen.self(), m[3], ok})
  elseif tag == "g_claimed" then
    local c = state.claims[m[3]]
    if c and c.waiting[p] then
      c.waiting[p] = nil
      if not m[4] then c.refused = true end
      if next(c.waiting) == nil then finish_claim(state, m[3]) end
    end
  elseif tag == "g_release" and type(m[3]) == "string" then
    release(state, m[3], m[4], p)
  elseif tag == "g_discover" and erlangen.is_pid(p) then
    local known = state.peers[p] ~= nil
    add_peer(state, p)
    erlangen.send(p, {"g_sync", erlangen.self(), home_names(state)})
    if not known then erlangen.send(p, {"g_discover", erlangen.self()}) end
  elseif tag == "g_sync" and erlangen.is_pid(p) and type(m[3]) == "table" then
    add_peer(state, p).synced = true
    merge(state, p, m[3])
    state.pending[node_of(p)] = nil
  elseif tag == "g_peer" and state.pending[p] then
    local s = m[3]
    if not erlangen.is_pid(s) then
      state.pending[p], state.absent[p] = nil, true
    elseif state.peers[s] and state.peers[s].synced then
      state.pending[p] = nil
    elseif not state.peers[s] then
      add_peer(state, s)
      erlangen.send(s, {"g_discover", erlangen.self()})
    end
  elseif tag == "nodeup" then
    greet(state, p)
  elseif tag == "nodedown" then
    drop_node(state, p)
  elseif tag == "DOWN" then
    local name = state.by_mref[p]
    if name then
      release(state, name, m[3])
    else
      for q, peer in pairs(state.peers) do
        if peer.mref == p then
          state.peers[q] = nil
          forget_waits(state, q)
          drop_node(state, peer.node)
        end
      end
    end
  end
  flush(state)
  return state
end

-- What a node runs for a server that greets it (see the top); not for
-- direct use.
function global.greet(asker)
  erlangen.send(asker, {"g_peer", erlangen.node(), erlangen.whereis(SERVER) or false})
end

-- The API -------------------------------------------------------------------------

local function arg_error(n, fname, msg)
  error(string.format("bad argument #%d to '%s' (%s)", n, fname, msg), 3)
end

local function check_name(v, fname)
  if type(v) ~= "string" then arg_error(1, fname, "name (a string) expected, got " .. erlangen.type(v)) end
end

-- The name server of this node, started if it does not run.
function global.start()
  local pid, err = server.start(ns, nil, {name = SERVER})
  if pid then return pid end
  if type(err) == "table" and err[1] == "already_started" then return err[2] end
  error("global: cannot start the name server: " .. tostring(err), 2)
end

local function ask(...)
  local req = table.pack(...)
  return server.call(erlangen.whereis(SERVER) or global.start(), req, CALL_TIMEOUT)
end

-- True, or false when a node that can be reached holds `name` for another
-- pid (or the pid already has it here).
function global.register_name(name, pid)
  check_name(name, "register_name")
  if not erlangen.is_pid(pid) then
    arg_error(2, "register_name", "pid expected, got " .. erlangen.type(pid))
  elseif node_of(pid) ~= erlangen.node() then
    arg_error(2, "register_name", "local pid expected, got pid " .. tostring(pid) ..
              " of node " .. node_of(pid))
  end
  return ask("register", name, pid)
end

-- True if `name` was registered.
function global.unregister_name(name)
  check_name(name, "unregister_name")
  return ask("unregister", name)
end

function global.whereis_name(name)
  check_name(name, "whereis_name")
  return ask("whereis", name)
end

-- What erlangen.send returns; raises when `name` is not registered.
function global.send(name, msg)
  check_name(name, "send")
  local pid = ask("whereis", name)
  if pid == nil then error("global.send: '" .. name .. "' is not registered", 2) end
  return erlangen.send(pid, msg)
end

function global.registered_names() return ask("names") end

-- Returns once this node's server has synced with the server of every node
-- in erlangen.nodes() that runs one.
function global.sync() return ask("sync") end

return global
