-- erlangen.service — the two pieces every on-demand, registered service of
-- the stdlib needs (erlangen.log's logger, erlangen.timer's timer service):
-- starting it once under its name, and asking it something synchronously.
-- Internal to the stdlib; its interface may change.

local erlangen = require "erlangen"

local service = {}

-- The pid of the process registered as `name`, spawned with
-- spawn_opt(opts + {name = name}, body) if nobody has the name. When two
-- callers race to start it, the loser's spawn_opt fails on the name and it
-- takes the winner's pid. Raises `failure` if it still cannot get one.
function service.ensure(name, opts, body, failure)
  local o = {name = name}
  for k, v in pairs(opts) do o[k] = v end
  for _ = 1, 3 do
    local pid = erlangen.whereis(name)
    if pid then return pid end
    local ok, res = pcall(erlangen.spawn_opt, o, body)
    if ok then return res end
    if not tostring(res):find("already registered", 1, true) then error(res, 0) end
  end
  error(failure, 0)
end

-- Sends msg_of(alias) to `pid` (waiting up to `timeout` for room) and waits
-- up to `timeout` for the answer {alias, ...}. The answer comes to a fresh
-- alias, so one that arrives after the timeout never reaches the mailbox.
-- Returns the answer table, or nil and whether `pid` is gone (it died before
-- answering, or was dying when it was found); nil, false is a timeout.
function service.ask(pid, msg_of, timeout)
  local mref = erlangen.monitor(pid)
  local alias = erlangen.alias()
  local m
  if erlangen.send(pid, msg_of(alias), timeout) then
    m = erlangen.receive(function(x)
      return type(x) == "table" and (x[1] == alias or (x[1] == "DOWN" and x[2] == mref))
    end, timeout)
  end
  erlangen.unalias(alias)
  erlangen.demonitor(mref, true)
  if m and m[1] == alias then return m end
  return nil, m ~= nil or not erlangen.is_alive(pid)
end

return service
