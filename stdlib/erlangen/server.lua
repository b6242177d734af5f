-- erlangen.server — a generic server (OTP's gen_server) on the public erlangen API.
--
-- A server is a process that runs a loop around a table of callbacks; see
-- doc/server.md for the callback conventions, the messages on the wire and
-- the error values.
--
-- Wire protocol (tables whose first element is the tag; anything else is info):
--   {"$gen_call", from, request}     from = {reply_to, tag}; the reply is {tag, value}
--   {"$gen_cast", msg}
--   {"$gen_stop", reason}
--   start acknowledgement to the starter's alias: {ack, true} or {ack, false, reason}
-- Call, start and addresses are erlangen.gen's, shared with the other behaviours.
local erlangen = require "erlangen"
local gen = require "erlangen.gen"

local server = {}

local DEFAULT_CALL_TIMEOUT = 5
local CALLBACKS = {"init", "handle_call", "handle_cast", "handle_info", "terminate"}
local START_OPTS = {name = "string", timeout = "timeout", mailbox = "integer",
                    max_memory = "integer", trap_exit = "boolean"}

-- Values -----------------------------------------------------------------------

local show = gen.show

-- Deep equality of exit reasons (a reason that crossed a process is a copy).
local function same(a, b)
  if a == b then return true end
  if type(a) ~= "table" or type(b) ~= "table" then return false end
  for k, v in pairs(a) do if not same(v, b[k]) then return false end end
  for k in pairs(b) do if a[k] == nil then return false end end
  return true
end

-- The error object of erlangen.exit(reason), as raised into a pcall.
local function is_exit_object(e)
  local mt = type(e) == "table" and getmetatable(e)
  return type(mt) == "table" and mt.__name == "erlangen.exit"
end

-- OTP's normal exits: no crash report for these.
local function is_normal(reason)
  return reason == "normal" or reason == "shutdown"
    or (type(reason) == "table" and reason[1] == "shutdown")
end

-- Markers returned by callbacks -------------------------------------------------

server.noreply = setmetatable({}, {
  __name = "erlangen.server.noreply",
  __tostring = function() return "server.noreply" end,
})

local STOP = {__name = "erlangen.server.stop",
              __tostring = function(s) return "server.stop_with(" .. show(s.reason) .. ")" end}

-- The marker a callback returns (as its first value, the state second) to stop
-- the server with `reason`; from handle_call, `reply` is sent first if given.
function server.stop_with(reason, ...)
  if reason == nil then error("bad argument #1 to 'stop_with' (reason expected, got nil)", 2) end
  local has_reply = select("#", ...) > 0
  return setmetatable({reason = reason, reply = (...), has_reply = has_reply}, STOP)
end

local function is_stop(v) return getmetatable(v) == STOP end

-- Errors raised by call and stop --------------------------------------------------

local ERROR = {__name = "erlangen.server.error"}

function ERROR.__tostring(e)
  local head = string.format("server.%s(%s)", e.op, show(e.server))
  local remote = e.node ~= erlangen.node()
  if e[1] == "timeout" then
    return string.format("%s: timeout after %s s", head, show(e[2]))
  elseif e[1] == "noproc" then
    return head .. ": noproc (no such process" .. (remote and " on " .. e.node or "") .. ")"
  elseif e[1] == "noconnection" then
    return head .. ": noconnection (node " .. e.node .. " cannot be reached)"
  elseif e[1] == "calling_self" then
    return head .. ": calling_self (a process cannot " .. e.op .. " itself)"
  end
  return head .. ": the server exited with reason " .. show(e[2])
end

local function fail_with(kind, detail, op, srv, request)
  error(setmetatable({kind, detail, op = op, server = srv, request = request,
                      node = gen.node_of(srv)}, ERROR))
end

-- Argument checks -------------------------------------------------------------------

local arg_error = gen.arg_error

-- A timeout in seconds, or nil for "infinity".
local function check_timeout(t, default, n, fname)
  if t == nil then return default end
  if t == "infinity" then return nil end
  if type(t) ~= "number" or t ~= t or t < 0 then
    arg_error(n, fname, "timeout must be a number >= 0 or \"infinity\", got " .. show(t), 3)
  end
  return t
end

-- Logging -----------------------------------------------------------------------------

-- Loaded at the first report, not with every server.
local function log_event(level, text, fields) require("erlangen.log").report(level, text, fields) end

-- The server process ----------------------------------------------------------------------

-- xpcall handler: {reason=...} for erlangen.exit(reason), else the error value
-- as the reason with a traceback.
local function catch(e)
  if is_exit_object(e) then return {reason = e.reason} end
  local ok, text = pcall(tostring, e)
  return {reason = e, traceback = debug.traceback(ok and text or "?", 2)}
end

-- The reason and traceback of a failed xpcall (its handler may itself have failed).
local function failure(r)
  if type(r) == "table" and getmetatable(r) == nil and r.reason ~= nil then
    return r.reason, r.traceback
  end
  return r, nil
end

local function send_reply(from, value)
  return erlangen.send(from[1], {from[2], value})
end

local function is_from(from)
  return type(from) == "table" and (erlangen.is_pid(from[1]) or erlangen.is_ref(from[1]))
    and erlangen.is_ref(from[2])
end

-- Runs terminate (if any) and ends the process with `reason` (or with the
-- error of terminate). `last` is the message being handled, for the report.
local function terminate(p, reason, state, last, traceback)
  if p.cb.terminate then
    local ok, r = xpcall(p.cb.terminate, catch, reason, state)
    if not ok then reason, traceback = failure(r) end
  end
  if not is_normal(reason) then
    log_event("error", "server terminating", {
      server = p.label, reason = reason, last_message = last, traceback = traceback,
    })
  end
  erlangen.exit(reason)
end

local function crash(p, r, state, last)
  local reason, traceback = failure(r)
  terminate(p, reason, state, last, traceback)
end

local function default_call(request)
  error("no handle_call callback (request " .. show(request) .. ")", 0)
end

local function default_cast(msg)
  error("no handle_cast callback (message " .. show(msg) .. ")", 0)
end

local function default_info(msg, state, label)
  log_event("warning", "server got an unexpected message", {server = label, message = msg})
  return state
end

local function loop(p, state)
  local cb, parent = p.cb, p.parent
  local handle_call = cb.handle_call or default_call
  local handle_cast = cb.handle_cast or default_cast
  while true do
    local m = erlangen.receive()
    local tag = type(m) == "table" and m[1]
    if tag == "$gen_call" and is_from(m[2]) then
      local from = m[2]
      local ok, r1, r2 = xpcall(handle_call, catch, m[3], from, state)
      if not ok then crash(p, r1, state, m) end
      if is_stop(r1) then
        if r1.has_reply then pcall(send_reply, from, r1.reply) end
        terminate(p, r1.reason, r2, m)
      end
      if r1 ~= server.noreply then
        local sent, e = pcall(send_reply, from, r1)
        if not sent then  -- "msg[2].f: cannot send userdata" becomes "reply.f: ..."
          local path = tostring(e):match("^msg%[2%](.*)$")
          crash(p, path and "reply" .. path or "reply: " .. tostring(e), r2, m)
        end
      end
      state = r2
    elseif tag == "$gen_cast" then
      local ok, r1, r2 = xpcall(handle_cast, catch, m[2], state)
      if not ok then crash(p, r1, state, m) end
      if is_stop(r1) then terminate(p, r1.reason, r2, m) end
      state = r1
    elseif tag == "$gen_stop" then
      terminate(p, m[2], state, m)
    elseif tag == "EXIT" and parent and m[2] == parent then
      terminate(p, m[3], state, m)
    elseif cb.handle_info then
      local ok, r1, r2 = xpcall(cb.handle_info, catch, m, state)
      if not ok then crash(p, r1, state, m) end
      if is_stop(r1) then terminate(p, r1.reason, r2, m) end
      state = r1
    else
      state = default_info(m, state, p.label)
    end
  end
end

-- Every callback present in `cb` is a function; returns an error text or nil.
local function bad_callback(cb)
  for _, name in ipairs(CALLBACKS) do
    if cb[name] ~= nil and type(cb[name]) ~= "function" then
      return string.format("callback '%s' is a %s, not a function", name, type(cb[name]))
    end
  end
end

-- The body of a server process (OTP's gen_server:init_it; not for direct use).
-- Resolves the callbacks, runs init, acknowledges the start (gen.ack), then
-- loops. A failed start unlinks `parent` before it exits, so the starter gets
-- `nil, reason` and no EXIT.
function server.init_it(ack, callbacks, arg, parent)
  parent = parent or nil
  local cb, label = callbacks, "server"
  local function fail(reason, traceback)
    if parent then erlangen.unlink(parent) end
    if not is_normal(reason) then
      log_event("error", "server failed to start",
                {server = label, reason = reason, traceback = traceback})
    end
    gen.ack(ack, false, reason)
    erlangen.exit(reason)
  end
  if type(callbacks) == "string" then
    label = "server " .. callbacks
    local ok, mod = xpcall(require, catch, callbacks)
    if not ok then fail(failure(mod)) end
    if type(mod) ~= "table" then
      fail(string.format("module '%s' returned a %s, not a table of callbacks", callbacks, type(mod)))
    end
    cb = mod
  end
  local bad = bad_callback(cb)
  if bad then fail(bad) end
  erlangen.set_label(label)
  local state = arg
  if cb.init then
    local ok, r = xpcall(cb.init, catch, arg)
    if not ok then fail(failure(r)) end
    if is_stop(r) then fail(r.reason) end
    state = r
  end
  gen.ack(ack, true)
  loop({cb = cb, parent = parent, label = label}, state)
end

-- Starting --------------------------------------------------------------------------------

local function start(link, fname, callbacks, arg, opts)
  if type(callbacks) == "table" then
    local bad = bad_callback(callbacks)
    if bad then arg_error(1, fname, bad) end
  elseif type(callbacks) ~= "string" then
    arg_error(1, fname, "callbacks table or module name expected, got " .. type(callbacks))
  end
  if opts ~= nil and type(opts) ~= "table" then
    arg_error(3, fname, "options table expected, got " .. type(opts))
  end
  opts = opts or {}
  local sopts = {monitor = true, link = link}
  for k, v in pairs(opts) do
    local want = START_OPTS[k]
    if not want then arg_error(3, fname, "unknown option '" .. tostring(k) .. "'") end
    local ok = want == "timeout" or (want == "integer" and math.type(v) == "integer" and v > 0)
      or type(v) == want
    if not ok then arg_error(3, fname, "option '" .. k .. "' must be a " ..
      (want == "integer" and "positive integer" or want) .. ", got " .. show(v)) end
    if k ~= "timeout" then sopts[k] = v end
  end
  local timeout = check_timeout(opts.timeout, nil, 3, fname)
  local pid, reason = gen.start{fname = fname, level = 2, spawn = sopts, body = "erlangen.server.init_it",
                                args = table.pack(callbacks, arg, link and erlangen.self() or false),
                                arg_names = {"callbacks", "arg"}, timeout = timeout}
  return pid, reason
end

function server.start(callbacks, arg, opts)
  return start(false, "start", callbacks, arg, opts)
end

function server.start_link(callbacks, arg, opts)
  return start(true, "start_link", callbacks, arg, opts)
end

-- Talking to a server -------------------------------------------------------------------------

-- Raises the server error for gen.call's or gen's failure `kind`.
local function raise(kind, detail, op, srv, request, timeout)
  if kind == "timeout" then detail = timeout
  elseif kind ~= "exit" then detail = nil end
  fail_with(kind, detail, op, srv, request)
end

function server.call(srv, request, timeout)
  gen.check_address(srv, 1, "call")
  local t = check_timeout(timeout, DEFAULT_CALL_TIMEOUT, 3, "call")
  local m, kind, detail = gen.call(srv, function(alias)
    return {"$gen_call", {alias, alias}, request}
  end, t)
  if m then return m[2] end
  if kind == "badarg" then
    error("bad argument #2 to 'call' (" .. detail:gsub("^msg%[3%]", "request") .. ")", 2)
  end
  raise(kind, detail, "call", srv, request, t)
end

function server.cast(srv, msg)
  gen.check_address(srv, 1, "cast")
  local dest = gen.resolve(srv)
  if not dest then return false, "noproc" end
  local ok, sent, why = pcall(erlangen.send, dest, {"$gen_cast", msg})
  if not ok then
    error("bad argument #2 to 'cast' (" .. tostring(sent):gsub("^msg%[2%]", "msg") .. ")", 2)
  end
  return sent, why
end

function server.reply(from, value)
  if not is_from(from) then
    error("bad argument #1 to 'reply' (the 'from' of handle_call expected, got " .. show(from) .. ")", 2)
  end
  local ok, sent, why = pcall(send_reply, from, value)
  if not ok then
    error("bad argument #2 to 'reply' (" .. tostring(sent):gsub("^msg%[2%]", "value") .. ")", 2)
  end
  return sent, why
end

function server.stop(srv, reason, timeout)
  gen.check_address(srv, 1, "stop")
  if erlangen.is_ref(srv) then
    arg_error(1, "stop", "pid, name or {name, node} expected, got an alias, which cannot be monitored")
  end
  if reason == nil then reason = "normal" end
  local t = check_timeout(timeout, nil, 3, "stop")
  local dest = gen.resolve(srv)
  if not dest then fail_with("noproc", nil, "stop", srv) end
  if dest == erlangen.self() then fail_with("calling_self", nil, "stop", srv) end
  local mref = erlangen.monitor(dest)
  local deadline = t and erlangen.now() + t
  local ok, sent, why = pcall(erlangen.send, dest, {"$gen_stop", reason}, t or gen.FOREVER)
  if not ok then
    erlangen.demonitor(mref, true)
    error("bad argument #2 to 'stop' (" .. tostring(sent):gsub("^msg%[2%]", "reason") .. ")", 2)
  end
  if not sent and why == "noconnection" then
    erlangen.demonitor(mref, true)
    fail_with("noconnection", nil, "stop", srv)
  end
  -- false, "full": the wait for room used up the timeout; "noproc": the DOWN follows.
  local m = erlangen.receive(function(m)
    return type(m) == "table" and m[1] == "DOWN" and m[2] == mref
  end, deadline and math.max(0, deadline - erlangen.now()))
  if m == nil then
    erlangen.demonitor(mref, true)
    fail_with("timeout", t, "stop", srv)
  end
  if same(m[4], reason) then return true end
  if m[4] == "noproc" then fail_with("noproc", nil, "stop", srv) end
  if m[4] == "noconnection" and gen.node_of(srv) ~= erlangen.node() then
    fail_with("noconnection", nil, "stop", srv)
  end
  fail_with("exit", m[4], "stop", srv)
end

return server
