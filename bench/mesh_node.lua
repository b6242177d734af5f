-- One node of the mesh bench (bench/mesh.sh starts N of them).
--
-- Usage: erlangen bench/mesh_node.lua DIR INDEX N TICK KEY_FILE THREAD_LIMIT
-- Starts as mesh<INDEX>@127.0.0.1 on a free loopback port without the port
-- mapper, writes "OSPID PORT" to DIR/INDEX.up, waits for DIR/go (the
-- addresses of all N nodes, name@127.0.0.1:port, one a line, in index
-- order), connects to every other node (starting at INDEX+1, so the
-- connects spread over the nodes), and writes its progress to DIR/INDEX.state
-- as "PHASE LINKS FAILED UPTIME": PHASE is "connecting", "meshed" (nodes()
-- lists all N-1 others), "partial" (it gave up waiting) or "limit" (the
-- host's thread count, read from /proc/loadavg before each connect, reached
-- THREAD_LIMIT, so it made no more connects); UPTIME is /proc/uptime when
-- the line was written (the clock mesh.sh reads too).
-- Then it idles in one receive until it is killed or LIFE seconds pass.
-- Every wait is bounded.
local E = require "erlangen"

local dir, index, n, tick, key = arg[1], tonumber(arg[2]), tonumber(arg[3]), tonumber(arg[4]), arg[5]
local thread_limit = tonumber(arg[6])
assert(dir and index and n and tick and key and thread_limit,
       "usage: mesh_node.lua DIR INDEX N TICK KEY_FILE THREAD_LIMIT")

local HOST = "127.0.0.1"
local GO_WAIT = 600     -- seconds to wait for DIR/go
local MESH_WAIT = 600   -- seconds to wait for nodes() to list every other node
local ROUNDS = 3        -- passes over the nodes still missing
local SETTLE = 10       -- seconds after a pass for the others' connects to come in
local LIFE = 3600       -- seconds the node lives at most

local function uptime()
  local f = assert(io.open("/proc/uptime"))
  local t = f:read("n")
  f:close()
  return t
end

-- The number of threads on the host (the fourth field of /proc/loadavg,
-- "running/total").
local function host_threads()
  local f = assert(io.open("/proc/loadavg"))
  local s = f:read("a")
  f:close()
  return tonumber(s:match("%d+/(%d+)"))
end

local function os_pid()
  local f = assert(io.open("/proc/self/stat"))
  local pid = f:read("n")
  f:close()
  return pid
end

-- Writes `text` to DIR/NAME through a rename, so a reader sees all or nothing.
local function put(name, text)
  local tmp = dir .. "/." .. name
  local f = assert(io.open(tmp, "w"))
  f:write(text)
  f:close()
  assert(os.rename(tmp, dir .. "/" .. name))
end

local failed = 0
local function state(phase, links)
  put(index .. ".state", string.format("%s %d %d %.2f\n", phase, links, failed, uptime()))
end

local _, port = E.start_node{name = "mesh" .. index .. "@" .. HOST, listen = HOST .. ":0",
                             key_file = key, tick = tick, port_mapper = false}
put(index .. ".up", os_pid() .. " " .. port .. "\n")

local addrs
local deadline = E.now() + GO_WAIT
while not addrs do
  local f = io.open(dir .. "/go")
  if f then
    addrs = {}
    for line in f:lines() do addrs[#addrs + 1] = line end
    f:close()
  elseif E.now() > deadline then
    os.exit(2)
  else
    E.sleep(0.02)
  end
end
assert(#addrs == n, "DIR/go lists " .. #addrs .. " nodes, not " .. n)

local function linked()
  local set = {}
  for _, name in ipairs(E.nodes()) do set[name] = true end
  return set
end

state("connecting", 0)
local meshed, limited = false, false
deadline = E.now() + MESH_WAIT
for _ = 1, ROUNDS do
  local have = linked()
  for k = 1, n - 1 do
    local addr = addrs[(index + k) % n + 1]
    if host_threads() >= thread_limit then limited = true break end
    if not have[addr:match("^[^:]+")] then
      if not E.connect(addr) then failed = failed + 1 end
      if k % 10 == 0 then state("connecting", #E.nodes()) end
    end
  end
  if limited then break end
  -- the others' connects to this node may still be coming in
  local settle = math.min(deadline, E.now() + SETTLE)
  while #E.nodes() < n - 1 and E.now() < settle do
    state("connecting", #E.nodes())
    E.sleep(0.1)
  end
  if #E.nodes() >= n - 1 then meshed = true break end
end
state(meshed and "meshed" or limited and "limit" or "partial", #E.nodes())
E.receive(function() return false end, LIFE)
os.exit(0)
