-- The name registry: register, unregister, whereis, registered, and names
-- that go away with their process.
local erlangen = require "erlangen"
local H = require "spec.helpers"

local self = erlangen.self

describe("the registry", function()
  before_each(H.before)
  after_each(H.after)

  describe("erlangen.register", function()
    it("makes whereis return the pid", function()
      local pid = H.idle()
      erlangen.register("reg_basic", pid)
      assert.are.equal(pid, erlangen.whereis("reg_basic"))
    end)

    it("lets send reach the process by name", function()
      local pid = erlangen.spawn(function(parent)
        erlangen.send(parent, {"got", erlangen.receive()})
      end, self())
      erlangen.register("reg_send", pid)
      erlangen.send("reg_send", "by name")
      assert.are.same({"got", "by name"}, H.recv(H.tagged("got"), "the reply of the named process"))
    end)

    it("can name the caller itself", function()
      erlangen.register("reg_self", self())
      assert.are.equal(self(), erlangen.whereis("reg_self"))
      assert.are.equal("reg_self", erlangen.info(self()).name)
    end)

    it("raises 'already registered' when the name is taken", function()
      erlangen.register("reg_taken", H.idle())
      local err = H.error_of(function() erlangen.register("reg_taken", H.idle()) end)
      assert.matches("already registered", err, 1, true)
    end)

    it("leaves the first owner in place when a second register fails", function()
      local first = H.idle()
      erlangen.register("reg_keep", first)
      pcall(erlangen.register, "reg_keep", H.idle())
      assert.are.equal(first, erlangen.whereis("reg_keep"))
    end)

    it("raises 'already has a name' when the pid is registered under another name", function()
      local pid = H.idle()
      erlangen.register("reg_first_name", pid)
      local err = H.error_of(function() erlangen.register("reg_second_name", pid) end)
      assert.matches("already has a name", err, 1, true)
      assert.is_nil(erlangen.whereis("reg_second_name"))
    end)

    it("raises 'not alive' for a dead pid", function()
      local dead = H.dead_pid()
      local err = H.error_of(function() erlangen.register("reg_dead", dead) end)
      assert.matches("not alive", err, 1, true)
      assert.is_nil(erlangen.whereis("reg_dead"))
    end)

    it("lets exactly one of several racing processes take a name", function()
      local n = 8
      for _ = 1, n do
        erlangen.spawn(function(parent)
          local ok = pcall(erlangen.register, "reg_contested", erlangen.self())
          erlangen.send(parent, {"result", ok, erlangen.self()})
          erlangen.receive()
        end, self())
      end
      local winners = {}
      for _ = 1, n do
        local m = H.recv(H.tagged("result"), "the racers' results")
        if m[2] then winners[#winners + 1] = m[3] end
      end
      assert.are.equal(1, #winners)
      assert.are.equal(winners[1], erlangen.whereis("reg_contested"))
    end)

    it("raises a bad-argument error for a name that is not a string", function()
      local err = H.error_of(function() erlangen.register({}, self()) end)
      assert.matches("bad argument #1 to 'register'", err, 1, true)
    end)

    it("raises a bad-argument error for a pid that is not a pid", function()
      local err = H.error_of(function() erlangen.register("reg_bad_pid", "pid") end)
      assert.matches("bad argument #2 to 'register'", err, 1, true)
    end)
  end)

  describe("erlangen.unregister", function()
    it("removes the name, so whereis returns nil and send gives noproc", function()
      local pid = H.idle()
      erlangen.register("reg_gone", pid)
      erlangen.unregister("reg_gone")
      assert.is_nil(erlangen.whereis("reg_gone"))
      assert.are.same({false, "noproc"}, {erlangen.send("reg_gone", 1)})
    end)

    it("frees the pid to take another name", function()
      local pid = H.idle()
      erlangen.register("reg_old_name", pid)
      erlangen.unregister("reg_old_name")
      erlangen.register("reg_new_name", pid)
      assert.are.equal(pid, erlangen.whereis("reg_new_name"))
    end)

    it("raises 'not registered' for an unknown name", function()
      local err = H.error_of(function() erlangen.unregister("reg_never_was") end)
      assert.matches("not registered", err, 1, true)
    end)

    it("raises a bad-argument error for a name that is not a string", function()
      local err = H.error_of(function() erlangen.unregister({}) end)
      assert.matches("bad argument #1 to 'unregister'", err, 1, true)
    end)
  end)

  describe("erlangen.whereis", function()
    it("returns nil for an unknown name", function()
      assert.is_nil(erlangen.whereis("reg_nobody"))
    end)

    it("raises a bad-argument error for a name that is not a string", function()
      local err = H.error_of(function() erlangen.whereis({}) end)
      assert.matches("bad argument #1 to 'whereis'", err, 1, true)
    end)
  end)

  describe("erlangen.registered", function()
    it("lists every registered name once", function()
      erlangen.register("reg_list_a", H.idle())
      erlangen.register("reg_list_b", H.idle())
      local names = erlangen.registered()
      assert.are.equal(1, H.count(names, "reg_list_a"))
      assert.are.equal(1, H.count(names, "reg_list_b"))
    end)

    it("does not list removed names", function()
      erlangen.register("reg_list_gone", H.idle())
      erlangen.unregister("reg_list_gone")
      assert.are.equal(0, H.count(erlangen.registered(), "reg_list_gone"))
    end)
  end)

  describe("a registered process that exits", function()
    it("loses its name by the time its DOWN arrives", function()
      local pid = H.idle({name = "reg_exiting"})
      local ref = erlangen.monitor(pid)
      erlangen.send(pid, "stop")
      H.await_down(ref)
      assert.is_nil(erlangen.whereis("reg_exiting"))
      assert.are.equal(0, H.count(erlangen.registered(), "reg_exiting"))
    end)

    it("leaves the name free for a new process", function()
      local old = H.idle({name = "reg_reused"})
      local ref = erlangen.monitor(old)
      erlangen.exit(old, "kill")
      H.await_down(ref)
      local new = H.idle({name = "reg_reused"})
      assert.are.equal(new, erlangen.whereis("reg_reused"))
    end)
  end)

  it("survives a process that runs out of memory while listing the names", function()
    local long = {}
    for i = 1, 20 do
      long[i] = string.rep("n", 100000) .. i
      erlangen.spawn_opt({name = long[i]}, function() erlangen.receive() end)
    end
    local _, ref = erlangen.spawn_opt({max_memory = 1000000, monitor = true}, function()
      erlangen.registered()
    end)
    assert.are.equal("memory", H.await_down(ref, "the DOWN of the listing process"))
    local pid = erlangen.whereis(long[1])
    assert.is_not_nil(pid, "whereis must still answer")
    for i = 1, 20 do erlangen.exit(erlangen.whereis(long[i]), "kill") end
  end)
end)
