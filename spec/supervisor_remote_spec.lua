-- erlangen.supervisor with children on other nodes: a remote child started,
-- listed with its node, restarted there, counted when its node is lost,
-- stopped in order with local ones; a supervisor called by {name, node} and
-- by a remote pid; and bad input.
--
-- The busted process is one node; the others are real `erlangen` child
-- nodes started and killed through spec/dist_helpers.lua. The children are
-- sup_child workers (spec/fixtures/sup_child.lua), which report their life
-- to this process from whichever node they run on; remote_child.lua holds
-- a start function that waits on its node until told to go.
local erlangen = require "erlangen"
local H = require "spec.helpers"
local D = require "spec.dist_helpers"
local supervisor = require "erlangen.supervisor"
local S = require "sup_support"

local self = erlangen.self

-- A sup_child spec whose child runs on `node`.
local function remote(id, node, o)
  local c = S.child(id, o)
  c.node = node
  return c
end

-- The pid in the `n`-th of the reports `msgs` (from S.events).
local function pid_in(msgs, n) return msgs[n][3] end

local function is_log(text, id)
  return function(m)
    return type(m) == "table" and m[1] == "$log" and m[3] == text and (id == nil or m[4].id == id)
  end
end

-- Takes every queued log record `text` of child `id`, without waiting.
local function take_logs(text, id)
  local got = {}
  while true do
    local m = erlangen.receive(is_log(text, id), 0)
    if not m then return got end
    got[#got + 1] = m[4]
  end
end

describe("a supervisor with a child on another node", function()
  setup(D.this_node)
  teardown(D.teardown)
  before_each(D.before_each)
  after_each(D.after_each)

  it("starts the child there, and which_children and get_childspec show its node", function()
    local b = D.start_child()
    local sup = S.start{children = {S.child("l"), remote("r", b.name)}}
    local events, msgs = S.events(2)
    assert.are.same({"start l", "start r"}, events)
    local r = pid_in(msgs, 2)
    assert.are.equal(b.name, erlangen.node(r))
    local list = supervisor.which_children(sup)
    assert.are.same({"l", erlangen.node(), "running"}, {list[1].id, list[1].node, list[1].status})
    assert.are.same({"r", b.name, "running", r}, {list[2].id, list[2].node, list[2].status, list[2].pid})
    assert.are.equal(b.name, supervisor.get_childspec(sup, "r").node)
    assert.is_nil(supervisor.get_childspec(sup, "l").node)
    assert.is_true(H.contains(erlangen.info(sup).links, r))
    supervisor.stop(sup)
    assert.are.same({"stop r", "stop l"}, S.events(2))
  end)

  it("restarts a child killed with exit(pid, \"kill\") on its node", function()
    local b = D.start_child()
    local sup = S.start{children = {remote("r", b.name)}}
    local _, msgs = S.events(1)
    local old = pid_in(msgs, 1)
    erlangen.exit(old, "kill")
    local events, again = S.events(1, "the restart")
    assert.are.same({"start r"}, events)
    local new = pid_in(again, 1)
    assert.are_not.equal(old, new)
    assert.are.equal(b.name, erlangen.node(new))
    assert.are.same({new, b.name}, {S.pid_of(sup, "r"), S.entry(sup, "r").node})
    S.no_more_events(sup)
    supervisor.stop(sup)
  end)

  it("starts simple_one_for_one children on the template's node", function()
    local b = D.start_child()
    local sup = S.start{strategy = "simple_one_for_one", children = {remote("w", b.name)}}
    local pid = assert(supervisor.start_child(sup))
    local _, msgs = S.events(1)
    assert.are.same({pid, b.name}, {pid_in(msgs, 1), erlangen.node(pid)})
    assert.are.equal(b.name, supervisor.which_children(sup)[1].node)
    assert.is_true(supervisor.terminate_child(sup, pid))
    assert.are.same({"stop w"}, S.events(1))
    supervisor.stop(sup)
  end)

  it("takes its remote child down through the link when it is killed", function()
    local b = D.start_child()
    local sup = S.start{children = {remote("r", b.name, {opts = {trap = false}})}}
    local _, msgs = S.events(1)
    local ref = erlangen.monitor(pid_in(msgs, 1))
    erlangen.exit(sup, "kill")
    assert.are.equal("killed", H.await_down(ref, "the remote child's DOWN"))
  end)

  it("kills a child whose start ended after the supervisor was lost, so none outlives it", function()
    local b = D.start_child()
    local sup = S.start{children = {}}
    local spec = {id = "late", node = b.name,
                  start = {"remote_child.start_on_go", self(), "late", {trap = false}}}
    erlangen.spawn(function(s, c) pcall(require("erlangen.supervisor").start_child, s, c) end, sup, spec)
    local starter = H.recv(H.tagged("starting"), "the start function on " .. b.name)[2]
    local ref = erlangen.monitor(sup)
    erlangen.exit(sup, "kill")
    H.await_down(ref, "the supervisor's end")
    erlangen.send(starter, "go")
    local _, msgs = S.events(1, "the late child's start")
    -- "noproc": it was killed before this monitor reached its node
    local reason = H.exit_reason(pid_in(msgs, 1))
    assert.is_true(reason == "killed" or reason == "noproc", "the late child ended with " .. H.show(reason))
  end)

  it("counts a noconnection exit toward the restart intensity", function()
    assert(S.capture_log(), "could not take the name erlangen.log for the test")
    finally(S.release_log)
    local b, c = D.start_child(), D.start_child()
    local sup = S.start{intensity = 1, period = 3600,
                        children = {remote("a", b.name), remote("c", c.name)}}
    local _, msgs = S.events(2)
    local ref = erlangen.monitor(sup)
    erlangen.exit(pid_in(msgs, 1), "kill")             -- restart 1 of 1
    assert.are.same({"start a"}, S.events(1, "the restart of a"))
    D.kill_child(c)                                    -- restart 2 of 1: too many
    local down = S.log_record("error", "child terminated", {id = "c"})
    assert.are.equal("noconnection", down[4].reason)
    S.log_record("error", "reached max restart intensity", {id = "c"})
    assert.are.same({"stop a"}, S.events(1, "a stopped as the supervisor gives up"))
    assert.are.equal("shutdown", H.await_down(ref, "the supervisor's end"))
    assert.are.same({}, take_logs("start error"))     -- it gave up before any start on c
  end)

  it("gives up per its intensity when the child's node stays dead, each failed start counted", function()
    assert(S.capture_log(), "could not take the name erlangen.log for the test")
    finally(S.release_log)
    local b = D.start_child()
    local sup = S.start{intensity = 2, period = 3600, children = {S.child("l"), remote("r", b.name)}}
    S.events(2)
    local ref = erlangen.monitor(sup)
    D.kill_child(b)
    assert.are.equal("noconnection", S.log_record("error", "child terminated", {id = "r"})[4].reason)
    S.log_record("error", "reached max restart intensity", {id = "r"})
    assert.are.same({"stop l"}, S.events(1, "l stopped as the supervisor gives up"))
    assert.are.equal("shutdown", H.await_down(ref, "the supervisor's end"))
    local failed = take_logs("start error", "r")
    assert.are.equal(2, #failed, "start errors: " .. H.show(failed))
    for _, f in ipairs(failed) do assert.matches("noconnection", tostring(f.reason), 1, true) end
  end)

  it("stops local and remote children right to left, killing one after its shutdown time", function()
    local b, c = D.start_child(), D.start_child()
    local sup = S.start{children = {
      S.child("l1"), remote("r1", b.name), S.child("l2"),
      remote("r2", c.name, {shutdown = 0.5, opts = {ignore_shutdown = true}}),
    }}
    local _, msgs = S.events(4)
    local r2 = erlangen.monitor(pid_in(msgs, 4))
    supervisor.stop(sup)
    assert.are.same({"ignored r2", "stop l2", "stop r1", "stop l1"}, S.events(4))
    assert.are.equal("killed", H.await_down(r2, "r2 killed after its shutdown time"))
  end)
end)

describe("a supervisor on another node", function()
  setup(D.this_node)
  teardown(D.teardown)
  before_each(D.before_each)
  after_each(D.after_each)

  -- Starts a supervisor registered as `name` on node `b` with one local
  -- child "w" there; returns its pid once "w" has started.
  local function remote_sup(b, name)
    erlangen.spawn_opt({node = b.name}, "erlangen.supervisor.start", {name = name, children = {S.child("w")}})
    S.events(1, "the child of the supervisor on " .. b.name)
    return D.must(D.puppet(b), "whereis", name)
  end

  it("is called by {name, node} and by its pid", function()
    local b = D.start_child()
    local pid = remote_sup(b, "rsup")
    assert.are.equal(b.name, erlangen.node(pid))
    local list = supervisor.which_children({"rsup", b.name})
    assert.are.same({"w", b.name, "running"}, {list[1].id, list[1].node, list[1].status})
    assert.are.same(list, supervisor.which_children(pid))
    assert.is_true(supervisor.stop({"rsup", b.name}))
    assert.are.same({"stop w"}, S.events(1))
  end)

  it("raises noproc for a name not registered there, naming {name, node}", function()
    local b = D.start_child()
    local err = H.error_of(function() supervisor.which_children({"nobody", b.name}) end)
    assert.are.same({"noproc", "which_children"}, {err[1], err.op})
    assert.are.same({"nobody", b.name}, err.supervisor)
    assert.matches(string.format('supervisor.which_children({"nobody", "%s"}): noproc', b.name),
      tostring(err), 1, true)
  end)

  it("raises noconnection when its node is lost, by name and by pid", function()
    local b = D.start_child()
    local pid = remote_sup(b, "rsup")
    D.kill_child(b)
    local by_name = H.error_of(function() supervisor.count_children({"rsup", b.name}) end)
    assert.are.same({"noconnection", b.name}, {by_name[1], by_name[2]})
    local by_pid = H.error_of(function() supervisor.count_children(pid) end)
    assert.are.same({"noconnection", b.name}, {by_pid[1], by_pid[2]})
    assert.matches("noconnection (no link to node " .. b.name .. ")", tostring(by_pid), 1, true)
  end)
end)

describe("a remote child: bad input", function()
  setup(D.this_node)
  teardown(D.teardown)
  before_each(D.before_each)
  after_each(D.after_each)

  it("refuses a node that is not a string", function()
    local err = H.error_of(function() supervisor.start{children = {remote("r", 42)}} end)
    assert.matches("supervisor_remote_spec.lua:%d+: supervisor.start: spec.children%[1%].node must be "
      .. 'a node name "name@host" or "name@host:port", got number', err)
  end)

  it("refuses a string that is not a node name", function()
    local ok, msg = supervisor.check_childspecs{remote("r", "nohost")}
    assert.is_nil(ok)
    assert.are.equal('children[1].node must be a node name "name@host" or "name@host:port", got "nohost"', msg)
  end)

  it("refuses a function start with node: functions never cross nodes", function()
    local b = D.start_child()
    local sup = S.start{children = {}}
    local spec = {id = "f", node = b.name, start = {erlangen.spawn_link, function() end}}
    local err = H.error_of(function() supervisor.start_child(sup, spec) end)
    assert.matches('child spec.start%[1%] must be a "module.function" string for a child on '
      .. "another node %(a function cannot cross nodes%), got function", err)
    assert.are.same({}, supervisor.which_children(sup))
    supervisor.stop(sup)
  end)

  it("fails to start, as a failing local start does, on a node that cannot be reached", function()
    local ghost = "ghost@" .. D.HOST .. ":" .. D.closed_port()
    local pid, reason = supervisor.start{children = {S.child("l"), remote("r", ghost)}}
    assert.is_nil(pid)
    assert.are.same({"shutdown", "failed_to_start_child", "r"}, {reason[1], reason[2][1], reason[2][2]})
    assert.matches("noconnection", tostring(reason[2][3]), 1, true)
    assert.are.same({"start l", "stop l"}, S.events(2))
  end)

  it("returns the reason and keeps no spec when start_child names a node that cannot be reached", function()
    local ghost = "ghost@" .. D.HOST .. ":" .. D.closed_port()
    local sup = S.start{children = {}}
    local pid, reason = supervisor.start_child(sup, remote("r", ghost))
    assert.is_nil(pid)
    assert.matches("noconnection", tostring(reason), 1, true)
    assert.are.same({}, supervisor.which_children(sup))
    supervisor.stop(sup)
  end)

  it("refuses a malformed {name, node} for the supervisor", function()
    local err = H.error_of(function() supervisor.which_children({42, "b@" .. D.HOST}) end)
    assert.matches("supervisor_remote_spec.lua:%d+: bad argument #1 to 'which_children' "
      .. "%(pid, name or {name, node} expected, got table%)", err)
    err = H.error_of(function() supervisor.stop({"sup", "nohost"}) end)
    assert.matches("supervisor_remote_spec.lua:%d+: bad argument #1 to 'stop' "
      .. '%(pid, name or {name, node} expected, got {name, node} with node "nohost"%)', err)
    err = H.error_of(function() supervisor.count_children(erlangen.alias()) end)
    assert.matches("supervisor_remote_spec.lua:%d+: bad argument #1 to 'count_children' "
      .. "%(pid, name or {name, node} expected, got an alias%)", err)
  end)
end)
