-- spec/global_spec.lua — erlangen.global across real OS processes on
-- loopback: this node and child nodes (spec/dist_helpers.lua) whose agents
-- run global calls there (spec/fixtures/pg_node.lua, pg_cluster.lua).
-- global.sync on a node returns once its name server has exchanged names
-- with the servers of all its nodes, so a replica is read after it.

local erlangen = require "erlangen"
local global = require "erlangen.global"
local H = require "spec.helpers"
local D = require "spec.dist_helpers"
local C = require "pg_cluster"

local self = erlangen.self
local must = C.must
local G = "erlangen.global"

-- Matches the forward (pg_node.member) of a message tagged `tag` to member `pid`.
local function member_got(pid, tag)
  return function(m)
    return type(m) == "table" and m[1] == "member_got" and m[2] == pid
      and type(m[3]) == "table" and m[3][1] == tag
  end
end

describe("erlangen.global", function()
  setup(function() D.this_node() end)
  teardown(D.teardown)
  before_each(D.before_each)
  after_each(D.after_each)

  it("registers a name that every node of three finds and sends to", function()
    local b, c = C.nodes(2)
    global.sync()
    must(b, G, "sync")
    must(c, G, "sync")
    local pb = must(b, "pg_node", "member", self())
    assert.is_true(must(b, G, "register_name", "svc", pb))
    assert.are.equal(pb, global.whereis_name("svc"))
    assert.are.equal(pb, must(c, G, "whereis_name", "svc"))
    assert.are.same({"svc"}, global.registered_names())
    assert.are.same({"svc"}, must(c, G, "registered_names"))
    assert.is_true(must(c, G, "send", "svc", {"hello", "from c"}))
    assert.are.same({"hello", "from c"}, H.recv(member_got(pb, "hello"), "the send through c")[3])
    assert.is_true(global.send("svc", {"hi"}))
    H.recv(member_got(pb, "hi"), "the send from this node")
  end)

  it("answers the first call on a node that comes up later with the names of the others", function()
    local b = C.nodes(1)
    local pb = must(b, "pg_node", "member", self())
    assert.is_true(must(b, G, "register_name", "early", pb))
    local px = H.idle()
    assert.is_true(global.register_name("here", px))
    local c = C.node({b})
    assert.are.equal(pb, must(c, G, "whereis_name", "early"))
    assert.are.same({"early", "here"}, must(c, G, "registered_names"))
    assert.is_false(must(c, G, "register_name", "here", must(c, "pg_node", "member", self())))
  end)

  it("refuses a name taken on another node, on both nodes of two", function()
    local b = C.nodes(1)
    must(b, G, "sync")
    local px = H.idle()
    assert.is_true(global.register_name("only", px))
    local pb = must(b, "pg_node", "member", self())
    assert.is_false(must(b, G, "register_name", "only", pb))
    assert.is_false(global.register_name("only", H.idle()))
    assert.are.equal(px, must(b, G, "whereis_name", "only"))
    assert.are.equal(px, global.whereis_name("only"))
  end)

  it("refuses a name taken on one of three nodes on the other two", function()
    local b, c = C.nodes(2)
    must(b, G, "sync")
    must(c, G, "sync")
    local pc = must(c, "pg_node", "member", self())
    assert.is_true(must(c, G, "register_name", "svc", pc))
    assert.is_false(global.register_name("svc", H.idle()))
    assert.is_false(must(b, G, "register_name", "svc", must(b, "pg_node", "member", self())))
    assert.are.equal(pc, must(b, G, "whereis_name", "svc"))
  end)

  it("unregisters the name of a process that exits, and by unregister_name, on every node", function()
    local b, c = C.nodes(2)
    must(b, G, "sync")
    must(c, G, "sync")
    local pb = must(b, "pg_node", "member", self())
    assert.is_true(must(b, G, "register_name", "gone", pb))
    local px = H.idle()
    assert.is_true(global.register_name("dropped", px))
    assert.are.equal(px, must(c, G, "whereis_name", "dropped"))
    must(b, "pg_node", "stop", pb)
    -- the release reaches the other servers by a message nobody else sees
    assert.is_true(must(c, "pg_node", "await_whereis", "gone", nil))
    assert.is_true(must(b, "pg_node", "await_whereis", "gone", nil))
    H.eventually(function() return global.whereis_name("gone") == nil end, "the release on this node")
    assert.is_true(must(c, G, "unregister_name", "dropped"))
    assert.is_false(must(c, G, "unregister_name", "dropped"))
    assert.is_nil(must(c, G, "whereis_name", "dropped"))
    H.eventually(function() return global.whereis_name("dropped") == nil end, "unregister on this node")
    assert.is_true(must(b, "pg_node", "await_whereis", "dropped", nil))
    assert.is_true(global.register_name("dropped", px))
    assert.are.same({"dropped"}, must(b, G, "registered_names"))
  end)

  -- The partition: the busted node runs no name server here, so it only
  -- relays orders; `isolated` closes its links to the other children, and
  -- nothing sends between the two sides until `isolated` connects again.
  for _, case in ipairs({{others = 1, what = "two nodes"}, {others = 2, what = "three nodes"}}) do
    it("keeps the registration of the lowest node name after a partition of " .. case.what .. " heals", function()
      local nodes = {C.nodes(case.others + 1)}
      local isolated = table.remove(nodes)
      local names = {}
      for i, n in ipairs(nodes) do names[i] = n.name end
      for _, n in ipairs(nodes) do must(n, G, "sync") end
      must(isolated, G, "sync")
      for _, n in ipairs(nodes) do must(n, "pg_node", "watch", {isolated.name}) end

      must(isolated, "pg_node", "disconnect", names)
      for _, n in ipairs(nodes) do must(n, "pg_node", "await_nodedown", isolated.name) end
      local pi = must(isolated, "pg_node", "member", self())
      local pa = must(nodes[1], "pg_node", "member", self())
      assert.is_true(must(isolated, G, "register_name", "x", pi))
      assert.is_true(must(nodes[1], G, "register_name", "x", pa))
      for _, n in ipairs(nodes) do assert.are.equal(pa, must(n, G, "whereis_name", "x")) end
      assert.are.equal(pi, must(isolated, G, "whereis_name", "x"))

      local addrs = {}
      for i, n in ipairs(nodes) do addrs[i] = n.addr end
      must(isolated, "pg_node", "connect", addrs)
      local winner, loser = pa, pi
      if isolated.name < nodes[1].name then winner, loser = pi, pa end
      local told = H.recv(member_got(loser, "global_name_conflict"), "the loser's message")[3]
      assert.are.same({"global_name_conflict", "x", winner}, told)
      for _, n in ipairs({isolated, table.unpack(nodes)}) do
        must(n, G, "sync")
        assert.are.equal(winner, must(n, G, "whereis_name", "x"))
        assert.are.same({"x"}, must(n, G, "registered_names"))
      end
      H.refute_message(member_got(winner, "global_name_conflict"), "a message to the winner")
    end)
  end

  describe("bad input", function()
    it("refuses a pid of another node, on both nodes of two", function()
      local b = C.nodes(1)
      local pb = must(b, "pg_node", "member", self())
      local err = H.error_of(function() global.register_name("n", pb) end)
      assert.matches("bad argument #2 to 'register_name' (local pid expected, got pid " ..
                     tostring(pb) .. " of node " .. b.name .. ")", err, 1, true)
      local ok, berr = C.try(b, G, "register_name", "n", self())
      assert.is_false(ok)
      assert.matches("bad argument #2 to 'register_name' (local pid expected", berr, 1, true)
      assert.are.same({}, must(b, G, "registered_names"))
    end)

    it("names the argument of the wrong type, and a send to a name nobody has", function()
      local cases = {
        {function() global.register_name(1, H.idle()) end,
         "bad argument #1 to 'register_name' (name (a string) expected, got number)"},
        {function() global.register_name("n", "p") end,
         "bad argument #2 to 'register_name' (pid expected, got string)"},
        {function() global.register_name("n", erlangen.ref()) end,
         "bad argument #2 to 'register_name' (pid expected, got ref)"},
        {function() global.whereis_name(nil) end,
         "bad argument #1 to 'whereis_name' (name (a string) expected, got nil)"},
        {function() global.unregister_name({}) end,
         "bad argument #1 to 'unregister_name' (name (a string) expected, got table)"},
        {function() global.send(self(), "m") end,
         "bad argument #1 to 'send' (name (a string) expected, got pid)"},
        {function() global.send("nobody", "m") end, "global.send: 'nobody' is not registered"},
      }
      for _, case in ipairs(cases) do
        assert.matches(case[2], H.error_of(case[1]), 1, true)
      end
      assert.are.same({}, global.registered_names())
    end)
  end)
end)
