-- The web observer (erlangen.observer.serve, doc/observer.md "The web observer"):
-- its JSON endpoints over a three-node cluster, its HTTP server against bad
-- requests, the access rules, and `erlangen --observer`. The client is
-- luasocket, speaking HTTP/1.1 one request per connection.
local erlangen = require "erlangen"
local H = require "spec.helpers"
local D = require "spec.dist_helpers"
local S = require "sup_support"
local observer = require "erlangen.observer"
local supervisor = require "erlangen.supervisor"
local socket = require "socket"
local cjson = require "cjson"

local self = erlangen.self

-- "http://127.0.0.1:PORT/..." -> PORT
local function port_of(url) return tonumber(url:match("^http://[^/]-:(%d+)/")) end

-- The request line `method path`, with `opts.headers` ({name = value}),
-- `opts.host` (the Host header; the observer's own by default) and
-- `opts.body`; returns status, headers (lower-case names), body.
local function request(port, method, path, opts)
  opts = opts or {}
  local c = assert(socket.connect("127.0.0.1", port))
  c:settimeout(H.TIMEOUT)
  local lines = {method .. " " .. path .. " HTTP/1.1", "Host: " .. (opts.host or ("127.0.0.1:" .. port))}
  for k, v in pairs(opts.headers or {}) do lines[#lines + 1] = k .. ": " .. v end
  if opts.body then lines[#lines + 1] = "Content-Length: " .. #opts.body end
  assert(c:send(table.concat(lines, "\r\n") .. "\r\n\r\n" .. (opts.body or "")))
  local raw, err, partial = c:receive("*a")
  c:close()
  raw = raw or partial
  assert(raw and raw ~= "", "no answer to " .. method .. " " .. path .. ": " .. tostring(err))
  local status = tonumber(raw:match("^HTTP/1%.1 (%d%d%d) "))
  local head, body = raw:match("^(.-)\r\n\r\n(.*)$")
  local headers = {}
  for k, v in (head or ""):gmatch("\n([^:\r\n]+):%s*([^\r\n]*)") do headers[k:lower()] = v end
  return status, headers, body
end

-- GET `path` and decode the JSON body; returns status, value.
local function get_json(port, path, opts)
  local status, headers, body = request(port, "GET", path, opts)
  assert.are.equal("application/json", headers["content-type"], "the type of " .. path)
  return status, cjson.decode(body)
end

local function names_of(nodes)
  local out = {}
  for _, n in ipairs(nodes) do out[#out + 1] = n.name end
  table.sort(out)
  return out
end

-- The tree node of /api/tree whose field `k` is `v`, searched depth first.
local function find_in_tree(list, k, v)
  for _, n in ipairs(list or {}) do
    if n[k] == v then return n end
    local found = find_in_tree(n.children, k, v)
    if found then return found end
  end
end

-- Polls (bounded) until cond() gives a value; returns it or nil.
local function poll_value(cond, limit)
  local deadline = erlangen.now() + (limit or H.TIMEOUT)
  repeat
    local v = cond()
    if v then return v end
    erlangen.sleep(0.05)
  until erlangen.now() > deadline
end

local function sorted(list) table.sort(list); return list end

describe("the web observer over a three-node cluster", function()
  setup(D.this_node)
  teardown(D.teardown)
  before_each(D.before_each)
  after_each(D.after_each)

  local url, sup
  local function serve(opts)
    url, sup = assert(observer.serve(opts))
    return port_of(url)
  end
  -- (D.after_each may have ended it already, with the test's other processes)
  after_each(function() if sup then pcall(supervisor.stop, sup); sup = nil end end)

  -- A supervisor here with child l here and children rb and rc on b and c.
  local function cluster_with_supervisor()
    assert(S.capture_log(), "could not take the name erlangen.log for the test")
    finally(S.release_log)
    local b, c = D.start_child(), D.start_child()
    local function remote(id, node) local s = S.child(id); s.node = node; return s end
    local s = S.start{children = {S.child("l"), remote("rb", b.name), remote("rc", c.name)}}
    local _, msgs = S.events(3, "the children's starts")
    return s, b, c, {l = msgs[1][3], rb = msgs[2][3], rc = msgs[3][3]}
  end

  it("lists this node and every connected one in /api/nodes, with their links", function()
    local b, c = D.start_child(), D.start_child()
    local port = serve()
    local status, d = get_json(port, "/api/nodes")
    assert.are.equal(200, status)
    assert.are.same(sorted({erlangen.node(), b.name, c.name}), names_of(d.nodes))
    assert.are.equal(erlangen.node(), d.self)
    for _, n in ipairs(d.nodes) do
      assert.are.equal("up", n.status)
      assert.is_number(n.processes)
      assert.is_number(n.sent_rate, "a rate for " .. n.name)
      if n.name == b.name then assert.are.same({erlangen.node()}, n.links) end
    end
    local pairs_seen = {}
    for _, l in ipairs(d.links) do pairs_seen[l[1] .. " " .. l[2]] = true end
    local a1, a2 = erlangen.node(), b.name
    if a2 < a1 then a1, a2 = a2, a1 end
    assert.is_true(pairs_seen[a1 .. " " .. a2], "the link between this node and " .. b.name)
  end)

  it("drops a killed node from /api/nodes", function()
    local b, c = D.start_child(), D.start_child()
    local port = serve()
    assert.are.same(sorted({erlangen.node(), b.name, c.name}), names_of(select(2, get_json(port, "/api/nodes")).nodes))
    D.kill_child(c)
    local gone = poll_value(function()
      local names = names_of(select(2, get_json(port, "/api/nodes")).nodes)
      return not table.concat(names, " "):find(c.name, 1, true) and names
    end, H.TIMEOUT + D.DETECT)
    assert.are.same(sorted({erlangen.node(), b.name}), gone)
  end)

  it("lists the processes of every node in /api/processes, with their counters", function()
    local b = D.start_child()
    local p = D.puppet(b)
    local port = serve()
    local status, d = get_json(port, "/api/processes")
    assert.are.equal(200, status)
    local found
    for _, row in ipairs(d.processes) do
      if row.pid == tostring(p) then found = row end
    end
    assert(found, "the puppet " .. tostring(p) .. " is listed")
    assert.are.equal(b.name, found.node)
    for _, f in ipairs({"mailbox", "memory", "sent", "received", "dropped", "capacity"}) do
      assert.is_number(found[f], f)
    end
  end)

  it("shows one process of another node with its links, monitors and trap_exit", function()
    local b = D.start_child()
    local p = D.puppet(b, {link = true})
    D.must(p, "trap_exit", true)
    local ref = erlangen.monitor(p)
    local port = serve()
    local status, d = get_json(port, "/api/process?pid=" .. tostring(p))
    assert.are.equal(200, status)
    assert.are.equal(tostring(p), d.process.pid)
    assert.are.same({tostring(self())}, d.process.links)
    assert.are.same({tostring(self())}, d.process.monitored_by)
    assert.is_true(d.process.trap_exit)
    erlangen.demonitor(ref, true)
  end)

  it("shows a child killed on another node with its new pid in /api/tree within 2 s of its restart", function()
    local s, b, _, pids = cluster_with_supervisor()
    local port = serve()
    local _, d = get_json(port, "/api/tree")
    local rb = find_in_tree(d.roots, "pid", tostring(pids.rb))
    assert(rb, "child rb " .. tostring(pids.rb) .. " is in the tree")
    assert.are.same({"rb", b.name}, {rb.id, rb.node})
    assert.are.equal("l", find_in_tree(d.roots, "pid", tostring(pids.l)).id)
    erlangen.exit(pids.rb, "kill")
    local _, msgs = S.events(1, "the restart of rb")
    local new = msgs[1][3]
    local shown = poll_value(function()
      local n = find_in_tree(select(2, get_json(port, "/api/tree")).roots, "id", "rb")
      return n and n.pid == tostring(new) and n
    end, 2)
    assert(shown, "the new pid " .. tostring(new) .. " of rb in /api/tree within 2 s")
    assert.are.equal(b.name, shown.node)
    supervisor.stop(s)
  end)

  it("refuses /api/kill with 403 without allow_kill", function()
    local b = D.start_child()
    local p = D.puppet(b)
    local port = serve()
    local status = request(port, "POST", "/api/kill", {headers = {["Content-Type"] = "application/json"},
                                                         body = cjson.encode({pid = tostring(p)})})
    assert.are.equal(403, status)
    assert.are.equal(200, (get_json(port, "/api/process?pid=" .. tostring(p))))
  end)

  it("kills a process of another node with allow_kill", function()
    local b = D.start_child()
    local p, ref = D.puppet(b, {monitor = true})
    local port = serve{allow_kill = true}
    local status, _, body = request(port, "POST", "/api/kill", {headers = {["Content-Type"] = "application/json"},
                                                                  body = cjson.encode({pid = tostring(p)})})
    assert.are.equal(200, status, body)
    assert.are.equal("killed", H.await_down(ref, "the killed puppet"))
  end)

  it("answers 404 for a pid of a node it is not connected to, and 400 for a bad pid string", function()
    local port = serve()
    local status, d = get_json(port, "/api/process?pid=<nobody@127.0.0.1.5>")
    assert.are.equal(404, status)
    assert.matches("unknown node nobody@127.0.0.1", d.error, 1, true)
    for _, bad in ipairs({"x", "<0.x>", "0.5", "%3Ca%20b.5%3E", ""}) do
      status, d = get_json(port, "/api/process?pid=" .. bad)
      assert.are.equal(400, status, "for " .. bad)
      assert.matches("bad pid", d.error, 1, true)
    end
    status = get_json(port, "/api/process?pid=<0.999999>")
    assert.are.equal(404, status)
  end)

  it("streams ticks on /api/events, and trace edges with ?flow=1", function()
    local b = D.start_child()
    local p = D.puppet(b)
    local port = serve()
    local c = assert(socket.connect("127.0.0.1", port))
    c:settimeout(H.TIMEOUT)
    c:send("GET /api/events?flow=1 HTTP/1.1\r\nHost: 127.0.0.1:" .. port .. "\r\n\r\n")
    assert.matches("^HTTP/1%.1 200", c:receive("*l"))
    -- The puppet on b sends to this process until its edge shows up.
    local want_from, seen_tick = "<" .. b.name .. "." .. tostring(p):match("(%d+)>$") .. ">", false
    local deadline, found = erlangen.now() + H.TIMEOUT * 2, false
    local name
    while not found and erlangen.now() < deadline do
      D.must(p, "send", self(), "ping")
      local line = c:receive("*l")
      if not line then break end
      name = line:match("^event: (%a+)$") or name
      local data = line:match("^data: (.*)$")
      if data and name == "tick" then seen_tick = true end
      if data and name == "flow" then
        for _, e in ipairs(cjson.decode(data).edges or {}) do
          if e.from == want_from and e.to == tostring(self()) then found = true end
        end
      end
    end
    c:close()
    assert.is_true(seen_tick, "a tick event")
    assert.is_true(found, "an edge " .. want_from .. " -> " .. tostring(self()))
  end)

  it("serves each page and its script", function()
    local port = serve()
    for _, path in ipairs({"/", "/processes", "/process?pid=<0.1>", "/tree", "/flow"}) do
      local status, headers, body = request(port, "GET", path)
      assert.are.equal(200, status, path)
      assert.matches("^text/html", headers["content-type"])
      assert.matches('id="nav-tree"', body, 1, true)
      assert.matches('data-allow-kill="0"', body, 1, true)
    end
    local status, headers = request(port, "GET", "/app.js")
    assert.are.same({200, "application/javascript"}, {status, headers["content-type"]})
  end)
end)

describe("the web observer's HTTP server", function()
  setup(D.this_node)
  teardown(D.teardown)
  before_each(D.before_each)
  after_each(D.after_each)

  local url, sup, port
  before_each(function()
    url, sup = assert(observer.serve())
    port = port_of(url)
  end)
  after_each(function() pcall(supervisor.stop, sup) end)

  -- The pids of the observer's own processes (they must outlive any request).
  local function own_pids()
    local out = {}
    for _, c in ipairs(supervisor.which_children(sup)) do out[#out + 1] = tostring(c.pid) end
    return out
  end

  it("answers a method it does not take with 405 and Allow", function()
    local status, headers = request(port, "DELETE", "/api/nodes")
    assert.are.same({405, "GET"}, {status, headers.allow})
    status, headers = request(port, "GET", "/api/kill")
    assert.are.same({405, "POST"}, {status, headers.allow})
  end)

  it("answers a header larger than its bound with 431", function()
    local before = own_pids()
    local status = request(port, "GET", "/api/nodes", {headers = {["X-Big"] = string.rep("x", 20000)}})
    assert.are.equal(431, status)
    assert.are.same(before, own_pids())
  end)

  it("answers too many header fields with 431, and a bad request line with 400", function()
    local many = {}
    for i = 1, 100 do many["X-H" .. i] = "v" end
    assert.are.equal(431, (request(port, "GET", "/api/nodes", {headers = many})))
    local c = assert(socket.connect("127.0.0.1", port))
    c:settimeout(H.TIMEOUT)
    c:send("NONSENSE\r\n\r\n")
    assert.matches("^HTTP/1%.1 400 ", c:receive("*l"))
    c:close()
  end)

  it("answers a path that does not exist with 404 in JSON", function()
    local status, d = get_json(port, "/api/nothing")
    assert.are.equal(404, status)
    assert.matches("no such path", d.error, 1, true)
  end)

  it("answers a request while a slow client holds its own connection", function()
    local slow = assert(socket.connect("127.0.0.1", port))
    slow:send("GET /api/nodes HTTP/1.1\r\nHost: 127.0.0.1:" .. port .. "\r\n")   -- and nothing more
    local status = get_json(port, "/api/nodes")
    assert.are.equal(200, status)
    slow:close()
  end)

  it("answers only to a loopback Host when it has no token", function()
    assert.are.equal(421, (request(port, "GET", "/api/nodes", {host = "evil.example:" .. port})))
    assert.are.equal(200, (request(port, "GET", "/api/nodes", {host = "localhost:" .. port})))
  end)
end)

describe("the web observer's token", function()
  setup(D.this_node)
  teardown(D.teardown)
  before_each(D.before_each)
  after_each(D.after_each)

  it("is required when given: 401 without it or with a wrong one", function()
    local url, sup = assert(observer.serve{token = "s3cret"})
    local port = port_of(url)
    assert.matches("%?token=s3cret$", url)
    assert.are.equal(401, (request(port, "GET", "/api/nodes")))
    assert.are.equal(401, (request(port, "GET", "/api/nodes?token=wrong")))
    assert.are.equal(200, (request(port, "GET", "/api/nodes?token=s3cret")))
    assert.are.equal(200, (request(port, "GET", "/api/nodes", {headers = {["X-Observer-Token"] = "s3cret"}})))
    local _, _, page = request(port, "GET", "/?token=s3cret")
    assert.matches('src="/app.js?token=s3cret"', page, 1, true)
    supervisor.stop(sup)
  end)

  it("is made up and put in the URL when it listens beyond loopback", function()
    local url, sup = assert(observer.serve{listen = "0.0.0.0:0"})
    local token = url:match("%?token=(%x+)$")
    assert(token and #token == 32, "a token in " .. url)
    local port = port_of(url)
    assert.are.equal(401, (request(port, "GET", "/api/nodes")))
    assert.are.equal(200, (request(port, "GET", "/api/nodes?token=" .. token)))
    supervisor.stop(sup)
  end)
end)

describe("observer.serve's options", function()
  it("raises for a bad option, naming it", function()
    assert.has_error(function() observer.serve(5) end,
                     "bad argument #1 to 'observer.serve' (table expected, got number)")
    assert.has_error(function() observer.serve{port = 5} end, "observer.serve: unknown option 'port'")
    assert.has_error(function() observer.serve{listen = "nowhere"} end,
                     'observer.serve: option \'listen\' must be "[HOST:]PORT", got "nowhere"')
    assert.has_error(function() observer.serve{allow_kill = 1} end,
                     "observer.serve: option 'allow_kill' must be a boolean, got number")
  end)

  it("returns nil and why when it cannot listen", function()
    local s = assert(socket.bind("127.0.0.1", 0))
    local _, port = s:getsockname()
    local url, why = observer.serve{listen = "127.0.0.1:" .. port}
    s:close()
    assert.is_nil(url)
    assert.matches("cannot listen on 127.0.0.1:" .. port, why, 1, true)
  end)
end)

describe("erlangen --observer", function()
  setup(D.this_node)
  teardown(D.teardown)
  before_each(D.before_each)
  after_each(D.after_each)

  it("starts a node connected to NODE and prints the URL of its page", function()
    local b = D.start_child()
    local errfile = os.tmpname()
    -- No port mapper, so no daemon outlives the test. $$ is timeout's pid:
    -- it passes a TERM on to the observer, and f:close waits for both.
    local f = assert(io.popen(string.format(
      "echo $$; exec timeout -s KILL 60 %s --observer 0 --connect %s --key %s --no-port-mapper 2>%s",
      D.q(D.BIN), D.q(b.addr), D.q(D.KEY), D.q(errfile))))
    local ospid = f:read("l")
    finally(function()
      os.execute("kill -TERM " .. ospid .. " 2>/dev/null")
      f:close()
      os.remove(errfile)
    end)
    local line = f:read("l") or ""
    local url = line:match("^observer: (http://127%.0%.0%.1:%d+/)$")
    assert(url, "the URL line, got " .. line .. "\n" .. D.read_file(errfile))
    local _, d = get_json(port_of(url), "/api/nodes")
    assert.matches("^observer_%d+@127%.0%.0%.1$", d.self)
    local names = names_of(d.nodes)
    assert.is_truthy(table.concat(names, " "):find(b.name, 1, true), "node " .. b.name .. " in " .. table.concat(names, " "))
  end)
end)
