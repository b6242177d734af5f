-- The web observer's pages in headless Chromium (#browser): each page opens
-- and marks itself ready, the process table sorts and filters, the
-- supervision tree shows a restarted child's new pid, button.kill is there
-- (and kills) only with allow_kill, and each page is saved as a screenshot
-- under build/.
--
-- The busted process is one node of a three-node cluster (two child nodes
-- from spec/dist_helpers.lua), with a supervisor that has a child here and
-- one on another node. Chromium is Debian's /usr/bin/chromium, driven by
-- spec/browser/drive.js (playwright-core, installed by
-- tools/browser_setup.sh) over one loopback TCP connection: the spec sends a
-- command, the driver answers with what the page shows, and the spec
-- judges it. The same cases run against spec/browser/fixture.lua, a
-- stand-in page with the agreed DOM hooks that proves the harness, and
-- against erlangen.observer.serve. Each case is pending where the browser
-- or the observer is missing, with the reason.
local erlangen = require "erlangen"
local H = require "spec.helpers"
local D = require "spec.dist_helpers"
local S = require "sup_support"
local socket = require "socket"

local DRIVER = "spec/browser/drive.js"
local DRIVER_LIFE = 300   -- seconds the driver (and so Chromium) may live at most
local REPLY = 40          -- seconds one driver command may take (its own waits are 10 s)
local TREE_UPDATE = 2     -- seconds: the tree must show a restart within this (issue 15)
local SHOTS = "build"     -- screenshots go to build/observer-<page>.png

-- The browser ------------------------------------------------------------------

-- Why the browser cannot run here, or nil.
local function browser_missing()
  if not os.execute("command -v node >/dev/null 2>&1") then return "node is not installed" end
  if not io.open("/usr/bin/chromium") then return "/usr/bin/chromium is not installed (tools/browser_setup.sh)" end
  if not io.open("spec/browser/node_modules/playwright-core/package.json") then
    return "spec/browser/node_modules has no playwright-core (tools/browser_setup.sh)"
  end
end

local B = {}   -- the driver: B.start, B.call, B.stop

function B.start()
  B.err = os.tmpname()
  B.f = assert(io.popen(string.format("exec timeout -k 10 %d node %s %d 2>%s",
    DRIVER_LIFE + 30, DRIVER, DRIVER_LIFE, H.quote(B.err)), "r"))
  local line = B.f:read("l") or ""
  local port, node_pid, chromium_pid = line:match("^ready (%d+) (%d+) (%d+)$")
  if not port then
    local why = line .. (B.f:read("a") or "") .. (H.read_file(B.err) or "")
    B.f:close(); B.f = nil
    error("the browser driver did not start: " .. why)
  end
  B.node_pid, B.chromium_pid = tonumber(node_pid), tonumber(chromium_pid)
  B.conn = assert(socket.connect("127.0.0.1", tonumber(port)))
  B.conn:settimeout(REPLY)
end

local function split(s, sep)
  local out = {}
  for field in (s .. sep):gmatch("(.-)" .. sep) do out[#out + 1] = field end
  return out
end

-- Sends one command; returns the answer's fields after "ok", or nil and
-- the error's fields.
function B.try(...)
  assert(B.conn:send(table.concat({...}, "\t") .. "\n"))
  local line, err = B.conn:receive("*l")
  if not line then
    error(string.format("the browser driver gave no answer to %q (%s); its stderr: %s",
      (...), err, H.read_file(B.err) or ""), 3)
  end
  local fields = split(line, "\t")
  local ok = table.remove(fields, 1) == "ok"
  if ok then return fields end
  return nil, fields
end

-- Like B.try, and an error answer raises.
function B.call(...)
  local fields, err = B.try(...)
  if not fields then
    error(string.format("browser: %s failed: %s", table.concat({...}, " "), table.concat(err, " ")), 2)
  end
  return fields
end

-- Ends the driver and then Chromium's process group if it outlived it.
function B.stop()
  if B.conn then
    B.conn:send("quit\n")
    B.conn:receive("*l")
    B.conn:close(); B.conn = nil
  end
  if B.f then B.f:close(); B.f = nil end
  -- Chromium leads a process group of its own (playwright starts it
  -- detached); its helpers end a moment after it does.
  if B.chromium_pid then
    local group = "-- -" .. B.chromium_pid .. " 2>/dev/null"
    local gone = D.poll(function() return not os.execute("kill -0 " .. group) end, H.TIMEOUT)
    if not gone then os.execute("kill -KILL " .. group) end
    B.chromium_pid = nil
  end
  if B.err then os.remove(B.err); B.err = nil end
end

-- Opens `url` (body[data-ready="1"] awaited by the driver).
local function open(url) B.call("open", url) end

-- Page errors since the last call (console errors, failed loads).
local function page_errors() return B.call("errors") end

local function count(selector) return tonumber(B.call("count", selector)[1]) end

-- The rows of the process table after a click on th[data-sort=column]:
-- { {pid =, n =, text =}, ... } in display order.
local function sorted_by(column)
  local rows = {}
  for _, v in ipairs(B.call("sort", column)) do
    local pid, n, text = v:match("^(.-)|(.-)|(.*)$")
    rows[#rows + 1] = {pid = pid, n = tonumber(n) or (0 / 0), text = text}
  end
  return rows
end

-- Whether the numbers `rows[i].n` never decrease, or never increase.
local function in_order(rows)
  local up, down = true, true
  for i = 2, #rows do
    if not (rows[i - 1].n <= rows[i].n) then up = false end
    if not (rows[i - 1].n >= rows[i].n) then down = false end
  end
  return up or down
end

local function show_rows(rows)
  local parts = {}
  for _, r in ipairs(rows) do parts[#parts + 1] = r.pid .. "=" .. r.text end
  return table.concat(parts, ", ")
end

local function urlencode(s)
  return (tostring(s):gsub("[^%w%-._~]", function(c) return string.format("%%%02X", c:byte()) end))
end

-- The cluster under observation ---------------------------------------------------

-- Starts what the pages show: two child nodes (b with a supervised child,
-- c with none), a supervisor here with children "l" (here) and "r" (on b),
-- and a process with a mailbox of 5 that nobody reads. Returns it as a table.
local function start_world()
  local w = {}
  w.b, w.c = D.start_child{prefix = "b"}, D.start_child{prefix = "c"}
  local rb = S.child("r")
  rb.node = w.b.name
  w.sup = S.start{children = {S.child("l"), rb}}
  local _, msgs = S.events(2, "the supervisor's children to start")
  w.child = {l = msgs[1][3], r = msgs[2][3]}
  w.stuffed = H.idle()
  for i = 1, 5 do erlangen.send(w.stuffed, {"unread", i}) end
  return w
end

-- The cases, against one site: site.start(w, allow_kill) returns the URL
-- (ending in "/") of an observer of world w; site.why, if set, says why
-- the site cannot run. Screenshots are named observer-<prefix><page>.png.
local function cases(site)
  local w, url, kill_url, why   -- kill_url: the second observer's, with allow_kill

  -- The second observer's URL, started on first use.
  local function with_kill()
    kill_url = kill_url or site.start(w, true)
    return kill_url
  end

  setup(function()
    why = browser_missing() or site.why
    if why then return end
    H.before()
    erlangen.trap_exit(true)
    w = start_world()
    url = site.start(w, false)
  end)

  teardown(function()
    if why then return end
    erlangen.trap_exit(true)
    D.stop_children()
    H.after()
  end)

  local PAGES = {
    {"cluster", function() return "" end},
    {"processes", function() return "processes" end},
    {"process", function() return "process?pid=" .. urlencode(w.sup) end},
    {"tree", function() return "tree" end},
    {"flow", function() return "flow" end},
  }
  for _, p in ipairs(PAGES) do
    local name, path = p[1], p[2]
    it("opens the " .. name .. " page, marked ready, with the nav links, and saves a screenshot", function()
      if why then return pending(why) end
      open(url .. path())
      for _, nav in ipairs({"cluster", "processes", "tree", "flow"}) do
        assert.are.equal(1, count("a#nav-" .. nav), "a#nav-" .. nav .. " on the " .. name .. " page")
      end
      local shot = string.format("%s/observer-%s%s.png", SHOTS, site.prefix, name)
      os.remove(shot)
      B.call("shot", shot)
      assert.is_truthy(io.open(shot), "no screenshot at " .. shot)
      assert.are.same({}, page_errors())
    end)
  end

  local COLUMNS = {"mailbox", "memory", "cpu"}
  for k, column in ipairs(COLUMNS) do
    it("sorts the process table by " .. column .. " on a click on its header", function()
      if why then return pending(why) end
      open(url .. "processes")
      sorted_by(COLUMNS[k % #COLUMNS + 1])   -- away from the order the page may start in
      local rows = sorted_by(column)
      assert.is_true(#rows >= 4, "rows in table#processes: " .. show_rows(rows))
      assert.is_true(in_order(rows), "rows not in " .. column .. " order: " .. show_rows(rows))
      local shown = {}
      for _, r in ipairs(rows) do shown[r.pid] = r end
      if column == "mailbox" then
        local row = shown[tostring(w.stuffed)]
        assert.is_truthy(row, "no row for " .. tostring(w.stuffed) .. " in " .. show_rows(rows))
        assert.are.equal(5, row.n)
      end
      assert.is_truthy(shown[tostring(w.child.r)], "no row for the child on " .. w.b.name .. ": " .. show_rows(rows))
      assert.are.same({}, page_errors())
    end)
  end

  it("shows only the matching rows once input#filter holds a pid", function()
    if why then return pending(why) end
    open(url .. "processes")
    local pid = tostring(w.stuffed)
    B.call("fill", "input#filter", pid)
    local rows = 'table#processes tr[data-pid]:visible'
    assert.are.equal(1, count(rows), "visible rows with the filter " .. pid)
    assert.are.equal(1, count(string.format('table#processes tr[data-pid="%s"]:visible', pid)),
      "the visible row is " .. pid)
  end)

  for _, id in ipairs({"l", "r"}) do
    it("shows the new pid of supervised child " .. id .. " in the tree within " .. TREE_UPDATE
       .. " s of its restart, and not the old one", function()
      if why then return pending(why) end
      open(url .. "tree")
      local old = w.child[id]
      assert(B.try("await_pids", "#tree", "-", tostring(old), 10000), "the tree never showed " .. tostring(old))
      erlangen.exit(old, "kill")
      local _, msgs = S.events(1, "the restart of " .. id)
      local new = msgs[1][3]
      w.child[id] = new
      local ok, still = B.try("await_pids", "#tree", tostring(old), tostring(new), TREE_UPDATE * 1000)
      assert(ok, string.format("after the restart the tree shows %s; expected %s, not %s",
        table.concat(still or {}, " ", 2), tostring(new), tostring(old)))
      assert.are.same({}, page_errors())
    end)
  end

  it("shows no button.kill without allow_kill", function()
    if why then return pending(why) end
    open(url .. "processes")
    assert.are.equal(0, count("button.kill"), "button.kill on the processes page")
    open(url .. "process?pid=" .. urlencode(w.stuffed))
    assert.are.equal(0, count("button.kill"), "button.kill on the process page")
  end)

  it("shows button.kill on a second observer started with allow_kill", function()
    if why then return pending(why) end
    open(with_kill() .. "process?pid=" .. urlencode(w.stuffed))
    assert.is_true(count("button.kill") > 0, "no button.kill on the process page with allow_kill")
    B.call("shot", string.format("%s/observer-%sprocess-allow-kill.png", SHOTS, site.prefix))
  end)

  it("kills the process when its button.kill is clicked, with allow_kill", function()
    if why then return pending(why) end
    local victim = H.idle()
    local ref = erlangen.monitor(victim)
    open(with_kill() .. "process?pid=" .. urlencode(victim))
    B.call("click", "button.kill")
    H.await_down(ref, "the end of " .. tostring(victim) .. " after a click on button.kill")
    assert.are.same({}, page_errors())
  end)
end

-- The sites ---------------------------------------------------------------------

local fixture_site = {prefix = "fixture-"}

function fixture_site.start(w, allow_kill)
  erlangen.spawn("browser.fixture.serve", erlangen.self(),
                 {sup = w.sup, nodes = {w.b.name, w.c.name}, allow_kill = allow_kill})
  return H.recv(H.tagged("fixture_url"), "the fixture's URL")[2]
end

local observer_site = {prefix = ""}
do
  local ok, observer = pcall(require, "erlangen.observer")
  if not (ok and type(observer.serve) == "function") then
    observer_site.why = "erlangen.observer.serve does not exist yet (the web observer, issue 15)"
  end
  function observer_site.start(_, allow_kill)
    local url = observer.serve{listen = "127.0.0.1:0", allow_kill = allow_kill}
    assert(type(url) == "string" and url:match("^http://"), "observer.serve returned " .. H.show(url))
    if not url:match("/$") then url = url .. "/" end
    return url
  end
end

describe("the observer in headless Chromium #browser", function()
  setup(function()
    D.this_node()
    if not browser_missing() then B.start() end
  end)
  teardown(function()
    B.stop()
    D.teardown()
  end)

  describe("against the stand-in page (the harness)", function() cases(fixture_site) end)
  describe("erlangen.observer.serve", function() cases(observer_site) end)
end)
