-- erlangen.supervisor: starting and stopping, start failures, every restart
-- type against every way a child can end, the management calls, bad specs
-- and the reports sent to the logger. Strategies, intensity, shutdown and
-- dynamic children are in supervisor_strategy_spec.lua.
local erlangen = require "erlangen"
local H = require "spec.helpers"
local supervisor = require "erlangen.supervisor"
local S = require "sup_support"

local self = erlangen.self
local child = S.child

describe("supervisor.start_link", function()
  before_each(H.before)
  after_each(H.after)

  it("starts the children left to right and returns the supervisor's pid", function()
    local sup = assert(supervisor.start_link{children = {child("a"), child("b"), child("c")}})
    assert.are.same({"start a", "start b", "start c"}, S.events(3))
    local ids = {}
    for i, c in ipairs(supervisor.which_children(sup)) do
      ids[i] = c.id
      assert.are.equal("running", c.status)
    end
    assert.are.same({"a", "b", "c"}, ids)
    supervisor.stop(sup)
  end)

  it("is a trapping process labelled \"supervisor\", linked to its caller", function()
    local sup = assert(supervisor.start_link{children = {}})
    local info = erlangen.info(sup)
    assert.is_true(info.trap_exit)
    assert.are.equal("supervisor", info.label)
    assert.is_true(H.contains(info.links, self()))
    supervisor.stop(sup)
  end)

  it("stops the children right to left and exits with the reason when its parent exits", function()
    erlangen.trap_exit(true)
    local sup = assert(supervisor.start_link{children = {child("a"), child("b"), child("c")}})
    S.events(3)
    local ref = erlangen.monitor(sup)
    erlangen.exit(sup, "shutdown")
    assert.are.same({"stop c", "stop b", "stop a"}, S.events(3))
    assert.are.equal("shutdown", H.await_down(ref))
    assert.are.same({"EXIT", sup, "shutdown"}, H.recv(H.is_exit(sup), "the supervisor's EXIT"))
  end)

  it("ignores an exit signal from a process that is not its parent, as OTP does", function()
    local sup = S.start{children = {child("a")}}
    S.events(1)
    erlangen.exit(sup, "shutdown")           -- queued before the call below (same sender)
    assert.are.equal("running", S.entry(sup, "a").status)
    assert.is_true(erlangen.is_alive(sup))
    S.no_more_events(sup)
    supervisor.stop(sup)
  end)

  it("registers the name given in the spec and refuses a second start under it", function()
    local sup = S.start{name = "sup_spec_named", children = {child("a")}}
    S.events(1)
    assert.are.equal(sup, erlangen.whereis("sup_spec_named"))
    assert.are.equal("a", supervisor.which_children("sup_spec_named")[1].id)
    local pid, reason = supervisor.start{name = "sup_spec_named", children = {child("b")}}
    assert.is_nil(pid)
    assert.are.same({"already_started", sup}, reason)
    S.no_more_events(sup)                     -- "b" was never started
    supervisor.stop("sup_spec_named")
  end)
end)

describe("supervisor.stop", function()
  before_each(H.before)
  after_each(H.after)

  it("stops the children right to left, then ends the supervisor with the reason", function()
    local sup = S.start{children = {child("a"), child("b"), child("c")}}
    S.events(3)
    local ref = erlangen.monitor(sup)
    assert.is_true(supervisor.stop(sup, "done"))
    assert.are.same({"stop c", "stop b", "stop a"}, S.events(3))
    assert.are.equal("done", H.await_down(ref))
  end)

  it("ends the supervisor with \"normal\" by default", function()
    local sup = S.start{children = {}}
    local ref = erlangen.monitor(sup)
    supervisor.stop(sup)
    assert.are.equal("normal", H.await_down(ref))
  end)

  it("raises a noproc error for a supervisor that is not running", function()
    local sup = S.start{children = {}}
    supervisor.stop(sup)
    local err = H.error_of(supervisor.stop, sup)
    assert.are.equal("noproc", err[1])
    assert.are.equal("stop", err.op)
  end)
end)

describe("a supervisor whose child fails to start", function()
  before_each(H.before)
  after_each(H.after)

  it("stops the children already started right to left and returns nil and the reason", function()
    local pid, reason = supervisor.start_link{children = {
      child("a"), child("b"), child("c", {opts = {fail = "boom"}}), child("d")}}
    assert.is_nil(pid)
    assert.are.same({"shutdown", {"failed_to_start_child", "c", "boom"}}, reason)
    assert.are.same({"start a", "start b", "failed c", "stop b", "stop a"}, S.events(5))
    H.refute_message(H.tagged("start"), "the start of d", 0)
  end)

  it("leaves no EXIT in the caller's mailbox and no process behind", function()
    erlangen.trap_exit(true)
    local before = S.process_set()
    local pid = supervisor.start_link{children = {child("a"), child("b", {opts = {fail = "no"}})}}
    assert.is_nil(pid)
    S.events(3)
    H.refute_message(H.tagged("EXIT"), "an EXIT from the failed supervisor", 0)
    assert.are.same({}, S.new_processes(before))
  end)

  it("reports an error raised by the start function as the reason", function()
    local pid, reason = supervisor.start{children = {
      {id = "x", start = {function() error("kaput", 0) end}}}}
    assert.is_nil(pid)
    assert.are.same({"shutdown", {"failed_to_start_child", "x", "kaput"}}, reason)
  end)

  it("fails with {\"bad_return_value\", v} when the start function returns no pid", function()
    local pid, reason = supervisor.start{children = {{id = "x", start = {function() return 42 end}}}}
    assert.is_nil(pid)
    assert.are.same({"shutdown", {"failed_to_start_child", "x", {"bad_return_value", 42}}}, reason)
  end)

  it("fails when a \"module.function\" start names no function", function()
    local pid, reason = supervisor.start{children = {{id = "x", start = {"sup_child.nothing"}}}}
    assert.is_nil(pid)
    assert.are.equal("failed_to_start_child", reason[2][1])
    assert.matches("sup_child.nothing is not a function", reason[2][3], 1, true)
  end)
end)

-- How a child ends, for the restart matrix. `pid` is the child.
local endings = {
  normal = function(pid) erlangen.send(pid, "normal") end,
  shutdown = function(pid) erlangen.send(pid, {"exit", "shutdown"}) end,
  error = function(pid) erlangen.send(pid, "error") end,
  kill = function(pid) erlangen.exit(pid, "kill") end,
}
local reasons = {normal = "normal", shutdown = "shutdown", kill = "killed"}

local restarted = {
  permanent = {normal = true, shutdown = true, error = true, kill = true},
  transient = {normal = false, shutdown = false, error = true, kill = true},
  temporary = {normal = false, shutdown = false, error = false, kill = false},
}

describe("a one_for_one supervisor", function()
  before_each(H.before)
  after_each(H.after)

  for _, restart in ipairs({"permanent", "transient", "temporary"}) do
    for _, ending in ipairs({"normal", "shutdown", "error", "kill"}) do
      local yes = restarted[restart][ending]
      local what = string.format("%s a %s child that ends with %s", yes and "restarts" or "does not restart",
        restart, ending == "kill" and "a kill" or ending == "error" and "an error" or '"' .. ending .. '"')
      if restart == "temporary" then what = what .. ", and forgets it" end

      it(what, function()
        local sup = S.start{intensity = 10, children = {child("w", {restart = restart})}}
        local _, first = S.events(1)
        local old = first[1][3]
        local ref = erlangen.monitor(old)
        endings[ending](old)
        local reason = H.await_down(ref)
        if ending == "error" then assert.matches("child w failed$", reason)
        else assert.are.equal(reasons[ending], reason) end
        if yes then
          local names, msgs = S.events(1, "the restart")
          assert.are.same({"start w"}, names)
          assert.are_not.equal(old, msgs[1][3])
          local c = S.entry(sup, "w")
          assert.are.equal(msgs[1][3], c.pid)
          assert.are.equal("running", c.status)
        else
          H.eventually(function()
            local c = S.entry(sup, "w")
            return c == nil or c.status ~= "running"
          end, "the supervisor to handle the child's exit")
          local c = S.entry(sup, "w")
          if restart == "temporary" then
            assert.is_nil(c, "a temporary child stays listed: " .. H.show(c))
            assert.are.same({specs = 0, active = 0, supervisors = 0, workers = 0},
              supervisor.count_children(sup))
          else
            assert.are.same({id = "w", status = "undefined", type = "worker", restart = restart,
                             node = erlangen.node()}, c)
          end
          S.no_more_events(sup)
        end
        supervisor.stop(sup)
      end)
    end
  end
end)

describe("supervisor management calls", function()
  before_each(H.before)
  after_each(H.after)

  local function sup_with(children, strategy)
    local sup = S.start{strategy = strategy, children = children}
    S.events(#children)
    return sup
  end

  it("start_child starts a child and adds it last", function()
    local sup = sup_with({child("a")})
    local pid = supervisor.start_child(sup, child("b"))
    local _, msgs = S.events(1)
    assert.are.equal(msgs[1][3], pid)
    local list = supervisor.which_children(sup)
    assert.are.same({"a", "b"}, {list[1].id, list[2].id})
    assert.are.equal(pid, list[2].pid)
  end)

  it("start_child refuses an id in use: already_started while it runs, already_present after", function()
    local sup = sup_with({child("a")})
    local a = S.pid_of(sup, "a")
    assert.are.same({nil, {"already_started", a}}, {supervisor.start_child(sup, child("a"))})
    assert.is_true(supervisor.terminate_child(sup, "a"))
    S.events(1)
    assert.are.same({nil, "already_present"}, {supervisor.start_child(sup, child("a"))})
    S.no_more_events(sup)
  end)

  it("start_child returns nil and the reason when the child fails, and does not keep its spec", function()
    local sup = sup_with({child("a")})
    assert.are.same({nil, "nope"}, {supervisor.start_child(sup, child("b", {opts = {fail = "nope"}}))})
    assert.are.equal(1, #supervisor.which_children(sup))
  end)

  it("start_child raises an error naming the field of a bad child spec", function()
    local sup = sup_with({})
    local err = H.error_of(function() supervisor.start_child(sup, {id = "x", start = {print}, restart = "never"}) end)
    assert.matches("supervisor_spec.lua:%d+: supervisor.start_child: child spec.restart must be", err)
    assert.matches('got "never"', err, 1, true)
  end)

  it("terminate_child stops a child with \"shutdown\" and keeps its spec", function()
    local sup = sup_with({child("a"), child("b")})
    local a = S.pid_of(sup, "a")
    local ref = erlangen.monitor(a)
    assert.is_true(supervisor.terminate_child(sup, "a"))
    assert.are.same({"stop a"}, S.events(1))
    assert.are.equal("shutdown", H.await_down(ref))
    assert.are.same({id = "a", status = "undefined", type = "worker", restart = "permanent",
                     node = erlangen.node()},
      S.entry(sup, "a"))
    assert.is_true(supervisor.terminate_child(sup, "a"))  -- not running: nothing to do
    assert.are.same({nil, "not_found"}, {supervisor.terminate_child(sup, "zz")})
  end)

  it("terminate_child forgets a temporary child", function()
    local sup = sup_with({child("t", {restart = "temporary"})})
    assert.is_true(supervisor.terminate_child(sup, "t"))
    assert.are.same({}, supervisor.which_children(sup))
  end)

  it("terminating a child leaves no EXIT that makes the supervisor restart it", function()
    local sup = sup_with({child("a")})
    supervisor.terminate_child(sup, "a")
    S.events(1)
    S.no_more_events(sup)
    assert.are.equal("undefined", S.entry(sup, "a").status)
  end)

  it("restart_child starts a stopped child again; refuses one that runs or is unknown", function()
    local sup = sup_with({child("a")})
    assert.are.same({nil, "running"}, {supervisor.restart_child(sup, "a")})
    supervisor.terminate_child(sup, "a")
    S.events(1)
    local pid = supervisor.restart_child(sup, "a")
    local _, msgs = S.events(1)
    assert.are.equal(msgs[1][3], pid)
    assert.are.equal(pid, S.pid_of(sup, "a"))
    assert.are.same({nil, "not_found"}, {supervisor.restart_child(sup, "zz")})
  end)

  it("delete_child removes a stopped child's spec; refuses one that runs or is unknown", function()
    local sup = sup_with({child("a"), child("b")})
    assert.are.same({nil, "running"}, {supervisor.delete_child(sup, "a")})
    supervisor.terminate_child(sup, "a")
    assert.is_true(supervisor.delete_child(sup, "a"))
    assert.are.same({"b"}, {supervisor.which_children(sup)[1].id})
    assert.are.equal(1, #supervisor.which_children(sup))
    assert.are.same({nil, "not_found"}, {supervisor.delete_child(sup, "a")})
    assert.are.same({nil, "not_found"}, {supervisor.restart_child(sup, "a")})
  end)

  it("count_children counts specs, running children, supervisors and workers", function()
    local inner = {id = "inner", type = "supervisor",
                   start = {"erlangen.supervisor.start_link", {children = {}}}}
    local sup = sup_with({child("a"), child("b")})
    supervisor.start_child(sup, inner)
    supervisor.terminate_child(sup, "b")
    S.events(1)
    assert.are.same({specs = 3, active = 2, supervisors = 1, workers = 2},
      supervisor.count_children(sup))
  end)

  it("get_childspec returns the spec with its defaults: 5 s for a worker, infinity for a supervisor", function()
    local inner = {id = "inner", type = "supervisor",
                   start = {"erlangen.supervisor.start_link", {children = {}}}}
    local sup = sup_with({child("a")})
    supervisor.start_child(sup, inner)
    local a = supervisor.get_childspec(sup, "a")
    assert.are.same({"a", "permanent", 5, "worker"}, {a.id, a.restart, a.shutdown, a.type})
    assert.are.equal("sup_child.start_link", a.start[1])
    local i = supervisor.get_childspec(sup, "inner")
    assert.are.same({"infinity", "supervisor"}, {i.shutdown, i.type})
    assert.are.same({nil, "not_found"}, {supervisor.get_childspec(sup, "zz")})
  end)

  it("refuses restart_child and delete_child on simple_one_for_one, and terminate_child by id", function()
    local sup = S.start{strategy = "simple_one_for_one",
                        children = {{id = "w", start = {"sup_child.start_link", self()}}}}
    local pid = supervisor.start_child(sup, "w1")
    S.events(1)
    assert.are.same({nil, "simple_one_for_one"}, {supervisor.restart_child(sup, "w")})
    assert.are.same({nil, "simple_one_for_one"}, {supervisor.delete_child(sup, "w")})
    assert.are.same({nil, "simple_one_for_one"}, {supervisor.terminate_child(sup, "w")})
    assert.are.same({nil, "not_found"}, {supervisor.terminate_child(sup, H.dead_pid())})
    assert.is_true(supervisor.terminate_child(sup, pid))
    assert.are.same({"stop w1"}, S.events(1))
    assert.are.same({}, supervisor.which_children(sup))
  end)

  it("raises a noproc error when the supervisor is not running, by pid or by name", function()
    local sup = S.start{children = {}}
    supervisor.stop(sup)
    local err = H.error_of(supervisor.which_children, sup)
    assert.are.same({"noproc", "which_children", sup}, {err[1], err.op, err.supervisor})
    assert.matches("noproc", tostring(err), 1, true)
    err = H.error_of(supervisor.count_children, "sup_spec_nobody")
    assert.are.equal("noproc", err[1])
  end)

  it("raises an exit error when the supervisor dies during the call", function()
    local blocker = {id = "slow", start = {function(parent)
      erlangen.send(parent, {"in_start", erlangen.self()})
      erlangen.receive(function() return false end)
    end, self()}}
    local sup = S.start{children = {}}
    local caller, ref = erlangen.spawn_monitor(function(s, spec, parent)
      local ok, err = pcall(require("erlangen.supervisor").start_child, s, spec)
      erlangen.send(parent, {"call_result", ok, err[1], err[2]})
    end, sup, blocker, self())
    H.recv(H.tagged("in_start"), "the supervisor inside the start function")
    erlangen.exit(sup, "kill")
    assert.are.same({"call_result", false, "exit", "killed"}, H.recv(H.tagged("call_result"), "the call's error"))
    H.await_down(ref)
    assert.is_false(erlangen.is_alive(caller))
  end)

  it("raises a bad argument error for something that is neither a pid nor a name", function()
    local err = H.error_of(function() supervisor.which_children(42) end)
    assert.matches("supervisor_spec.lua:%d+: bad argument #1 to 'which_children' %(pid, name or {name, node} expected, got number%)", err)
  end)
end)

describe("a bad supervisor spec", function()
  before_each(H.before)
  after_each(H.after)

  local ok_child = {id = "a", start = {"sup_child.start_link", false, "a"}}
  local cases = {
    {"an unknown strategy", {strategy = "one_for_some", children = {}}, 'spec.strategy must be .* got "one_for_some"'},
    {"a child without id", {children = {{start = {print}}}}, "spec.children%[1%].id is missing"},
    {"a duplicate id", {children = {ok_child, ok_child}}, 'spec.children%[2%].id: duplicate id "a"'},
    {"a bad restart value", {children = {{id = "a", start = {print}, restart = "sometimes"}}},
     'spec.children%[1%].restart must be "permanent", "transient" or "temporary", got "sometimes"'},
    {"a bad shutdown value", {children = {{id = "a", start = {print}, shutdown = -1}}},
     "spec.children%[1%].shutdown must be"},
    {"a bad type", {children = {{id = "a", start = {print}, type = "boss"}}},
     'spec.children%[1%].type must be "worker" or "supervisor", got "boss"'},
    {"a missing start", {children = {{id = "a"}}}, "spec.children%[1%].start must be a table"},
    {"a start that is not a function", {children = {{id = "a", start = {42}}}},
     "spec.children%[1%].start%[1%] must be a function or"},
    {"an unknown child field", {children = {{id = "a", start = {print}, restrat = "temporary"}}},
     'spec.children%[1%]: unknown field "restrat"'},
    {"an unknown spec field", {stategy = "one_for_all"}, 'spec: unknown field "stategy"'},
    {"a negative intensity", {intensity = -1}, "spec.intensity must be an integer >= 0"},
    {"a zero period", {period = 0}, "spec.period must be a number of seconds > 0"},
    {"simple_one_for_one with two child specs", {strategy = "simple_one_for_one",
      children = {ok_child, {id = "b", start = {print}}}},
     "spec.children must hold exactly one child spec for simple_one_for_one, got 2"},
  }
  for _, case in ipairs(cases) do
    it("raises an error naming the field for " .. case[1], function()
      local before = S.process_set()
      local err = H.error_of(function() supervisor.start_link(case[2]) end)
      assert.matches("^[^:]*supervisor_spec.lua:%d+: supervisor.start_link: " .. case[3], err)
      assert.are.same({}, S.new_processes(before))
    end)
  end

  it("raises for a spec that is not a table", function()
    local err = H.error_of(function() supervisor.start("x") end)
    assert.matches("supervisor.start: spec must be a table, got string", err, 1, true)
  end)

  it("check_childspecs returns true, or nil and the message", function()
    assert.is_true(supervisor.check_childspecs({ok_child}))
    assert.are.same({nil, 'children[2].id: duplicate id "a"'}, {supervisor.check_childspecs({ok_child, ok_child})})
  end)
end)

describe("supervisor reports", function()
  before_each(H.before)
  after_each(H.after)

  it("go to the logger: child started, child terminated with supervisor, id, pid and reason", function()
    assert(S.capture_log(), "could not take the name erlangen.log for the test")
    finally(S.release_log)
    local sup = S.start{name = "sup_spec_reports", children = {child("a")}}
    local _, msgs = S.events(1)
    local a = msgs[1][3]
    local started = S.log_record("info", "child started", {supervisor = "sup_spec_reports", id = "a"})
    assert.are.equal(sup, started[5])
    erlangen.exit(a, "kill")
    local r = S.log_record("error", "child terminated", {supervisor = "sup_spec_reports", id = "a"})
    assert.are.equal(a, r[4].pid)
    assert.are.equal("killed", r[4].reason)
    S.log_record("info", "child started", {id = "a"})
    supervisor.stop(sup)
  end)
end)
