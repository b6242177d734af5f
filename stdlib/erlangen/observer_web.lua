-- erlangen.observer_web — the web observer: a supervised HTTP server with the cluster's JSON, live events and pages.
--
-- Processes (doc/observer.md, "The web observer"):
--   supervisor (one_for_all) ── stats     erlangen.server keeping each node's last
--                            │            sent/received totals, for rates
--                            └─ listener  accepts; each connection gets a process
--                                          of its own (linked, bounded in time)
-- A connection's process reads one request (erlangen.observer_http bounds
-- every length and wait), answers it and ends; /api/events stays and writes
-- a tick a second until the client goes. So a slow client or a slow node
-- holds only its own connection's process. At most MAX_CONNECTIONS run at
-- once; the next ones get 503.
--
-- Access invariant: without a token, only a request whose Host is a
-- loopback name of the observer's port is served (a page of another site
-- cannot reach it by DNS rebinding); with one (always when listening beyond
-- loopback), a request must carry it. /api/kill takes only a JSON body, which
-- a form of another site cannot send.
--
-- JSON: lua-cjson cannot tell an empty Lua table from an empty object, so
-- a list with no entries is left out of an object (readers take a missing
-- list as empty).
local erlangen = require "erlangen"
local gen = require "erlangen.gen"
local http = require "erlangen.observer_http"
local cjson = require "cjson"
local socket = require "socket"

local web = {}

local MAX_CONNECTIONS = 64
local ACCEPT_WAIT = 0.25    -- seconds the listener waits in accept before it reads its mailbox
local NODE_TIMEOUT = 3      -- seconds a request may wait for the other nodes, all together
local TICK = 1              -- seconds between two events ticks
local FLOW_INTERVAL = 0.5   -- seconds between two edge counts of a trace agent
local RATE_MIN_GAP = 0.5    -- seconds: closer samples keep the last rate

-- Options ------------------------------------------------------------------------

local function is_loopback(host)
  return host == "localhost" or host == "::1" or host:match("^127%.%d+%.%d+%.%d+$") ~= nil
end

-- "[HOST:]PORT" -> host, port (host "127.0.0.1" when left out), or nil.
local function parse_listen(s)
  local host, port = s:match("^%[([%x:]+)%]:(%d+)$")
  if not host then host, port = s:match("^([^:]+):(%d+)$") end
  if not host then host, port = "127.0.0.1", s:match("^(%d+)$") end
  port = tonumber(port)
  if not port or port > 65535 then return nil end
  return host, port
end

local function check_opts(opts, level)
  if opts == nil then opts = {} end
  if type(opts) ~= "table" then
    error(string.format("bad argument #1 to 'observer.serve' (table expected, got %s)", type(opts)), level + 1)
  end
  for k in pairs(opts) do
    if k ~= "listen" and k ~= "allow_kill" and k ~= "token" then
      error(string.format("observer.serve: unknown option '%s'", tostring(k)), level + 1)
    end
  end
  local listen = opts.listen or "127.0.0.1:0"
  local host, port
  if type(listen) == "string" then host, port = parse_listen(listen) end
  if not host then
    error("observer.serve: option 'listen' must be \"[HOST:]PORT\", got " .. gen.show(listen), level + 1)
  end
  if opts.allow_kill ~= nil and type(opts.allow_kill) ~= "boolean" then
    error("observer.serve: option 'allow_kill' must be a boolean, got " .. type(opts.allow_kill), level + 1)
  end
  local token = opts.token
  if token ~= nil and (type(token) ~= "string" or not token:match("^[%w._~-]+$")) then
    error("observer.serve: option 'token' must be a non-empty string of letters, digits and ._~-, got "
          .. gen.show(token), level + 1)
  end
  return {host = host, port = port, allow_kill = opts.allow_kill == true, token = token}
end

local function random_token()
  local f = assert(io.open("/dev/urandom", "rb"))
  local bytes = f:read(16)
  f:close()
  return (bytes:gsub(".", function(c) return string.format("%02x", c:byte()) end))
end

-- Where the pages are: observer_www/ beside this file.
local function www_dir()
  local here = package.searchpath("erlangen.observer_web", package.path)
  return here and here:gsub("observer_web%.lua$", "observer_www/") or "observer_www/"
end

-- Starting -------------------------------------------------------------------------

-- web.serve(opts, level) -> url, supervisor | nil, reason (observer.serve).
function web.serve(opts, level)
  local o = check_opts(opts, (level or 1) + 1)
  -- The port is chosen now, so that a restarted listener binds the same one.
  local probe, err = socket.bind(o.host, o.port)
  if not probe then
    return nil, string.format("cannot listen on %s:%d: %s", o.host, o.port, tostring(err))
  end
  local _, port = probe:getsockname()
  probe:close()
  o.port = tonumber(port)
  if not o.token and not is_loopback(o.host) then o.token = random_token() end
  o.www = www_dir()
  o.stats = string.format("erlangen.observer_web %s:%d", o.host, o.port)
  local supervisor = require "erlangen.supervisor"
  local sup, why = supervisor.start{strategy = "one_for_all", intensity = 5, period = 10, children = {
    {id = "stats", start = {"erlangen.observer_web.start_stats", o}},
    {id = "listener", start = {"erlangen.observer_web.start_listener", o}},
  }}
  if not sup then return nil, "cannot start: " .. gen.show(why) end
  local shown = o.host:find(":", 1, true) and "[" .. o.host .. "]" or o.host
  local url = string.format("http://%s:%d/", shown, o.port)
  if o.token then url = url .. "?token=" .. o.token end
  return url, sup
end

-- The stats server: for each node its last {t, sent, received} and rates.
local stats = {}
function stats.init() return {} end
-- {"rates", node, t, sent, received} -> {sent = per second, received = per second}
function stats.handle_call(req, _, samples)
  local _, node, t, sent, received = table.unpack(req)
  local last = samples[node]
  if last and t - last.t < RATE_MIN_GAP then return last.rates, samples end
  local rates = {sent = 0, received = 0}
  if last then   -- totals are over live processes: one that ends takes its counts along
    rates.sent = math.max(0, sent - last.sent) / (t - last.t)
    rates.received = math.max(0, received - last.received) / (t - last.t)
  end
  samples[node] = {t = t, sent = sent, received = received, rates = rates}
  return rates, samples
end

function web.start_stats(cfg)
  return require("erlangen.server").start_link(stats, nil, {name = cfg.stats})
end

function web.start_listener(cfg)
  return gen.start{fname = "observer.serve", spawn = {link = true}, body = "erlangen.observer_web.listen",
                   args = table.pack(cfg, gen.parent()), timeout = 5}
end

-- The listener's body: binds, acknowledges, then accepts until its parent's
-- EXIT. It traps exits to count its connections' ends.
function web.listen(ack, cfg, parent)
  erlangen.set_label("observer listener")
  erlangen.trap_exit(true)
  local server, err = socket.bind(cfg.host, cfg.port)
  if not server then
    local reason = string.format("cannot listen on %s:%d: %s", cfg.host, cfg.port, tostring(err))
    erlangen.unlink(parent)
    gen.ack(ack, false, reason)
    erlangen.exit(reason)
  end
  server:settimeout(ACCEPT_WAIT)
  gen.ack(ack, true)
  local live = 0
  while true do
    local client = server:accept()
    if client and live >= MAX_CONNECTIONS then
      client:settimeout(0)
      client:send("HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
      client:close()
    elseif client then
      -- The fd changes owner: from here the connection's process closes it.
      local fd = client:getfd()
      client:setfd(-1)
      if pcall(erlangen.spawn_link, "erlangen.observer_web.connection", fd, cfg) then
        live = live + 1
      else
        client:setfd(fd)
        client:close()
      end
    end
    while true do
      local m = erlangen.receive(0)
      if not m then break end
      if type(m) == "table" and m[1] == "EXIT" then
        if m[2] == parent then
          server:close()
          erlangen.exit(m[3])
        end
        live = live - 1
      end
    end
  end
end

-- JSON -----------------------------------------------------------------------------

local function text(v)
  if type(v) == "table" and type(v[1]) == "string" then return v[1] .. " on " .. tostring(v[2]) end
  return tostring(v)
end

-- A list of pids as text, or nil when empty (see the top of the file).
local function pid_list(list)
  if not list or #list == 0 then return nil end
  local out = {}
  for i, p in ipairs(list) do out[i] = text(p) end
  return out
end

local function process_json(info)
  return {
    pid = tostring(info.pid), node = info.node, name = info.name, label = info.label,
    status = info.status, mailbox = info.mailbox, capacity = info.capacity, dropped = info.dropped,
    memory = info.memory, cpu = info.cpu, sent = info.sent, received = info.received,
    started = info.started, trap_exit = info.trap_exit,
    parent = info.parent and tostring(info.parent) or nil,
    links = pid_list(info.links), monitors = pid_list(info.monitors),
    monitored_by = pid_list(info.monitored_by),
  }
end
web.process_json = process_json

local function tree_json(node)
  local children
  for _, c in ipairs(node.children or {}) do
    children = children or {}
    children[#children + 1] = tree_json(c)
  end
  local id = node.id
  if id ~= nil and type(id) ~= "string" and math.type(id) ~= "integer" then id = gen.show(id) end
  return {
    pid = tostring(node.pid), node = node.node, id = id, name = node.name, label = node.label,
    status = node.status, mailbox = node.mailbox, capacity = node.capacity, dropped = node.dropped,
    trap_exit = node.trap_exit, links = pid_list(node.links), children = children,
  }
end

-- Nodes and processes ----------------------------------------------------------------

local function left(deadline) return math.max(0.001, deadline - erlangen.now()) end

-- This node, then every connected node by name.
local function cluster()
  local list = erlangen.nodes()
  table.sort(list)
  table.insert(list, 1, erlangen.node())
  return list
end

-- The info of every process of `node`, or nil, "noconnection" | "timeout".
local function snapshot(node, deadline)
  if node == erlangen.node() then return erlangen.snapshot() end
  local ok, snap = pcall(erlangen.snapshot, node, left(deadline))
  if ok then return snap end
  return nil, tostring(snap):match("timeout$") and "timeout" or "noconnection"
end

-- Failures as HTTP statuses: what a node that went away mid-request gives.
local STATUS_OF = {noconnection = 502, timeout = 504}

-- The node a pid string names and the canonical text of the pid there
-- (tostring's: "<0.N>" for this node's), or nil, status, message.
-- Accepts "<0.N>", "<this-node.N>" and "<other-node.N>".
local function parse_pid(s)
  local node, serial = (type(s) == "string" and s or ""):match("^<(.+)%.(%d+)>$")
  if not node or not (node == "0" or gen.is_node_name(node)) then
    return nil, 400, "bad pid " .. gen.show(s) .. ": expected <node.serial> as tostring gives it"
  end
  if node == "0" or node == erlangen.node() then return erlangen.node(), "<0." .. serial .. ">" end
  for _, n in ipairs(erlangen.nodes()) do
    if n == node then return node, "<" .. node .. "." .. serial .. ">" end
  end
  return nil, 404, "unknown node " .. node .. ": it is not connected to the observer"
end

-- The pid and info of the process a pid string names, or nil, status, message.
local function find_process(s)
  local node, canonical, message = parse_pid(s)
  if not node then return nil, canonical, message end
  if node == erlangen.node() then
    for _, pid in ipairs(erlangen.processes()) do
      if tostring(pid) == canonical then
        local info = erlangen.info(pid)
        if info then info.pid = pid; return pid, info end
      end
    end
    return nil, 404, "noproc: no process " .. canonical
  end
  local snap, why = snapshot(node, erlangen.now() + NODE_TIMEOUT)
  if not snap then return nil, STATUS_OF[why], why .. ": node " .. node .. " did not answer" end
  for _, info in ipairs(snap) do
    if tostring(info.pid) == canonical then return info.pid, info end
  end
  return nil, 404, "noproc: no process " .. canonical
end

-- The nodes each remote node has links to, asked by a short process there.
local function ask_links(nodes, deadline)
  local alias, asked = erlangen.alias(), 0
  for _, n in ipairs(nodes) do
    if n ~= erlangen.node() and pcall(erlangen.spawn_opt, {node = n, timeout = left(deadline)},
                                      "erlangen.observer.node_links", alias) then
      asked = asked + 1
    end
  end
  local got = {[erlangen.node()] = erlangen.nodes()}
  for _ = 1, asked do
    local m = erlangen.receive(function(x) return type(x) == "table" and x[1] == alias end, left(deadline))
    if not m then break end
    got[m[2]] = m[3]
  end
  erlangen.unalias(alias)
  return got
end

-- API --------------------------------------------------------------------------------

local api = {}

function api.nodes(_, cfg)
  local deadline = erlangen.now() + NODE_TIMEOUT
  local names = cluster()
  local links_of = ask_links(names, deadline)
  local server = require "erlangen.server"
  local nodes, pairs_seen, links = {}, {}, {}
  for _, name in ipairs(names) do
    local snap, why = snapshot(name, deadline)
    local n = {name = name, self = name == erlangen.node(), status = snap and "up" or why}
    if snap then
      n.processes, n.sent, n.received, n.memory, n.mailbox, n.dropped = #snap, 0, 0, 0, 0, 0
      for _, info in ipairs(snap) do
        n.sent, n.received = n.sent + (info.sent or 0), n.received + (info.received or 0)
        n.memory, n.mailbox = n.memory + (info.memory or 0), n.mailbox + (info.mailbox or 0)
        n.dropped = n.dropped + (info.dropped or 0)
      end
      local ok, rates = pcall(server.call, cfg.stats, {"rates", name, erlangen.now(), n.sent, n.received}, 1)
      if ok then n.sent_rate, n.received_rate = rates.sent, rates.received end
    end
    local peers = links_of[name]
    if peers and #peers > 0 then
      table.sort(peers)
      n.links = peers
      for _, p in ipairs(peers) do
        local a, b = name < p and name or p, name < p and p or name
        if not pairs_seen[a .. " " .. b] then
          pairs_seen[a .. " " .. b] = true
          links[#links + 1] = {a, b}
        end
      end
    end
    nodes[#nodes + 1] = n
  end
  return 200, {self = erlangen.node(), time = erlangen.system_time(), nodes = nodes,
               links = #links > 0 and links or nil}
end

function api.processes()
  local deadline = erlangen.now() + NODE_TIMEOUT
  local nodes, rows = {}, {}
  for _, name in ipairs(cluster()) do
    local snap, why = snapshot(name, deadline)
    nodes[#nodes + 1] = {name = name, status = snap and "up" or why}
    for _, info in ipairs(snap or {}) do rows[#rows + 1] = process_json(info) end
  end
  return 200, {self = erlangen.node(), nodes = nodes, processes = rows}
end

function api.process(req)
  local pid, info, message = find_process(req.query.pid)
  if not pid then return info, {error = message} end
  return 200, {process = process_json(info)}
end

function api.tree()
  local roots = {}
  for i, r in ipairs(require("erlangen.observer").tree{ids = true}) do roots[i] = tree_json(r) end
  return 200, {self = erlangen.node(), roots = roots}
end

function api.kill(req, cfg)
  if not cfg.allow_kill then return 403, {error = "kill is not allowed: serve with allow_kill = true"} end
  if not (req.headers["content-type"] or ""):match("^application/json") then
    return 415, {error = "send the pid as JSON: {\"pid\": \"<node.serial>\"}"}
  end
  local ok, body = pcall(cjson.decode, req.body)
  if not ok or type(body) ~= "table" then return 400, {error = "the body is not a JSON object"} end
  local pid, info, message = find_process(body.pid)
  if not pid then return info, {error = message} end
  erlangen.exit(pid, "kill")
  return 200, {killed = tostring(pid)}
end

-- Events -----------------------------------------------------------------------------

local TICK_FIELDS = {"status", "mailbox", "dropped", "memory", "sent", "received"}

-- Writes one Server-Sent Event; false when the client has gone.
local function event(sock, name, data)
  return http.write(sock, "event: " .. name .. "\ndata: " .. cjson.encode(data) .. "\n\n") ~= nil
end

-- /api/events: a "tick" a second ({time, nodes, spawned, exited, changed}:
-- pids that appeared and ended since the last tick, and the processes whose
-- counters moved, as /api/processes gives them); with ?flow=1 also "flow"
-- events from a trace agent on each node ({node, edges = {{from, to, n}},
-- more, error}). Ends when a write fails: the client went away.
local function events(sock, req)
  if not http.start_stream(sock, {["Content-Type"] = "text/event-stream"}) then return end
  if not http.write(sock, "retry: 2000\n\n") then return end
  local flow = req.query.flow == "1"
  local me, agents = erlangen.self(), {}     -- node -> monitor ref of its agent
  local last, next_tick = nil, erlangen.now()
  while true do
    local m = erlangen.receive(left(next_tick))
    if type(m) == "table" and m[1] == "flow" then
      local edges
      local mine = "^<" .. erlangen.node():gsub("%p", "%%%0") .. "%."   -- as /api/processes shows them
      for i, e in ipairs(m[3] or {}) do
        edges = edges or {}
        edges[i] = {from = e[1]:gsub(mine, "<0."), to = e[2]:gsub(mine, "<0."), n = e[3]}
      end
      if not event(sock, "flow", {node = m[2], edges = edges, more = m[4], error = m[5]}) then return end
    elseif type(m) == "table" and m[1] == "DOWN" then
      for node, ref in pairs(agents) do
        if ref == m[2] then agents[node] = nil end
      end
    end
    if erlangen.now() >= next_tick then
      local deadline = erlangen.now() + NODE_TIMEOUT
      local now, names, spawned, exited, changed = {}, cluster(), {}, {}, {}
      for _, name in ipairs(names) do
        for _, info in ipairs(snapshot(name, deadline) or {}) do
          local row = process_json(info)
          now[row.pid] = row
          local before = last and last[row.pid]
          if last and not before then spawned[#spawned + 1] = row.pid end
          for _, f in ipairs(TICK_FIELDS) do
            if before and before[f] ~= row[f] then changed[#changed + 1] = row; break end
          end
        end
      end
      for pid in pairs(last or {}) do
        if not now[pid] then exited[#exited + 1] = pid end
      end
      local tick = {time = erlangen.system_time(), nodes = names, first = last == nil or nil,
                    spawned = spawned[1] and spawned, exited = exited[1] and exited,
                    changed = changed[1] and changed}
      if not event(sock, "tick", tick) then return end
      last = now
      if flow then
        for _, name in ipairs(names) do
          if not agents[name] then
            local o = {monitor = true, node = name ~= erlangen.node() and name or nil, timeout = 1}
            local ok, _, ref = pcall(erlangen.spawn_opt, o, "erlangen.observer.trace_agent", me, FLOW_INTERVAL)
            if ok then agents[name] = ref end
          end
        end
      end
      next_tick = erlangen.now() + TICK
    end
  end
end

-- Routing ----------------------------------------------------------------------------

local PAGES = {["/"] = true, ["/processes"] = true, ["/process"] = true, ["/tree"] = true, ["/flow"] = true}
local FILES = {["/app.js"] = "application/javascript", ["/style.css"] = "text/css"}
local ROUTES = {   -- path -> {method, handler}
  ["/api/nodes"] = {"GET", api.nodes}, ["/api/processes"] = {"GET", api.processes},
  ["/api/process"] = {"GET", api.process}, ["/api/tree"] = {"GET", api.tree},
  ["/api/kill"] = {"POST", api.kill},
}

local function send_json(sock, status, body)
  return http.respond(sock, status, {["Content-Type"] = "application/json"}, cjson.encode(body))
end

local function send_error(sock, status, message)
  return send_json(sock, status, {error = message})
end

local function read_www(cfg, name)
  local f = io.open(cfg.www .. name, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

-- Whether a and b are equal strings, in time that depends only on their lengths.
local function same_secret(a, b)
  if type(a) ~= "string" or #a ~= #b then return false end
  local diff = 0
  for i = 1, #b do diff = diff | (a:byte(i) ~ b:byte(i)) end
  return diff == 0
end

local function token_of(req)
  local auth = req.headers.authorization
  return req.query.token or req.headers["x-observer-token"] or (auth and auth:match("^Bearer%s+(%S+)$"))
end

-- Whether the Host header names this observer on loopback.
local function loopback_host(req, cfg)
  local host = req.headers.host or ""
  local name, port = host:match("^%[(.+)%]:(%d+)$")
  if not name then name, port = host:match("^([^:]+):(%d+)$") end
  return name ~= nil and tonumber(port) == cfg.port and is_loopback(name)
end

local function route(sock, req, cfg)
  if cfg.token then
    if not same_secret(token_of(req), cfg.token) then
      return send_error(sock, 401, "a token is required: ?token=, X-Observer-Token or Authorization: Bearer")
    end
  elseif not loopback_host(req, cfg) then
    return send_error(sock, 421, "this observer answers only to Host 127.0.0.1:" .. cfg.port
                                 .. " or localhost:" .. cfg.port)
  end
  local path = req.path
  local r = ROUTES[path]
  local method = r and r[1] or "GET"
  if req.method ~= method then
    return http.respond(sock, 405, {Allow = method, ["Content-Type"] = "application/json"},
                        cjson.encode({error = req.method .. " is not allowed here: " .. method .. " only"}))
  end
  if r then
    local status, body = r[2](req, cfg)
    return send_json(sock, status, body)
  elseif path == "/api/events" then
    return events(sock, req)
  elseif path == "/api/tree.svg" then
    local svg, why = require("erlangen.observer").svg()
    if not svg then return send_error(sock, 503, why) end
    return http.respond(sock, 200, {["Content-Type"] = "image/svg+xml"}, svg)
  elseif PAGES[path] or FILES[path] then
    local body = read_www(cfg, PAGES[path] and "index.html" or path:sub(2))
    if not body then return send_error(sock, 500, "the page's file is missing from " .. cfg.www) end
    if PAGES[path] then
      if cfg.allow_kill then body = body:gsub('data%-allow%-kill="0"', 'data-allow-kill="1"') end
      -- the page's own files and links carry the token the request was let in with
      if cfg.token then body = body:gsub('="(/[%w_./-]*)"', '="%1?token=' .. cfg.token .. '"') end
    end
    return http.respond(sock, 200, {["Content-Type"] = FILES[path] or "text/html; charset=utf-8"}, body)
  end
  return send_error(sock, 404, "no such path: " .. path)
end

-- The body of a connection's process: `fd` is the accepted socket, now its own.
function web.connection(fd, cfg)
  local sock = http.adopt(fd)
  erlangen.set_label("observer connection")
  local req, status, message = http.read_request(sock)
  if req then
    local ok, err = xpcall(route, debug.traceback, sock, req, cfg)
    if not ok then
      pcall(send_error, sock, 500, "internal error")
      pcall(function() require("erlangen.log").error("observer request failed", {path = req.path, error = err}) end)
    end
  elseif status ~= 0 then
    send_error(sock, status, message)
  end
  sock:close()
end

-- The command line -------------------------------------------------------------------

local MESH_EVERY = 5   -- seconds between two looks for nodes the observer is not connected to

-- `erlangen --observer [HOST:]PORT --connect NODE`: serves, prints the URL,
-- and connects to every node its nodes link to, now and every MESH_EVERY
-- seconds, so that the page shows the whole cluster. Runs until the
-- program is stopped. opts: listen, allow_kill.
function web.main(opts)
  local url, err = web.serve({listen = opts.listen, allow_kill = opts.allow_kill}, 2)
  if not url then error("observer: " .. err, 0) end
  io.stdout:write("observer: ", url, "\n")
  io.stdout:flush()
  while true do
    for node, peers in pairs(ask_links(cluster(), erlangen.now() + NODE_TIMEOUT)) do
      for _, p in ipairs(peers) do
        if p ~= erlangen.node() and node ~= p then erlangen.connect(p) end
      end
    end
    erlangen.sleep(MESH_EVERY)
  end
end

return web
