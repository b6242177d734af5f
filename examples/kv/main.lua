-- examples/kv/main.lua — a supervised TCP key-value service.
--
-- usage: erlangen examples/kv/main.lua [port]     (default: $KV_PORT, else 7070)
-- Listens on 127.0.0.1 ($KV_HOST to change it); logs go to stderr, or to the
-- file $KV_LOG_FILE. See README.md for the protocol.
local erlangen = require "erlangen"

-- The folder of this script, absolute, so that every process finds the modules.
local dir = (arg and arg[0] or ""):match("^(.*)/[^/]*$") or "."
if dir:sub(1, 1) ~= "/" and os.getenv("PWD") then dir = os.getenv("PWD") .. "/" .. dir end
package.path = dir .. "/?.lua;" .. package.path
local kv_boot = require "kv_boot"
kv_boot.dir = dir
local kv_sup = require "kv_sup"

local port = tonumber(arg[1] or os.getenv("KV_PORT") or 7070)
if not port or port ~= math.floor(port) or port < 1 or port > 65535 then
  io.stderr:write("kv: port must be an integer from 1 to 65535, got ", tostring(arg[1] or os.getenv("KV_PORT")), "\n")
  os.exit(2)
end

erlangen.trap_exit(true)
local sup, err = kv_sup.start_link{port = port, host = os.getenv("KV_HOST") or "127.0.0.1",
                                   log_file = os.getenv("KV_LOG_FILE")}
if not sup then
  io.stderr:write("kv: the service did not start: ", tostring(err[2] and err[2][3] or err), "\n")
  os.exit(1)
end
print("kv: listening on port " .. port)
erlangen.tree{root = sup, ascii = true}

-- The main process only waits: the supervisors do the work. If the top
-- supervisor gives up (too many restarts), the service exits with status 1.
-- Ctrl-C interrupts the wait: the tree is then stopped in order (children
-- right to left, the logger last) and the service exits with status 0.
local ok, why = pcall(function()
  while true do
    local m = erlangen.receive()
    if type(m) == "table" and m[1] == "EXIT" and m[2] == sup then
      io.stderr:write("kv: the top supervisor exited: ", tostring(m[3]), "\n")
      os.exit(1)
    end
  end
end)
io.stderr:write("kv: stopping (", tostring(why), ")\n")
require("erlangen.supervisor").stop(sup, "shutdown", 10)
os.exit(0)
