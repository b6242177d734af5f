-- spec/helpers.lua — shared helpers for the erlangen busted specs.
--
-- Every wait here is a receive with a timeout (H.TIMEOUT unless told), so a
-- spec fails with a message instead of hanging. Helpers raise plain errors
-- (no luassert) so that a spec failure names what was awaited and what the
-- mailbox held instead.
--
-- Use in a spec file:
--   local H = require "spec.helpers"
--   before_each(H.before); after_each(H.after)
-- H.after kills every process the test left behind (trapping exits while it
-- does so), unregisters names the test gave the busted process, empties the
-- mailbox and resets trap_exit to false.

local erlangen = require "erlangen"

local H = {}

H.TIMEOUT = 5  -- seconds any one wait may take before the spec fails

-- Files and the shell -----------------------------------------------------

-- `s` quoted for sh.
function H.quote(s)
  return "'" .. tostring(s):gsub("'", [['\'']]) .. "'"
end

-- The contents of the file at `path`, or nil if it cannot be read.
function H.read_file(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

-- Printing ----------------------------------------------------------------

-- A short readable rendering of a value for failure messages.
function H.show(v, depth)
  depth = depth or 0
  local t = type(v)
  if t == "string" then
    return string.format("%q", #v > 80 and v:sub(1, 80) .. "..." or v)
  elseif t ~= "table" then
    return tostring(v)
  elseif depth > 3 then
    return "{...}"
  end
  local parts, n = {}, #v
  for i = 1, n do parts[#parts + 1] = H.show(v[i], depth + 1) end
  for k, x in pairs(v) do
    if not (math.type(k) == "integer" and k >= 1 and k <= n) then
      parts[#parts + 1] = "[" .. H.show(k, depth + 1) .. "]=" .. H.show(x, depth + 1)
    end
    if #parts > 20 then parts[#parts + 1] = "..."; break end
  end
  return "{" .. table.concat(parts, ", ") .. "}"
end

-- Matchers for erlangen.receive ------------------------------------------

-- Matches a table message whose first element is `tag`.
function H.tagged(tag)
  return function(m) return type(m) == "table" and m[1] == tag end
end

-- Matches {"EXIT", pid, reason} (from `pid` if given).
function H.is_exit(pid)
  return function(m)
    return type(m) == "table" and m[1] == "EXIT" and (pid == nil or m[2] == pid)
  end
end

-- Matches {"DOWN", ref, pid, reason} for `ref` (any ref if nil).
function H.is_down(ref)
  return function(m)
    return type(m) == "table" and m[1] == "DOWN" and (ref == nil or m[2] == ref)
  end
end

-- Matches one exact non-table value.
function H.equals(v)
  return function(m) return m == v end
end

-- Mailbox ------------------------------------------------------------------

-- The queued messages, oldest first, without removing any.
function H.peek()
  local seen = {}
  erlangen.receive(function(m) seen[#seen + 1] = m; return false end, 0)
  return seen
end

-- Removes and returns every queued message.
function H.drain()
  local got = {}
  while true do
    local m = erlangen.receive(0)
    if m == nil then return got end
    got[#got + 1] = m
  end
end

-- Receives the oldest message matching `match` (any message if nil) within
-- `timeout` seconds; on timeout raises an error naming `what` and listing
-- the mailbox.
function H.recv(match, what, timeout)
  timeout = timeout or H.TIMEOUT
  local m, err
  if match then m, err = erlangen.receive(match, timeout)
  else m, err = erlangen.receive(timeout) end
  if m == nil then
    error(string.format("timed out (%s) after %gs waiting for %s; mailbox holds %s",
      tostring(err), timeout, what or "a message", H.show(H.peek())), 2)
  end
  return m
end

-- Raises if a message matching `match` arrives within `timeout` seconds
-- (default 0.2). Used to show that something did NOT happen.
function H.refute_message(match, what, timeout)
  local m
  if match then m = erlangen.receive(match, timeout or 0.2)
  else m = erlangen.receive(timeout or 0.2) end
  if m ~= nil then
    error(string.format("expected no %s, got %s", what or "message", H.show(m)), 2)
  end
end

-- Waits for the DOWN of `ref` and returns its reason.
function H.await_down(ref, what, timeout)
  local m = H.recv(H.is_down(ref), what or ("DOWN for " .. tostring(ref)), timeout)
  return m[4]
end

-- Monitors `pid`, waits for it to end and returns the exit reason (the DOWN
-- reason, so "noproc" if it had already gone).
function H.exit_reason(pid, timeout)
  return H.await_down(erlangen.monitor(pid), "DOWN of " .. tostring(pid), timeout)
end

-- Waits until `cond()` is truthy, polling, and raises naming `what` after
-- `timeout`. Only for state that no message announces (info().status).
function H.eventually(cond, what, timeout)
  local deadline = erlangen.now() + (timeout or H.TIMEOUT)
  while not cond() do
    if erlangen.now() > deadline then
      error("timed out waiting for " .. (what or "a condition"), 2)
    end
    erlangen.sleep(0.002)
  end
end

-- Values ---------------------------------------------------------------------

-- Calls fn(...) and returns the error value it raised; raises if it did not.
-- Call erlangen functions from a Lua closure WITHOUT `return` so the error
-- names them as the caller wrote them ('send', not 'erlangen.send').
function H.error_of(fn, ...)
  local ok, err = pcall(fn, ...)
  if ok then error("expected an error, but the call succeeded", 2) end
  return err
end

function H.count(list, v)
  local n = 0
  for _, x in ipairs(list) do if x == v then n = n + 1 end end
  return n
end

function H.contains(list, v) return H.count(list, v) > 0 end

-- Builds a chain of `depth` nested tables: {{{...}}}.
function H.nested(depth)
  local t = {}
  for _ = 2, depth do t = {t} end
  return t
end

-- A pid that is certainly dead: spawned, returned, and its DOWN received.
function H.dead_pid()
  local pid, ref = erlangen.spawn_monitor(function() end)
  H.await_down(ref, "the short-lived process to end")
  return pid
end

-- A process that waits until it is told "stop" (or killed). Returns its pid.
function H.idle(opts)
  local fn = function()
    erlangen.receive(function(m) return m == "stop" end)
  end
  if opts then return erlangen.spawn_opt(opts, fn) end
  return erlangen.spawn(fn)
end

-- The OS process ----------------------------------------------------------

local function status_field(name)
  local f = assert(io.open("/proc/self/status"))
  local s = f:read("a"); f:close()
  return tonumber(s:match(name .. ":%s*(%d+)"))
end

-- Resident set size of this OS process in KiB (VmRSS in /proc/self/status).
function H.rss_kb() return status_field("VmRSS") end

-- Number of OS threads in this process (the same count as the entries of
-- /proc/self/task; read from the Threads line of /proc/self/status).
function H.threads() return status_field("Threads") end

-- "asan" or "tsan" when this process runs with a sanitizer runtime (seen in
-- /proc/self/maps), else nil. Sanitizers keep freed memory in quarantine and
-- run several times slower, so stress specs scale down and skip RSS checks.
-- Marks the running test pending under ThreadSanitizer, which delivers
-- asynchronous signals only when the thread next calls into libc: a kill or
-- Ctrl-C aimed at a pure Lua loop (or a raw futex wait) never arrives there.
-- Use as: if H.under_tsan() then return pending("...") end
function H.under_tsan()
  return H.sanitizer() == "tsan"
end

function H.sanitizer()
  if H._sanitizer == nil then
    local f = assert(io.open("/proc/self/maps"))
    local maps = f:read("a"); f:close()
    H._sanitizer = maps:match("lib(asan)") or maps:match("lib(tsan)") or false
  end
  return H._sanitizer or nil
end

-- Test isolation -------------------------------------------------------------

local before_procs, before_names = {}, {}

function H.before()
  before_procs, before_names = {}, {}
  for _, p in ipairs(erlangen.processes()) do before_procs[p] = true end
  for _, n in ipairs(erlangen.registered()) do before_names[n] = true end
end

function H.after()
  local me = erlangen.self()
  erlangen.trap_exit(true)
  -- Kill in rounds until a round finds nothing new: a supervisor that sees a
  -- child killed may start a replacement before its own kill lands, and that
  -- replacement (not in the first round's list) would otherwise live on and
  -- report into the next test. A process's messages arrive before its DOWN,
  -- so once every DOWN is in, the drain below takes all they sent.
  local deadline = erlangen.now() + H.TIMEOUT
  repeat
    local refs, found = {}, false
    for _, p in ipairs(erlangen.processes()) do
      if p ~= me and not before_procs[p] then
        refs[erlangen.monitor(p)] = p
        erlangen.exit(p, "kill")
        found = true
      end
    end
    for ref, p in pairs(refs) do
      local left = math.max(0, deadline - erlangen.now())
      if not erlangen.receive(H.is_down(ref), left) then
        io.stderr:write("spec/helpers: ", tostring(p), " outlived exit(pid, \"kill\")\n")
      end
    end
  until not found or erlangen.now() >= deadline
  for _, n in ipairs(erlangen.registered()) do
    if not before_names[n] and erlangen.whereis(n) == me then erlangen.unregister(n) end
  end
  H.drain()
  erlangen.trap_exit(false)
end

return H
