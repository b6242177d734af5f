-- spec/netlink_spec.lua — node links under attack and at their limits, the
-- tests issue 13 says must exist (doc/netlink.md, "Tests and benches"):
-- a tampering proxy between two nodes (a flipped length bit, a trickle,
-- truncated, replayed and reordered frames, a stall then a cut), hostile
-- unauthenticated sockets and a flood of bad handshakes while a legitimate
-- node connects, stuck receivers next to a healthy one on one link, a
-- message holding pids of 100,000 made-up nodes, and a send to a stopped
-- node that is not connected.
--
-- Real child nodes on loopback, through spec/dist_helpers.lua, all with a
-- tick of D.TICK (1 s), so "within two ticks" is two seconds.
-- The multi-node cases are tagged #slow.

local erlangen = require "erlangen"
local socket = require "socket"
local H = require "spec.helpers"
local D = require "spec.dist_helpers"

local TICK = D.TICK
local self = erlangen.self
local must, reported = D.must, D.reported


-- Waits for a message matching `match` until `deadline` (erlangen.now());
-- raises naming `what`, the deadline's meaning and the mailbox.
local function recv_by(match, what, deadline)
  return H.recv(match, what, math.max(0, deadline - erlangen.now()))
end

-- Local processes -------------------------------------------------------------

-- A local process that holds `count` TCP connections to `port` open and
-- silent until killed (or `life` seconds); tells this process {"idle_up",
-- n_connected} once they are open.
local function idle_sockets(port, count, life)
  local watcher = self()
  return erlangen.spawn(function()
    local sock = require "socket"
    local held = {}
    for _ = 1, count do
      local s = sock.connect("127.0.0.1", port)
      if s then held[#held + 1] = s end
    end
    erlangen.send(watcher, {"idle_up", #held})
    erlangen.receive(function() return false end, life)
    for _, s in ipairs(held) do s:close() end
  end)
end

-- A local process that opens `count` TCP connections to `port` and writes
-- to each one byte every `every` seconds, for `life` seconds at most (a
-- handshake that never completes); tells {"slow_up", n} once they are open.
local function slow_sockets(port, count, every, life)
  local watcher = self()
  return erlangen.spawn(function()
    local sock = require "socket"
    local held = {}
    for _ = 1, count do
      local s = sock.connect("127.0.0.1", port)
      if s then s:settimeout(0); held[#held + 1] = s end
    end
    erlangen.send(watcher, {"slow_up", #held})
    local ends = erlangen.now() + life
    while erlangen.now() < ends do
      for _, s in ipairs(held) do s:send("\0") end
      erlangen.receive(function() return false end, every)
    end
    for _, s in ipairs(held) do s:close() end
  end)
end

-- A local process that, until "stop" or `life` seconds, connects to `port`
-- again and again and sends a handshake message of random bytes (a msg1
-- that fails its authentication), then closes; tells watcher
-- {"flood_done", attempts} at the end.
local function bad_handshake_flood(port, life)
  local watcher = self()
  return erlangen.spawn(function()
    local sock = require "socket"
    local f = assert(io.open("/dev/urandom", "rb"))
    local ends, attempts = erlangen.now() + life, 0
    while erlangen.now() < ends do
      local s = sock.connect("127.0.0.1", port)
      if s then
        attempts = attempts + 1
        s:settimeout(0.2)
        s:send("\0\68" .. f:read(68))   -- 2-byte length, then 68 bytes: a msg1's size
        s:receive(1)                    -- until the node closes it (or 0.2 s)
        s:close()
      end
      if erlangen.receive(function(m) return m == "stop" end, 0) then break end
    end
    f:close()
    erlangen.send(watcher, {"flood_done", attempts})
  end)
end

-- Bytes: a message holding pids of many nodes -------------------------------

local function varint(n)
  local out = {}
  repeat
    local b = n & 0x7f
    n = n >> 7
    if n > 0 then b = b | 0x80 end
    out[#out + 1] = string.char(b)
  until n == 0
  return table.concat(out)
end

-- The codec's bytes (doc/codec.md) of an array of `n` pids, the i-th of
-- node "ghost<i>@10.255.0.1" (creation 1, serial 1), in the wire form
-- (TAG_NTERM 0x0e: kind, name, creation, serial). Built as bytes so this
-- node never decodes them.
local function pids_of_made_up_nodes(n)
  local parts = {"\1\0\1", "\6", varint(n), varint(0)}   -- header; a table: n array values
  for i = 1, n do
    local name = "ghost" .. i .. "@10.255.0.1"
    parts[#parts + 1] = "\14\1" .. varint(#name) .. name .. varint(1) .. varint(1)
  end
  return table.concat(parts)
end

-- Setup ------------------------------------------------------------------------

describe("node links", function()
  setup(D.this_node)
  teardown(D.teardown)
  before_each(D.before_each)
  after_each(D.after_each)

  describe("through a tampering proxy", function()
    -- c connects to b through the proxy; a puppet on c and one on b are
    -- linked both ways and monitor each other, and a source on c streams
    -- {"seq", i} to b's puppet through the proxy. Every puppet reports to
    -- this node over its own link, which the proxy does not touch.
    local function tampered(mode, dir, arg)
      local b = D.start_child{prefix = "pb"}
      local c = D.start_child{prefix = "pc"}
      local proxy = erlangen.spawn("dist_proxy.run", self(), b.port)
      local pport = H.recv(H.tagged("proxy"), "the proxy's port")[3]
      local pc = D.puppet(c)
      must(pc, "trap_exit", true)
      assert.is_true(must(pc, "connect", b.name .. ":" .. pport))
      local pb, ref_c = must(pc, "spawn_opt", {node = b.name, link = true, monitor = true},
                             "dist_node.puppet", self())
      must(pb, "trap_exit", true)
      local ref_b = must(pb, "monitor", pc)
      local source = must(pc, "spawn", "netlink_node.seq_source", self(), pb, 2000, 0.005)
      local first = reported(pb, function(m) return type(m) == "table" and m[1] == "seq" end,
                             "the first message through the proxy")
      erlangen.send(proxy, {"arm", mode, dir, arg})
      local t = H.recv(H.tagged("tampered"), "the proxy to tamper")
      assert.are.same({"tampered", mode, dir}, t)
      local by = erlangen.now() + 2 * TICK
      local x = reported(pc, H.is_exit(pb), "c's EXIT within two ticks of the tampering", by - erlangen.now())
      assert.are.equal("noconnection", x[3])
      local d = reported(pc, H.is_down(ref_c), "c's DOWN within two ticks", by - erlangen.now())
      assert.are.equal("noconnection", d[4])
      x = reported(pb, H.is_exit(pc), "b's EXIT within two ticks", by - erlangen.now())
      assert.are.equal("noconnection", x[3])
      d = reported(pb, H.is_down(ref_b), "b's DOWN within two ticks", by - erlangen.now())
      assert.are.equal("noconnection", d[4])
      -- nothing delivered twice or out of order: what b's puppet got of the
      -- stream, in the order it reported it, rises strictly
      erlangen.send(source, "stop")
      recv_by(function(m) return type(m) == "table" and m[1] == "source_done" end,
              "the source to end", erlangen.now() + H.TIMEOUT)
      local last = first[2]
      for _, m in ipairs(H.drain()) do
        if type(m) == "table" and m[1] == "got" and m[2] == pb and type(m[3]) == "table"
            and m[3][1] == "seq" then
          assert.is_true(m[3][2] > last, string.format("b got seq %d after %d", m[3][2], last))
          last = m[3][2]
        end
      end
    end

    it("ends the link when a length bit grows a frame under the limit #slow", function()
      tampered("flip_len", "up", 16)
    end)
    it("ends the link when a length bit puts a frame over the limit #slow", function()
      tampered("flip_len", "down", 28)
    end)
    it("ends the link when the bytes trickle in #slow", function()
      tampered("trickle", "up", TICK / 2)
    end)
    it("ends the link when a frame is cut short #slow", function()
      tampered("truncate", "down")
    end)
    it("ends the link when a frame is replayed #slow", function()
      tampered("replay", "up")
    end)
    it("ends the link when two frames are swapped #slow", function()
      tampered("reorder", "down")
    end)
    it("ends the link when it stalls, before the cut #slow", function()
      tampered("stall_cut", "up", 3 * TICK)
    end)
  end)

  describe("a legitimate node connecting", function()
    it("gets through promptly next to idle and slow unauthenticated sockets #slow", function()
      local b = D.start_child{prefix = "ib", connect = false}
      idle_sockets(b.port, 3, 30)
      assert.are.equal(3, H.recv(H.tagged("idle_up"), "the idle sockets")[2])
      slow_sockets(b.port, 2, 0.3, 30)
      assert.are.equal(2, H.recv(H.tagged("slow_up"), "the slow sockets")[2])
      local t0 = erlangen.now()
      local ok, err = erlangen.connect(b.addr)
      local took = erlangen.now() - t0
      assert.is_true(ok, "connect failed after " .. took .. " s: " .. tostring(err))
      b.joined = true
      assert.is_true(took < 0.1, "the connect took " .. took .. " s")
    end)

    it("gets through at least 11 of 12 times during a flood of bad handshakes from its address #slow", function()
      local b = D.start_child{prefix = "fb", connect = false}
      local flood = bad_handshake_flood(b.port, 60)
      local ok_count, errors = 0, {}
      for i = 1, 12 do
        local ok, err = erlangen.connect(b.addr)
        if ok then
          ok_count = ok_count + 1
          erlangen.monitor_node(b.name)
          erlangen.disconnect(b.name)
          H.recv(function(m) return type(m) == "table" and m[1] == "nodedown" and m[2] == b.name end,
                 "the nodedown after disconnect " .. i)
        else
          errors[#errors + 1] = tostring(err)
        end
      end
      erlangen.send(flood, "stop")
      local attempts = H.recv(H.tagged("flood_done"), "the flood to end")[2]
      assert.is_true(ok_count >= 11, string.format("%d of 12 connects got through (%d bad handshakes); %s",
                                                   ok_count, attempts, table.concat(errors, "; ")))
    end)
  end)

  describe("stuck receivers next to a healthy one on the same link", function()
    -- b holds k stuck receivers (mailbox of 4, never read) and a healthy
    -- one; a feeder on c sends, every 5 ms for 2 s, a message to each stuck
    -- one and a stamped message to the healthy one, which times each arrival.
    local function stuck_link(k)
      local b = D.start_child{prefix = "sb"}
      local c = D.start_child{prefix = "sc"}
      erlangen.spawn_opt({node = b.name}, "netlink_node.stamp_sink", self(), 10)
      local healthy = H.recv(H.tagged("sink"), "the healthy receiver")[2]
      erlangen.spawn_opt({node = b.name}, "netlink_node.stuck_receivers", self(), k, 4)
      local stuck = H.recv(H.tagged("stuck"), "the stuck receivers")[2]
      assert.is_true(must(D.puppet(c), "connect", b.addr))
      erlangen.spawn_opt({node = c.name}, "netlink_node.feed", self(), healthy, stuck, 400, 0.005)
      local fed = H.recv(H.tagged("fed"), "the feeder to end", 15)
      local r = H.recv(H.tagged("stamps"), "the healthy receiver's count", 15)
      assert.are.equal(fed[2], r[2], string.format(
        "the healthy receiver got %d of %d messages within 10 s (the longest wait %.1f ms)",
        r[2], fed[2], r[3] * 1000))
      -- The bound is on the 99th percentile of the waits: the stuck receivers
      -- would hold every message behind them, while a stall of this shared
      -- machine's scheduler (up to 20 ms seen) holds one or two. The wait
      -- includes the hop itself, which a sanitizer build makes several times
      -- slower.
      local bound = H.sanitizer() and 0.040 or 0.010
      assert.is_true(r[5] <= bound, string.format(
        "99 %% of the messages to the healthy receiver waited up to %.1f ms (bound %.0f ms; the longest %.1f ms)",
        r[5] * 1000, bound * 1000, r[3] * 1000))
    end

    it("delay the healthy one by 10 ms at most, with two stuck #slow", function()
      stuck_link(2)
    end)
    it("delay the healthy one by 10 ms at most, with three stuck #slow", function()
      stuck_link(3)
    end)
  end)

  describe("a node that decoded pids of 100,000 made-up nodes", function()
    it("still connects to a new node #slow", function()
      local b = D.start_child{prefix = "gb"}
      local fresh = D.start_child{prefix = "gn", connect = false}
      erlangen.spawn_opt({node = b.name}, "netlink_node.decode_count", self(), pids_of_made_up_nodes(100000))
      local m = H.recv(H.tagged("decoded"), "the decode", 30)
      local ran, ok, err = D.order(D.puppet(b), "connect", fresh.addr)
      assert.is_true(ran and ok, "connect after the decode: " .. H.show(ran and err or ok))
      assert.are.same({"decoded", true, 100000}, m)
    end)
  end)

  describe("a send with timeout 0 to a stopped node that is not connected", function()
    it("returns within 50 ms #slow", function()
      local b = D.start_child{prefix = "zb", connect = false}
      D.signal(b, "STOP")
      local t0 = erlangen.now()
      erlangen.send({"ctl", b.addr}, "anyone?", 0)
      local took = erlangen.now() - t0
      assert.is_true(took < 0.05, "the send took " .. took .. " s")
    end)
  end)

  describe("messages sent while a link is being made", function()
    it("wait on the pending link and arrive in order once it is up #slow", function()
      -- c sends 200 messages to a process of b while c's connect to b
      -- cannot finish (b is stopped); b wakes within the connect's deadline.
      local b = D.start_child{prefix = "pb", connect = false}
      local c = D.start_child{prefix = "pc"}
      assert.is_true(erlangen.connect(b.addr))   -- this node to b; c has no link to b
      b.joined = true
      local sink = D.puppet(b)       -- forwards what it gets: {"got", sink, m}
      local pc = D.puppet(c)
      D.signal(b, "STOP")
      local t0 = erlangen.now()
      assert.is_true(must(pc, "send", {"nosuch", b.addr}, "the port of b"))   -- starts c's connect
      erlangen.spawn_opt({node = c.name}, "netlink_node.seq_source", self(), sink, 200, 0)
      local done = H.recv(H.tagged("source_done"), "the sender", 5)
      assert.are.same({200, "done"}, {done[3], done[4]})
      assert.is_true(erlangen.now() - t0 < 1, "the sends took " .. (erlangen.now() - t0) .. " s")
      D.signal(b, "CONT")
      for i = 1, 200 do
        local m = H.recv(function(m) return type(m) == "table" and m[1] == "got" and m[2] == sink end,
                         "message " .. i .. " at the sink", 2 * TICK + 5)
        assert.are.same({"seq", i}, m[3])
      end
    end)
  end)
end)
