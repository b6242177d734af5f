-- erlangen.pg — process groups across nodes (OTP's pg); doc/pg.md.
--
-- A scope is an erlangen.server process registered under the scope's name on
-- each node that uses it. It owns two things: the groups of its own node's
-- processes (it is their only writer), and a replica of the groups of the
-- same scope on every other node. The scopes of one name find each other:
-- at start and at each nodeup a scope sends {"pg_discover", self} to
-- {scope, node}; a discover is answered with {"pg_sync", self, groups} (all
-- local groups) and, from a scope not yet known, with a discover back.
-- Afterwards each change of a local group is sent to every known peer as
-- {"pg_join", self, group, pids} or {"pg_leave", self, group, pids}.
--
-- Invariants:
--   * A replica of peer P equals P's local groups as of the last record
--     from P: messages between two processes arrive in send order, a sync
--     replaces the whole replica, and P sends joins and leaves only to the
--     peers it knows, after the sync it sent them.
--   * A group never needs a lock: only its scope process changes it, one
--     message at a time. Reads from other processes are calls to the scope
--     on the caller's own node, answered from its replica: no remote round
--     trip, no shared memory (processes share no Lua state).
--   * A peer's members are dropped when its node goes down (nodedown comes
--     before any record of that node's next link) or its scope ends (DOWN).
local erlangen = require "erlangen"
local server = require "erlangen.server"

local pg = {}

pg.DEFAULT_SCOPE = "pg"
local CALL_TIMEOUT = 5

-- Lists ------------------------------------------------------------------------

local function append(list, items)
  for _, v in ipairs(items) do list[#list + 1] = v end
  return list
end

-- `list` without one occurrence of each of `items` (a process may join a
-- group several times and leaves it once per join); also the removed ones.
local function remove_each(list, items)
  local want = {}
  for _, v in ipairs(items) do want[v] = (want[v] or 0) + 1 end
  local kept, gone = {}, {}
  for _, v in ipairs(list) do
    if (want[v] or 0) > 0 then
      want[v] = want[v] - 1
      gone[#gone + 1] = v
    else
      kept[#kept + 1] = v
    end
  end
  return kept, gone
end

-- Argument checks --------------------------------------------------------------

-- Raises "bad argument #n to 'fname' (msg)" for the caller of the API
-- function `level` levels up (4: the checks called by an API function).
local function arg_error(n, fname, msg, level)
  error(string.format("bad argument #%d to '%s' (%s)", n, fname, msg), level or 4)
end

local function check_name(v, n, fname, what, level)
  if type(v) ~= "string" then
    arg_error(n, fname, what .. " name (a string) expected, got " .. erlangen.type(v), level)
  end
  return v
end

-- A pid or a non-empty list of pids, all of this node, as a list.
local function check_pids(v, n, fname)
  local list = erlangen.is_pid(v) and {v} or v
  if type(list) ~= "table" or #list == 0 then
    arg_error(n, fname, "pid or list of pids expected, got " ..
              (type(list) == "table" and "empty table" or erlangen.type(v)))
  end
  local here = erlangen.node()
  for i, p in ipairs(list) do
    local where = #list > 1 and string.format(" at [%d]", i) or ""
    if not erlangen.is_pid(p) then
      arg_error(n, fname, "pid expected" .. where .. ", got " .. erlangen.type(p))
    elseif erlangen.node(p) ~= here then
      arg_error(n, fname, "local pid expected" .. where .. ", got pid " .. tostring(p) ..
                " of node " .. erlangen.node(p))
    end
  end
  return list
end

-- The optional leading scope: with `nargs` arguments the scope is given,
-- with one fewer it is the default. Returns the scope and the rest.
local function split(fname, nargs, ...)
  local n = select("#", ...)
  if n == nargs then
    return check_name((...), 1, fname, "scope", 5), 1, select(2, ...)
  elseif n == nargs - 1 then
    return pg.DEFAULT_SCOPE, 0, ...
  end
  error(string.format("bad argument #%d to '%s' (%d or %d arguments expected, got %d)",
                      math.min(n + 1, nargs), fname, nargs - 1, nargs, n), 3)
end

-- The scope process ----------------------------------------------------------------

-- state: scope name; groups (group -> local pids); members (local pid ->
-- {mref, n}: joins still held); peers (peer scope pid -> {mref, node,
-- groups}); subs (ref -> {pid, mref, group or nil}); sub_of (mref -> ref).
local scope = {}

local function peer_of_mref(state, mref)
  for p, peer in pairs(state.peers) do
    if peer.mref == mref then return p end
  end
end

local function notify(state, kind, group, pids)
  if #pids == 0 then return end
  for ref, sub in pairs(state.subs) do
    if sub.group == nil or sub.group == group then
      erlangen.send(sub.pid, {ref, kind, group, pids})
    end
  end
end

-- Sends to the peers on nodes with a link up only: a send to a node
-- without one would connect to it (its nodedown, not yet handled, comes soon).
local function broadcast(state, msg)
  local up = {}
  for _, n in ipairs(erlangen.nodes()) do up[n] = true end
  for p, peer in pairs(state.peers) do
    if up[peer.node] then erlangen.send(p, msg) end
  end
end

local function discover(state, node)
  erlangen.send({state.scope, node}, {"pg_discover", erlangen.self()})
end

-- A peer now known (monitored; its groups empty until its sync).
local function add_peer(state, p)
  if not state.peers[p] then
    state.peers[p] = {mref = erlangen.monitor(p), node = erlangen.node(p), groups = {}}
  end
  return state.peers[p]
end

-- No demonitor: its monitor has fired or will (a demonitor of a pid of a
-- node without a link would connect to that node).
local function drop_peer(state, p)
  local peer = state.peers[p]
  state.peers[p] = nil
  for group, pids in pairs(peer.groups) do notify(state, "leave", group, pids) end
end

-- Makes the replica of peer `p` equal `groups`, telling subscribers the
-- difference.
local function replace_peer_groups(state, p, groups)
  local peer = add_peer(state, p)
  local old = peer.groups
  peer.groups = {}
  for group, pids in pairs(groups) do
    if type(group) == "string" and type(pids) == "table" and #pids > 0 then
      peer.groups[group] = pids
      notify(state, "leave", group, (remove_each(old[group] or {}, pids)))
      notify(state, "join", group, (remove_each(pids, old[group] or {})))
    end
  end
  for group, pids in pairs(old) do
    if peer.groups[group] == nil then notify(state, "leave", group, pids) end
  end
end

local function members_of(state, group, only_local)
  local list = append({}, state.groups[group] or {})
  if not only_local then
    for _, peer in pairs(state.peers) do append(list, peer.groups[group] or {}) end
  end
  return list
end

local function leave_local(state, group, pids)
  local kept, gone = remove_each(state.groups[group] or {}, pids)
  state.groups[group] = #kept > 0 and kept or nil
  for _, p in ipairs(gone) do
    local m = state.members[p]
    m.n = m.n - 1
    if m.n == 0 then
      erlangen.demonitor(m.mref, true)
      state.members[p] = nil
    end
  end
  if #gone > 0 then
    broadcast(state, {"pg_leave", erlangen.self(), group, gone})
    notify(state, "leave", group, gone)
  end
  return #gone > 0
end

local calls = {}

function calls.join(state, group, pids)
  state.groups[group] = append(state.groups[group] or {}, pids)
  for _, p in ipairs(pids) do
    local m = state.members[p]
    if not m then
      m = {mref = erlangen.monitor(p), n = 0}
      state.members[p] = m
    end
    m.n = m.n + 1
  end
  broadcast(state, {"pg_join", erlangen.self(), group, pids})
  notify(state, "join", group, pids)
  return true
end

function calls.leave(state, group, pids) return leave_local(state, group, pids) end

function calls.members(state, group) return members_of(state, group, false) end

function calls.local_members(state, group) return members_of(state, group, true) end

function calls.which_groups(state)
  local seen, list = {}, {}
  local function add(groups)
    for g in pairs(groups) do
      if not seen[g] then seen[g] = true; list[#list + 1] = g end
    end
  end
  add(state.groups)
  for _, peer in pairs(state.peers) do add(peer.groups) end
  table.sort(list)
  return list
end

-- A subscription for `pid`: to every group (group nil) or to one. Returns
-- the ref and what the groups hold now.
function calls.monitor(state, pid, group)
  local ref = erlangen.ref()
  local mref = erlangen.monitor(pid)
  state.subs[ref] = {pid = pid, mref = mref, group = group}
  state.sub_of[mref] = ref
  if group then return {ref, members_of(state, group, false)} end
  local now = {}
  for _, g in ipairs(calls.which_groups(state)) do now[g] = members_of(state, g, false) end
  return {ref, now}
end

function calls.demonitor(state, ref)
  local sub = state.subs[ref]
  if not sub then return false end
  state.subs[ref] = nil
  state.sub_of[sub.mref] = nil
  erlangen.demonitor(sub.mref, true)
  return true
end

function scope.init(name)
  erlangen.set_label("pg scope " .. name)
  local state = {scope = name, groups = {}, members = {}, peers = {}, subs = {}, sub_of = {}}
  erlangen.monitor_nodes(true)
  for _, node in ipairs(erlangen.nodes()) do discover(state, node) end
  return state
end

function scope.handle_call(req, _, state)
  return calls[req[1]](state, table.unpack(req, 2, req.n)), state
end

function scope.handle_info(m, state)
  if type(m) ~= "table" then return state end
  local tag, p = m[1], m[2]
  if tag == "pg_join" and state.peers[p] and type(m[3]) == "string" then
    local groups = state.peers[p].groups
    groups[m[3]] = append(groups[m[3]] or {}, m[4])
    notify(state, "join", m[3], m[4])
  elseif tag == "pg_leave" and state.peers[p] and type(m[3]) == "string" then
    local groups = state.peers[p].groups
    local kept, gone = remove_each(groups[m[3]] or {}, m[4])
    groups[m[3]] = #kept > 0 and kept or nil
    notify(state, "leave", m[3], gone)
  elseif tag == "pg_discover" and erlangen.is_pid(p) then
    local known = state.peers[p] ~= nil
    add_peer(state, p)
    erlangen.send(p, {"pg_sync", erlangen.self(), state.groups})
    if not known then erlangen.send(p, {"pg_discover", erlangen.self()}) end
  elseif tag == "pg_sync" and erlangen.is_pid(p) and type(m[3]) == "table" then
    replace_peer_groups(state, p, m[3])
  elseif tag == "nodeup" then
    discover(state, p)
  elseif tag == "nodedown" then
    for q, peer in pairs(state.peers) do
      if peer.node == p then drop_peer(state, q) end
    end
  elseif tag == "DOWN" then
    local mref, pid = m[2], m[3]
    local member = state.members[pid]
    if member and member.mref == mref then
      for group, pids in pairs(state.groups) do
        local all = {}
        for _, q in ipairs(pids) do if q == pid then all[#all + 1] = q end end
        if #all > 0 then leave_local(state, group, all) end
      end
    elseif state.sub_of[mref] then
      calls.demonitor(state, state.sub_of[mref])
    else
      local q = peer_of_mref(state, mref)
      if q then drop_peer(state, q) end
    end
  end
  return state
end

-- The API ----------------------------------------------------------------------------

local function start(fname, name)
  check_name(name, 1, fname, "scope", 5)
  return server[fname](scope, name, {name = name})
end

-- Starts the scope `name` on this node; pid, or nil and the reason
-- ({"already_started", pid} when it runs).
function pg.start(name) return start("start", name) end

function pg.start_link(name) return start("start_link", name) end

-- Asks the scope on this node; the default scope starts on first use.
local function ask(fname, name, req)
  if erlangen.whereis(name) == nil then
    if name ~= pg.DEFAULT_SCOPE then
      error(string.format("%s: scope '%s' is not running on this node (pg.start starts it)",
                          fname, name), 3)
    end
    pg.start(name)
  end
  req.n = #req
  return server.call(name, req, CALL_TIMEOUT)
end

function pg.join(...)
  local name, s, group, pids = split("join", 3, ...)
  return ask("join", name, {"join", check_name(group, s + 1, "join", "group"),
                            check_pids(pids, s + 2, "join")})
end

-- True if at least one of the pids was in the group.
function pg.leave(...)
  local name, s, group, pids = split("leave", 3, ...)
  return ask("leave", name, {"leave", check_name(group, s + 1, "leave", "group"),
                             check_pids(pids, s + 2, "leave")})
end

function pg.members(...)
  local name, s, group = split("members", 2, ...)
  return ask("members", name, {"members", check_name(group, s + 1, "members", "group")})
end

function pg.local_members(...)
  local name, s, group = split("local_members", 2, ...)
  return ask("local_members", name,
             {"local_members", check_name(group, s + 1, "local_members", "group")})
end

function pg.which_groups(...)
  local name = split("which_groups", 1, ...)
  return ask("which_groups", name, {"which_groups"})
end

-- ref, {group = {pids}}; then {ref, "join" | "leave", group, pids}.
function pg.monitor_scope(...)
  local name = split("monitor_scope", 1, ...)
  return table.unpack(ask("monitor_scope", name, {"monitor", erlangen.self()}))
end

-- ref, {pids}; then {ref, "join" | "leave", group, pids} for that group.
function pg.monitor(...)
  local name, s, group = split("monitor", 2, ...)
  check_name(group, s + 1, "monitor", "group")
  return table.unpack(ask("monitor", name, {"monitor", erlangen.self(), group}))
end

-- Ends a subscription (false if it was not one); notifications already
-- in the caller's mailbox stay there.
function pg.demonitor(...)
  local name, s, ref = split("demonitor", 2, ...)
  if not erlangen.is_ref(ref) then
    arg_error(s + 1, "demonitor", "ref expected, got " .. erlangen.type(ref), 3)
  end
  return ask("demonitor", name, {"demonitor", ref})
end

return pg
