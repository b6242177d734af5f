-- spec/dist_helpers.lua — child nodes for the multi-node specs
-- (spec/dist_spec.lua, spec/netlink_spec.lua): this node, child nodes as
-- real `erlangen` OS processes on loopback, puppets on them, and /proc
-- counts.
--
-- The busted process is one node ("spec@127.0.0.1", tick D.TICK), started
-- once by the first D.this_node() and shared by every spec file of the run.
-- Every other node is a child `$ERLANGEN_BIN` running dist_node.main (see
-- spec/fixtures/dist_node.lua) under `timeout -s KILL`, so a leftover dies
-- on its own; D.stop_children (in after_each) kills each child of the test
-- by pid with SIGKILL and waits for this node's nodedown of those it was
-- linked to. Children get fresh names, so no test sees another's node.
--
-- Use in a spec file:
--   local D = require "spec.dist_helpers"
--   setup(D.this_node); teardown(D.teardown)
--   before_each(D.before_each); after_each(D.after_each)
-- Every wait is bounded (H.TIMEOUT unless told); only /proc counts are
-- polled (D.poll).

local erlangen = require "erlangen"
local H = require "spec.helpers"
local socket = require "socket"
local assert = require "luassert"

local D = {}

D.BIN = os.getenv("ERLANGEN_BIN") or "build/erlangen"
D.HOST = "127.0.0.1"
D.TICK = 1          -- seconds: the tick of this node and of every child
D.LIFE = 120        -- seconds a child node may live at most
D.DETECT = 3 * D.TICK -- a lost link must be noticed within this

local self = erlangen.self

-- Files and processes ------------------------------------------------------

-- `s` quoted for sh.
D.q = H.quote

-- The contents of `path`, or "" if it cannot be read.
function D.read_file(path) return H.read_file(path) or "" end

local function write_file(path, bytes, mode)
  local f = assert(io.open(path, "wb"))
  f:write(bytes)
  f:close()
  assert(os.execute("chmod " .. (mode or "600") .. " " .. D.q(path)))
end

-- A new key file (mode 0600 unless told) holding `bytes`; the caller
-- removes it.
function D.key_file(bytes, mode)
  local path = os.tmpname()
  write_file(path, bytes, mode)
  return path
end

function D.random_bytes(n)
  local f = assert(io.open("/dev/urandom", "rb"))
  local s = f:read(n)
  f:close()
  return s
end

-- The cluster key of this node and its children (D.KEY), and a key of
-- another cluster (D.OTHER_KEY): paths fixed for the run, whose files
-- D.teardown removes and D.ensure_keys writes again with the same bytes,
-- so each spec file can clean up after itself.
--
-- busted runs each spec file insulated: the modules a file required are
-- loaded afresh for the next one, but this node stays started (the C
-- module's state). So what must outlive a file (this node's name and port,
-- the keys it was started with, the child serial) is kept in the Lua
-- registry, which busted leaves alone.
local kept = debug.getregistry()["spec.dist_helpers"]
if not kept then
  kept = {key_bytes = {D.random_bytes(32), D.random_bytes(32)},
          keys = {os.tmpname(), os.tmpname()}, me = {}, serial = 0}
  debug.getregistry()["spec.dist_helpers"] = kept
end
local key_bytes = kept.key_bytes
D.KEY, D.OTHER_KEY = kept.keys[1], kept.keys[2]

function D.ensure_keys()
  for i, path in ipairs({D.KEY, D.OTHER_KEY}) do
    if D.read_file(path) ~= key_bytes[i] then write_file(path, key_bytes[i]) end
  end
end

-- The Threads count of OS process `pid`.
function D.os_threads(pid)
  return tonumber(D.read_file("/proc/" .. pid .. "/status"):match("Threads:%s*(%d+)"))
end

-- A TCP port on loopback that nobody listens on (bound, then closed).
function D.closed_port()
  local s = assert(socket.bind(D.HOST, 0))
  local _, port = s:getsockname()
  s:close()
  return tonumber(port)
end

-- This node -------------------------------------------------------------------

D.me = kept.me   -- name, port, addr of the busted process's node

-- Starts this node once (a later call returns the same D.me).
function D.this_node()
  D.ensure_keys()
  local me = D.me
  if not me.name then
    me.name, me.port = erlangen.start_node{
      name = "spec@" .. D.HOST, listen = D.HOST .. ":0", key_file = D.KEY, tick = D.TICK,
      port_mapper = false,
    }
    me.addr = me.name .. ":" .. me.port
  end
  return me
end

-- Removes the key files (D.this_node and D.start_child write them again)
-- and stops trapping exits.
function D.teardown()
  erlangen.trap_exit(false)
  os.remove(D.KEY)
  os.remove(D.OTHER_KEY)
end

-- Each test traps exits (a child's link may end), and ends with its
-- children stopped and H.after's clean-up.
function D.before_each()
  H.before()
  erlangen.trap_exit(true)
end

function D.after_each()
  erlangen.trap_exit(true)
  D.stop_children()
  H.after()
  erlangen.trap_exit(true)
end

-- Child nodes ---------------------------------------------------------------

local children = {}   -- the child nodes of the running test

-- Starts a child node. opts: prefix (of the name), name (exact), key_file,
-- listen, tick, path (put first on package.path before the node starts), connect (a node it connects to at start: by default this
-- node, false for none), refused (its connect to this node is expected to
-- fail). Returns {name, addr, pid, port, f, err, connect_line}, or
-- {name, failed, stderr} when the node did not start.
-- A child that connected to this node is "joined": this node also knows its
-- port, so either side can reconnect.
function D.start_child(opts)
  opts = opts or {}
  local me = D.this_node()
  kept.serial = kept.serial + 1
  local name = opts.name or string.format("%s%d@%s", opts.prefix or "n", kept.serial, D.HOST)
  local connect = opts.connect
  if connect == nil then connect = me.addr end
  local errfile = os.tmpname()
  local code = string.format(
    "require('dist_node').main{name=%q, key_file=%q, tick=%s, listen=%q, connect=%s, path=%s}",
    name, opts.key_file or D.KEY, opts.tick or D.TICK, opts.listen or (D.HOST .. ":0"),
    connect and string.format("%q", connect) or "nil", opts.path and string.format("%q", opts.path) or "nil")
  local cmd = string.format("exec timeout -s KILL %d %s -e %s 2>%s",
                            D.LIFE, D.q(D.BIN), D.q(code), D.q(errfile))
  local f = assert(io.popen(cmd, "r"))
  local line = f:read("l") or ""
  local pid, port = line:match("^(%d+) (%d+)$")
  local c = {name = name, f = f, err = errfile, first_line = line}
  if not pid then
    c.failed = line .. (f:read("a") or "")
    f:close()
    c.stderr = D.read_file(errfile)
    os.remove(errfile)
    return c
  end
  c.pid, c.port = tonumber(pid), tonumber(port)
  c.addr = name .. ":" .. port
  children[#children + 1] = c
  if connect then
    c.connect_line = f:read("l")
    if connect == me.addr and not opts.refused then
      assert(c.connect_line == "connect true nil",
             "child " .. name .. " could not join: " .. tostring(c.connect_line) .. "\n" .. D.read_file(errfile))
      assert(erlangen.connect(c.addr))   -- so this node knows its port too
      c.joined = true
    end
  end
  return c
end

-- What child `c` wrote to stderr so far.
function D.stderr_of(c) return D.read_file(c.err) end

-- The states of the threads of OS process `pid` ("S", "R", "T", ...; from
-- /proc/PID/task/*/stat), as one string.
function D.thread_states(pid)
  local p = io.popen("cat /proc/" .. pid .. "/task/*/stat 2>/dev/null")
  local states = {}
  for st in p:read("a"):gmatch("%) (%a) ") do states[#states + 1] = st end
  p:close()
  return table.concat(states)
end

-- Sends signal `sig` ("STOP", "CONT", ...) to child `c`. For "STOP" it
-- returns once every thread of the child is stopped: kill(2) returns when
-- the signal is queued, and the group stop begins only when the one thread
-- the kernel woke for it runs; until then (milliseconds on a loaded
-- machine) the child's other threads still read their sockets and answer.
function D.signal(c, sig)
  assert(os.execute("kill -" .. sig .. " " .. c.pid))
  if sig == "STOP" then
    local states
    local stopped = D.poll(function()
      states = D.thread_states(c.pid)
      return states ~= "" and not states:find("[^Tt]")
    end)
    assert(stopped, "child " .. c.name .. " did not stop: its threads are " .. tostring(states))
  end
end

-- Kills a child with SIGKILL and reaps it.
function D.kill_child(c)
  if c.dead then return end
  os.execute("kill -KILL " .. c.pid .. " 2>/dev/null")
  c.f:close()
  c.dead = true
end

-- Kills every child of the test; waits until this node has heard of the
-- end of each one it was linked to (its nodedown comes after every
-- noconnection EXIT and DOWN of that link).
function D.stop_children()
  for _, c in ipairs(children) do D.kill_child(c) end
  local waiting = {}
  for _, c in ipairs(children) do
    if c.joined then
      erlangen.monitor_node(c.name)
      waiting[#waiting + 1] = c.name
    end
  end
  for _, name in ipairs(waiting) do
    H.recv(function(m) return type(m) == "table" and m[1] == "nodedown" and m[2] == name end,
           "the nodedown of " .. name)
  end
  for _, c in ipairs(children) do os.remove(c.err) end
  children = {}
end

-- Remote processes -----------------------------------------------------------

-- A puppet (dist_node.puppet) on node `c` reporting to this process.
-- opts: more spawn_opt options (link, monitor, trap_exit, timeout).
function D.puppet(c, opts)
  local o = {node = c.name}
  for k, v in pairs(opts or {}) do o[k] = v end
  return erlangen.spawn_opt(o, "dist_node.puppet", self())
end

-- Tells puppet `p` to run erlangen[op](...) and returns what it returned:
-- the pcall status, then the results.
function D.order(p, op, ...)
  assert(erlangen.send(p, {"do", op, ...}))
  local m = H.recv(function(m)
    return type(m) == "table" and m[1] == "done" and m[2] == p and m[3] == op
  end, "puppet " .. tostring(p) .. " to do " .. op)
  return table.unpack(m, 4)
end

-- Like D.order, and the call must not have raised.
function D.must(p, op, ...)
  local r = table.pack(D.order(p, op, ...))
  assert(r[1] == true, op .. " raised on the puppet: " .. H.show(r[2]))
  return table.unpack(r, 2, r.n)
end

-- Tells puppet `p` to end: "return" (normal), "error" (raises `reason`)
-- or "die" (exit(reason)).
function D.finish(p, how, reason)
  assert(erlangen.send(p, {"do", how, reason}))
end

-- Waits for puppet `p` to report a message matching `match`; returns it.
function D.reported(p, match, what, timeout)
  local m = H.recv(function(m)
    return type(m) == "table" and m[1] == "got" and m[2] == p and match(m[3])
  end, what or ("a report from " .. tostring(p)), timeout)
  return m[3]
end

-- The reason of the EXIT from `pid` to this process.
function D.exit_reason_from(pid, what, timeout)
  return H.recv(H.is_exit(pid), what or ("EXIT from " .. tostring(pid)), timeout)[3]
end

-- A local process that links to `target` (which may be remote), and also
-- monitors it with monitor = true, then forwards what it receives as
-- {"linker_got", msg}. Sends {"linked", pid} once linked. Returns its pid
-- and the ref of this process's monitor on it.
function D.local_linker(target, monitor)
  local pid, ref = erlangen.spawn_monitor(function(t, parent, mon)
    erlangen.link(t)
    if mon then erlangen.monitor(t) end
    erlangen.send(parent, {"linked", erlangen.self()})
    while true do
      local m = erlangen.receive()
      erlangen.send(parent, {"linker_got", m})
    end
  end, target, self(), monitor or false)
  H.recv(function(m) return type(m) == "table" and m[1] == "linked" and m[2] == pid end, "the linker")
  return pid, ref
end

-- A dead pid of node `c`: a process that returned at once.
function D.dead_remote_pid(c)
  local pid, ref = erlangen.spawn_opt({node = c.name, monitor = true}, "dist_node.reply_args", self())
  assert.are.equal("normal", H.await_down(ref, "the short-lived remote process"))
  H.recv(H.tagged("args"), "its args")
  return pid
end

-- /proc: TCP links between two OS processes ---------------------------------

-- The socket inodes of OS process pid.
function D.socket_inodes(pid)
  local set = {}
  local p = io.popen("ls -l /proc/" .. pid .. "/fd 2>/dev/null")
  for inode in p:read("a"):gmatch("socket:%[(%d+)%]") do set[inode] = true end
  p:close()
  return set
end

-- The number of ESTABLISHED TCP connections whose one end belongs to OS
-- process a and the other to OS process b (each connection is counted
-- once, from a's end). An end is found by its whole address pair: a local
-- port alone is ambiguous (a TIME_WAIT socket or a listener may share it).
function D.tcp_links(a, b)
  local ia, ib = D.socket_inodes(a), D.socket_inodes(b)
  local by_pair, lines = {}, {}
  for _, path in ipairs({"/proc/net/tcp", "/proc/net/tcp6"}) do
    for line in D.read_file(path):gmatch("[^\n]+") do
      local loc, rem, st, inode = line:match(
        "^%s*%d+:%s+(%S+)%s+(%S+)%s+(%x%x)%s+%S+%s+%S+%s+%S+%s+%d+%s+%d+%s+(%d+)")
      if loc and st == "01" then
        by_pair[loc .. " " .. rem] = inode
        lines[#lines + 1] = {loc = loc, rem = rem, inode = inode}
      end
    end
  end
  local n = 0
  for _, l in ipairs(lines) do
    if ia[l.inode] and ib[by_pair[l.rem .. " " .. l.loc] or ""] then n = n + 1 end
  end
  return n
end

-- Polls (bounded) until cond() is true; returns whether it became true.
function D.poll(cond, limit)
  local deadline = erlangen.now() + (limit or H.TIMEOUT)
  while not cond() do
    if erlangen.now() > deadline then return false end
    erlangen.sleep(0.01)
  end
  return true
end

return D
