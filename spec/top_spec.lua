-- spec/top_spec.lua — erlangen.top: its pure parts (rows and rates from two
-- snapshots, sorting, the table for a width, the locale and size rules), and
-- the top itself on a terminal against real nodes.
--
-- The terminal is spec/c/ptyrun (80x24), running spec/fixtures/top_session.lua
-- in `erlangen -e`; the watched node runs spec/fixtures/top_load.lua. Frames
-- are read from a FIFO by blocking reads that end when ptyrun does (after
-- LIMIT seconds at most), so every wait is bounded.

local erlangen = require "erlangen"
local top = require "erlangen.top"
local H = require "spec.helpers"
local D = require "spec.dist_helpers"

local BUILD = os.getenv("ERLANGEN_BUILD") or "build"
local PTYRUN = BUILD .. "/spec/c/ptyrun"
local LIMIT = 30  -- seconds a terminal session may take

local q = D.q

local function contains(s, needle) return s:find(needle, 1, true) ~= nil end

local function assert_contains(s, needle)
  assert(contains(s, needle), string.format("expected to find %q in:\n%s", needle, s))
end

-- A row as top.rows makes it, for the sorting and formatting tests.
local function row(serial, fields)
  local r = {pid = "<b@h." .. serial .. ">", node = "b@h", status = "waiting", mailbox = 0,
             capacity = 1024, memory = 40000, dropped = 0, sent = 0, received = 0, cpu = 0}
  for k, v in pairs(fields or {}) do r[k] = v end
  return r
end

local function labels(rows)
  local out = {}
  for i, r in ipairs(rows) do out[i] = r.label end
  return table.concat(out, " ")
end

describe("erlangen.top rows", function()
  it("compute cpu% as the cpu seconds used over the seconds between two snapshots", function()
    assert.are.equal(25, top.cpu_percent({cpu = 1.0}, {cpu = 1.5}, 2))
  end)

  it("count a process new since the last snapshot from zero", function()
    assert.are.equal(50, top.cpu_percent(nil, {cpu = 0.5}, 1))
  end)

  it("have no cpu% for a process whose info has no cpu", function()
    assert.is_nil(top.cpu_percent({cpu = 1}, {}, 1))
  end)

  it("give messages in and out per second and cpu% against the previous snapshot", function()
    local prev = {at = 10, procs = {{pid = "p", cpu = 1, received = 10, sent = 4},
                                    {pid = "gone", cpu = 9, received = 9, sent = 9}}}
    local cur = {at = 12, procs = {{pid = "p", cpu = 2, received = 30, sent = 5, label = "x"},
                                   {pid = "new", cpu = 0.2, received = 2, sent = 0}}}
    local rows = top.rows(prev, cur)
    assert.are.equal(2, #rows)
    assert.are.same({"p", "x", 50, 10, 0.5}, {rows[1].pid, rows[1].label, rows[1].cpu_pct, rows[1].in_rate, rows[1].out_rate})
    assert.are.same({"new", 10, 1, 0}, {rows[2].pid, rows[2].cpu_pct, rows[2].in_rate, rows[2].out_rate})
  end)

  it("have no rates on a node's first snapshot", function()
    local rows = top.rows(nil, {at = 1, procs = {{pid = "p", cpu = 3, received = 1, sent = 1}}})
    assert.are.same({3}, {rows[1].cpu, rows[1].cpu_pct, rows[1].in_rate, rows[1].out_rate})
  end)
end)

describe("erlangen.top sort", function()
  local function rows()
    return {
      row(1, {label = "busy", cpu_pct = 90, cpu = 5}),
      row(2, {label = "inbox", mailbox = 300}),
      row(3, {label = "fat", memory = 9 << 20}),
      row(4, {label = "tiny", dropped = 18}),
      row(5, {label = "sender", out_rate = 800, in_rate = 80}),
      row(6, {label = "sink", in_rate = 800, out_rate = 80}),
    }
  end

  for key, first in pairs({c = "busy", m = "inbox", M = "fat", d = "tiny", s = "sender", r = "sink"}) do
    it("puts the busiest by key '" .. key .. "' (" .. top.KEYS[key] .. ") first", function()
      local sorted = top.sort(rows(), top.KEYS[key])
      assert.are.equal(first, sorted[1].label, labels(sorted))
    end)
  end

  it("orders ties by node name, then spawn order", function()
    local sorted = top.sort({row(12, {label = "b12", node = "b"}), row(3, {label = "b3", node = "b"}),
                             row(7, {label = "a7", node = "a"})}, "mailbox")
    assert.are.equal("a7 b3 b12", labels(sorted))
  end)

  it("puts rows without a rate after the ones with one, by their totals", function()
    local sorted = top.sort({row(1, {label = "none", received = 50}), row(2, {label = "slow", in_rate = 1}),
                             row(3, {label = "fewer", received = 10})}, "received")
    assert.are.equal("slow none fewer", labels(sorted))
  end)

  it("refuses an unknown sort key", function()
    assert.has_error(function() top.sort({}, "colour") end, "top.sort: unknown sort key 'colour'")
  end)
end)

describe("erlangen.top table", function()
  local rows = {
    row(12, {label = "top_busy", status = "running", cpu_pct = 97.3}),
    row(13, {name = "inbox", label = "top_inbox", mailbox = 300, memory = 4400000, dropped = 12,
             in_rate = 1200, out_rate = 3.5, cpu_pct = 0}),
  }

  local function titles(lines) return lines[2] end

  it("shows every column on a wide terminal", function()
    local lines = top.format(rows, {width = 200, utf8 = false, sort = "cpu"})
    for _, t in ipairs({"pid", "node", "name", "status", "mailbox", "memory", "cpu%*", "in/s", "out/s", "dropped"}) do
      assert_contains(titles(lines), t)
    end
    assert_contains(lines[4], "<b@h.12>")
    assert_contains(lines[4], "[top_busy]")
    assert_contains(lines[4], "97.3")
    assert_contains(lines[5], "inbox [top_inbox]")
    assert_contains(lines[5], "4.2M")
    assert_contains(lines[5], "1.2K")
  end)

  it("drops columns, never wraps, on narrow terminals", function()
    for w = 200, 6, -1 do
      local lines = top.format(rows, {width = w, utf8 = true, sort = "cpu"})
      assert.are.equal(6, #lines, "lines at width " .. w)
      for _, l in ipairs(lines) do
        assert(utf8.len(l) <= w, string.format("a line of %d columns at width %d: %s", utf8.len(l), w, l))
      end
    end
    local at60 = titles(top.format(rows, {width = 60, utf8 = false, sort = "cpu"}))
    assert_contains(at60, "pid")
    assert_contains(at60, "cpu%")
    assert.is_nil(at60:find("node", 1, true), at60)
    assert.is_nil(at60:find("dropped", 1, true), at60)
    assert.are.equal("| pid      |", titles(top.format(rows, {width = 12, utf8 = false, sort = "memory"})))
  end)

  it("keeps the sorted column when it drops others", function()
    local at40 = titles(top.format(rows, {width = 40, utf8 = false, sort = "dropped"}))
    assert_contains(at40, "dropped*")
    assert.is_nil(at40:find("cpu", 1, true), at40)
  end)

  it("draws ASCII borders, or box drawing for UTF-8", function()
    local ascii = table.concat(top.format(rows, {width = 80, utf8 = false, sort = "cpu"}), "\n")
    assert.is_nil(ascii:find("[\128-\255]"), ascii)
    assert.are.equal("+", ascii:sub(1, 1))
    assert_contains(ascii, "| pid ")
    local boxed = table.concat(top.format(rows, {width = 80, utf8 = true, sort = "cpu"}), "\n")
    assert.are.equal("┌", boxed:sub(1, #"┌"))
    assert_contains(boxed, "│ pid ")
    assert_contains(boxed, "cpu%▼")
  end)

  it("shows names with control characters or bytes a C locale cannot show as ?", function()
    local odd = {row(1, {name = "a\nb", label = "caf\xc3\xa9"})}
    local ascii = top.format(odd, {width = 80, utf8 = false, sort = "cpu"})[4]
    assert_contains(ascii, "a?b [caf??]")
    local boxed = top.format(odd, {width = 80, utf8 = true, sort = "cpu"})[4]
    assert_contains(boxed, "a?b [café]")
  end)

  it("fills a screen with the header, the nodes and as many rows as fit", function()
    local many = {}
    for i = 1, 40 do many[i] = row(i, {label = "p" .. i}) end
    local st = {node = "b@h:9", interval = 0.5, sort = "mailbox", rows = many,
                nodes = {{name = "b@h", count = 40}, {name = "c@h", gone = "noconnection"}}}
    local lines = top.screen(st, {rows = 24, columns = 80}, false)
    assert.are.equal(24, #lines)
    assert.are.equal("erlangen top - node b@h:9 - every 0.5 s - sorted by mailbox", lines[1])
    assert.are.equal("nodes: b@h 40 procs, c@h gone (noconnection)", lines[2])
    assert_contains(lines[#lines], "q quit")
    assert.are.equal(10, #top.screen(st, {rows = 24, columns = 80}, false, 3))
    assert.are.equal(5, #top.screen(st, {rows = 5, columns = 80}, false))
  end)
end)

describe("erlangen.top terminal rules", function()
  local function env(t) return function(k) return t[k] end end

  it("takes UTF-8 from the first of LC_ALL, LC_CTYPE and LANG that is set", function()
    assert.is_true(top.utf8_locale(env{LANG = "en_US.UTF-8"}))
    assert.is_true(top.utf8_locale(env{LC_CTYPE = "C.utf8", LANG = "C"}))
    assert.is_false(top.utf8_locale(env{LC_ALL = "C", LANG = "en_US.UTF-8"}))
    assert.is_false(top.utf8_locale(env{LANG = "C"}))
    assert.is_false(top.utf8_locale(env{}))
    assert.is_true(top.utf8_locale(env{LC_ALL = "", LANG = "C.UTF-8"}))
  end)

  it("takes the size from stty, else $LINES and $COLUMNS, else 24x80", function()
    assert.are.same({50, 132}, {top.terminal_size("50 132\n", env{})})
    assert.are.same({30, 100}, {top.terminal_size(nil, env{LINES = "30", COLUMNS = "100"})})
    assert.are.same({30, 100}, {top.terminal_size("0 0\n", env{LINES = "30", COLUMNS = "100"})})
    assert.are.same({24, 80}, {top.terminal_size(nil, env{})})
  end)
end)

describe("erlangen.top main", function()
  it("refuses bad options with a clear error", function()
    assert.has_error(function() top.main() end, "bad argument #1 to 'top.main' (table expected, got nil)")
    assert.has_error(function() top.main{} end, "top.main: option 'node' must be a node name, got nil")
    assert.has_error(function() top.main{node = "b"} end, 'top.main: option \'node\' must be a node name, got "b"')
    assert.has_error(function() top.main{node = "b@h", interval = 0} end,
                     "top.main: option 'interval' must be a positive number of seconds, got number")
    assert.has_error(function() top.main{node = "b@h", rows = 2.5} end,
                     "top.main: option 'rows' must be a positive integer, got number")
    assert.has_error(function() top.main{node = "b@h", sort = "colour"} end,
                     'top.main: option \'sort\' must be one of cpu, mailbox, received, sent, memory, dropped, got "colour"')
    assert.has_error(function() top.main{node = "b@h", out = 1} end, "top.main: option 'out' must be a file, got number")
    assert.has_error(function() top.main{node = "b@h", colour = true} end, "top.main: unknown option 'colour'")
  end)
end)

describe("erlangen.top main on a node", function()
  setup(D.this_node)
  teardown(D.teardown)
  before_each(D.before_each)
  after_each(D.after_each)

  it("takes its keys from any input and quits on q", function()
    local keys, shown = os.tmpname(), os.tmpname()
    finally(function() os.remove(keys); os.remove(shown) end)
    local f = assert(io.open(keys, "w"))
    f:write("Mq")
    f:close()
    local input, out = assert(io.open(keys)), assert(io.open(shown, "w"))
    top.main{node = D.me.addr, interval = 0.2, input = input, out = out}
    input:close()
    out:close()
    local text = H.read_file(shown)
    assert_contains(text, "erlangen top: node " .. D.me.addr .. ", every 0.2 s")
    assert_contains(text, "sorted by cpu")
    assert_contains(text, "sorted by memory")
    assert_contains(text, "nodes: " .. D.me.name .. " ")
  end)

  it("raises when it cannot connect to the node", function()
    local node = "nosuch@127.0.0.1:" .. D.closed_port()
    local ok, err = pcall(top.main, {node = node})
    assert.is_false(ok)
    assert_contains(err, "top.main: cannot connect to " .. node .. ": ")
  end)
end)

-- A terminal session: top_session.main on ptyrun, with LANG=lang and no
-- LC_ALL or LC_CTYPE. s.frame() returns the lines of the next whole frame
-- (nil once the terminal has ended); s.wait_frame(pred, what) the first
-- for which pred(lines) holds; s.wait_for(needle) reads up to needle.
local serial = 0
local function session(opts)
  serial = serial + 1
  local dir = os.tmpname()
  os.remove(dir)
  assert(os.execute("mkdir -p " .. q(dir)))
  local fifo = dir .. "/terminal"
  assert(os.execute("mkfifo " .. q(fifo)))
  local name = string.format("top%d_%d@127.0.0.1", math.floor(erlangen.system_time() * 1000) % 1000000, serial)
  local also = {}
  for i, n in ipairs(opts.also or {}) do also[i] = string.format("%q", n) end
  local code = string.format(
    "require('top_session').main{name=%q, key_file=%q, node=%q, also={%s}, interval=%s, fail_after=%s, spawned=%s}",
    name, D.KEY, opts.node, table.concat(also, ","), opts.interval or 0.2, opts.fail_after or "nil",
    tostring(opts.spawned or false))
  local cmd = string.format("exec env -u LC_ALL -u LC_CTYPE LANG=%s TERM=xterm %s %d %s -e %s > %s 2>&1",
                            q(opts.lang or "C.UTF-8"), q(PTYRUN), LIMIT, q(D.BIN), q(code), q(fifo))
  local s = {seen = "", dir = dir, name = name}
  s.input = assert(io.popen(cmd, "w"))
  s.output = assert(io.open(fifo, "rb"))
  local first = s.output:read("l") or ""
  assert(first:match("^ptyrun %d+ %d+$"), "ptyrun did not start: " .. first)
  function s.send(text)
    s.input:write(text)
    s.input:flush()
  end
  -- Reads up to and including needle; nil at the end of the terminal.
  local function read_to(needle)
    local got = ""
    while not contains(got, needle) do
      local c = s.output:read(1)
      if c == nil then s.seen = s.seen .. got; return nil end
      got = got .. c
    end
    s.seen = s.seen .. got
    return got
  end
  function s.wait_for(needle)
    local got = read_to(needle)
    if not got then error(string.format("the terminal never showed %q; it showed:\n%s", needle, s.seen)) end
    return got
  end
  function s.frame()
    local got = read_to("\27[J")
    if not got then return nil end
    local body = got:match(".*\27%[H(.-)\27%[J$") or ""
    local lines = {}
    for l in (body:gsub("\27%[K", "") .. "\n"):gmatch("(.-)\r?\n") do lines[#lines + 1] = l end
    s.last = lines
    return lines
  end
  function s.wait_frame(pred, what)
    while true do
      local lines = s.frame()
      if not lines then
        error(string.format("no frame showed %s; the last was:\n%s\nthe terminal showed:\n%s",
                            what, table.concat(s.last or {}, "\n"), s.seen))
      end
      if pred(lines) then return lines end
    end
  end
  function s.close()
    s.output:close()
    s.input:close()
    os.execute("rm -rf " .. q(dir))
  end
  return s
end

-- The first process row of a frame: the line after the titles' rule.
local function first_row(lines)
  for i, l in ipairs(lines) do
    if l:find("pid", 1, true) and l:find("name", 1, true) then return lines[i + 2] or "" end
  end
  return ""
end

local function sorted_by(key, label)
  return function(lines)
    return contains(lines[1] or "", "sorted by " .. key) and contains(first_row(lines), label)
  end
end

describe("erlangen.top on a terminal", function()
  setup(D.this_node)
  teardown(D.teardown)
  before_each(D.before_each)
  after_each(D.after_each)

  -- A child node running top_load; returns it.
  local function loaded_node()
    local c = D.start_child{prefix = "topb"}
    erlangen.spawn_opt({node = c.name}, "top_load.start", erlangen.self())
    H.recv(function(m) return type(m) == "table" and m[1] == "top_load" end, "the load on " .. c.name)
    return c
  end

  it("says the node and the interval on its first line", function()
    local c = loaded_node()
    local s = session{node = c.addr, interval = 0.5}
    finally(s.close)
    s.wait_for("erlangen top: node " .. c.addr .. ", every 0.5 s")
    local lines = s.frame()
    assert_contains(lines[1], "node " .. c.addr .. " · every 0.5 s")
  end)

  it("shows the busiest process of the other node first, sorted by cpu", function()
    local c = loaded_node()
    local s = session{node = c.addr}
    finally(s.close)
    local lines = s.wait_frame(sorted_by("cpu", "top_busy"), "top_busy first")
    assert_contains(lines[2], c.name .. " ")
    assert_contains(first_row(lines), "<" .. c.name .. ".")
  end)

  it("re-sorts when a sort key is pressed", function()
    local c = loaded_node()
    local s = session{node = c.addr}
    finally(s.close)
    s.frame()
    for _, k in ipairs({{"m", "mailbox", "top_inbox"}, {"M", "memory", "top_fat"}, {"d", "dropped", "top_tiny"},
                        {"r", "received", "top_sink"}, {"s", "sent", "top_sender"}, {"c", "cpu", "top_busy"}}) do
      s.send(k[1])
      s.wait_frame(sorted_by(k[2], k[3]), k[3] .. " first after '" .. k[1] .. "'")
    end
  end)

  -- The terminal's settings that the session printed before the top.
  local function stty_before(s)
    s.wait_for("stty before ")
    return s.wait_for("\n"):match("^(%S+)")
  end

  it("quits on q with the terminal's settings restored", function()
    local c = loaded_node()
    local s = session{node = c.addr}
    finally(s.close)
    local before = stty_before(s)
    s.frame()
    s.send("q")
    local after = s.wait_for("top returned"):match("stty after (%S+)")
    assert.are.equal(before, after)
    s.wait_for("ptyrun: exit 0")
  end)

  it("restores the terminal's settings when it fails", function()
    local c = loaded_node()
    local s = session{node = c.addr, fail_after = 4}
    finally(s.close)
    local before = stty_before(s)
    local shown = s.wait_for("out failed")
    assert.are.equal(before, shown:match("stty after (%S+)"))
    assert_contains(shown, "top failed: ")
  end)

  it("restores the terminal's settings when its process is killed", function()
    local c = loaded_node()
    local s = session{node = c.addr, spawned = true, also = {D.me.addr}}
    finally(s.close)
    local before = stty_before(s)
    s.frame()
    local pid = erlangen.whereis("top", s.name)
    assert(erlangen.is_pid(pid), "no process 'top' on " .. s.name)
    erlangen.exit(pid, "kill")
    local after = s.wait_for("top ended killed"):match("stty after (%S+)")
    assert.are.equal(before, after)
  end)

  it("draws in ASCII when LANG=C", function()
    local c = loaded_node()
    local s = session{node = c.addr, lang = "C"}
    finally(s.close)
    local lines = s.frame()
    local all = table.concat(lines, "\n")
    assert.is_nil(all:find("[\128-\255]"), all)
    assert_contains(all, "+-----")
    assert_contains(all, "| pid ")
    assert_contains(lines[1], "node " .. c.addr .. " - every 0.2 s")
  end)

  it("shows a node that goes away as gone, and goes on", function()
    local c = loaded_node()
    local other = D.start_child{prefix = "topc"}
    local s = session{node = c.addr, also = {other.addr}}
    finally(s.close)
    s.wait_frame(function(lines) return contains(lines[2], other.name .. " ") end, other.name .. " listed")
    D.kill_child(other)
    s.wait_frame(function(lines) return contains(lines[2], other.name .. " gone") end, other.name .. " gone")
    s.send("m")
    s.wait_frame(sorted_by("mailbox", "top_inbox"), "top_inbox first after the node went")
  end)
end)
