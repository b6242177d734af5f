-- erlangen.supervisor — OTP supervisors: start children in order, restart them by strategy, stop them in reverse.
--
-- A supervisor is a process that traps exits. It calls each child's start
-- function in its own process (so the child is linked to it), or, for a child
-- with `node`, in a starter process spawned on that node, and then links to the
-- child itself. It keeps the children in start order and reacts to their EXITs
-- as its strategy says.
-- Calls from other processes and the start acknowledgement are
-- erlangen.gen's, shared with the other behaviours. doc/supervisor.md is the
-- reference.

local erlangen = require "erlangen"
local gen = require "erlangen.gen"

local supervisor = {}

local STRATEGIES = {one_for_one = true, one_for_all = true, rest_for_one = true,
                    simple_one_for_one = true}
local RESTARTS = {permanent = true, transient = true, temporary = true}
local TYPES = {worker = true, supervisor = true}
local SPEC_KEYS = {strategy = true, intensity = true, period = true, children = true, name = true}
local CHILD_KEYS = {id = true, start = true, restart = true, shutdown = true, type = true,
                    node = true}

-- Values --------------------------------------------------------------------

local is_pid = erlangen.is_pid
local show = gen.show

-- The shape of a node name (gen's); the kernel checks the rest when it connects.
local function is_node_name(v)
  return type(v) == "string" and v:match("^[^@%s]+@[^@%s]+$") ~= nil
end

-- Whether an exit reason is one a transient child may end with unrestarted.
local function is_shutdown(reason)
  return reason == "normal" or reason == "shutdown"
      or (type(reason) == "table" and reason[1] == "shutdown")
end

local function is_exit_of(pid)
  return function(m) return type(m) == "table" and m[1] == "EXIT" and m[2] == pid end
end

local function is_down_of(ref)
  return function(m) return type(m) == "table" and m[1] == "DOWN" and m[2] == ref end
end

-- Checking specs ------------------------------------------------------------

-- Returns the child spec `c` with its defaults filled in, or nil and a message
-- naming the field (`where` is how the message names the spec).
local function check_child(c, where)
  if type(c) ~= "table" then
    return nil, string.format("%s must be a table, got %s", where, type(c))
  end
  for k in pairs(c) do
    if not CHILD_KEYS[k] then
      return nil, string.format("%s: unknown field %s", where, show(k))
    end
  end
  local id = c.id
  if id == nil then return nil, where .. ".id is missing" end
  if type(id) ~= "string" and math.type(id) ~= "integer" then
    return nil, string.format("%s.id must be a string or an integer, got %s", where, type(id))
  end
  local start = c.start
  if type(start) ~= "table" then
    return nil, string.format("%s.start must be a table {f, args...}, got %s", where, type(start))
  end
  local node = c.node
  if node ~= nil and not is_node_name(node) then
    return nil, string.format('%s.node must be a node name "name@host" or "name@host:port", got %s',
      where, type(node) == "string" and show(node) or type(node))
  end
  local f = start[1]
  if type(f) == "string" then
    if not f:match("^.+%.[^.]+$") then
      return nil, string.format("%s.start[1] must be \"module.function\", got %s", where, show(f))
    end
  elseif type(f) == "function" and node ~= nil then
    return nil, string.format('%s.start[1] must be a "module.function" string for a child on '
      .. "another node (a function cannot cross nodes), got function", where)
  elseif type(f) ~= "function" then
    return nil, string.format("%s.start[1] must be a function or a \"module.function\" string, got %s",
      where, type(f))
  end
  local restart = c.restart == nil and "permanent" or c.restart
  if not RESTARTS[restart] then
    return nil, string.format('%s.restart must be "permanent", "transient" or "temporary", got %s',
      where, show(restart))
  end
  local ctype = c.type == nil and "worker" or c.type
  if not TYPES[ctype] then
    return nil, string.format('%s.type must be "worker" or "supervisor", got %s', where, show(ctype))
  end
  local shutdown = c.shutdown
  if shutdown == nil then shutdown = ctype == "supervisor" and "infinity" or 5 end
  if not (shutdown == "brutal_kill" or shutdown == "infinity"
          or (type(shutdown) == "number" and shutdown >= 0 and shutdown < math.huge)) then
    return nil, string.format('%s.shutdown must be "brutal_kill", "infinity" or a number of seconds >= 0, got %s',
      where, show(shutdown))
  end
  return {id = id, start = start, restart = restart, shutdown = shutdown, type = ctype, node = node}
end

-- Returns the supervisor spec with its defaults filled in, or nil and a message.
local function check_spec(spec)
  if type(spec) ~= "table" then return nil, "spec must be a table, got " .. type(spec) end
  for k in pairs(spec) do
    if not SPEC_KEYS[k] then return nil, "spec: unknown field " .. show(k) end
  end
  local strategy = spec.strategy == nil and "one_for_one" or spec.strategy
  if not STRATEGIES[strategy] then
    return nil, string.format('spec.strategy must be "one_for_one", "one_for_all", "rest_for_one" '
      .. 'or "simple_one_for_one", got %s', show(strategy))
  end
  local intensity = spec.intensity == nil and 3 or spec.intensity
  if math.type(intensity) ~= "integer" or intensity < 0 then
    return nil, "spec.intensity must be an integer >= 0, got " .. show(intensity)
  end
  local period = spec.period == nil and 5 or spec.period
  if type(period) ~= "number" or not (period > 0) then
    return nil, "spec.period must be a number of seconds > 0, got " .. show(period)
  end
  if spec.name ~= nil and type(spec.name) ~= "string" then
    return nil, "spec.name must be a string, got " .. type(spec.name)
  end
  local children = spec.children == nil and {} or spec.children
  if type(children) ~= "table" then
    return nil, "spec.children must be a list of child specs, got " .. type(children)
  end
  local n = #children
  for k in pairs(children) do
    if math.type(k) ~= "integer" or k < 1 or k > n then
      return nil, "spec.children must be a list of child specs, found key " .. show(k)
    end
  end
  if strategy == "simple_one_for_one" and n ~= 1 then
    return nil, "spec.children must hold exactly one child spec for simple_one_for_one, got " .. n
  end
  local checked, seen = {}, {}
  for i = 1, n do
    local c, err = check_child(children[i], "spec.children[" .. i .. "]")
    if not c then return nil, err end
    if seen[c.id] then
      return nil, string.format("spec.children[%d].id: duplicate id %s", i, show(c.id))
    end
    seen[c.id] = true
    checked[i] = c
  end
  return {strategy = strategy, intensity = intensity, period = period, name = spec.name,
          children = checked}
end

-- Reports ----------------------------------------------------------------------

-- Through erlangen.log (loaded at the first report), never raising.
local function report(level, text, fields) require("erlangen.log").report(level, text, fields) end

local function child_report(S, level, text, rec, reason, pid)
  report(level, text, {supervisor = S.name, id = rec.id, pid = pid or rec.pid, reason = reason,
                       restart = rec.restart, type = rec.type, node = rec.node})
end

-- Starting one child (in the supervisor) --------------------------------------

-- Calls the start function {f, args...} with `extra` appended to its args.
-- Returns the child's pid, or nil and a reason.
local function call_start(start, extra)
  local f = start[1]
  if type(f) == "string" then
    local modname, fname = f:match("^(.+)%.([^.]+)$")
    local ok, mod = pcall(require, modname)
    if not ok then return nil, mod end
    f = type(mod) == "table" and mod[fname]
    if type(f) ~= "function" then
      return nil, "start function " .. start[1] .. " is not a function"
    end
  end
  local args = table.pack(table.unpack(start, 2))
  if extra then
    for i = 1, extra.n do args[args.n + i] = extra[i] end
    args.n = args.n + extra.n
  end
  local ok, pid, reason = pcall(f, table.unpack(args, 1, args.n))
  if not ok then return nil, pid end
  if is_pid(pid) then return pid end
  if pid == nil then return nil, reason == nil and "start function returned nil" or reason end
  return nil, {"bad_return_value", pid}
end

-- A child on another node is started by a starter process there, which traps
-- exits as the supervisor does and calls the start function, so the child is
-- linked to the starter. The supervisor then links to the child and tells the
-- starter, which only then unlinks and ends: until the supervisor's link is in
-- place, the starter's link guards the child, and if the supervisor is lost first
-- the starter kills the child, so none outlives its supervisor.

-- The starter's body (spawned on the child's node by the supervisor `sup`).
-- Not for direct use.
function supervisor.start_remote(sup, start, extra)
  local me = erlangen.self()
  local sup_ref = erlangen.monitor(sup)
  local pid, reason = call_start(start, extra)
  if not pid then
    erlangen.send(sup, {"$sup_remote", me, false, reason}, 5)
    return
  end
  local m
  if erlangen.send(sup, {"$sup_remote", me, true, pid}, 5) then
    m = erlangen.receive(function(x)
      return type(x) == "table" and ((x[1] == "$sup_linked" and x[2] == pid)
                                     or (x[1] == "DOWN" and x[2] == sup_ref))
    end)
  end
  if not m or m[1] == "DOWN" then
    erlangen.exit(pid, "kill")
    return
  end
  erlangen.demonitor(sup_ref, true)
  erlangen.unlink(pid)
  erlangen.receive(is_exit_of(pid), 0)
end

-- Starts the child of `rec` on rec.node, `extra` appended to its start's
-- arguments. Returns the child's pid, linked to the caller, or nil and a
-- reason: the start function's, spawn_opt's error ("... noconnection" for a
-- node that cannot be reached), or the starter's exit reason.
local function start_remote(rec, extra)
  local me = erlangen.self()
  local ok, starter, ref = pcall(erlangen.spawn_opt, {node = rec.node, monitor = true, trap_exit = true},
    "erlangen.supervisor.start_remote", me, rec.start, extra)
  if not ok then return nil, starter end
  local m = erlangen.receive(function(x)
    return type(x) == "table" and ((x[1] == "$sup_remote" and x[2] == starter)
                                   or (x[1] == "DOWN" and x[2] == ref))
  end)
  if m[1] == "DOWN" then return nil, m[4] end
  erlangen.demonitor(ref, true)
  if not m[3] then return nil, m[4] end
  local pid = m[4]
  local linked, err = pcall(erlangen.link, pid)
  if not linked then   -- the node backs off; the starter ends the child when it hears of it
    erlangen.exit(starter, "kill")
    return nil, err
  end
  erlangen.send(starter, {"$sup_linked", pid}, 5)
  return pid
end

-- Starts the child of `rec` where it runs. Returns its pid, or nil and a reason.
local function start_child_of(rec)
  if rec.node then return start_remote(rec, rec.args) end
  return call_start(rec.start, rec.args)
end

-- Starts the child of record `rec`; sets rec.pid on success. Returns true,
-- or nil and a reason.
local function start_rec(S, rec)
  local pid, reason = start_child_of(rec)
  if not pid then return nil, reason end
  rec.pid, rec.restarting = pid, nil
  if rec.args == nil then child_report(S, "info", "child started", rec) end
  return true
end

-- Sets the record's pid (a dynamic child is also found by pid).
local function set_pid(S, rec, pid)
  if rec.args and rec.pid then S.by_pid[rec.pid] = nil end
  rec.pid = pid
  if rec.args and pid then S.by_pid[pid] = rec end
end

-- Stopping children ----------------------------------------------------------

-- The link to a child stays until the child is dead, as in OTP 24 and
-- later: a supervisor that is killed while it stops its children still takes
-- each of them down through its link. (Unlinking first, as older OTP did,
-- leaves an orphan when the kill lands between the unlink and the exit.)

-- After the DOWN of `pid`: drops the link and the EXIT it may have queued
-- (links hear of an end before monitors, so it is normally here already).
-- Returns the EXIT's reason, or `reason` (the DOWN's) when there was none.
-- A DOWN of "noproc" means the child was already ending when it was
-- monitored; its EXIT may still be on its way, and an unlink now would
-- drop it, so it is waited for (briefly: a child that unlinked itself sends
-- none).
local function unlink_flush(pid, reason)
  local m = reason == "noproc" and erlangen.receive(is_exit_of(pid), 1) or nil
  erlangen.unlink(pid)
  m = m or erlangen.receive(is_exit_of(pid), 0)
  return m and m[3] or reason
end

-- Stops one child the OTP way and returns its exit reason. `how` is
-- "brutal_kill", "infinity" or seconds to wait after "shutdown" before a kill.
local function shutdown(pid, how)
  local ref = erlangen.monitor(pid)
  erlangen.exit(pid, how == "brutal_kill" and "kill" or "shutdown")
  local m = erlangen.receive(is_down_of(ref), type(how) == "number" and how or nil)
  if not m then
    erlangen.exit(pid, "kill")
    m = erlangen.receive(is_down_of(ref))
  end
  return unlink_flush(pid, m[4])
end

-- Whether `reason` is what a child stopped with `how` should end with.
local function expected_stop(rec, how, reason)
  if reason == (how == "brutal_kill" and "killed" or "shutdown") then return true end
  return reason == "normal" and rec.restart ~= "permanent"
end

-- Stops the child of `rec` if it runs, and reports an unexpected reason.
local function terminate_rec(S, rec)
  local pid = rec.pid
  rec.restarting = nil
  if not pid then return end
  local reason = shutdown(pid, rec.shutdown)
  if not expected_stop(rec, rec.shutdown, reason) then
    child_report(S, "error", "shutdown error", rec, reason)
  end
  set_pid(S, rec, nil)
end

-- Stops the dynamic children in parallel: "shutdown" (or a kill) to all of
-- them, then waits for their DOWNs up to the spec's shutdown time, then
-- kills the rest.
local function terminate_dynamic(S)
  local how = S.template.shutdown
  local waiting, left = {}, 0
  local recs = {}
  for rec in pairs(S.dynamic) do recs[#recs + 1] = rec end
  for _, rec in ipairs(recs) do
    if rec.pid then
      waiting[erlangen.monitor(rec.pid)] = rec
      left = left + 1
      erlangen.exit(rec.pid, how == "brutal_kill" and "kill" or "shutdown")
    end
  end
  local function is_ours(m)
    return type(m) == "table" and m[1] == "DOWN" and waiting[m[2]] ~= nil
  end
  local deadline = type(how) == "number" and erlangen.now() + how or nil
  local killed = false
  while left > 0 do
    local m
    if deadline and not killed then
      m = erlangen.receive(is_ours, math.max(0, deadline - erlangen.now()))
      if not m then
        for _, rec in pairs(waiting) do erlangen.exit(rec.pid, "kill") end
        killed = true
      end
    else
      m = erlangen.receive(is_ours)
    end
    if m then
      local rec = waiting[m[2]]
      waiting[m[2]] = nil
      left = left - 1
      local reason = unlink_flush(rec.pid, m[4])
      if not expected_stop(rec, how, reason) then
        child_report(S, "error", "shutdown error", rec, reason)
      end
    end
  end
  S.dynamic, S.by_pid = {}, {}
end

-- Stops every child: the dynamic ones in parallel, the others right to left.
local function terminate_all(S)
  if S.template then return terminate_dynamic(S) end
  for i = #S.children, 1, -1 do terminate_rec(S, S.children[i]) end
end

-- The child list ---------------------------------------------------------------

local function new_rec(S, c, args)
  S.seq = S.seq + 1
  return {id = c.id, start = c.start, restart = c.restart, shutdown = c.shutdown,
          type = c.type, node = c.node, args = args, seq = S.seq}
end

local function find_id(S, id)
  for i, rec in ipairs(S.children) do
    if rec.id == id then return rec, i end
  end
end

-- The record of the child whose pid is `pid`, if any.
local function find_pid(S, pid)
  if S.template then return S.by_pid[pid] end
  for _, rec in ipairs(S.children) do
    if rec.pid == pid then return rec end
  end
end

-- Removes a child (a dead one, or one that never started) from the lists.
local function remove_rec(S, rec)
  if rec.args then
    S.dynamic[rec] = nil
    if rec.pid then S.by_pid[rec.pid] = nil end
    return
  end
  local _, i = find_id(S, rec.id)
  if i then table.remove(S.children, i) end
end

-- Restarting ---------------------------------------------------------------------

-- Records a restart now. Returns false when there have been more than
-- `intensity` restarts within `period` seconds.
local function add_restart(S)
  local now = erlangen.now()
  local kept = {}
  for _, t in ipairs(S.restarts) do
    if now - t <= S.period then kept[#kept + 1] = t end
  end
  kept[#kept + 1] = now
  S.restarts = kept
  return #kept <= S.intensity
end

-- Starts `list` (records, in start order) left to right. Stops at the first
-- failure and returns that record and the reason; returns nil when all
-- started.
local function start_list(S, list)
  for _, rec in ipairs(list) do
    local ok, reason = start_rec(S, rec)
    if not ok then return rec, reason end
  end
end

-- Stops the running children of `list` right to left; temporary ones are
-- removed for good (they are never restarted). Returns the records kept.
local function terminate_list(S, list)
  for i = #list, 1, -1 do terminate_rec(S, list[i]) end
  local kept = {}
  for _, rec in ipairs(list) do
    if rec.restart == "temporary" then remove_rec(S, rec) else kept[#kept + 1] = rec end
  end
  return kept
end

-- Restarts `rec` (whose process has ended) as the strategy says. Returns true,
-- or nil, the record that failed to start and the reason.
local function restart_by_strategy(S, rec)
  local strategy = S.strategy
  if strategy == "one_for_one" or strategy == "simple_one_for_one" then
    local pid, reason = start_child_of(rec)
    if not pid then return nil, rec, reason end
    set_pid(S, rec, pid)
    rec.restarting = nil
    if not rec.args then child_report(S, "info", "child started", rec) end
    return true
  end
  local list
  if strategy == "one_for_all" then
    list = {}
    for _, r in ipairs(S.children) do list[#list + 1] = r end
  else  -- rest_for_one: rec and the children started after it
    local _, i = find_id(S, rec.id)
    list = table.move(S.children, i, #S.children, 1, {})
  end
  list = terminate_list(S, list)
  local failed, reason = start_list(S, list)
  if failed then return nil, failed, reason end
  return true
end

-- Restarts after `rec`'s process ended. If the intensity is exceeded, stops
-- every child and exits with "shutdown". If a start fails, the failed child
-- is marked restarting and retried from the main loop (each try counts).
local function restart(S, rec)
  if not add_restart(S) then
    report("error", "reached max restart intensity",
      {supervisor = S.name, id = rec.id, reason = "shutdown",
       intensity = S.intensity, period = S.period})
    terminate_all(S)
    erlangen.exit("shutdown")
  end
  local ok, failed, reason = restart_by_strategy(S, rec)
  if not ok then
    child_report(S, "error", "start error", failed, reason)
    failed.restarting = true
    S.retries[#S.retries + 1] = failed
  end
end

-- Handles the EXIT of child `rec`.
local function child_exited(S, rec, reason)
  local pid = rec.pid
  set_pid(S, rec, nil)
  if rec.restart == "permanent" or (rec.restart == "transient" and not is_shutdown(reason)) then
    child_report(S, "error", "child terminated", rec, reason, pid)
    return restart(S, rec)
  end
  if not is_shutdown(reason) then child_report(S, "error", "child terminated", rec, reason, pid) end
  if rec.restart == "temporary" or rec.args then remove_rec(S, rec) end
end

-- Management calls (in the supervisor) --------------------------------------------

local calls = {}

function calls.start_child(S, args)
  if S.template then
    local rec = new_rec(S, S.template, args)
    local pid, reason = start_child_of(rec)
    if not pid then return nil, reason end
    S.dynamic[rec] = true
    set_pid(S, rec, pid)
    return pid
  end
  if args.n ~= 1 then
    return nil, nil, "a child spec (one table) expected, got " .. args.n .. " arguments"
  end
  local arg, err = check_child(args[1], "child spec")
  if not arg then return nil, nil, err end
  local old = find_id(S, arg.id)
  if old then
    if old.pid then return nil, {"already_started", old.pid} end
    return nil, "already_present"
  end
  local rec = new_rec(S, arg)
  local ok, reason = start_rec(S, rec)
  if not ok then return nil, reason end
  S.children[#S.children + 1] = rec
  return rec.pid
end

function calls.terminate_child(S, key)
  local rec
  if S.template then
    if not is_pid(key) then return nil, "simple_one_for_one" end
    rec = S.by_pid[key]
  else
    rec = find_id(S, key)
  end
  if not rec then return nil, "not_found" end
  terminate_rec(S, rec)
  if rec.restart == "temporary" or rec.args then remove_rec(S, rec) end
  return true
end

function calls.restart_child(S, id)
  if S.template then return nil, "simple_one_for_one" end
  local rec = find_id(S, id)
  if not rec then return nil, "not_found" end
  if rec.pid then return nil, "running" end
  if rec.restarting then return nil, "restarting" end
  local ok, reason = start_rec(S, rec)
  if not ok then return nil, reason end
  return rec.pid
end

function calls.delete_child(S, id)
  if S.template then return nil, "simple_one_for_one" end
  local rec = find_id(S, id)
  if not rec then return nil, "not_found" end
  if rec.pid then return nil, "running" end
  if rec.restarting then return nil, "restarting" end
  remove_rec(S, rec)
  return true
end

local function child_info(rec)
  return {id = (not rec.args) and rec.id or nil, pid = rec.pid, type = rec.type,
          restart = rec.restart, node = rec.node or erlangen.node(),
          status = rec.pid and "running" or rec.restarting and "restarting" or "undefined"}
end

function calls.which_children(S)
  local list = {}
  if S.template then
    local recs = {}
    for rec in pairs(S.dynamic) do recs[#recs + 1] = rec end
    table.sort(recs, function(a, b) return a.seq < b.seq end)
    for i, rec in ipairs(recs) do list[i] = child_info(rec) end
  else
    for i, rec in ipairs(S.children) do list[i] = child_info(rec) end
  end
  return list
end

function calls.count_children(S)
  local counts = {specs = 0, active = 0, supervisors = 0, workers = 0}
  local function count(rec)
    counts.specs = counts.specs + 1
    if rec.pid then counts.active = counts.active + 1 end
    if rec.type == "supervisor" then counts.supervisors = counts.supervisors + 1
    else counts.workers = counts.workers + 1 end
  end
  if S.template then
    for rec in pairs(S.dynamic) do count(rec) end
  else
    for _, rec in ipairs(S.children) do count(rec) end
  end
  return counts
end

function calls.get_childspec(S, key)
  local rec
  if S.template then
    if is_pid(key) then rec = S.by_pid[key] end
    if rec then rec = S.template end
  else
    rec = find_id(S, key)
  end
  if not rec then return nil, "not_found" end
  return {id = rec.id, start = rec.start, restart = rec.restart, shutdown = rec.shutdown,
          type = rec.type, node = rec.node}
end

-- The supervisor process ----------------------------------------------------------

-- A call from gen.call: {"$sup_call", alias, op, arg}, answered {alias, r1, r2, bad}.
local function handle_call(S, m)
  local alias, op, arg = m[2], m[3], m[4]
  local fn = calls[op]
  local r1, r2, bad
  if fn then r1, r2, bad = fn(S, arg) else r1, r2 = nil, "unknown call " .. tostring(op) end
  erlangen.send(alias, {alias, r1, r2, bad}, 5)
end

local function handle_exit(S, pid, reason)
  if S.parent and pid == S.parent then
    terminate_all(S)
    erlangen.exit(reason)
  end
  local rec = find_pid(S, pid)
  if rec then child_exited(S, rec, reason) end
  -- an EXIT from a process that is no child (any more) is ignored, as in OTP
end

-- Tries again to restart a child whose restart failed.
local function try_again(S, rec)
  if not rec.restarting then return end                  -- stopped or deleted meanwhile
  if rec.args and not S.dynamic[rec] then return end
  if not rec.args and not find_id(S, rec.id) then return end
  restart(S, rec)
end

local function loop(S)
  while true do
    local m
    if #S.retries > 0 then
      m = erlangen.receive(0)
      if m == nil then try_again(S, table.remove(S.retries, 1)) end
    else
      m = erlangen.receive()
    end
    if m ~= nil then
      local tag = type(m) == "table" and m[1]
      if tag == "EXIT" then
        handle_exit(S, m[2], m[3])
      elseif tag == "$sup_call" then
        handle_call(S, m)
      elseif tag == "$sup_stop" then
        terminate_all(S)
        erlangen.exit(m[2])
      else
        report("error", "supervisor received an unexpected message",
          {supervisor = S.name, message = m})
      end
    end
  end
end

-- The body of a supervisor process (started by supervisor.start/start_link
-- with trap_exit set). Not for direct use.
function supervisor.init_it(ack, parent, spec)
  erlangen.set_label("supervisor")
  local me = erlangen.self()
  local S = {
    parent = parent or nil,
    name = spec.name or tostring(me),
    strategy = spec.strategy, intensity = spec.intensity, period = spec.period,
    children = {},           -- static children, in start order
    template = nil,          -- simple_one_for_one: the one child spec
    dynamic = {}, by_pid = {},   -- simple_one_for_one children: set of records, pid -> record
    restarts = {}, retries = {}, seq = 0,
  }
  local failed, reason
  if spec.strategy == "simple_one_for_one" then
    S.template = spec.children[1]
  else
    for _, c in ipairs(spec.children) do
      local rec = new_rec(S, c)
      local ok, why = start_rec(S, rec)
      if not ok then failed, reason = rec, why; break end
      S.children[#S.children + 1] = rec
    end
  end
  if failed then
    child_report(S, "error", "start error", failed, reason)
    terminate_all(S)
    reason = {"shutdown", {"failed_to_start_child", failed.id, reason}}
    if parent then erlangen.unlink(parent) end
    gen.ack(ack, false, reason)
    erlangen.exit(reason)
  end
  gen.ack(ack, true)
  loop(S)
end

-- The API --------------------------------------------------------------------------

local function start(fname, spec, link)
  local checked, err = check_spec(spec)
  if not checked then error(fname .. ": " .. err, 3) end
  local pid, reason = gen.start{fname = fname, level = 3, body = "erlangen.supervisor.init_it",
                                spawn = {link = link, trap_exit = true, name = checked.name},
                                args = table.pack(link and erlangen.self() or false, checked)}
  return pid, reason
end

--- supervisor.start_link(spec) -> pid | nil, reason
-- Starts a supervisor linked to the caller and returns once every child has
-- started. Raises for a malformed spec.
function supervisor.start_link(spec)
  local pid, reason = start("supervisor.start_link", spec, true)
  return pid, reason
end

--- supervisor.start(spec) -> pid | nil, reason
-- As start_link, without the link.
function supervisor.start(spec)
  local pid, reason = start("supervisor.start", spec, false)
  return pid, reason
end

-- The error value raised by a call that got no answer: {kind, detail, op=,
-- supervisor=, node=}, kind being "noproc" (detail: the node), "calling_self",
-- "exit" (detail: the supervisor's exit reason), "noconnection" (detail: the
-- supervisor's node) or "timeout" (stop only); the shape of erlangen.server's
-- call errors.
local call_error_mt = {__name = "erlangen.supervisor.error"}

function call_error_mt.__tostring(e)
  local head = string.format("supervisor.%s(%s)", e.op, show(e.supervisor))
  if e[1] == "exit" then
    return head .. ": the supervisor exited with reason " .. show(e[2])
  elseif e[1] == "noproc" then
    return head .. ": noproc (no such process)"
  elseif e[1] == "calling_self" then
    return head .. ": calling_self (a supervisor cannot call itself)"
  elseif e[1] == "noconnection" then
    return head .. ": noconnection (no link to node " .. tostring(e[2]) .. ")"
  end
  return head .. ": " .. tostring(e[1])
end

local function call_error(fname, sup, kind, detail)
  return setmetatable({kind, detail, op = fname, supervisor = sup, node = gen.node_of(sup)},
                      call_error_mt)
end

-- On its node, for remote_whereis: sends {tag, whereis(name)} to `to`. Not
-- for direct use.
function supervisor.whereis_reply(to, tag, name)
  erlangen.send(to, {tag, erlangen.whereis(name)}, 5)
end

-- The pid registered as `name` on another node, or nil and "noproc" or
-- "noconnection": looked up by a short process spawned there, so that the
-- call can monitor the supervisor by pid.
local function remote_whereis(name, node)
  local tag = erlangen.ref()
  local ok, _, ref = pcall(erlangen.spawn_opt, {node = node, monitor = true},
    "erlangen.supervisor.whereis_reply", erlangen.self(), tag, name)
  if not ok then return nil, "noconnection" end
  local m = erlangen.receive(function(x)
    return type(x) == "table" and (x[1] == tag or (x[1] == "DOWN" and x[2] == ref))
  end)
  if m[1] == "DOWN" then return nil, m[4] == "noconnection" and "noconnection" or "noproc" end
  erlangen.demonitor(ref, true)
  if m[2] then return m[2] end
  return nil, "noproc"
end

-- Resolves `sup` (a pid, a registered name or {name, node}) for
-- supervisor.<fname> to the supervisor's pid; raises on a bad argument or a
-- missing supervisor. `level` as error()'s, seen from resolve.
local function resolve(fname, sup, level)
  gen.check_address(sup, 1, fname, level)
  if erlangen.is_ref(sup) then
    gen.arg_error(1, fname, "pid, name or {name, node} expected, got an alias", level)
  end
  local pid, why = gen.resolve(sup), "noproc"
  if type(pid) == "table" then pid, why = remote_whereis(sup[1], sup[2]) end
  if not pid then error(call_error(fname, sup, why, gen.node_of(sup)), level) end
  if pid == erlangen.self() then error(call_error(fname, sup, "calling_self"), level) end
  return pid
end

-- Sends a request to the supervisor and waits for the reply (for ever, as
-- OTP's supervisor calls do) or for the supervisor's DOWN.
local function call(fname, sup, op, arg)
  local pid = resolve(fname, sup, 4)
  local m, kind, detail = gen.call(pid, function(alias) return {"$sup_call", alias, op, arg} end)
  if not m then
    if kind == "badarg" then error(string.format("supervisor.%s: %s", fname, detail), 3) end
    error(call_error(fname, sup, kind, detail), 3)
  end
  if m[4] ~= nil then error(string.format("supervisor.%s: %s", fname, m[4]), 3) end
  return m[2], m[3]
end

--- supervisor.start_child(sup, child_spec) -> pid | nil, reason
--- supervisor.start_child(sup, args...) -> pid | nil, reason  (simple_one_for_one)
-- For a simple_one_for_one supervisor the arguments are appended to those of
-- the spec's start; otherwise the argument is a child spec, added last.
-- A bad child spec raises an error naming the field.
function supervisor.start_child(sup, ...)
  local r1, r2 = call("start_child", sup, "start_child", table.pack(...))
  return r1, r2
end

--- supervisor.terminate_child(sup, id_or_pid) -> true | nil, reason
function supervisor.terminate_child(sup, id)
  local r1, r2 = call("terminate_child", sup, "terminate_child", id)
  return r1, r2
end

--- supervisor.restart_child(sup, id) -> pid | nil, reason
function supervisor.restart_child(sup, id)
  local r1, r2 = call("restart_child", sup, "restart_child", id)
  return r1, r2
end

--- supervisor.delete_child(sup, id) -> true | nil, reason
function supervisor.delete_child(sup, id)
  local r1, r2 = call("delete_child", sup, "delete_child", id)
  return r1, r2
end

--- supervisor.which_children(sup) -> { {id=, pid=, status=, type=, restart=}, ... }
function supervisor.which_children(sup)
  return (call("which_children", sup, "which_children"))
end

--- supervisor.count_children(sup) -> {specs=, active=, supervisors=, workers=}
function supervisor.count_children(sup)
  return (call("count_children", sup, "count_children"))
end

--- supervisor.get_childspec(sup, id_or_pid) -> child spec | nil, "not_found"
function supervisor.get_childspec(sup, id)
  local r1, r2 = call("get_childspec", sup, "get_childspec", id)
  return r1, r2
end

--- supervisor.check_childspecs(list) -> true | nil, message
function supervisor.check_childspecs(list)
  if type(list) ~= "table" then return nil, "child specs must be a list, got " .. type(list) end
  local seen = {}
  for i, c in ipairs(list) do
    local checked, err = check_child(c, "children[" .. i .. "]")
    if not checked then return nil, err end
    if seen[checked.id] then
      return nil, string.format("children[%d].id: duplicate id %s", i, show(checked.id))
    end
    seen[checked.id] = true
  end
  return true
end

--- supervisor.stop(sup [, reason="normal" [, timeout]]) -> true
-- Stops the children (right to left, or the dynamic ones in parallel) and
-- ends the supervisor with `reason`; returns once it has ended. Raises the
-- call error "noproc" if it was not running, "timeout" after `timeout` seconds.
function supervisor.stop(sup, reason, timeout)
  local pid = resolve("stop", sup, 3)
  if timeout ~= nil and type(timeout) ~= "number" then
    error("bad argument #3 to 'stop' (number expected, got " .. type(timeout) .. ")", 2)
  end
  local ref = erlangen.monitor(pid)
  local ok, err = pcall(erlangen.send, pid, {"$sup_stop", reason == nil and "normal" or reason}, 60)
  if not ok then
    erlangen.demonitor(ref, true)
    error("supervisor.stop: " .. tostring(err), 2)
  end
  local m = erlangen.receive(is_down_of(ref), timeout)
  if not m then
    erlangen.demonitor(ref, true)
    error(call_error("stop", sup, "timeout", timeout), 2)
  end
  if m[4] == "noproc" then error(call_error("stop", sup, "noproc", erlangen.node(pid)), 2) end
  if m[4] == "noconnection" then error(call_error("stop", sup, "noconnection", erlangen.node(pid)), 2) end
  return true
end

return supervisor
