-- Stress: bounded memory under a flood, many live processes, and no leak of
-- threads, processes or memory over many spawn/exit cycles. Each test is
-- meant to finish well within a minute on two cores.
local erlangen = require "erlangen"
local H = require "spec.helpers"

local self = erlangen.self

local MiB = 1024  -- in KiB, the unit of H.rss_kb()

-- Under a sanitizer (see H.sanitizer) the counts shrink tenfold: those runs
-- look for memory errors, not for leaks measured in RSS.
local function scaled(n)
  return H.sanitizer() and n // 10 or n
end

local function settle()
  collectgarbage(); collectgarbage()
end

describe("under stress", function()
  before_each(H.before)
  after_each(H.after)

  it("a slow receiver flooded with 1,000,000 messages stays at capacity and RSS stays flat", function()
    local SLACK = 16 * MiB
    local pid = erlangen.spawn(function()
      while true do
        erlangen.receive()
        erlangen.sleep(0.001)   -- the slow consumer
      end
    end)
    local capacity = erlangen.info(pid).capacity
    local N = scaled(1000000)
    local ok_count, full_count, other, baseline = 0, 0, nil, nil
    for i = 1, N do
      local ok, why = erlangen.send(pid, {seq = i, pad = "0123456789abcdef"})
      if ok then ok_count = ok_count + 1
      elseif why == "full" then full_count = full_count + 1
      else other = other or why end
      if i % (N // 10) == 0 then
        local info = erlangen.info(pid)
        assert.is_true(info.mailbox <= capacity,
          ("mailbox holds %d, over its capacity %d"):format(info.mailbox, capacity))
        if i == N // 10 then settle(); baseline = H.rss_kb() end
      end
    end
    assert.is_nil(other, "a send failed for another reason than \"full\"")
    local info = erlangen.info(pid)
    assert.is_true(info.mailbox >= capacity - 50,
      ("expected the mailbox near its capacity %d, it holds %d"):format(capacity, info.mailbox))
    assert.are.equal(full_count, info.dropped)
    assert.are.equal(N, ok_count + full_count)
    if not H.sanitizer() then
      settle()
      local grown = H.rss_kb() - baseline
      assert.is_true(grown < SLACK,
        ("RSS grew by %d KiB from %d to %d messages (slack %d KiB)"):format(grown, N // 10, N, SLACK))
    end
  end)

  it("keeps 10,000 processes alive at once, all answering", function()
    local N, BATCH = scaled(10000), 500
    local base = #erlangen.processes()
    local pids = {}
    for i = 1, N do
      pids[i] = erlangen.spawn(function()
        while true do
          local m = erlangen.receive()
          if m == "stop" then return end
          erlangen.send(m[2], {"pong", m[3]})
        end
      end)
    end
    assert.are.equal(base + N, #erlangen.processes())
    -- Ping in batches so the replies never overflow our own mailbox.
    for first = 1, N, BATCH do
      for i = first, first + BATCH - 1 do erlangen.send(pids[i], {"ping", self(), i}) end
      for _ = 1, BATCH do H.recv(H.tagged("pong"), "the pongs of batch " .. first, 30) end
    end
    local refs = {}
    for i = 1, N do
      refs[i] = erlangen.monitor(pids[i])
      erlangen.send(pids[i], "stop")
    end
    for i = 1, N do
      assert.are.equal("normal", H.await_down(refs[i], "the DOWN of process " .. i, 30))
    end
    assert.are.equal(base, #erlangen.processes())
  end)

  it("leaves no growth in threads, processes or RSS after 100,000 spawn/exit cycles", function()
    -- Processes are spawned in waves of WAVE and each wave is awaited, so at
    -- most WAVE run at once. A parked-thread pool may keep threads for reuse;
    -- it can grow by one thread for each process that is still exiting when
    -- the next wave spawns, so up to 2 * WAVE threads over the warm-up count
    -- are allowed. A leak of one thread per 1,000 cycles would show as +90.
    local CYCLES, WARMUP, WAVE = scaled(100000), scaled(10000), 10
    local THREAD_SLACK, RSS_SLACK = 2 * WAVE, 8 * MiB
    local procs0 = #erlangen.processes()
    local function wave()
      local refs = {}
      for i = 1, WAVE do
        local _, ref = erlangen.spawn_monitor(function(x) return x end, i)
        refs[i] = ref
      end
      for i = 1, WAVE do
        local reason = H.await_down(refs[i], "the DOWN of a short-lived process", 30)
        if reason ~= "normal" then
          error("a short-lived process ended with " .. H.show(reason) .. ", expected \"normal\"")
        end
      end
    end
    for _ = 1, WARMUP // WAVE do wave() end
    settle()
    local threads0, rss0 = H.threads(), H.rss_kb()
    for _ = 1, (CYCLES - WARMUP) // WAVE do wave() end
    settle()
    local threads1, rss1 = H.threads(), H.rss_kb()
    assert.is_true(threads1 <= threads0 + THREAD_SLACK,
      ("threads went from %d to %d (slack %d)"):format(threads0, threads1, THREAD_SLACK))
    assert.are.equal(procs0, #erlangen.processes())
    if not H.sanitizer() then
      assert.is_true(rss1 - rss0 < RSS_SLACK,
        ("RSS grew by %d KiB (slack %d KiB)"):format(rss1 - rss0, RSS_SLACK))
    end
  end)
end)
