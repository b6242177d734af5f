-- spec/pg_spec.lua — erlangen.pg across real OS processes on loopback: this
-- node and child nodes (spec/dist_helpers.lua) whose agents run pg calls
-- there (spec/fixtures/pg_node.lua, pg_cluster.lua). A replica is awaited
-- through the scope's own notifications (pg_node.wait_members), never
-- polled.

local erlangen = require "erlangen"
local pg = require "erlangen.pg"
local H = require "spec.helpers"
local D = require "spec.dist_helpers"
local C = require "pg_cluster"
local pg_node = require "pg_node"

local self = erlangen.self
local must, set = C.must, C.set
local PG = "erlangen.pg"

-- Notification {ref, kind, group, pids}.
local function note(ref, kind, group)
  return function(m) return type(m) == "table" and m[1] == ref and m[2] == kind and m[3] == group end
end

describe("erlangen.pg", function()
  setup(function() D.this_node() end)
  teardown(D.teardown)
  before_each(D.before_each)
  after_each(D.after_each)

  it("shows joins and leaves on every node of three, in members, local_members and which_groups", function()
    local b, c = C.nodes(2)
    local px = H.idle()
    local pb = must(b, "pg_node", "member", self())
    local pc = must(c, "pg_node", "member", self())
    assert.is_true(pg.join("g", px))
    assert.is_true(must(b, PG, "join", "g", pb))
    assert.is_true(must(c, PG, "join", "g", {pc, pc}))
    local all = set{px, pb, pc, pc}
    assert.are.same(all, set(pg_node.wait_members("g", 4)))
    assert.are.same(all, set(must(b, "pg_node", "wait_members", "g", 4)))
    assert.are.same(all, set(must(c, "pg_node", "wait_members", "g", 4)))
    assert.are.same({tostring(pb)}, set(must(b, PG, "local_members", "g")))
    assert.are.same({tostring(px)}, set(pg.local_members("g")))
    assert.are.same({"g"}, must(c, PG, "which_groups"))

    assert.is_true(must(b, PG, "leave", "g", pb))
    assert.is_false(must(b, PG, "leave", "g", pb))
    assert.is_true(must(c, PG, "leave", "g", pc))   -- one of its two joins
    local rest = set{px, pc}
    assert.are.same(rest, set(pg_node.wait_members("g", 2)))
    assert.are.same(rest, set(must(b, "pg_node", "wait_members", "g", 2)))
    assert.are.same(rest, set(must(c, "pg_node", "wait_members", "g", 2)))
    assert.are.same({}, must(b, PG, "local_members", "g"))
  end)

  it("removes a member that exits from the groups of both nodes of two", function()
    local b = C.nodes(1)
    local pb = must(b, "pg_node", "member", self())
    must(b, PG, "join", "g", pb)
    assert.are.same({tostring(pb)}, set(pg_node.wait_members("g", 1)))
    must(b, "pg_node", "stop", pb, "crash")
    assert.are.same({}, pg_node.wait_members("g", 0))
    assert.are.same({}, must(b, "pg_node", "wait_members", "g", 0))
    assert.are.same({}, must(b, PG, "which_groups"))
  end)

  it("removes a member that exits from every node of three", function()
    local b, c = C.nodes(2)
    local px = H.idle()
    pg.join("g", px)
    pg.join("h", px)
    assert.are.same({tostring(px)}, set(must(b, "pg_node", "wait_members", "g", 1)))
    assert.are.same({tostring(px)}, set(must(c, "pg_node", "wait_members", "h", 1)))
    erlangen.exit(px, "kill")
    assert.are.same({}, must(b, "pg_node", "wait_members", "g", 0))
    assert.are.same({}, must(c, "pg_node", "wait_members", "h", 0))
    assert.are.same({}, must(c, "pg_node", "wait_members", "g", 0))
    assert.are.same({}, pg.which_groups())
  end)

  it("drops the members of a node killed with kill -9 on the other nodes", function()
    local b, c = C.nodes(2)
    local pb = must(b, "pg_node", "member", self())
    local pc = must(c, "pg_node", "member", self())
    must(b, PG, "join", "g", pb)
    must(c, PG, "join", "g", pc)
    assert.are.same(set{pb, pc}, set(pg_node.wait_members("g", 2)))
    assert.are.same(set{pb, pc}, set(must(c, "pg_node", "wait_members", "g", 2)))
    D.kill_child(b)
    assert.are.same({tostring(pc)}, set(pg_node.wait_members("g", 1)))
    assert.are.same({tostring(pc)}, set(must(c, "pg_node", "wait_members", "g", 1)))
  end)

  it("gives a node that comes up later the groups of the others", function()
    local b = C.nodes(1)
    local px = H.idle()
    local pb = must(b, "pg_node", "member", self())
    pg.join("g", px)
    must(b, PG, "join", "g", pb)
    assert.are.same(set{px, pb}, set(must(b, "pg_node", "wait_members", "g", 2)))
    local c = C.node({b})
    assert.are.same(set{px, pb}, set(must(c, "pg_node", "wait_members", "g", 2)))
    local pc = must(c, "pg_node", "member", self())
    must(c, PG, "join", "g", pc)
    assert.are.same(set{px, pb, pc}, set(must(b, "pg_node", "wait_members", "g", 3)))
  end)

  it("notifies monitor_scope and monitor subscribers with {ref, kind, group, pids}", function()
    local b, c = C.nodes(2)
    local sref, now = pg.monitor_scope()
    assert.is_true(erlangen.is_ref(sref))
    assert.are.same({}, now)
    local gref, members = pg.monitor("g1")
    assert.are.same({}, members)
    local bref = must(b, PG, "monitor", "g1")
    local pc = must(c, "pg_node", "member", self())

    must(c, PG, "join", "g1", pc)
    assert.are.same({pc}, H.recv(note(sref, "join", "g1"), "the scope's join")[4])
    assert.are.same({pc}, H.recv(note(gref, "join", "g1"), "the group's join")[4])
    assert.are.same({pc}, must(b, "pg_node", "await", {bref, "join", "g1"})[4])

    must(c, PG, "join", "g2", pc)
    assert.are.same({pc}, H.recv(note(sref, "join", "g2"), "the scope's join of g2")[4])
    must(c, PG, "leave", "g1", pc)
    assert.are.same({pc}, H.recv(note(sref, "leave", "g1"), "the scope's leave")[4])
    assert.are.same({pc}, H.recv(note(gref, "leave", "g1"), "the group's leave")[4])
    assert.are.same({pc}, must(b, "pg_node", "await", {bref, "leave", "g1"})[4])
    H.refute_message(note(gref, "join", "g2"), "a notification of g2 to g1's subscriber")
    assert.is_false(must(b, "pg_node", "has", {bref, "join", "g2"}))

    local ref2, now2 = pg.monitor_scope()
    assert.are.same({g2 = {pc}}, now2)
    assert.is_true(pg.demonitor(sref))
    assert.is_false(pg.demonitor(sref))
    must(c, PG, "join", "g3", pc)
    H.recv(note(ref2, "join", "g3"), "the join of g3")
    H.refute_message(note(sref, "join", "g3"), "a notification after demonitor")
  end)

  it("keeps the groups of two scopes apart", function()
    local b = C.nodes(1)
    assert.is_true(erlangen.is_pid(pg.start("s1")))
    local again, why = pg.start("s1")
    assert.is_nil(again)
    assert.are.equal("already_started", why[1])
    must(b, PG, "start", "s1")
    local pb = must(b, "pg_node", "member", self())
    must(b, PG, "join", "s1", "g", pb)
    assert.are.same({tostring(pb)}, set(pg_node.wait_members("g", 1, "s1")))
    assert.are.same({}, pg.members("g"))
    assert.are.same({}, must(b, PG, "which_groups"))
    assert.are.same({"g"}, must(b, PG, "which_groups", "s1"))
  end)

  describe("bad input", function()
    it("refuses a pid of another node, on both nodes of two", function()
      local b = C.nodes(1)
      local pb = must(b, "pg_node", "member", self())
      local err = H.error_of(function() pg.join("g", pb) end)
      assert.matches("bad argument #2 to 'join' (local pid expected, got pid " .. tostring(pb) ..
                     " of node " .. b.name .. ")", err, 1, true)
      err = H.error_of(function() pg.leave("g", {H.idle(), pb}) end)
      assert.matches("bad argument #2 to 'leave' (local pid expected at [2], got pid", err, 1, true)
      local ok, berr = C.try(b, PG, "join", "s", "g", self())
      assert.is_false(ok)
      assert.matches("bad argument #3 to 'join' (local pid expected, got pid", berr, 1, true)
      assert.are.same({}, must(b, PG, "members", "g"))
    end)

    it("names the argument of the wrong type", function()
      local px = H.idle()
      local cases = {
        {function() pg.join(1, px) end, "bad argument #1 to 'join' (group name (a string) expected, got number)"},
        {function() pg.join("g", "p") end, "bad argument #2 to 'join' (pid or list of pids expected, got string)"},
        {function() pg.join("g", {}) end, "bad argument #2 to 'join' (pid or list of pids expected, got empty table)"},
        {function() pg.join("g", {px, 3}) end, "bad argument #2 to 'join' (pid expected at [2], got number)"},
        {function() pg.join({}, "g", px) end, "bad argument #1 to 'join' (scope name (a string) expected, got table)"},
        {function() pg.join("g") end, "bad argument #2 to 'join' (2 or 3 arguments expected, got 1)"},
        {function() pg.members(erlangen.ref()) end, "bad argument #1 to 'members' (group name (a string) expected, got ref)"},
        {function() pg.monitor("s", nil) end, "bad argument #2 to 'monitor' (group name (a string) expected, got nil)"},
        {function() pg.demonitor("x") end, "bad argument #1 to 'demonitor' (ref expected, got string)"},
        {function() pg.start(5) end, "bad argument #1 to 'start' (scope name (a string) expected, got number)"},
        {function() pg.join("nosuch", "g", px) end, "join: scope 'nosuch' is not running on this node"},
        {function() pg.which_groups("nosuch") end, "which_groups: scope 'nosuch' is not running on this node"},
      }
      for _, case in ipairs(cases) do
        assert.matches(case[2], H.error_of(case[1]), 1, true)
      end
      assert.are.same({}, pg.which_groups())
    end)
  end)
end)
