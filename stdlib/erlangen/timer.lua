-- erlangen.timer — send_after, send_interval, cancel and sleep over one
-- timer service process.
--
-- The service is started on demand, unlinked, and registered as
-- "erlangen.timer". It keeps every pending timer in one binary heap keyed by
-- (deadline, sequence), so timers with equal deadlines fire in creation order,
-- and waits in `erlangen.receive` until the earliest deadline. A timer fires
-- only once `erlangen.now() >= deadline`: late is possible, early never.
-- Pending timers cost a heap entry each, not a thread.
local erlangen = require "erlangen"
local gen = require "erlangen.gen"
local svc = require "erlangen.service"

local timer = {}

local NAME = "erlangen.timer"
local MAILBOX = 8192          -- the service's mailbox: requests queue here
local REQUEST_WAIT = 5        -- seconds a caller waits for room in that mailbox
local CALL_TIMEOUT = 5        -- seconds a synchronous request waits for its answer
local DELIVERY_WAIT = 0.01    -- seconds the service waits for room in a destination
local BATCH = 256             -- timers fired before the service looks at its mailbox

-- Values ----------------------------------------------------------------------

local typename = erlangen.type

local function check_seconds(fname, s, positive)
  if type(s) ~= "number" or s ~= s or s < 0 or s == math.huge or (positive and s == 0) then
    error(string.format("bad argument #1 to '%s' (seconds must be a %s finite number, got %s)",
      fname, positive and "positive" or "non-negative",
      type(s) == "number" and tostring(s) or typename(s)), 3)
  end
end

local function check_dest(fname, dest)
  gen.check_address(dest, 2, fname, 3)
end

-- The service -------------------------------------------------------------------

-- The body of the service process. Everything it uses is local to it, so the
-- function travels to its new process without dragging module state along.
--
-- A timer is a table {deadline=, seq=, tref=, dest=, msg=, interval=, mref=, pos=}
-- where `pos` is its index in `heap` (so cancel removes it in O(log n)).
-- Requests:
--   {"$timer", "add", tref, deadline, interval|false, dest, msg, owner}
--   {"$timer", "cancel", reply_to, tref}  -> {reply_to, seconds_left|false}
--   {"$timer", "stats", reply_to}         -> {reply_to, {pending=, dropped=}}
local function service()
  erlangen.set_label("timer")
  local heap, n = {}, 0          -- heap[1..n], the earliest deadline at heap[1]
  local by_tref = {}             -- tref -> timer
  local by_mref = {}             -- monitor ref -> timer (interval timers only)
  local seq, dropped = 0, 0

  local function less(a, b)
    return a.deadline < b.deadline or (a.deadline == b.deadline and a.seq < b.seq)
  end
  local function place(t, i) heap[i] = t; t.pos = i end
  local function up(i)
    local t = heap[i]
    while i > 1 do
      local p = i // 2
      if not less(t, heap[p]) then break end
      place(heap[p], i); i = p
    end
    place(t, i)
  end
  local function down(i)
    local t = heap[i]
    while true do
      local c = 2 * i
      if c > n then break end
      if c < n and less(heap[c + 1], heap[c]) then c = c + 1 end
      if not less(heap[c], t) then break end
      place(heap[c], i); i = c
    end
    place(t, i)
  end
  local function push(t)
    seq = seq + 1
    t.seq = seq
    n = n + 1
    place(t, n)
    up(n)
  end
  local function remove(t)          -- takes t out of the heap
    local i, last = t.pos, heap[n]
    heap[n] = nil; n = n - 1
    t.pos = nil
    if i <= n then
      place(last, i)
      if i > 1 and less(last, heap[i // 2]) then up(i) else down(i) end
    end
  end
  local function forget(t)          -- the timer is gone for good
    by_tref[t.tref] = nil
    if t.mref then by_mref[t.mref] = nil; erlangen.demonitor(t.mref, true) end
  end

  local function fire(t)
    remove(t)
    local ok, sent, why = pcall(erlangen.send, t.dest, t.msg, DELIVERY_WAIT)
    if not ok or not sent then
      if ok and why == "noproc" and t.interval and (erlangen.is_pid(t.dest) or erlangen.is_ref(t.dest)) then
        forget(t)                   -- its destination is gone: so is the interval
        return
      end
      dropped = dropped + 1
    end
    if t.interval then
      t.deadline = t.deadline + t.interval   -- from the deadline, not from now: no drift
      push(t)
    else
      forget(t)
    end
  end

  local function reply(to, value)
    erlangen.send(to, {to, value}, DELIVERY_WAIT)
  end

  local function handle(m)
    if type(m) ~= "table" then return end
    if m[1] == "DOWN" then
      local t = by_mref[m[2]]
      if t then forget(t); remove(t) end
      return
    end
    if m[1] ~= "$timer" then return end
    local op = m[2]
    if op == "add" then
      local t = {tref = m[3], deadline = m[4], interval = m[5] or nil, dest = m[6], msg = m[7]}
      if by_tref[t.tref] then return end
      if t.interval then
        -- Tied to the destination process, or to the caller when the
        -- destination is a name or an alias (as OTP's interval timers are).
        t.mref = erlangen.monitor(erlangen.is_pid(t.dest) and t.dest or m[8])
        by_mref[t.mref] = t
      end
      by_tref[t.tref] = t
      push(t)
    elseif op == "cancel" then
      local t = by_tref[m[4]]
      if not t then return reply(m[3], false) end
      local left = math.max(0, t.deadline - erlangen.now())
      forget(t); remove(t)
      reply(m[3], left)
    elseif op == "stats" then
      reply(m[3], {pending = n, dropped = dropped})
    end
  end

  while true do
    local now, fired = erlangen.now(), 0
    while n > 0 and heap[1].deadline <= now and fired < BATCH do
      fire(heap[1])
      fired = fired + 1
    end
    local wait
    if fired >= BATCH then wait = 0
    elseif n > 0 then wait = math.max(0, heap[1].deadline - erlangen.now()) end
    local m = erlangen.receive(wait)
    if m ~= nil then handle(m) end
  end
end

-- Talking to the service ----------------------------------------------------------

-- The service's pid, started if needed.
local function ensure()
  return svc.ensure(NAME, {mailbox = MAILBOX}, service, "erlangen.timer: cannot start the timer service")
end

-- Sends a request, starting the service if needed. A pid found by whereis
-- may belong to a service that is dying: its "noproc" makes us start again.
local function request(msg, fname)
  for _ = 1, 3 do
    local ok, sent, why = pcall(erlangen.send, ensure(), msg, REQUEST_WAIT)
    if not ok then   -- only the message can be unsendable: it is argument #3
      local e = tostring(sent):gsub("^msg%[7%]", "msg")
      error(string.format("bad argument #3 to '%s' (%s)", fname, e), 3)
    end
    if sent then return end
    if why ~= "noproc" then
      error(string.format("%s: the timer service's mailbox stayed full for %gs", fname, REQUEST_WAIT), 3)
    end
  end
  error(fname .. ": cannot reach the timer service", 3)
end

-- A synchronous request (gen.call). Returns the answer; `none` when no
-- service is running and `start` is false.
local function call(op, arg, start, none)
  for _ = 1, 2 do
    local pid = start and ensure() or erlangen.whereis(NAME)
    if not pid then return none end
    local m, kind = gen.call(pid, function(alias) return {"$timer", op, alias, arg} end, CALL_TIMEOUT)
    if m then return m[2] end
    if kind == "timeout" then
      error("erlangen.timer: the timer service did not answer within " .. CALL_TIMEOUT .. "s", 3)
    end
    -- It died (or was dying) before it answered: a new one has no such timer.
  end
  return none
end

-- The API ----------------------------------------------------------------------------

-- Sends `msg` to `dest` (a pid of any node, an alias, a registered name or
-- {name, node}) once `seconds` have
-- passed. With opts.abs, `seconds` is instead the deadline itself, a time on
-- the `erlangen.now()` clock (OTP's {abs, true}); one in the past fires at
-- once. Returns a tref for `cancel`. Does not wait for the service.
function timer.send_after(seconds, dest, msg, opts)
  local abs = false
  if opts ~= nil then
    if type(opts) ~= "table" then
      error("bad argument #4 to 'send_after' (table of options expected, got " .. typename(opts) .. ")", 2)
    end
    for k, v in pairs(opts) do
      if k ~= "abs" then error("send_after: unknown option '" .. tostring(k) .. "'", 2) end
      if type(v) ~= "boolean" then error("send_after: option 'abs' must be a boolean", 2) end
      abs = v
    end
  end
  local deadline
  if abs then
    if type(seconds) ~= "number" or seconds ~= seconds or math.abs(seconds) == math.huge then
      error("bad argument #1 to 'send_after' (deadline must be a finite number, got " ..
        (type(seconds) == "number" and tostring(seconds) or typename(seconds)) .. ")", 2)
    end
    deadline = seconds
  else
    check_seconds("send_after", seconds)
    deadline = erlangen.now() + seconds
  end
  check_dest("send_after", dest)
  if msg == nil then error("bad argument #3 to 'send_after' (message expected, got nil)", 2) end
  local tref = erlangen.ref()
  request({"$timer", "add", tref, deadline, false, dest, msg, erlangen.self()}, "send_after")
  return tref
end

-- Sends `msg` to `dest` every `seconds`, until cancelled or until the process
-- it is tied to ends (`dest` when it is a pid, else the caller).
function timer.send_interval(seconds, dest, msg)
  check_seconds("send_interval", seconds, true)
  check_dest("send_interval", dest)
  if msg == nil then error("bad argument #3 to 'send_interval' (message expected, got nil)", 2) end
  local tref = erlangen.ref()
  request({"$timer", "add", tref, erlangen.now() + seconds, seconds, dest, msg, erlangen.self()},
    "send_interval")
  return tref
end

-- Cancels a timer. Returns the seconds that were left (0 if it was due but
-- not sent yet), or false if it had fired already or is unknown.
function timer.cancel(tref)
  if not erlangen.is_ref(tref) then
    error("bad argument #1 to 'cancel' (tref expected, got " .. typename(tref) .. ")", 2)
  end
  return (call("cancel", tref, false, false))
end

-- Suspends the caller for `seconds`. Messages do not end the wait.
function timer.sleep(seconds)
  check_seconds("sleep", seconds)
  local deadline = erlangen.now() + seconds
  repeat   -- erlangen.sleep takes at most 1e9 s at a time
    erlangen.sleep(math.max(0, math.min(deadline - erlangen.now(), 1e8)))
  until erlangen.now() >= deadline
end

-- {pending = timers waiting, dropped = messages the service could not deliver
-- because the destination's mailbox stayed full}. Starts the service if needed.
function timer.stats()
  return (call("stats", nil, true, {pending = 0, dropped = 0}))
end

-- The service's pid, started if needed.
function timer.service()
  return ensure()
end

return timer
