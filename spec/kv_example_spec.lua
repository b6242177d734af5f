-- examples/kv end to end: the service runs as its own OS process
-- (`$ERLANGEN_BIN examples/kv/main.lua <port>`), and clients talk to it over
-- TCP on loopback with luasocket. The tests share one service and run in
-- file order: each leaves it running and whole for the next.
local erlangen = require "erlangen"
local socket = require "socket"
local H = require "spec.helpers"

local bin = os.getenv("ERLANGEN_BIN") or "build/erlangen"
-- Sanitizer builds start and run several times slower.
local SLOW = H.sanitizer() and 4 or 1
local WAIT = 10 * SLOW      -- seconds any one wait on the service may take
local LIFETIME = 300        -- seconds: `timeout` ends a service the spec lost

local function sh(cmd)
  local p = io.popen(cmd)
  local out = p:read("a")
  p:close()
  return out
end

local function read_file(path) return H.read_file(path) or "" end

-- A port that was free a moment ago: bind port 0, read it, close.
local function free_port()
  local s = assert(socket.bind("127.0.0.1", 0))
  local _, port = s:getsockname()
  s:close()
  return tonumber(port)
end

-- Polls cond() until it returns a truthy value, which it returns; raises
-- naming `what` (and the service's log) after `timeout` seconds. Only for
-- what no message can announce: the state of another OS process.
local function poll(cond, what, svc, timeout)
  local deadline = erlangen.now() + (timeout or WAIT)
  while true do
    local v = cond()
    if v then return v end
    if erlangen.now() > deadline then
      error("timed out waiting for " .. what .. (svc and ("; service log:\n" .. read_file(svc.log)) or ""), 2)
    end
    erlangen.sleep(0.02)
  end
end

-- A client connection: c:req(line) sends a line and returns the reply line
-- (nil and luasocket's error when the connection is gone).
local Client = {}
Client.__index = Client

local function connect(port)
  local c = socket.tcp()
  c:settimeout(WAIT)
  local ok, err = c:connect("127.0.0.1", port)
  if not ok then c:close(); return nil, err end
  return setmetatable({sock = c}, Client)
end

function Client:req(line)
  local ok, err = self.sock:send(line .. "\n")
  if not ok then return nil, err end
  return self:line()
end

-- The next line from the service, or nil and luasocket's error.
function Client:line()
  local l, err = self.sock:receive("*l")
  return l, err
end

-- The lines of a multi-line reply, up to "END".
function Client:req_lines(line)
  local lines = {}
  local l, err = self:req(line)
  while l and l ~= "END" do
    lines[#lines + 1] = l
    l, err = self:line()
  end
  if not l then error("connection lost in a reply to " .. line .. ": " .. tostring(err), 2) end
  return lines
end

function Client:close() self.sock:close() end

-- The service: started as `timeout LIFETIME erlangen main.lua port`, run by
-- io.popen's shell, which `exec`s it, so the popen child is that process and
-- p:close() reaps it.
local function start_service()
  local port = free_port()
  local svc = {port = port, log = os.tmpname(), out = os.tmpname()}
  svc.proc = io.popen(string.format(
    "echo $$; exec timeout -k 5 %d %s examples/kv/main.lua %d >%s 2>%s",
    LIFETIME, bin, port, svc.out, svc.log))
  svc.pid = assert(tonumber(svc.proc:read("l")), "no pid from the service's shell")
  svc.erlangen_pid = poll(function() return tonumber(sh("pgrep -P " .. svc.pid)) end,
                          "the erlangen process under timeout", svc)
  poll(function()
    local c = connect(port)
    if c then c:close() end
    return c ~= nil
  end, "the service to accept connections on port " .. port, svc)
  return svc
end

local function alive(ospid)
  local f = io.open("/proc/" .. ospid .. "/stat")
  if f then f:close() end
  return f ~= nil
end

local function stop_service(svc)
  if not svc or svc.stopped then return end
  svc.stopped = true
  sh("kill -TERM " .. svc.pid .. " 2>/dev/null")
  svc.proc:close()  -- waits for `timeout`, which waits for erlangen
end

-- The pid (as text) that WHEREIS gives for `name`, or nil.
local function whereis(c, name)
  local r = assert(c:req("WHEREIS " .. name))
  return r:match("^PID (<[%d.]+>)$")
end

describe("examples/kv, a supervised TCP key-value service", function()
  local svc

  setup(function() svc = start_service() end)
  teardown(function()
    stop_service(svc)
    if svc then os.remove(svc.log); os.remove(svc.out) end
  end)

  it("prints its supervision tree when it starts", function()
    -- It listens before main.lua prints: wait for the tree's last line.
    local out = poll(function()
      local t = read_file(svc.out)
      return t:find("kv_acceptor <", 1, true) and t
    end, "the tree on the service's stdout", svc)
    assert.are.equal("kv: listening on port " .. svc.port, out:match("^[^\n]*"))
    for _, name in ipairs{"kv_sup", "erlangen.log", "kv_store", "kv_conn_sup", "kv_acceptor"} do
      assert.truthy(out:find(name .. " <", 1, true), name .. " is missing from:\n" .. out)
    end
  end)

  it("answers PUT, GET, DEL and KEYS", function()
    local c = assert(connect(svc.port))
    assert.are.equal("PONG", c:req("PING"))
    assert.are.equal("OK", c:req("PUT greeting hello, world"))
    assert.are.equal("OK", c:req("PUT answer 42"))
    assert.are.equal("VALUE hello, world", c:req("GET greeting"))
    assert.are.equal("KEYS answer greeting", c:req("KEYS"))
    assert.are.equal("OK", c:req("DEL answer"))
    assert.are.equal("NOT_FOUND", c:req("GET answer"))
    assert.are.equal("NOT_FOUND", c:req("DEL answer"))
    assert.are.equal("KEYS greeting", c:req("KEYS"))
    assert.are.equal("ERROR unknown command FROB", c:req("FROB x"))
    assert.are.equal("ERROR usage: PUT key value", c:req("PUT lonely"))
    assert.are.equal("BYE", c:req("QUIT"))
    assert.are.same({nil, "closed"}, {c:line()})
    c:close()
  end)

  it("takes a line of 4096 bytes and refuses a longer one, closing the connection", function()
    local c = assert(connect(svc.port))
    local put = "PUT long "
    assert.are.equal("OK", c:req(put .. string.rep("v", 4096 - #put)))
    assert.are.equal("VALUE " .. string.rep("v", 4096 - #put), c:req("GET long"))
    for _, n in ipairs{4097, 5000, 20000} do
      local d = assert(connect(svc.port))
      assert.are.equal("ERROR line too long", d:req(put .. string.rep("w", n - #put)), n .. " bytes")
      assert.are.same({nil, "closed"}, {d:line()})
      d:close()
    end
    assert.are.equal("OK", c:req("DEL long"))
    c:close()
  end)

  it("gives each connection its own worker under the pool, shown by TREE", function()
    local a, b = assert(connect(svc.port)), assert(connect(svc.port))
    local pa, pb = a:req("SELF"):match("^PID (.*)$"), b:req("SELF"):match("^PID (.*)$")
    assert.are_not.equal(pa, pb)
    -- The pool is kv_conn_sup's first child (it has no name); its workers
    -- are drawn one level below it.
    local tree = "\n" .. table.concat(a:req_lines("TREE"), "\n") .. "\n"
    assert.truthy(tree:find("\n`%- kv_conn_sup <[%d.]+> %[supervisor%][^\n]*\n   |%- <[%d.]+> %[supervisor%]"), tree)
    for _, p in ipairs{pa, pb} do
      assert.truthy(tree:find("\n   |  [|`]%- " .. p:gsub("%p", "%%%0") .. " %[connection%]"), tree)
    end
    a:close(); b:close()
  end)

  it("drops only the connection of a crashed worker; the store keeps its data", function()
    local a, b = assert(connect(svc.port)), assert(connect(svc.port))
    assert.are.equal("OK", a:req("PUT kept yes"))
    local store = whereis(a, "kv_store")
    local worker = a:req("SELF"):match("^PID (.*)$")
    -- CRASH makes the worker raise: no reply, the connection closes.
    assert.are.same({nil, "closed"}, {a:req("CRASH")})
    a:close()
    assert.are.equal("PONG", b:req("PING"))
    local a2 = assert(connect(svc.port))
    assert.are_not.equal("PID " .. worker, a2:req("SELF"))
    assert.are.equal("VALUE yes", a2:req("GET kept"))
    assert.are.equal(store, whereis(a2, "kv_store"))
    -- The worker is temporary: it is not restarted, and the pool forgets it.
    local tree = table.concat(a2:req_lines("TREE"), "\n")
    assert.falsy(tree:find(worker, 1, true), tree)
    a2:close(); b:close()
  end)

  it("closes the connection of a worker killed with KILL <pid>", function()
    local a, b = assert(connect(svc.port)), assert(connect(svc.port))
    local worker = a:req("SELF"):match("^PID (.*)$")
    assert.are.equal("OK " .. worker, b:req("KILL " .. worker))
    assert.are.same({nil, "closed"}, {a:line()})
    assert.are.equal("PONG", b:req("PING"))
    a:close(); b:close()
  end)

  it("restarts the store server when it is killed, empty (its data is lost)", function()
    local c = assert(connect(svc.port))
    assert.are.equal("OK", c:req("PUT doomed 1"))
    local old = whereis(c, "kv_store")
    assert.are.equal("OK " .. old, c:req("KILL kv_store"))
    -- The name is free before the supervisor hears of the exit; the new
    -- server registers it again.
    local new = poll(function()
      local p = whereis(c, "kv_store")
      return p ~= old and p
    end, "a new kv_store", svc)
    assert.are_not.equal(old, new)
    -- The table lived only in the old server's state.
    assert.are.equal("NOT_FOUND", c:req("GET doomed"))
    assert.are.equal("OK", c:req("PUT reborn 1"))
    assert.are.equal("VALUE 1", c:req("GET reborn"))
    -- The connection worker was not touched by the store's restart.
    assert.are.equal("PONG", c:req("PING"))
    c:close()
  end)

  it("restarts the acceptor when it is killed; open connections stay", function()
    local c = assert(connect(svc.port))
    local old = whereis(c, "kv_acceptor")
    assert.are.equal("OK " .. old, c:req("KILL kv_acceptor"))
    poll(function()
      local p = whereis(c, "kv_acceptor")
      return p and p ~= old
    end, "a new kv_acceptor", svc)
    assert.are.equal("PONG", c:req("PING"))
    local d = poll(function() return connect(svc.port) end, "a connection to the new acceptor", svc)
    assert.are.equal("VALUE 1", d:req("GET reborn"))
    c:close(); d:close()
  end)

  it("restarts the whole connection side when kv_conn_sup is killed; the store keeps its data", function()
    local a, b = assert(connect(svc.port)), assert(connect(svc.port))
    assert.are.equal("OK", a:req("PUT survivor yes"))
    local sup, acceptor = whereis(a, "kv_conn_sup"), whereis(a, "kv_acceptor")
    assert.are.equal("OK " .. sup, b:req("KILL kv_conn_sup"))
    -- Every worker is linked to the old pool, which is linked to the old
    -- kv_conn_sup: both connections close.
    assert.are.same({nil, "closed"}, {a:line()})
    assert.are.same({nil, "closed"}, {b:line()})
    a:close(); b:close()
    -- Until the old acceptor's accept() returns, a connection may still reach
    -- it and be closed at once; the new one may not listen yet.
    local c = poll(function()
      local c = connect(svc.port)
      if not c then return nil end
      local r1, r2 = c:req("WHEREIS kv_conn_sup"), c:req("WHEREIS kv_acceptor")
      if r1 and r1 ~= "PID " .. sup and r1 ~= "NOT_FOUND" and r2 and r2 ~= "PID " .. acceptor
         and r2 ~= "NOT_FOUND" then
        return c
      end
      c:close()
    end, "a new kv_conn_sup and acceptor", svc)
    assert.are.equal("VALUE yes", c:req("GET survivor"))
    c:close()
  end)

  -- The number of lines of the service's log that contain every string given.
  local function count_lines(text, ...)
    local n = 0
    for line in text:gmatch("[^\n]+") do
      local all = true
      for _, s in ipairs{...} do
        if not line:find(s, 1, true) then all = false; break end
      end
      if all then n = n + 1 end
    end
    return n
  end

  it("logs the crashes and the restarts through the supervised logger", function()
    -- The logger writes each record as it handles it: wait until the records
    -- of the tests above are all in (the counts only grow), then compare.
    local want = {
      crash = {"error", "process crashed", "CRASH requested by the client"},
      store_killed = {"error", "child terminated", "id=store", "reason=killed", "supervisor=kv_sup"},
      acceptor_killed = {"error", "child terminated", "id=acceptor", "reason=killed", "supervisor=kv_conn_sup"},
      conn_sup_killed = {"error", "child terminated", "id=connections", "reason=killed", "supervisor=kv_sup"},
      store_started = {"info", "child started id=store"},
      acceptor_started = {"info", "child started id=acceptor"},
    }
    -- The store was started twice (it was killed once); the acceptor three
    -- times (killed once alone, once with kv_conn_sup).
    local expected = {crash = 1, store_killed = 1, acceptor_killed = 1, conn_sup_killed = 1,
                      store_started = 2, acceptor_started = 3}
    local counts = {}
    poll(function()
      local text = read_file(svc.log)
      for k, strings in pairs(want) do counts[k] = count_lines(text, table.unpack(strings)) end
      for k, n in pairs(expected) do
        if counts[k] < n then return false end
      end
      return true
    end, "the records of the crashes and restarts", svc)
    assert.are.same(expected, counts)
    assert.are.equal(0, count_lines(read_file(svc.log), "reached max restart intensity"))

    -- The logger is a supervised child like the others.
    local c = assert(connect(svc.port))
    local logger = whereis(c, "erlangen.log")
    assert.are.equal("OK " .. logger, c:req("KILL erlangen.log"))
    local new = poll(function()
      local p = whereis(c, "erlangen.log")
      return p ~= logger and p
    end, "a new logger", svc)
    poll(function()
      local text = read_file(svc.log)
      return count_lines(text, "child started id=logger", "pid=" .. new) == 1
    end, "the new logger's start in the log", svc)
    assert.are.equal(1, count_lines(read_file(svc.log), "child terminated", "id=logger", "pid=" .. logger,
                                    "reason=killed"))
    c:close()
  end)

  it("stops its tree and exits 0 on SIGINT, leaving no process and no listener behind", function()
    if H.under_tsan() then return pending("under ThreadSanitizer: asynchronous signals are deferred") end
    local child = svc.erlangen_pid
    assert.is_true(alive(child))
    sh("kill -INT " .. child)
    svc.stopped = true
    -- `timeout` exits with its command's status once the command has ended.
    assert.are.same({true, "exit", 0}, {svc.proc:close()})
    assert.is_false(alive(child))
    assert.is_false(alive(svc.pid))
    assert.is_nil(connect(svc.port))
    assert.truthy(read_file(svc.log):find("\nkv: stopping %(.*interrupted%)\n"), read_file(svc.log))
  end)
end)
