-- erlangen.supervisor: the strategies (the exact children stopped and
-- started, in order), restart intensity and its escalation through nested
-- supervisors, shutdown (timeout, brutal_kill, infinity) and dynamic
-- children of simple_one_for_one.
local erlangen = require "erlangen"
local H = require "spec.helpers"
local supervisor = require "erlangen.supervisor"
local S = require "sup_support"

local self = erlangen.self
local child = S.child

-- Starts a supervisor with children a, b, c (or `ids`) and consumes their start reports.
local function sup_abc(strategy, extra, ids)
  ids = ids or {"a", "b", "c"}
  local children = {}
  for i, id in ipairs(ids) do children[i] = child(id) end
  local spec = {strategy = strategy, intensity = 10, children = children}
  for k, v in pairs(extra or {}) do spec[k] = v end
  local sup = S.start(spec)
  S.events(#ids)
  return sup
end

-- Makes child `id` of `sup` fail with an error and returns its old pid.
local function crash(sup, id)
  local pid = S.pid_of(sup, id)
  erlangen.send(pid, "error")
  return pid
end

describe("supervisor strategies", function()
  before_each(H.before)
  after_each(H.after)

  it("one_for_one restarts only the child that failed", function()
    local sup = sup_abc("one_for_one")
    local a, c = S.pid_of(sup, "a"), S.pid_of(sup, "c")
    crash(sup, "b")
    assert.are.same({"start b"}, S.events(1))
    S.no_more_events(sup)
    assert.are.same({a, c}, {S.pid_of(sup, "a"), S.pid_of(sup, "c")})
  end)

  it("one_for_all stops the others right to left, then starts all left to right", function()
    local sup = sup_abc("one_for_all", nil, {"a", "b", "c", "d"})
    crash(sup, "b")
    assert.are.same({"stop d", "stop c", "stop a", "start a", "start b", "start c", "start d"},
      S.events(7))
    S.no_more_events(sup)
  end)

  it("one_for_all stops its siblings with \"shutdown\"", function()
    local sup = sup_abc("one_for_all")
    crash(sup, "a")
    local _, msgs = S.events(2)
    assert.are.same({"shutdown", "shutdown"}, {msgs[1][4], msgs[2][4]})
    S.events(3)
  end)

  it("one_for_all stops a temporary sibling and does not start it again", function()
    local sup = S.start{strategy = "one_for_all", intensity = 10, children = {
      child("a"), child("t", {restart = "temporary"}), child("c")}}
    S.events(3)
    crash(sup, "a")
    assert.are.same({"stop c", "stop t", "start a", "start c"}, S.events(4))
    S.no_more_events(sup)
    local list = supervisor.which_children(sup)
    assert.are.same({"a", "c"}, {list[1].id, list[2].id})
    assert.are.equal(2, #list)
  end)

  it("rest_for_one stops the children after the failed one right to left, then starts them in order", function()
    local sup = sup_abc("rest_for_one", nil, {"a", "b", "c", "d"})
    local a = S.pid_of(sup, "a")
    crash(sup, "b")
    assert.are.same({"stop d", "stop c", "start b", "start c", "start d"}, S.events(5))
    S.no_more_events(sup)
    assert.are.equal(a, S.pid_of(sup, "a"))
  end)

  it("rest_for_one restarts only the last child when the last one fails", function()
    local sup = sup_abc("rest_for_one")
    crash(sup, "c")
    assert.are.same({"start c"}, S.events(1))
    S.no_more_events(sup)
  end)

  it("rest_for_one restarts everything when the first child fails", function()
    local sup = sup_abc("rest_for_one")
    crash(sup, "a")
    assert.are.same({"stop c", "stop b", "start a", "start b", "start c"}, S.events(5))
    S.no_more_events(sup)
  end)

  it("simple_one_for_one restarts only the failed dynamic child, with the same arguments", function()
    local sup = S.start{strategy = "simple_one_for_one", intensity = 10,
                        children = {{id = "w", start = {"sup_child.start_link", self()}}}}
    local pids = {}
    for _, id in ipairs({"w1", "w2", "w3"}) do pids[id] = supervisor.start_child(sup, id) end
    assert.are.same({"start w1", "start w2", "start w3"}, S.events(3))
    erlangen.send(pids.w2, "error")
    local names, msgs = S.events(1)
    assert.are.same({"start w2"}, names)
    S.no_more_events(sup)
    local list = supervisor.which_children(sup)
    assert.are.same({pids.w1, msgs[1][3], pids.w3}, {list[1].pid, list[2].pid, list[3].pid})
  end)
end)

describe("restart intensity", function()
  before_each(H.before)
  after_each(H.after)

  it("stops every child right to left and exits with \"shutdown\" after more than `intensity` restarts", function()
    local sup = S.start{intensity = 2, period = 60, children = {child("a"), child("b"), child("c")}}
    S.events(3)
    local ref = erlangen.monitor(sup)
    for _ = 1, 2 do
      crash(sup, "b")
      assert.are.same({"start b"}, S.events(1))
    end
    crash(sup, "b")
    assert.are.same({"stop c", "stop a"}, S.events(2))
    assert.are.equal("shutdown", H.await_down(ref))
  end)

  it("allows 3 restarts within 5 seconds by default, not 4", function()
    local sup = S.start{children = {child("a")}}
    S.events(1)
    local ref = erlangen.monitor(sup)
    for _ = 1, 3 do
      crash(sup, "a")
      assert.are.same({"start a"}, S.events(1))
    end
    crash(sup, "a")
    assert.are.equal("shutdown", H.await_down(ref))
    H.refute_message(H.tagged("start"), "a fourth restart", 0)
  end)

  it("with intensity 0, exits at the first failure", function()
    local sup = S.start{intensity = 0, children = {child("a")}}
    S.events(1)
    local ref = erlangen.monitor(sup)
    crash(sup, "a")
    assert.are.equal("shutdown", H.await_down(ref))
  end)

  it("forgets restarts older than `period`", function()
    local sup = S.start{intensity = 1, period = 0.05, children = {child("a")}}
    S.events(1)
    for _ = 1, 3 do
      local t = erlangen.now()
      crash(sup, "a")
      assert.are.same({"start a"}, S.events(1))
      -- let the period pass (a time, not an event, is what this test is about)
      erlangen.sleep(math.max(0, 0.1 - (erlangen.now() - t)))
    end
    assert.is_true(erlangen.is_alive(sup))
  end)

  it("counts each failed restart and gives up when they exceed the intensity", function()
    local sup = S.start{intensity = 3, period = 60, children = {
      child("a"), child("b", {opts = {fail_restarts = "not again"}})}}
    S.events(2)
    local ref = erlangen.monitor(sup)
    crash(sup, "b")
    assert.are.same({"failed b", "failed b", "failed b", "stop a"}, S.events(4))
    assert.are.equal("shutdown", H.await_down(ref))
  end)

  it("reports \"reached max restart intensity\" to the logger", function()
    assert(S.capture_log(), "could not take the name erlangen.log for the test")
    finally(S.release_log)
    local sup = S.start{intensity = 0, children = {child("a")}}
    S.events(1)
    crash(sup, "a")
    local r = S.log_record("error", "reached max restart intensity", {id = "a", reason = "shutdown"})
    assert.are.equal(tostring(sup), r[4].supervisor)
    assert.are.equal(sup, r[5])
  end)
end)

-- A child spec for a supervisor started by supervisor.start_link.
local function sup_child_spec(id, spec, o)
  o = o or {}
  return {id = id, type = "supervisor", restart = o.restart,
          start = {"erlangen.supervisor.start_link", spec}}
end

describe("escalation through nested supervisors", function()
  before_each(H.before)
  after_each(H.after)

  it("an inner supervisor over its intensity exits with \"shutdown\" and the outer one restarts it", function()
    local inner = {intensity = 0, children = {child("w1"), child("w2")}}
    local outer = S.start{intensity = 5, children = {child("x"), sup_child_spec("inner", inner)}}
    assert.are.same({"start x", "start w1", "start w2"}, S.events(3))
    local old_inner = S.pid_of(outer, "inner")
    local ref = erlangen.monitor(old_inner)
    crash(old_inner, "w1")
    assert.are.same({"stop w2", "start w1", "start w2"}, S.events(3))
    assert.are.equal("shutdown", H.await_down(ref))
    local new_inner = S.pid_of(outer, "inner")
    assert.are_not.equal(old_inner, new_inner)
    S.no_more_events(outer)
    assert.are.same({"w1", "w2"}, {S.entry(new_inner, "w1").id, S.entry(new_inner, "w2").id})
  end)

  it("escalates to the top when every level exceeds its intensity", function()
    local inner = {intensity = 0, children = {child("w")}}
    local middle = {intensity = 0, children = {child("m"), sup_child_spec("inner", inner)}}
    local top = S.start{intensity = 0, children = {child("t"), sup_child_spec("middle", middle)}}
    assert.are.same({"start t", "start m", "start w"}, S.events(3))
    local ref = erlangen.monitor(top)
    local inner_pid = S.pid_of(S.pid_of(top, "middle"), "inner")
    crash(inner_pid, "w")
    -- inner: no child left to stop; middle stops m; top stops t
    assert.are.same({"stop m", "stop t"}, S.events(2))
    assert.are.equal("shutdown", H.await_down(ref))
  end)

  it("a transient inner supervisor that shuts down is not restarted", function()
    local inner = {intensity = 0, children = {child("w")}}
    local outer = S.start{intensity = 5, children = {sup_child_spec("inner", inner, {restart = "transient"})}}
    S.events(1)
    local inner_pid = S.pid_of(outer, "inner")
    local ref = erlangen.monitor(inner_pid)
    crash(inner_pid, "w")
    assert.are.equal("shutdown", H.await_down(ref))
    H.eventually(function() return S.entry(outer, "inner").status == "undefined" end,
      "the outer supervisor to handle the inner one's exit")
    S.no_more_events(outer)
  end)
end)

describe("shutdown of a child", function()
  before_each(H.before)
  after_each(H.after)

  it("sends \"shutdown\", and kills a child that ignores it once the timeout has passed", function()
    local sup = S.start{children = {child("stubborn", {shutdown = 0.3, opts = {ignore_shutdown = true}})}}
    local _, msgs = S.events(1)
    local pid = msgs[1][3]
    local ref = erlangen.monitor(pid)
    local t0 = erlangen.now()
    assert.is_true(supervisor.terminate_child(sup, "stubborn"))
    local waited = erlangen.now() - t0
    assert.are.same({"ignored stubborn"}, S.events(1))
    assert.are.equal("killed", H.await_down(ref))
    assert.is_true(waited >= 0.3, "killed after " .. waited .. " s, before the 0.3 s timeout")
  end)

  it("with brutal_kill, kills at once and never sends \"shutdown\"", function()
    local sup = S.start{children = {child("victim", {shutdown = "brutal_kill"})}}
    local _, msgs = S.events(1)
    local ref = erlangen.monitor(msgs[1][3])
    assert.is_true(supervisor.terminate_child(sup, "victim"))
    assert.are.equal("killed", H.await_down(ref))
    S.no_more_events(sup)        -- the trapping child would have reported any EXIT it got
  end)

  it("lets a child that obeys \"shutdown\" exit with it", function()
    local sup = S.start{children = {child("good", {shutdown = 30})}}
    local _, msgs = S.events(1)
    local ref = erlangen.monitor(msgs[1][3])
    assert.is_true(supervisor.terminate_child(sup, "good"))
    local names, stops = S.events(1)
    assert.are.same({"stop good"}, names)
    assert.are.equal("shutdown", stops[1][4])
    assert.are.equal("shutdown", H.await_down(ref))
  end)

  it("waits for a child supervisor (shutdown infinity) to stop its own children first", function()
    local inner = {children = {child("w1"), child("w2")}}
    local outer = S.start{children = {child("a"), sup_child_spec("inner", inner), child("z")}}
    S.events(4)
    supervisor.stop(outer)
    assert.are.same({"stop z", "stop w2", "stop w1", "stop a"}, S.events(4))
  end)

  -- OTP 24 and later keep the link until the child's DOWN: a supervisor killed
  -- while it waits for a child to stop still takes that child down with it.
  -- (Unlinking first left the child running, orphaned, for its whole shutdown time.)
  it("keeps its link to a child it is stopping, so being killed meanwhile takes the child too", function()
    local sup = S.start{children = {child("slow", {shutdown = 30, opts = {ignore_shutdown = true}})}}
    local _, msgs = S.events(1)
    local ref = erlangen.monitor(msgs[1][3])
    local caller = erlangen.spawn(function(s)
      pcall(require("erlangen.supervisor").terminate_child, s, "slow")
    end, sup)
    assert.are.same({"ignored slow"}, S.events(1))   -- the supervisor now waits up to 30 s
    erlangen.exit(sup, "kill")
    local names, stops = S.events(1, "the child to hear of its supervisor's death")
    assert.are.same({"stop slow"}, names)
    assert.are.equal("killed", stops[1][4])
    assert.are.equal("killed", H.await_down(ref))
    H.exit_reason(caller)
  end)

  it("keeps its links to dynamic children it is stopping, so being killed meanwhile takes them too", function()
    local sup = S.start{strategy = "simple_one_for_one", children = {
      {id = "w", start = {"sup_child.start_link", self()}, shutdown = 30}}}
    local refs = {}
    for i = 1, 3 do
      local pid = supervisor.start_child(sup, "w" .. i, {ignore_shutdown = true})
      refs[#refs + 1] = erlangen.monitor(pid)
    end
    S.events(3)
    local stopper = erlangen.spawn(function(s) pcall(require("erlangen.supervisor").stop, s) end, sup)
    S.events(3, "the children to ignore their shutdown")
    erlangen.exit(sup, "kill")
    local names = S.events(3, "the children to hear of their supervisor's death")
    table.sort(names)
    assert.are.same({"stop w1", "stop w2", "stop w3"}, names)
    for _, ref in ipairs(refs) do assert.are.equal("killed", H.await_down(ref)) end
    H.exit_reason(stopper)
  end)

  it("stops the dynamic children of simple_one_for_one in parallel", function()
    local sup = S.start{strategy = "simple_one_for_one", children = {
      {id = "w", start = {"sup_child.start_link", self()}, shutdown = "infinity"}}}
    local n = 5
    for i = 1, n do supervisor.start_child(sup, "w" .. i, {hold_shutdown = true}) end
    S.events(n)
    local ref = erlangen.monitor(sup)
    local stopper = erlangen.spawn(function(s) require("erlangen.supervisor").stop(s) end, sup)
    -- Every child holds its "shutdown" until told "go": one at a time, only
    -- the first would ever get it.
    local names, msgs = S.events(n, "a child holding its shutdown")
    table.sort(names)
    assert.are.same({"holding w1", "holding w2", "holding w3", "holding w4", "holding w5"}, names)
    for _, m in ipairs(msgs) do erlangen.send(m[3], "go") end
    assert.are.equal("normal", H.await_down(ref))
    H.exit_reason(stopper)
  end)
end)

describe("simple_one_for_one with many children", function()
  before_each(H.before)
  after_each(H.after)

  it("starts, counts, lists, terminates and stops 1,000 dynamic children", function()
    local n = 1000
    local sup = S.start{strategy = "simple_one_for_one", children = {
      {id = "w", start = {"sup_child.start_link", false}}}}
    local pids, refs = {}, {}
    for i = 1, n do
      local pid = supervisor.start_child(sup, i)
      assert(pid, "start_child " .. i .. " failed")
      pids[i] = pid
    end
    assert.are.same({specs = n, active = n, supervisors = 0, workers = n}, supervisor.count_children(sup))
    local list = supervisor.which_children(sup)
    assert.are.equal(n, #list)
    for i = 1, n do
      if list[i].pid ~= pids[i] then
        error(string.format("which_children[%d] is %s, started as %s", i, tostring(list[i].pid), tostring(pids[i])))
      end
      refs[i] = erlangen.monitor(pids[i])
    end
    for i = 1, n, 2 do assert.is_true(supervisor.terminate_child(sup, pids[i])) end
    assert.are.same({specs = n / 2, active = n / 2, supervisors = 0, workers = n / 2},
      supervisor.count_children(sup))
    supervisor.stop(sup)
    for i = 1, n do
      local reason = H.await_down(refs[i])
      if reason ~= "shutdown" then
        error(string.format("child %d ended with %s, not shutdown", i, H.show(reason)))
      end
    end
    local alive = S.process_set()
    for i = 1, n do assert.is_nil(alive[pids[i]]) end
  end)
end)
