-- spec/portmap_spec.lua — `erlangen --port-mapper`: the daemon's line
-- protocol (doc/portmap.md) spoken over luasocket, and its robustness.
--
-- Each daemon is `$ERLANGEN_BIN --port-mapper --port 0` started with
-- io.popen under coreutils `timeout` (so a leftover dies on its own); it
-- prints the port it got. Its pid is kept and it is killed with SIGTERM at
-- the end. Every socket has a timeout, so a wrong answer fails the test
-- instead of hanging it; waits are bounded retries, never sleeps.

local socket = require "socket"

local BIN = os.getenv("ERLANGEN_BIN") or "build/erlangen"
local LIFE = 120      -- seconds a daemon may live at most
local TIMEOUT = 5     -- seconds any one socket operation may take
local STALL = 3       -- PMAPD_STALL_SECONDS in kernel/net/portmapd.h
local REMOTE = 64     -- PMAP_MAX_REMOTE in kernel/net/portmap.h

local H = require "spec.helpers"
local q = H.quote

-- Starts a daemon with extra words `args` (default: --port 0). Returns a
-- handle {pid, port, f} or nil and what it printed.
local function start(args)
  local cmd = "sh -c " .. q("echo $$; exec timeout -k 2 " .. LIFE .. " " .. q(BIN) ..
                            " --port-mapper " .. (args or "--port 0") .. " 2>&1")
  local f = assert(io.popen(cmd, "r"))
  local pid = tonumber(f:read("l"))
  local line = f:read("l")
  local port = tonumber(line or "")
  if not port then
    local rest = f:read("a") or ""
    f:close()
    return nil, (line or "") .. rest
  end
  return { pid = pid, port = port, f = f }
end

-- Stops a daemon with `sig` and returns how it ended: ok, "exit", code.
local function stop(d, sig)
  os.execute("kill -" .. (sig or "TERM") .. " " .. d.pid)
  return d.f:close()
end

local function connect(port, host)
  local c = assert(socket.connect(host or "127.0.0.1", port))
  c:settimeout(TIMEOUT)
  return c
end

-- Sends `line` (a '\n' is added) and returns the reply line.
local function ask(c, line)
  assert(c:send(line .. "\n"))
  local r, err = c:receive("*l")
  return r or ("<" .. tostring(err) .. ">")
end

-- One request on a fresh connection.
local function ask1(port, line)
  local c = connect(port)
  local r = ask(c, line)
  c:close()
  return r
end

-- Reads until the daemon closes the connection; returns what came and the
-- reason the reading ended ("closed" is what we want).
local function read_to_close(c)
  local got = {}
  while true do
    local r, err = c:receive("*l")
    if not r then return table.concat(got, "|"), err end
    got[#got + 1] = r
  end
end

-- Retries `f` until it returns true, at most `limit` seconds.
local function eventually(f, limit)
  local deadline = socket.gettime() + (limit or TIMEOUT)
  repeat
    if f() then return true end
  until socket.gettime() > deadline
  return false
end

-- NAMES as a table name -> port.
local function names(port)
  local c = connect(port)
  assert(c:send("NAMES\n"))
  local head = assert(c:receive("*l"))
  local n = assert(tonumber(head:match("^NAMES (%d+)$")), head)
  local t = {}
  for _ = 1, n do
    local name, p = assert(c:receive("*l")):match("^(%S+) (%d+)$")
    t[name] = tonumber(p)
  end
  c:close()
  return t, n
end

-- A local address that is not loopback (the one the host would use to
-- reach the outside), or nil.
local function outside_address()
  local u = socket.udp()
  if not u:setpeername("192.0.2.1", 9) then u:close(); return nil end
  local ip = u:getsockname()
  u:close()
  if ip and ip ~= "0.0.0.0" and not ip:match("^127%.") then return ip end
  return nil
end

describe("the port mapper daemon", function()
  local d

  lazy_setup(function()
    local err
    d, err = start()
    assert(d, "the port mapper did not start: " .. tostring(err))
  end)

  lazy_teardown(function()
    if d then stop(d) end
  end)

  it("prints the port it listens on", function()
    assert.is_true(d.port > 0 and d.port < 65536)
  end)

  it("answers PING with its protocol version", function()
    assert.are.equal("PONG 1", ask1(d.port, "PING"))
  end)

  it("registers a name from loopback and answers its lookup", function()
    local reg = connect(d.port)
    assert.are.equal("OK", ask(reg, "REGISTER alpha 9001"))
    assert.are.equal("PORT 9001", ask1(d.port, "LOOKUP alpha"))
    reg:close()
  end)

  it("answers NONE for a name nobody registered", function()
    assert.are.equal("NONE", ask1(d.port, "LOOKUP nobody"))
  end)

  it("releases a name when the registering connection closes", function()
    local reg = connect(d.port)
    assert.are.equal("OK", ask(reg, "REGISTER transient 9002"))
    assert.are.equal("PORT 9002", ask1(d.port, "LOOKUP transient"))
    reg:close()
    assert.is_true(eventually(function() return ask1(d.port, "LOOKUP transient") == "NONE" end),
                   "the name was still registered after its connection closed")
  end)

  it("refuses a second registration of a live name and keeps the first", function()
    local first, second = connect(d.port), connect(d.port)
    assert.are.equal("OK", ask(first, "REGISTER dup 9003"))
    assert.are.equal("ERR taken", ask(second, "REGISTER dup 9004"))
    assert.are.equal("PORT 9003", ask1(d.port, "LOOKUP dup"))
    -- the refused connection stays open and may take another name
    assert.are.equal("OK", ask(second, "REGISTER dup2 9004"))
    assert.are.equal("PORT 9004", ask1(d.port, "LOOKUP dup2"))
    first:close()
    second:close()
  end)

  it("refuses a second registration on the same connection and closes it", function()
    local c = connect(d.port)
    assert.are.equal("OK", ask(c, "REGISTER once 9005"))
    assert.are.equal("ERR already registered", ask(c, "REGISTER twice 9006"))
    local _, why = read_to_close(c)
    assert.are.equal("closed", why)
    assert.is_true(eventually(function() return ask1(d.port, "LOOKUP once") == "NONE" end))
    assert.are.equal("NONE", ask1(d.port, "LOOKUP twice"))
  end)

  it("answers requests sent together in one write, in order", function()
    local reg = connect(d.port)
    assert(reg:send("REGISTER piped 9007\nLOOKUP piped\nPING\n"))
    assert.are.equal("OK", reg:receive("*l"))
    assert.are.equal("PORT 9007", reg:receive("*l"))
    assert.are.equal("PONG 1", reg:receive("*l"))
    reg:close()
  end)

  local refusals = {
    { "garbage bytes", "\1\2\255garbage", "ERR bad request" },
    { "an unknown command", "HELLO", "ERR bad request" },
    { "a lower-case command", "lookup alpha", "ERR bad request" },
    { "two spaces", "LOOKUP  alpha", "ERR bad name" },
    { "a name with '@'", "LOOKUP a@b", "ERR bad name" },
    { "a 65-character name", "LOOKUP " .. string.rep("n", 65), "ERR bad name" },
    { "a carriage return", "PING\r", "ERR bad request" },
    { "port 0", "REGISTER p0 0", "ERR bad port" },
    { "port 65536", "REGISTER p1 65536", "ERR bad port" },
    { "a port with a leading zero", "REGISTER p2 080", "ERR bad port" },
    { "a REGISTER without a port", "REGISTER p3", "ERR bad request" },
  }
  for _, case in ipairs(refusals) do
    it("answers " .. case[1] .. " with '" .. case[3] .. "' and closes the connection", function()
      local c = connect(d.port)
      assert(c:send(case[2] .. "\n"))
      local got, why = read_to_close(c)
      assert.are.equal(case[3], got)
      assert.are.equal("closed", why)
      assert.are.equal("PONG 1", ask1(d.port, "PING"))
    end)
  end

  it("closes a connection whose line is too long, and lives on", function()
    local c = connect(d.port)
    assert(c:send(string.rep("L", 200)))
    local got, why = read_to_close(c)
    assert.are.equal("ERR line too long", got)
    assert.are.equal("closed", why)
    assert.are.equal("PONG 1", ask1(d.port, "PING"))
  end)

  it("serves many clients at once", function()
    local regs = {}
    for i = 1, 100 do
      regs[i] = connect(d.port)
      assert(regs[i]:send("REGISTER many" .. i .. " " .. (10000 + i) .. "\n"))
    end
    for i = 1, 100 do assert.are.equal("OK", regs[i]:receive("*l")) end
    local t = names(d.port)
    for i = 1, 100 do assert.are.equal(10000 + i, t["many" .. i]) end
    for i = 1, 100, 7 do assert.are.equal("PORT " .. (10000 + i), ask1(d.port, "LOOKUP many" .. i)) end
    for i = 1, 100 do regs[i]:close() end
    assert.is_true(eventually(function()
      local now = names(d.port)
      for i = 1, 100 do if now["many" .. i] then return false end end
      return true
    end), "names of closed connections were still listed")
  end)

  it("holds more than 256 registrations from loopback, and still looks up and registers", function()
    local regs = {}
    for i = 1, 300 do  -- more than the 256 slots of old; the test's fds stay well under 1024
      regs[i] = connect(d.port)
      assert(regs[i]:send("REGISTER held" .. i .. " " .. (20000 + i) .. "\n"))
    end
    for i = 1, 300 do assert.are.equal("OK", regs[i]:receive("*l")) end
    local idle = {}
    for i = 1, 20 do idle[i] = connect(d.port) end  -- and some that registered nothing
    assert.are.equal("PORT 20150", ask1(d.port, "LOOKUP held150"))
    local late = connect(d.port)
    assert.are.equal("OK", ask(late, "REGISTER late 9012"))
    assert.are.equal("PORT 9012", ask1(d.port, "LOOKUP late"))
    local t = names(d.port)
    for i = 1, 300 do assert.are.equal(20000 + i, t["held" .. i]) end
    for _, c in ipairs(regs) do c:close() end
    for _, c in ipairs(idle) do c:close() end
    late:close()
    assert.is_true(eventually(function() return ask1(d.port, "LOOKUP held300") == "NONE" end))
  end)

  it("closes stalled and idle unregistered connections, not idle registered ones", function()
    local reg = connect(d.port)
    assert.are.equal("OK", ask(reg, "REGISTER patient 9009"))
    local partial, idle = connect(d.port), connect(d.port)
    assert(partial:send("LOOKUP pat"))
    partial:settimeout(STALL + TIMEOUT)
    idle:settimeout(STALL + TIMEOUT)
    local _, why1 = read_to_close(partial)
    local _, why2 = read_to_close(idle)
    assert.are.equal("closed", why1)
    assert.are.equal("closed", why2)
    assert.are.equal("PORT 9009", ask1(d.port, "LOOKUP patient"))
    assert.are.equal("PONG 1", ask(reg, "PING"))
    reg:close()
  end)

  describe("from an address that is not loopback", function()
    local ip = outside_address()

    it("refuses to register and closes the connection", function()
      if not ip then return pending("this host has no address besides loopback") end
      local c = connect(d.port, ip)
      assert(c:send("REGISTER intruder 9010\n"))
      local got, why = read_to_close(c)
      assert.are.equal("ERR loopback only", got)
      assert.are.equal("closed", why)
      assert.are.equal("NONE", ask1(d.port, "LOOKUP intruder"))
    end)

    it("answers lookups", function()
      if not ip then return pending("this host has no address besides loopback") end
      local reg = connect(d.port)
      assert.are.equal("OK", ask(reg, "REGISTER visible 9011"))
      local c = connect(d.port, ip)
      assert.are.equal("PORT 9011", ask(c, "LOOKUP visible"))
      c:close()
      reg:close()
    end)

    it("refuses the listing", function()
      if not ip then return pending("this host has no address besides loopback") end
      local c = connect(d.port, ip)
      assert(c:send("NAMES\n"))
      local got, why = read_to_close(c)
      assert.are.equal("ERR loopback only", got)
      assert.are.equal("closed", why)
    end)

    it("turns away connections beyond " .. REMOTE .. " with 'ERR full', not loopback ones", function()
      if not ip then return pending("this host has no address besides loopback") end
      local held = {}
      for i = 1, REMOTE do
        held[i] = connect(d.port, ip)
        assert.are.equal("PONG 1", ask(held[i], "PING"))  -- accepted, in order
      end
      local extra = connect(d.port, ip)
      local got, why = read_to_close(extra)
      assert.are.equal("ERR full", got)
      assert.are.equal("closed", why)
      local reg = connect(d.port)
      assert.are.equal("OK", ask(reg, "REGISTER local_ok 9013"))
      for _, c in ipairs(held) do c:close() end
      assert.is_true(eventually(function()
        local c = connect(d.port, ip)
        local r = ask(c, "LOOKUP local_ok")
        c:close()
        return r == "PORT 9013"
      end), "a remote connection was still turned away after the others closed")
      reg:close()
    end)
  end)
end)

describe("erlangen --port-mapper", function()
  it("exits 0 on SIGTERM", function()
    local d = assert(start())
    assert.are.equal("PONG 1", ask1(d.port, "PING"))
    local ok, how, code = stop(d, "TERM")
    assert.are.same({ true, "exit", 0 }, { ok, how, code })
  end)

  it("exits 0 on SIGINT", function()
    local d = assert(start())
    assert.are.equal("PONG 1", ask1(d.port, "PING"))
    local ok, how, code = stop(d, "INT")
    assert.are.same({ true, "exit", 0 }, { ok, how, code })
  end)

  it("fails with a message when its port is taken", function()
    local d = assert(start())
    local again, out = start("--port " .. d.port)
    assert.is_nil(again)
    assert.matches("port " .. d.port .. " is already in use", out, 1, true)
    assert.are.equal("PONG 1", ask1(d.port, "PING"))
    stop(d)
  end)

  it("takes its port from ERLANGEN_PORT_MAPPER_PORT", function()
    local probe = assert(socket.bind("127.0.0.1", 0))
    local _, port = probe:getsockname()
    probe:close()
    local f = assert(io.popen("sh -c " .. q("echo $$; ERLANGEN_PORT_MAPPER_PORT=" .. port ..
      " exec timeout -k 2 " .. LIFE .. " " .. q(BIN) .. " --port-mapper 2>&1"), "r"))
    local d = { pid = tonumber(f:read("l")), f = f }
    local line = f:read("l")
    assert.are.equal(tostring(port), line)
    assert.are.equal("PONG 1", ask1(tonumber(port), "PING"))
    stop(d)
  end)

  local bad = {
    { "--port 70000", "not a port number" },
    { "--port x", "not a port number" },
    { "--port", "usage" },
    { "--verbose", "usage" },
  }
  for _, case in ipairs(bad) do
    it("rejects '" .. case[1] .. "'", function()
      local d, out = start(case[1])
      assert.is_nil(d)
      assert.matches(case[2], out, 1, true)
    end)
  end
end)

describe("a running node", function()
  it("registers again when the port mapper comes back", function()
    local d = assert(start())
    local key = os.tmpname()
    local kf = assert(io.open(key, "w"))
    kf:write(string.rep("ab", 32), "\n")
    kf:close()
    os.execute("chmod 600 " .. q(key))
    local node = assert(io.popen("sh -c " .. q("echo $$; ERLANGEN_PORT_MAPPER_PORT=" .. d.port ..
      " exec timeout -k 2 " .. LIFE .. " " .. q(BIN) .. " --name kept@127.0.0.1 --key " .. q(key) ..
      " -e 'erlangen.receive(60)' >/dev/null 2>&1"), "r"))
    local node_pid = tonumber(node:read("l"))
    local ok, err = pcall(function()
      assert.is_true(eventually(function() return ask1(d.port, "LOOKUP kept"):match("^PORT ") ~= nil end),
                     "the node did not register at start")
      local port_line = ask1(d.port, "LOOKUP kept")
      stop(d)
      d = assert(start("--port " .. d.port))
      assert.is_true(eventually(function() return ask1(d.port, "LOOKUP kept") == port_line end, 7),
                     "the node did not register again with the new daemon")
    end)
    os.execute("kill " .. node_pid)
    node:close()
    stop(d)
    os.remove(key)
    assert(ok, err)
  end)
end)
