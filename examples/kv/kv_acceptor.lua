-- kv_acceptor.lua — the process that owns the listening socket and hands each
-- accepted connection to a new worker of the pool.
--
-- A socket is a userdata and cannot be sent to another process, but its file
-- descriptor can: the acceptor accepts, reads nothing (so no byte sits in
-- luasocket's buffer on this side), takes the fd number with getfd() and
-- lets go of it with setfd(-1), so that closing or collecting its object
-- never closes the fd. Then it asks the pool for a worker that adopts the fd
-- (kv_conn.adopt). Only if no worker acknowledged does the acceptor close it.
local erlangen = require "erlangen"
local socket = require "socket"
local supervisor = require "erlangen.supervisor"
local log = require "erlangen.log"
local kv_boot = require "kv_boot"

local kv_acceptor = {}

kv_acceptor.NAME = "kv_acceptor"
kv_acceptor.ACCEPT_TIMEOUT = 0.25   -- seconds; a kill lands within this bound
kv_acceptor.MAX_CONNECTIONS = 100   -- beyond this, a client gets "ERROR busy"

-- Start function: opts = {port=, host=}. Returns once the socket listens,
-- or nil and the bind error. Called in kv_conn_sup's process, after the pool.
function kv_acceptor.start_link(opts)
  return kv_boot.spawn_ack("kv_acceptor.loop", opts)
end

-- Takes the name, waiting for the previous acceptor to let go of it. When
-- kv_conn_sup is killed, its acceptor dies with it, but only once its
-- accept() returns (up to ACCEPT_TIMEOUT later), while the new kv_conn_sup
-- is already starting this one. A name is released after the process's
-- state, and so its listening socket, is closed: once the name is ours, the
-- port is free too.
local function register_when_free(name)
  local deadline = erlangen.now() + 1 + kv_acceptor.ACCEPT_TIMEOUT
  while not pcall(erlangen.register, name, erlangen.self()) do
    if erlangen.now() > deadline then
      error("kv_acceptor: the name " .. name .. " is still held by " .. tostring(erlangen.whereis(name)), 0)
    end
    erlangen.sleep(0.01)
  end
end

-- Binds, retrying briefly: a closed listening socket can still hold the
-- port for a moment.
local function listen(host, port)
  local srv, err
  for _ = 1, 20 do
    srv, err = socket.bind(host, port, 64)
    if srv then return srv end
    if not tostring(err):find("in use", 1, true) then break end
    erlangen.sleep(0.05)
  end
  return nil, err
end

-- The pool: the child "pool" of the supervisor that started the acceptor.
-- The pool has no name on purpose: a restarted kv_conn_sup must be able to
-- start a new pool while the old one is still stopping its workers.
local function find_pool()
  local parent = erlangen.info(erlangen.self()).parent
  for _, c in ipairs(supervisor.which_children(parent)) do
    if c.id == "pool" and c.pid then return c.pid end
  end
  error("kv_acceptor: no running pool under " .. tostring(parent), 0)
end

-- Closes an fd that no worker took.
local function close_fd(fd)
  local c = socket.tcp()
  c:setfd(fd)
  c:close()
end

-- Hands the accepted client to a new pool worker; the client object gives up
-- its fd either way.
local function hand_off(pool, client)
  local peer_host, peer_port = client:getpeername()
  local fd = client:getfd()
  client:setfd(-1)  -- from here the fd belongs to the worker being started
  local ok, pid, reason = pcall(function()
    local counts = supervisor.count_children(pool)
    if counts.active >= kv_acceptor.MAX_CONNECTIONS then return nil, "busy" end
    return supervisor.start_child(pool, fd)
  end)
  if ok and pid then
    log.info("connection accepted", {peer = tostring(peer_host) .. ":" .. tostring(peer_port),
                                     worker = pid})
    return
  end
  if not ok then reason = pid end
  log.warning("connection refused", {peer = tostring(peer_host) .. ":" .. tostring(peer_port),
                                     reason = reason})
  -- The worker never acknowledged (or was never started), so it never took
  -- the fd. A pool that died during the call may have left it open: the
  -- acceptor is restarted with the pool then, and the fd is lost rather than
  -- closed twice.
  if not ok and type(reason) == "table" and reason[1] == "exit" then return end
  if reason == "busy" then
    local c = socket.tcp()
    c:setfd(fd)
    c:settimeout(1)
    c:send("ERROR busy\r\n")
    c:close()
    return
  end
  close_fd(fd)
end

-- The process body.
function kv_acceptor.loop(starter, opts)
  erlangen.set_label("acceptor")
  register_when_free(kv_acceptor.NAME)
  local srv, err = listen(opts.host or "127.0.0.1", opts.port)
  if not srv then error("kv_acceptor: cannot listen on port " .. tostring(opts.port) .. ": " .. tostring(err), 0) end
  srv:settimeout(kv_acceptor.ACCEPT_TIMEOUT)
  kv_boot.ack(starter)
  -- Asked after the ack: until then the supervisor is busy starting us.
  local pool = find_pool()
  local _, port = srv:getsockname()
  log.info("listening", {port = port})
  while true do
    local client, aerr = srv:accept()
    if client then
      hand_off(pool, client)
    elseif aerr ~= "timeout" then
      log.warning("accept failed", {reason = aerr})
      erlangen.sleep(0.1)
    end
  end
end

return kv_acceptor
