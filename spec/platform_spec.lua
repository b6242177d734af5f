-- spec/platform_spec.lua — the kernel's calls for a cluster, across real
-- OS processes on loopback: node events (monitor_nodes), remote names
-- (whereis and monitor of {name, node}), and remote pids seen by
-- erlangen.type. Only /proc counts and a remote process's info are polled. Child nodes and puppets come from spec/dist_helpers.lua,
-- which says how they are started and ended.

local erlangen = require "erlangen"
local H = require "spec.helpers"
local D = require "spec.dist_helpers"

local HOST, DETECT = D.HOST, D.DETECT
local self = erlangen.self
local start_child, kill_child, puppet, must = D.start_child, D.kill_child, D.puppet, D.must

local function node_event(tag, name)
  return function(m) return type(m) == "table" and m[1] == tag and m[2] == name end
end

describe("the platform", function()
  setup(function() D.this_node() end)
  teardown(D.teardown)
  before_each(D.before_each)
  after_each(function()
    erlangen.monitor_nodes(false)
    erlangen.monitor_nodes(false)
    D.after_each()
  end)

  describe("erlangen.type of remote values", function()
    it("says pid for a pid of another node and ref for its refs", function()
      local b = start_child()
      local p = puppet(b)
      assert.are.equal("pid", erlangen.type(p))
      assert.is_true(erlangen.is_pid(p))
      assert.is_false(erlangen.is_ref(p))
      local ref = must(p, "ref")
      assert.are.equal("ref", erlangen.type(ref))
      assert.is_true(erlangen.is_ref(ref))
      assert.is_false(erlangen.is_pid(ref))
    end)
  end)

  describe("package paths", function()
    it("of a node are those of the process that started it, for the processes other nodes spawn there", function()
      local dir = os.tmpname()
      os.remove(dir)
      assert(os.execute("mkdir " .. H.quote(dir)))
      local f = assert(io.open(dir .. "/node_path_mod.lua", "w"))
      f:write("return {hello = function(to) require('erlangen').send(to, {'hello', package.path}) end}\n")
      f:close()
      local b = start_child{path = dir .. "/?.lua"}
      local ok, err = pcall(function()
        erlangen.spawn_opt({node = b.name}, "node_path_mod.hello", self())
        local m = H.recv(H.tagged("hello"), "the hello from the module on b's path")
        assert.are.equal(1, m[2]:find(dir .. "/?.lua;", 1, true))
      end)
      os.remove(dir .. "/node_path_mod.lua")
      os.remove(dir)
      assert(ok, err)
    end)
  end)

  describe("info and processes of another node", function()
    it("info of a remote pid is that node's view of it", function()
      local b = start_child()
      local p = puppet(b)
      must(p, "link", self())
      must(p, "send", self(), "hello")
      H.recv(function(m) return m == "hello" end, "the puppet's hello")
      local info
      assert.is_true(D.poll(function()   -- back in its receive after the send
        info = erlangen.info(p)
        return info.status == "waiting"
      end), "the puppet's status stays " .. tostring(info and info.status))
      assert.are.equal(b.name, info.node)
      assert.is_true(H.contains(info.links, self()), "links " .. H.show(info.links))
      assert.is_true(info.sent >= 3 and info.received >= 2, H.show(info))
      assert.are.equal("number", type(info.cpu))
      assert.are.equal(info, info)   -- a fresh table each time
      assert.are.equal(b.name, erlangen.info(p, 2).node)
      D.finish(p, "return")
      assert.is_true(D.poll(function() return erlangen.info(p) == nil end), "the ended puppet's info")
    end)

    it("processes(node) lists that node's processes as pids of it", function()
      local b = start_child()
      local p = puppet(b)
      local pids = erlangen.processes(b.name)
      assert.is_true(H.contains(pids, p), "the puppet is not among " .. H.show(pids))
      for _, pid in ipairs(pids) do assert.are.equal(b.name, erlangen.node(pid)) end
      assert.is_true(H.contains(erlangen.processes(erlangen.node()), self()))
      assert.is_true(H.contains(erlangen.processes(nil, 1), self()))
    end)

    it("snapshot(node) gives the info of every process there, each with its pid", function()
      local b = start_child()
      local p = puppet(b)
      local found
      local waiting = D.poll(function()   -- until the new puppet waits in its receive
        found = nil
        for _, info in ipairs(erlangen.snapshot(b.name)) do
          assert.are.equal(b.name, info.node)
          assert.are.equal(b.name, erlangen.node(info.pid))
          if info.pid == p then found = info end
        end
        assert.is_truthy(found, "the puppet is not in b's snapshot")
        return found.status == "waiting"
      end)
      assert.is_true(waiting, "the puppet's status stays " .. tostring(found and found.status))
      local mine
      for _, info in ipairs(erlangen.snapshot()) do if info.pid == self() then mine = info end end
      assert.are.equal(erlangen.node(), mine.node)
      assert.are.equal("running", mine.status)
    end)

    it("raise noconnection for a node that cannot be reached and timeout for one that does not answer", function()
      local far = "nobody@" .. HOST
      local err = H.error_of(function() erlangen.processes(far .. ":" .. D.closed_port(), 2) end)
      assert.matches("processes: on " .. far .. ": noconnection", err, 1, true)
      local b = start_child()
      local p = puppet(b)
      D.signal(b, "STOP")
      local err2 = H.error_of(function() erlangen.info(p, 0.3) end)
      D.signal(b, "CONT")
      assert.matches("info: on " .. b.name .. ": timeout", err2, 1, true)
    end)

    it("refuse a bad node, pid or timeout", function()
      D.this_node()
      assert.matches("bad argument #1 to 'processes'", H.error_of(function() erlangen.processes({}) end), 1, true)
      assert.matches("bad argument #1 to 'processes' (bad node name",
                     H.error_of(function() erlangen.processes("nohost") end), 1, true)
      assert.matches("bad argument #1 to 'info'", H.error_of(function() erlangen.info("x") end), 1, true)
      assert.matches("bad argument #2 to 'processes'",
                     H.error_of(function() erlangen.processes("b@" .. HOST, -1) end), 1, true)
    end)
  end)

  describe("whereis on another node", function()
    it("returns the pid registered there, or nil", function()
      local b = start_child()
      local p = puppet(b)
      must(p, "register", "ctr", p)
      assert.are.equal(p, erlangen.whereis("ctr", b.name))
      assert.are.equal(p, erlangen.whereis("ctr", b.name, 1))
      assert.is_nil(erlangen.whereis("nobody", b.name))
    end)

    it("with this node's name is the local whereis", function()
      D.this_node()
      erlangen.register("me_here", self())
      assert.are.equal(self(), erlangen.whereis("me_here", erlangen.node(), 0))
      erlangen.unregister("me_here")
      assert.is_nil(erlangen.whereis("me_here", erlangen.node()))
    end)

    it("raises noconnection for a node that cannot be reached, naming the name and the node", function()
      D.this_node()
      local err = H.error_of(erlangen.whereis, "ctr", "nobody@" .. HOST .. ":" .. D.closed_port(), 2)
      assert.matches("whereis: 'ctr' on nobody@" .. HOST .. ": noconnection", err, 1, true)
    end)

    it("raises timeout after its timeout for a node that does not answer", function()
      local b = start_child()
      D.signal(b, "STOP")
      local t0 = erlangen.now()
      local err = H.error_of(erlangen.whereis, "ctr", b.name, 0.3)
      D.signal(b, "CONT")
      assert.matches("whereis: 'ctr' on " .. b.name .. ": timeout", err, 1, true)
      assert.is_true(erlangen.now() - t0 < DETECT)
    end)

    it("refuses a bad name, node or timeout", function()
      D.this_node()
      local node = "b@" .. HOST
      local function err(...)
        local args = table.pack(...)
        return H.error_of(function() erlangen.whereis(table.unpack(args, 1, args.n)) end)
      end
      assert.matches("bad argument #1 to 'whereis' (string expected, got boolean)", err(true, node), 1, true)
      assert.matches("bad argument #1 to 'whereis' (name must be", err("", node), 1, true)
      assert.matches("bad argument #2 to 'whereis' (bad node name 'nohost'", err("x", "nohost"), 1, true)
      assert.matches("bad argument #2 to 'whereis'", err("x", {}), 1, true)
      assert.matches("bad argument #3 to 'whereis' (timeout must be", err("x", node, -1), 1, true)
    end)
  end)

  describe("monitor of {name, node}", function()
    it("gives a DOWN naming {name, node} with the reason when the process ends", function()
      local b = start_child()
      local p = puppet(b)
      must(p, "register", "ctr", p)
      local ref = erlangen.monitor({"ctr", b.name})
      assert.is_true(erlangen.is_ref(ref))
      D.finish(p, "die", "enough")
      local m = H.recv(H.is_down(ref), "the DOWN")
      assert.are.same({"ctr", b.name}, m[3])
      assert.are.equal("enough", m[4])
    end)

    it("gives noproc at once for a name that is not registered there", function()
      local b = start_child()
      local ref = erlangen.monitor({"nobody", b.name})
      local m = H.recv(H.is_down(ref), "the DOWN", DETECT)
      assert.are.same({"nobody", b.name}, m[3])
      assert.are.equal("noproc", m[4])
    end)

    it("on this node monitors the local name, and gives noproc when it is not registered", function()
      D.this_node()
      local pid = erlangen.spawn(function() erlangen.receive() end)
      erlangen.register("local_ctr", pid)
      local ref = erlangen.monitor({"local_ctr", erlangen.node()})
      erlangen.exit(pid, "kill")
      local m = H.recv(H.is_down(ref), "the DOWN")
      assert.are.same({"local_ctr", erlangen.node()}, m[3])
      assert.are.equal("killed", m[4])
      local ref2 = erlangen.monitor({"local_ctr", erlangen.node()})
      local m2 = H.recv(H.is_down(ref2), "the noproc DOWN")
      assert.are.same({"local_ctr", erlangen.node()}, m2[3])
      assert.are.equal("noproc", m2[4])
    end)

    it("gives noconnection when the node is killed, or cannot be reached", function()
      local b = start_child()
      local p = puppet(b)
      must(p, "register", "ctr", p)
      local ref = erlangen.monitor({"ctr", b.name})
      assert.are.equal(p, erlangen.whereis("ctr", b.name))   -- the monitor is set by now
      kill_child(b)
      local m = H.recv(H.is_down(ref), "the DOWN", DETECT)
      assert.are.same({"ctr", b.name}, m[3])
      assert.are.equal("noconnection", m[4])
      local far = "nobody@" .. HOST
      local ref2 = erlangen.monitor({"ctr", far .. ":" .. D.closed_port()})
      local m2 = H.recv(H.is_down(ref2), "the DOWN of an unreachable node", DETECT)
      assert.are.same({"ctr", far}, m2[3])
      assert.are.equal("noconnection", m2[4])
    end)

    it("taken down with demonitor gives no DOWN, and the other node drops the monitor", function()
      local b = start_child()
      local p = puppet(b)
      must(p, "register", "ctr", p)
      for round = 1, 2 do
        local ref = erlangen.monitor({"ctr", b.name})
        if round == 2 then erlangen.whereis("ctr", b.name) end   -- once after the node answered
        erlangen.demonitor(ref)
        local gone = D.poll(function() return #must(p, "info", p).monitored_by == 0 end)
        assert.is_true(gone, "the puppet is still monitored: " .. H.show(must(p, "info", p).monitored_by))
      end
      D.finish(p, "die", "enough")
      H.refute_message(H.is_down(), "a DOWN after demonitor")
    end)

    it("demonitor with flush removes a DOWN already queued", function()
      local b = start_child()
      local ref = erlangen.monitor({"nobody", b.name})
      assert.is_nil(erlangen.whereis("nobody", b.name))   -- the noproc DOWN is queued by now
      erlangen.demonitor(ref, true)
      H.refute_message(H.is_down(ref), "the flushed DOWN")
    end)

    it("refuses a malformed {name, node}", function()
      D.this_node()
      for _, bad in ipairs{{}, {"x"}, {1, "b@" .. HOST}, {"x", 2}, {"", "b@" .. HOST}} do
        assert.matches("bad argument #1 to 'monitor'", H.error_of(function() erlangen.monitor(bad) end))
      end
      assert.matches("bad node name", H.error_of(erlangen.monitor, {"x", "nohost"}))
    end)
  end)

  describe("node_names", function()
    -- A daemon of this test's own on a free port; names are registered over
    -- luasocket, and node_names runs in a child interpreter that the
    -- environment points at that daemon.
    local socket = require "socket"
    local daemon, regs

    before_each(function()
      local f = assert(io.popen("sh -c " .. H.quote("echo $$; exec timeout -k 2 60 " .. H.quote(D.BIN) ..
                                                    " --port-mapper --port 0 2>&1"), "r"))
      daemon = {pid = tonumber(f:read("l")), port = tonumber(f:read("l")), f = f}
      assert(daemon.port, "the port mapper did not start")
      regs = {}
    end)

    after_each(function()
      for _, c in ipairs(regs) do c:close() end
      os.execute("kill -TERM " .. daemon.pid)
      daemon.f:close()
    end)

    local function register(name, port)
      local c = assert(socket.connect("127.0.0.1", daemon.port))
      c:settimeout(5)
      assert(c:send("REGISTER " .. name .. " " .. port .. "\n"))
      assert.are.equal("OK", c:receive("*l"))
      regs[#regs + 1] = c
    end

    -- Runs `code` in a child erlangen that asks this test's daemon; returns its output.
    local function child(code, port)
      local p = assert(io.popen(string.format("ERLANGEN_PORT_MAPPER_PORT=%d timeout 20 %s -e %s 2>&1",
                                              port or daemon.port, H.quote(D.BIN), H.quote(code))))
      local out = p:read("a")
      p:close()
      return out
    end

    local LIST = [[
local e = require "erlangen"
for _, n in ipairs(e.node_names(...)) do io.write(n.name, "=", n.port, " ") end
print("end")]]

    it("lists the names registered with the port mapper, sorted, with their ports", function()
      register("zeta", 9101)
      register("alpha", 9102)
      register("mid", 9103)
      assert.are.equal("alpha=9102 mid=9103 zeta=9101 end\n", child(LIST))
      assert.are.equal("alpha=9102 mid=9103 zeta=9101 end\n", child((LIST:gsub("%.%.%.", "'localhost', 1"))))
      regs[1]:close()
      table.remove(regs, 1)
      local out
      for _ = 1, 50 do   -- the daemon drops zeta when it sees the close
        out = child(LIST)
        if not out:find("zeta", 1, true) then break end
      end
      assert.are.equal("alpha=9102 mid=9103 end\n", out)
    end)

    it("returns an empty list when nothing is registered", function()
      assert.are.equal("end\n", child(LIST))
    end)

    it("raises naming the host when no port mapper answers", function()
      local out = child([[print(pcall(require("erlangen").node_names, nil, 1))]], D.closed_port())
      assert.matches("^false\tnode_names: ", out)
      assert.matches("127.0.0.1", out, 1, true)
    end)

    it("refuses a bad timeout", function()
      assert.matches("bad argument #2 to 'node_names'",
                     H.error_of(function() erlangen.node_names(nil, 0) end), 1, true)
      assert.matches("bad argument #1 to 'node_names'",
                     H.error_of(function() erlangen.node_names({}) end), 1, true)
    end)
  end)

  describe("monitor_nodes", function()
    it("sends nodeup when a node connects, and nodedown with a reason when it is killed", function()
      assert.is_true(erlangen.monitor_nodes(true))
      local b = start_child()
      H.recv(node_event("nodeup", b.name), "the nodeup", DETECT)
      kill_child(b)
      local m = H.recv(node_event("nodedown", b.name), "the nodedown", DETECT)
      assert.are.equal("noconnection", m[3])
      H.refute_message(function(x) return type(x) == "table" and x[1] == "nodeup" end, "a second nodeup")
    end)

    it("reports nodes that another process connects to, and their disconnect as closed", function()
      erlangen.monitor_nodes(true)
      local b = start_child{connect = false}
      erlangen.spawn(function(addr) erlangen.connect(addr) end, b.addr)
      H.recv(node_event("nodeup", b.name), "the nodeup", DETECT)
      assert.is_true(erlangen.disconnect(b.name))
      assert.are.equal("closed", H.recv(node_event("nodedown", b.name), "the nodedown", DETECT)[3])
    end)

    it("sends nodedown after the link's noconnection DOWN and monitor_node's nodedown", function()
      local b = start_child()
      local p = puppet(b)
      local ref = erlangen.monitor(p)
      erlangen.monitor_nodes(true)
      erlangen.monitor_node(b.name)
      kill_child(b)
      local seen = {}
      for _ = 1, 3 do
        local m = H.recv(function(x)
          return type(x) == "table" and ((x[1] == "DOWN" and x[2] == ref) or
                                         (x[1] == "nodedown" and x[2] == b.name))
        end, "the DOWN and the two nodedowns", DETECT)
        seen[#seen + 1] = m[1] .. "/" .. #m
      end
      assert.are.same({"DOWN/4", "nodedown/2", "nodedown/3"}, seen)
    end)

    it("sends no nodedown for a node that never came up", function()
      erlangen.monitor_nodes(true)
      local name = "nobody@" .. HOST
      assert.is_false(erlangen.connect(name .. ":" .. D.closed_port()))
      H.refute_message(node_event("nodedown", name), "a nodedown for a node that was never up")
    end)

    it("counts subscriptions, and monitor_nodes(false) removes one", function()
      erlangen.monitor_nodes(true)
      erlangen.monitor_nodes(true)
      erlangen.monitor_nodes(true)
      erlangen.monitor_nodes(false)
      local b = start_child()
      H.recv(node_event("nodeup", b.name), "the first nodeup", DETECT)
      H.recv(node_event("nodeup", b.name), "the second nodeup", DETECT)
      H.refute_message(node_event("nodeup", b.name), "a third nodeup")
      erlangen.monitor_nodes(false)
      erlangen.monitor_nodes(false)
      kill_child(b)
      H.refute_message(node_event("nodedown", b.name), "a nodedown after unsubscribing")
    end)

    it("tells processes on other nodes, and ends a subscriber's subscription with it", function()
      local b = start_child()
      local c = start_child()
      local p = puppet(b)
      must(p, "monitor_nodes", true)
      must(p, "connect", c.addr)
      local up = D.reported(p, node_event("nodeup", c.name), "the puppet's nodeup")
      assert.are.equal(c.name, up[2])
      kill_child(c)
      local down = D.reported(p, node_event("nodedown", c.name), "the puppet's nodedown")
      assert.are.equal("noconnection", down[3])
    end)

    it("raises for a missing flag", function()
      assert.has_error(function() erlangen.monitor_nodes() end,
                       "bad argument #1 to 'monitor_nodes' (value expected)")
    end)
  end)
end)
