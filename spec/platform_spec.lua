-- spec/platform_spec.lua — the kernel's calls for a cluster, across real
-- OS processes on loopback: node events (monitor_nodes), remote names
-- (whereis and monitor of {name, node}), and remote pids seen by
-- erlangen.type. Child nodes and puppets come from spec/dist_helpers.lua,
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
