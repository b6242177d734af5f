-- examples/dht/demo.lua — one step of the demo, run by demo.sh as a node of
-- the cluster: puts or reads the keys through the DHT processes and prints
-- one line.
--
-- usage: erlangen demo.lua KEY_FILE RUN KEYS STEP LABEL LIVE... [-- DEAD...]
--   STEP "put": puts KEYS keys, then reads them back; "get": reads them.
--   LIVE, DEAD: the addresses of the DHT nodes that run, and of those
--   killed. Key i holds "value i of RUN", so a value from another run or
--   key is wrong.
-- Before it reads, it waits (at most WAIT seconds) until repair has run:
-- every live node has dropped the dead ones from its routing table and has
-- no replication pass running or due. Then it asks each live node which
-- keys it holds, and reads every key with dht_client.get. The line:
--   LABEL: readable X/KEYS, wrong W; Y keys kept a live replica, each on at least M live nodes
-- X counts the keys read back with their value, W those read with another
-- value, Y the keys some live node holds, M the fewest live holders of one.
local erlangen = require "erlangen"

local dir = (arg and arg[0] or ""):match("^(.*)/[^/]*$") or "."
package.path = dir .. "/?.lua;" .. package.path
local dht_client = require "dht_client"

local WORKERS = 16   -- client processes reading or writing at once
local TIMEOUT = 20   -- seconds one put or get may take
local WAIT = 120     -- seconds to wait for repair to have run

local key_file, run, nkeys, step, label = arg[1], arg[2], tonumber(arg[3]), arg[4], arg[5]
local live, dead, into = {}, {}, nil
into = live
for i = 6, #arg do
  if arg[i] == "--" then into = dead else into[#into + 1] = arg[i] end
end
if not (key_file and run and nkeys and (step == "put" or step == "get") and label and #live > 0) then
  io.stderr:write("usage: demo.lua KEY_FILE RUN KEYS put|get LABEL LIVE... [-- DEAD...]\n")
  os.exit(2)
end

erlangen.start_node{name = string.format("demo%d_%s@127.0.0.1", erlangen.system_time() * 1000 % 1e9 // 1, step),
                    listen = "127.0.0.1:0", key_file = key_file, port_mapper = false}

local function key_of(i) return string.format("key-%04d", i) end
local function value_of(i) return string.format("value %d of %s", i, run) end

-- Runs op(i, dest) for every key i on WORKERS processes, key i through live
-- node i mod #live. Returns {[i] = the result or {error = message}}.
local function each_key(op)
  local me = erlangen.self()
  for w = 1, WORKERS do
    erlangen.spawn(function()
      for i = w, nkeys, WORKERS do
        local dest = {dht_client.NAME, live[i % #live + 1]}
        local ok, r = pcall(op, i, dest)
        erlangen.send(me, {"result", i, ok and {r} or {error = tostring(r)}}, 10)
      end
    end)
  end
  local results = {}
  for _ = 1, nkeys do
    local m = erlangen.receive(function(m) return type(m) == "table" and m[1] == "result" end,
                               TIMEOUT * nkeys / WORKERS + 10)
    if not m then break end
    results[m[2]] = m[3]
  end
  return results
end

-- The status of every live node, or nil and why.
local function statuses()
  local all = {}
  for i, addr in ipairs(live) do
    local ok, st = pcall(dht_client.status, {dht_client.NAME, addr}, 10)
    if not ok then return nil, st end
    all[i] = st
  end
  return all
end

-- Waits until repair has run (see the top); returns the statuses, and
-- whether it ran in time.
local function settled()
  local is_dead = {}
  for _, a in ipairs(dead) do is_dead[a] = true end
  local deadline = erlangen.now() + WAIT
  local quiet = 0   -- consecutive rounds with every node settled
  while true do
    local all = statuses()
    local ok = all ~= nil
    for _, st in ipairs(all or {}) do
      if not st.idle then ok = false end
      for _, c in ipairs(st.contacts) do if is_dead[c] then ok = false end end
    end
    quiet = ok and quiet + 1 or 0
    if quiet >= 2 then return all, true end
    if erlangen.now() > deadline then return all or {}, false end
    erlangen.sleep(0.2)
  end
end

if step == "put" then
  local results = each_key(function(i, dest) return dht_client.put(dest, key_of(i), value_of(i), TIMEOUT) end)
  for i = 1, nkeys do
    local r = results[i]
    if not r or r.error then io.stderr:write("put ", key_of(i), ": ", tostring(r and r.error or "no result"), "\n") end
  end
end

local all, in_time = settled()
local holders = {}
for _, st in ipairs(all) do
  for _, k in ipairs(st.keys) do holders[k] = (holders[k] or 0) + 1 end
end
local kept, fewest = 0, math.huge
for i = 1, nkeys do
  local n = holders[key_of(i)]
  if n then kept, fewest = kept + 1, math.min(fewest, n) end
end

local results = each_key(function(i, dest) return dht_client.get(dest, key_of(i), TIMEOUT) end)
local readable, wrong, errors = 0, 0, 0
for i = 1, nkeys do
  local r = results[i]
  if not r or r.error then
    errors = errors + 1
    if errors <= 5 then io.stderr:write("get ", key_of(i), ": ", tostring(r and r.error or "no result"), "\n") end
  elseif r[1] == value_of(i) then readable = readable + 1
  elseif r[1] ~= nil then wrong = wrong + 1 end
end
print(string.format("%s: readable %d/%d, wrong %d; %d keys kept a live replica, each on at least %d live nodes%s%s",
  label, readable, nkeys, wrong, kept, kept > 0 and fewest or 0,
  errors > 0 and string.format(" (%d reads failed)", errors) or "",
  in_time and "" or " (repair had not finished)"))
os.exit(0)
