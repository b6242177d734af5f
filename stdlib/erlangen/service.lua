-- erlangen.service — starting an on-demand, registered service of the
-- stdlib (erlangen.log's logger, erlangen.timer's timer service) once under
-- its name. Asking it something is erlangen.gen's call.
-- Internal to the stdlib; its interface may change.

local erlangen = require "erlangen"

local service = {}

-- The pid of the process registered as `name`, spawned with
-- spawn_opt(opts + {name = name, parent = false}, body) if nobody has the
-- name: a service is the node's, a root of the spawn tree, not a child of
-- whoever used it first. When two callers race to start it, the loser's
-- spawn_opt fails on the name and it takes the winner's pid. Raises
-- `failure` if it still cannot get one.
function service.ensure(name, opts, body, failure)
  local o = {name = name, parent = false}
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

return service
