-- The process tree (erlangen.observer): the table snapshot, the indented
-- text, subtrees, Graphviz DOT and SVG, option errors, and erlangen.tree.
local erlangen = require "erlangen"
local observer = require "erlangen.observer"
local H = require "spec.helpers"

local self = erlangen.self

-- A member of a test tree. `shape` = {name=, label=, children={shape, ...},
-- link_to=name}: it labels and registers itself, spawn_links its children one
-- by one (each reports before the next starts), links to the process named
-- `link_to` if any, reports {"up", ids} to `report_to` (ids = {pid=,
-- children={ids, ...}}) and then waits, blocked in receive, for "stop",
-- answering {"ping", from} with "pong" meanwhile.
local function member(report_to, shape)
  if shape.label then erlangen.set_label(shape.label) end
  if shape.name then erlangen.register(shape.name, erlangen.self()) end
  local kids = {}
  for i, kid in ipairs(shape.children or {}) do
    erlangen.spawn_link(member, erlangen.self(), kid)
    kids[i] = erlangen.receive(function(m) return type(m) == "table" and m[1] == "up" end)[2]
  end
  if shape.link_to then erlangen.link(erlangen.whereis(shape.link_to)) end
  erlangen.send(report_to, {"up", {pid = erlangen.self(), children = kids}})
  while true do
    local m = erlangen.receive(function(m) return m == "stop" or (type(m) == "table" and m[1] == "ping") end)
    if m == "stop" then return end
    erlangen.send(m[2], "pong")
  end
end

-- Waits until every process of `ids` is blocked in receive, so that each
-- one's status is "waiting" (info().status is announced by no message).
local function await_waiting(ids)
  H.eventually(function()
    local info = erlangen.info(ids.pid)
    return info and info.status == "waiting"
  end, "status 'waiting' of " .. tostring(ids.pid))
  for _, kid in ipairs(ids.children) do await_waiting(kid) end
end

-- Starts a tree of `shape` under the spec process and returns its ids once
-- all of it waits in receive.
local function start(shape)
  erlangen.spawn(member, self(), shape)
  local ids = H.recv(H.tagged("up"), "the tree's report")[2]
  await_waiting(ids)
  return ids
end

-- kv_sup [supervisor]
-- ├─ kv_registry [server kv]
-- └─ [supervisor]
--    ├─ [acceptor]
--    └─ (a worker linked to kv_registry)
local KV = {name = "kv_sup", label = "supervisor", children = {
  {name = "kv_registry", label = "server kv"},
  {label = "supervisor", children = {{label = "acceptor"}, {link_to = "kv_registry"}}},
}}

-- The pids of a KV tree, by role.
local function kv_pids(ids)
  local inner = ids.children[2]
  return {sup = ids.pid, registry = ids.children[1].pid, inner = inner.pid,
          acceptor = inner.children[1].pid, worker = inner.children[2].pid}
end

-- Parses one line of observer.text into its depth and fields.
local PREFIXES = {"├─ ", "└─ ", "│  ", "|- ", "`- ", "|  ", "   "}
local function parse_line(line)
  local depth, rest = 0, line
  local found = true
  while found do
    found = false
    for _, p in ipairs(PREFIXES) do
      if rest:sub(1, #p) == p then
        rest, depth, found = rest:sub(#p + 1), depth + 1, true
        break
      end
    end
  end
  local name, pid, after = rest:match("^(.-)%s?(<%d+%.%d+>) (.*)$")
  assert(pid, "no pid in line " .. H.show(line))
  local label
  label, after = after:match("^%[(.-)%] (.*)$")
  if not label then after = rest:match("<%d+%.%d+> (.*)$") end
  local status, mailbox, capacity, tail = after:match("^(%a+) (%d+)/(%d+)(.*)$")
  assert(status, "no status and mailbox in line " .. H.show(line))
  local links = {}
  for p in (tail:match("~ linked to (.*)$") or ""):gmatch("<%d+%.%d+>") do links[#links + 1] = p end
  return {depth = depth, name = name ~= "" and name or nil, pid = pid, label = label,
          status = status, mailbox = tonumber(mailbox), capacity = tonumber(capacity),
          dropped = tonumber(tail:match("%((%d+) dropped%)")), links = links}
end

local function parse(text)
  local rows = {}
  for line in text:gmatch("([^\n]*)\n") do rows[#rows + 1] = parse_line(line) end
  return rows
end

-- The row of `pid` among parsed rows, and its index.
local function row_of(rows, pid)
  for i, r in ipairs(rows) do if r.pid == tostring(pid) then return r, i end end
end

-- The node of `pid` in a forest returned by observer.tree, and its parent node.
local function find_node(nodes, pid, parent)
  for _, n in ipairs(nodes) do
    if n.pid == pid then return n, parent end
    local found, p = find_node(n.children, pid, n)
    if found then return found, p end
  end
end

local function has_dot()
  local p = io.popen("command -v dot 2>/dev/null")
  local out = p:read("a"); p:close()
  return out ~= ""
end

local CAP = erlangen.configure({}).mailbox

describe("observer.tree", function()
  before_each(H.before)
  after_each(H.after)

  it("nests each process under the process that spawned it, in spawn order", function()
    local pids = kv_pids(start(KV))
    local me = find_node(observer.tree(), self())
    assert.is_not_nil(me, "the spec process is in the tree")
    local sup, parent = find_node(me.children, pids.sup, me)
    assert.are.equal(me, parent)
    assert.are.equal(2, #sup.children)
    assert.are.equal(pids.registry, sup.children[1].pid)
    assert.are.equal(pids.inner, sup.children[2].pid)
    local inner = sup.children[2]
    assert.are.same({pids.acceptor, pids.worker}, {inner.children[1].pid, inner.children[2].pid})
    assert.are.equal(0, #inner.children[1].children)
  end)

  it("gives each node its name, label, status, mailbox, capacity and parent", function()
    local pids = kv_pids(start(KV))
    local sup = find_node(observer.tree(), pids.sup)
    assert.are.equal("kv_sup", sup.name)
    assert.are.equal("supervisor", sup.label)
    assert.are.equal("waiting", sup.status)
    assert.are.equal(0, sup.mailbox)
    assert.are.equal(CAP, sup.capacity)
    assert.are.equal(self(), sup.parent)
    local reg = sup.children[1]
    assert.are.equal("kv_registry", reg.name)
    assert.are.equal("server kv", reg.label)
    local worker = sup.children[2].children[2]
    assert.is_nil(worker.name)
    assert.is_nil(worker.label)
    assert.are.equal(pids.inner, worker.parent)
  end)

  it("lists every link of a node, tree edges included", function()
    local pids = kv_pids(start(KV))
    local worker = find_node(observer.tree(), pids.worker)
    table.sort(worker.links, function(a, b) return tostring(a) < tostring(b) end)
    local expected = {pids.inner, pids.registry}
    table.sort(expected, function(a, b) return tostring(a) < tostring(b) end)
    assert.are.same(expected, worker.links)
  end)

  it("makes a process whose parent has ended a root", function()
    -- The middle process spawns an unlinked child, reports it and returns.
    local middle, ref = erlangen.spawn_monitor(function(to)
      local child = erlangen.spawn(function() erlangen.receive(function(m) return m == "stop" end) end)
      erlangen.send(to, {"orphan", child})
    end, self())
    local orphan = H.recv(H.tagged("orphan"), "the orphan's pid")[2]
    H.await_down(ref, "the middle process to end")
    local roots = observer.tree()
    local node, parent = find_node(roots, orphan)
    assert.is_not_nil(node, "the orphan is in the tree")
    assert.is_nil(parent, "the orphan is a root, under " .. tostring(parent and parent.pid))
    assert.are.equal(middle, node.parent)
    assert.is_nil(find_node(roots, middle))
  end)

  it("draws the on-demand logger as a root, not under the supervisor whose child logged first", function()
    local supervisor = require "erlangen.supervisor"
    local logger = erlangen.whereis("erlangen.log")
    if logger then erlangen.exit(logger, "kill"); H.eventually(function() return not erlangen.whereis("erlangen.log") end, "the old logger's end") end
    local sup = assert(supervisor.start{children = {{id = "w", start = {"sup_child.start_link", false, "w",
                                                                         {log = "first record"}}}}})
    H.eventually(function() return erlangen.whereis("erlangen.log") end, "the logger's start")
    local roots = observer.tree()
    local node, parent = find_node(roots, erlangen.whereis("erlangen.log"))
    assert.is_not_nil(node, "the logger is in the tree")
    assert.is_nil(parent, "the logger is drawn under " .. tostring(parent and parent.pid))
    supervisor.stop(sup)
  end)

  it("draws a parentless process a supervisor linked in (adopted) under that supervisor", function()
    local orphan = erlangen.spawn_opt({parent = false}, function() erlangen.receive(function(m) return m == "stop" end) end)
    local sup = erlangen.spawn(function(child)
      erlangen.set_label("supervisor")
      erlangen.trap_exit(true)
      erlangen.link(child)
      erlangen.receive(function(m) return m == "stop" end)
    end, orphan)
    H.eventually(function() local i = erlangen.info(sup); return i and #i.links == 1 end, "the link")
    local node, parent = find_node(observer.tree(), orphan)
    assert.is_not_nil(node)
    assert.are.equal(sup, parent and parent.pid)
    erlangen.send(sup, "stop")
    erlangen.send(orphan, "stop")
  end)

  it("returns only the subtree of opts.root, given as a pid, a name or {name, node}", function()
    local pids = kv_pids(start(KV))
    local by_pid = observer.tree{root = pids.inner}
    assert.are.equal(1, #by_pid)
    assert.are.equal(pids.inner, by_pid[1].pid)
    assert.are.equal(2, #by_pid[1].children)
    local by_name = observer.tree{root = "kv_registry"}
    assert.are.equal(1, #by_name)
    assert.are.equal(pids.registry, by_name[1].pid)
    local by_name_node = observer.tree{root = {"kv_registry", erlangen.node()}}
    assert.are.equal(1, #by_name_node)
    assert.are.equal(pids.registry, by_name_node[1].pid)
  end)

  it("returns nil, 'noproc' for a root that is not running", function()
    local a, err = observer.tree{root = H.dead_pid()}
    assert.is_nil(a); assert.are.equal("noproc", err)
    a, err = observer.tree{root = "no_such_process"}
    assert.is_nil(a)
    assert.are.equal("noproc", err)
    a, err = observer.tree{root = {"no_such_process", erlangen.node()}}
    assert.is_nil(a); assert.are.equal("noproc", err)
  end)
end)

describe("observer.text", function()
  before_each(H.before)
  after_each(H.after)

  it("draws the subtree with box-drawing branches, one process per line", function()
    local p = kv_pids(start(KV))
    local expected = table.concat({
      string.format("kv_sup %s [supervisor] waiting 0/%d", p.sup, CAP),
      string.format("├─ kv_registry %s [server kv] waiting 0/%d ~ linked to %s", p.registry, CAP, p.worker),
      string.format("└─ %s [supervisor] waiting 0/%d", p.inner, CAP),
      string.format("   ├─ %s [acceptor] waiting 0/%d", p.acceptor, CAP),
      string.format("   └─ %s waiting 0/%d ~ linked to %s", p.worker, CAP, p.registry),
      "",
    }, "\n")
    assert.are.equal(expected, observer.text{root = "kv_sup"})
  end)

  it("draws ASCII branches with opts.ascii", function()
    local p = kv_pids(start(KV))
    local expected = table.concat({
      string.format("kv_sup %s [supervisor] waiting 0/%d", p.sup, CAP),
      string.format("|- kv_registry %s [server kv] waiting 0/%d ~ linked to %s", p.registry, CAP, p.worker),
      string.format("`- %s [supervisor] waiting 0/%d", p.inner, CAP),
      string.format("   |- %s [acceptor] waiting 0/%d", p.acceptor, CAP),
      string.format("   `- %s waiting 0/%d ~ linked to %s", p.worker, CAP, p.registry),
      "",
    }, "\n")
    assert.are.equal(expected, observer.text{root = p.sup, ascii = true})
  end)

  it("puts the whole tree under its roots, the spec process among them", function()
    local p = kv_pids(start(KV))
    local rows = parse(observer.text())
    local me = row_of(rows, self())
    assert.is_not_nil(me, "the spec process has a line")
    assert.are.equal(0, me.depth)
    local depths = {}
    for role, pid in pairs(p) do depths[role] = assert(row_of(rows, pid), role .. " has a line").depth end
    assert.are.same({sup = 1, registry = 2, inner = 2, acceptor = 3, worker = 3}, depths)
    local _, i_sup = row_of(rows, p.sup)
    local _, i_worker = row_of(rows, p.worker)
    assert.is_true(i_sup < i_worker, "the worker's line comes after its ancestor's")
  end)

  it("shows a mailbox's fill as queued/capacity", function()
    local p = kv_pids(start(KV))
    for i = 1, 3 do erlangen.send(p.acceptor, {"unwanted", i}) end
    -- The ping comes after them, so once it has answered, the acceptor has
    -- looked at all three; "waiting" then means it went back to its receive
    -- (the mailbox alone can count three while it is still waking for them).
    erlangen.send(p.acceptor, {"ping", self()})
    H.recv(function(m) return m == "pong" end, "the acceptor's pong")
    H.eventually(function()
      local info = erlangen.info(p.acceptor)
      return info.mailbox == 3 and info.status == "waiting"
    end, "three messages queued in the acceptor")
    local row = row_of(parse(observer.text{root = p.inner}), p.acceptor)
    assert.are.equal(3, row.mailbox)
    assert.are.equal(CAP, row.capacity)
    assert.are.equal("waiting", row.status)
    assert.are.equal(3, find_node(observer.tree(), p.acceptor).mailbox)
  end)

  it("shows messages dropped by a full mailbox", function()
    local pid = erlangen.spawn_opt({mailbox = 2}, function()
      erlangen.receive(function(m) return m == "stop" end)
    end)
    for i = 1, 5 do erlangen.send(pid, i) end
    H.eventually(function() return erlangen.info(pid).status == "waiting" end, "the process to wait")
    local row = parse(observer.text{root = pid})[1]
    assert.are.equal(2, row.mailbox)
    assert.are.equal(2, row.capacity)
    assert.are.equal(3, row.dropped)
  end)

  it("drops a process that has ended, and its links", function()
    local p = kv_pids(start(KV))
    local ref = erlangen.monitor(p.worker)
    erlangen.send(p.worker, "stop")
    assert.are.equal("normal", H.await_down(ref, "the worker to end"))
    local rows = parse(observer.text{root = p.sup})
    assert.are.equal(4, #rows)
    assert.is_nil(row_of(rows, p.worker))
    assert.are.same({}, row_of(rows, p.registry).links)
    assert.are.equal(1, #find_node(observer.tree(), p.inner).children)
  end)

  it("shows control characters in names and labels as escapes, on one line", function()
    local pid = erlangen.spawn(function()
      erlangen.set_label("two\nlines\tand tab")
      erlangen.receive(function(m) return m == "stop" end)
    end)
    H.eventually(function()
      local info = erlangen.info(pid)
      return info.label ~= nil and info.status == "waiting"
    end, "the label to be set")
    assert.are.equal(string.format("%s [two\\nlines\\009and tab] waiting 0/%d\n", pid, CAP),
      observer.text{root = pid})
  end)

  it("returns nil, 'noproc' for a root that is not running", function()
    local s, err = observer.text{root = "no_such_process"}
    assert.is_nil(s); assert.are.equal("noproc", err)
  end)
end)

describe("observer.dot", function()
  before_each(H.before)
  after_each(H.after)

  local function q(pid) return '"' .. tostring(pid) .. '"' end

  it("draws supervisors as boxes, workers as ellipses, with name, pid, label and mailbox", function()
    local p = kv_pids(start(KV))
    local dot = observer.dot{root = "kv_sup"}
    assert.matches("^digraph erlangen {\n", dot)
    assert.matches("\n}\n$", dot)
    local function node_line(pid)
      return dot:match("\n  " .. q(pid):gsub("%p", "%%%0") .. " %[([^\n]*)%];\n")
    end
    assert.are.equal(string.format('shape=box, label="kv_sup\\n%s\\n[supervisor]\\nwaiting 0/%d"', p.sup, CAP),
      node_line(p.sup))
    assert.are.equal(string.format('shape=ellipse, label="kv_registry\\n%s\\n[server kv]\\nwaiting 0/%d"',
      p.registry, CAP), node_line(p.registry))
    assert.are.equal(string.format('shape=box, label="%s\\n[supervisor]\\nwaiting 0/%d"', p.inner, CAP),
      node_line(p.inner))
    assert.are.equal(string.format('shape=ellipse, label="%s\\nwaiting 0/%d"', p.worker, CAP),
      node_line(p.worker))
  end)

  it("draws parent to child edges solid and other links once, dashed and undirected", function()
    local p = kv_pids(start(KV))
    local dot = observer.dot{root = "kv_sup"}
    local edges = {}
    for line in dot:gmatch("\n  (\"[^\n]*\" %-> [^\n]*);") do edges[#edges + 1] = line end
    assert.are.same({
      q(p.sup) .. " -> " .. q(p.registry),
      q(p.sup) .. " -> " .. q(p.inner),
      q(p.inner) .. " -> " .. q(p.acceptor),
      q(p.inner) .. " -> " .. q(p.worker),
      q(p.registry) .. " -> " .. q(p.worker) .. " [style=dashed, dir=none]",
    }, edges)
  end)

  it("shows a linked process outside the subtree as a plain pid", function()
    local p = kv_pids(start(KV))
    local dot = observer.dot{root = p.inner}
    assert.is_truthy(dot:find(string.format('%s [shape=plaintext, label="%s"];', q(p.registry), p.registry),
      1, true), dot)
    assert.is_truthy(dot:find(q(p.worker) .. " -> " .. q(p.registry) .. " [style=dashed, dir=none];", 1, true), dot)
    assert.is_falsy(dot:find(q(p.sup), 1, true), "the supervisor above the root is not drawn")
  end)

  it("escapes quotes, backslashes, newlines and bytes that are not UTF-8", function()
    local pid = erlangen.spawn(function()
      erlangen.set_label('say "hi" \\ \n\255')
      erlangen.receive(function(m) return m == "stop" end)
    end)
    H.eventually(function()
      local info = erlangen.info(pid)
      return info.label ~= nil and info.status == "waiting"
    end, "the label to be set")
    local dot = observer.dot{root = pid}
    assert.is_truthy(dot:find('\\n[say \\"hi\\" \\\\ \\n\\\\xFF]\\n', 1, true), dot)
    if has_dot() then
      local svg, err = observer.svg{root = pid}
      assert.is_nil(err)
      assert.matches("<svg", svg)
    end
  end)

  it("returns nil, 'noproc' for a root that is not running", function()
    local s, err = observer.dot{root = H.dead_pid()}
    assert.is_nil(s); assert.are.equal("noproc", err)
  end)

  it("writes the DOT text to a file with write_dot", function()
    start(KV)
    local path = os.tmpname()
    assert.is_true(observer.write_dot(path, {root = "kv_sup"}))
    local f = assert(io.open(path)); local s = f:read("a"); f:close(); os.remove(path)
    assert.are.equal(observer.dot{root = "kv_sup"}, s)
  end)

  it("returns nil and the reason when the file cannot be written", function()
    local ok, err = observer.write_dot("/nonexistent-dir/tree.dot")
    assert.is_nil(ok)
    assert.matches("nonexistent%-dir", err)
  end)
end)

describe("observer.svg", function()
  before_each(H.before)
  after_each(H.after)

  it("returns nil, \"graphviz 'dot' not found\" when the dot command is missing", function()
    local s, err = observer.svg{dot = "/nonexistent/dot"}
    assert.is_nil(s)
    assert.are.equal("graphviz 'dot' not found", err)
  end)

  it("renders the tree with Graphviz when dot is installed, else says it is not found", function()
    local p = kv_pids(start(KV))
    local svg, err = observer.svg{root = "kv_sup"}
    if not has_dot() then
      assert.is_nil(svg)
      assert.are.equal("graphviz 'dot' not found", err)
      return
    end
    assert.is_nil(err)
    assert.matches("<svg", svg)
    assert.is_truthy(svg:find(">kv_sup<", 1, true), "the name is drawn")
    assert.is_truthy(svg:find("&lt;" .. tostring(p.worker):sub(2, -2) .. "&gt;", 1, true), "the worker's pid is drawn")
  end)

  it("writes the SVG to a file with write_svg, or returns the reason", function()
    start(KV)
    local path = os.tmpname()
    local ok, err = observer.write_svg(path, {root = "kv_sup"})
    local f = assert(io.open(path)); local s = f:read("a"); f:close(); os.remove(path)
    if has_dot() then
      assert.is_nil(err); assert.is_true(ok)
      assert.matches("<svg", s)
    else
      assert.is_nil(ok); assert.are.equal("graphviz 'dot' not found", err)
    end
  end)

  it("reports dot's own complaint when dot fails", function()
    -- `false` exits 1 and prints nothing: a dot that rejected its input.
    local s, err = observer.svg{dot = "false"}
    assert.is_nil(s)
    assert.are.equal("dot failed", err)
  end)
end)

describe("observer options", function()
  local function error_of(fn, ...)
    local err = H.error_of(fn, ...)
    assert.matches("observer_spec%.lua:%d+: ", err)  -- points at the caller
    return err
  end

  it("rejects an options value that is not a table", function()
    assert.matches("bad argument #1 to 'observer.text' %(table expected, got number%)",
      error_of(function() observer.text(5) end))
    assert.matches("bad argument #2 to 'observer.write_dot' %(table expected, got string%)",
      error_of(function() observer.write_dot("/tmp/x.dot", "ascii") end))
  end)

  it("rejects an unknown option, naming it", function()
    assert.matches("observer.tree: unknown option 'rooot'",
      error_of(function() observer.tree{rooot = "x"} end))
    assert.matches("observer.dot: unknown option 'ascii'",
      error_of(function() observer.dot{ascii = true} end))
  end)

  it("rejects a root that is neither a pid, a name nor {name, node}", function()
    assert.matches("observer.text: option 'root' must be a pid, a name or {name, node}, got table",
      error_of(function() observer.text{root = {}} end))
    assert.matches("observer.text: option 'root' must be a pid, a name or {name, node}, got table",
      error_of(function() observer.text{root = {"kv_sup", "nohost"}} end))
    assert.matches("observer.tree: option 'root' must be a pid, a name or {name, node}, got ref",
      error_of(function() observer.tree{root = erlangen.ref()} end))
  end)

  it("rejects a non-boolean ascii and an empty dot command", function()
    assert.matches("observer.print: option 'ascii' must be a boolean, got string",
      error_of(function() observer.print{ascii = "yes"} end))
    assert.matches("observer.svg: option 'dot' must be a non%-empty string, got an empty string",
      error_of(function() observer.svg{dot = ""} end))
    assert.matches("observer.tree: option 'ids' must be a boolean, got number",
      error_of(function() observer.tree{ids = 1} end))
  end)

  it("rejects a path that is not a string", function()
    assert.matches("bad argument #1 to 'observer.write_svg' %(string expected, got nil%)",
      error_of(function() observer.write_svg() end))
  end)
end)

describe("erlangen.tree", function()
  -- Runs `code` in the erlangen interpreter and returns what it printed.
  local function run(code)
    local bin = assert(os.getenv("ERLANGEN_BIN"), "ERLANGEN_BIN is set by spec/run")
    local p = assert(io.popen(string.format("%s -e '%s' 2>&1", bin, code)))
    local out = p:read("a")
    local ok = p:close()
    assert(ok, "the interpreter failed: " .. out)
    return out
  end

  -- A probe process, labelled and named "probe", waiting in receive; then
  -- `call`. The main process is named "ready" so that the probe can report.
  local function probe_then(call)
    return [[
erlangen.register("ready", erlangen.self())
local p = erlangen.spawn_opt({name = "probe"}, function()
  erlangen.set_label("probe label")
  erlangen.send("ready", "up")
  erlangen.receive(function(m) return m == "stop" end)
end)
assert(erlangen.receive(5) == "up")
while erlangen.info(p).status ~= "waiting" do erlangen.sleep(0.002) end
]] .. call .. "\n"
  end

  it("prints the tree in the interpreter and returns nothing", function()
    local out = run(probe_then('io.write(select("#", erlangen.tree()), "\\n")'))
    local lines = {}
    for line in out:gmatch("([^\n]*)\n") do lines[#lines + 1] = line end
    assert.are.equal(3, #lines, out)
    local main, probe = parse_line(lines[1]), parse_line(lines[2])
    assert.are.same({0, "ready", "running"}, {main.depth, main.name, main.status})
    assert.are.same({1, "probe", "probe label", "waiting", 0}, {probe.depth, probe.name, probe.label,
      probe.status, probe.mailbox})
    assert.matches("^└─ probe <", lines[2])
    assert.are.equal("0", lines[3])
  end)

  it("is observer.print, options included", function()
    local out = run(probe_then('erlangen.tree{root = "probe", ascii = true}'))
    assert.matches("^probe <0%.%d+> %[probe label%] waiting 0/%d+\n$", out)
    out = run(probe_then('require("erlangen.observer").print{root = "probe"}'))
    assert.matches("^probe <0%.%d+> %[probe label%] waiting 0/%d+\n$", out)
  end)

  it("prints that a root is not running", function()
    assert.are.equal("no process nobody\n", run('erlangen.tree{root = "nobody"}'))
  end)
end)

describe("observer with a supervisor's children on other nodes", function()
  local D = require "spec.dist_helpers"
  local S = require "sup_support"
  local supervisor = require "erlangen.supervisor"
  setup(D.this_node)
  teardown(D.teardown)
  before_each(D.before_each)
  after_each(D.after_each)

  -- A sup_child spec whose child runs on `node`.
  local function remote(id, node)
    local c = S.child(id)
    c.node = node
    return c
  end

  -- {pid, node} of each node of `list` whose pid is in `pids` (all if nil),
  -- in order. (A supervisor's report may have spawned a logger under it.)
  local function where(list, pids)
    local want, out = {}, {}
    for _, p in ipairs(pids or {}) do want[p] = true end
    for _, n in ipairs(list) do
      if pids == nil or want[n.pid] then out[#out + 1] = {n.pid, n.node} end
    end
    return out
  end

  -- A supervisor here with child l here and one child on each of two other
  -- nodes; returns it, the nodes (sorted by name) and the children's pids.
  -- This process takes the log's reports, so that no logger is spawned
  -- under the supervisor.
  local function two_node_tree()
    assert(S.capture_log(), "could not take the name erlangen.log for the test")
    finally(S.release_log)
    local b, c = D.start_child(), D.start_child()
    if c.name < b.name then b, c = c, b end
    local sup = S.start{children = {remote("rc", c.name), S.child("l"), remote("rb", b.name)}}
    local _, msgs = S.events(3)
    return sup, b, c, {rc = msgs[1][3], l = msgs[2][3], rb = msgs[3][3]}
  end

  it("shows each child under its supervisor with its node, this node first, then by name", function()
    local sup, b, c, p = two_node_tree()
    local tree = assert(observer.tree{root = sup})
    assert.are.same({{sup, erlangen.node()}}, where(tree))
    assert.are.same({{p.l, erlangen.node()}, {p.rb, b.name}, {p.rc, c.name}}, where(tree[1].children))
    assert.are.same({p.l, p.rb, p.rc}, tree[1].links)
    local rb = find_node(tree, p.rb)
    assert.are.same({sup}, rb.links)
    assert.is_number(rb.mailbox, "the child's fields come from its own node")
    supervisor.stop(sup)
  end)

  it("gives each child its id with ids, here and on other nodes, and no id without", function()
    local sup, _, _, p = two_node_tree()
    local tree = assert(observer.tree{root = sup, ids = true})
    local ids = {}
    for _, c in ipairs(tree[1].children) do ids[#ids + 1] = {c.pid, c.id} end
    assert.are.same({{p.l, "l"}, {p.rb, "rb"}, {p.rc, "rc"}}, ids)
    assert.is_nil(assert(observer.tree{root = sup})[1].children[1].id)
    supervisor.stop(sup)
  end)

  it("shows them in the whole tree too, under the supervisor and never as extra links", function()
    local sup, b, c, p = two_node_tree()
    local node = assert(find_node(assert(observer.tree()), sup), "the supervisor is in the tree")
    assert.are.same({{p.l, erlangen.node()}, {p.rb, b.name}, {p.rc, c.name}}, where(node.children))
    local lines = {}
    for line in observer.text{root = sup, ascii = true}:gmatch("([^\n]*)\n") do lines[#lines + 1] = line end
    assert.are.equal(4, #lines, table.concat(lines, "\n"))
    assert.matches("^" .. tostring(sup):gsub("%p", "%%%0") .. " %[supervisor%] %a+ %d+/%d+$", lines[1])
    assert.matches("^|%- " .. tostring(p.l):gsub("%p", "%%%0") .. " ", lines[2])
    assert.matches("^|%- <" .. b.name:gsub("%p", "%%%0") .. "%.%d+> %a+ %d+/%d+$", lines[3])
    assert.matches("^`%- <" .. c.name:gsub("%p", "%%%0") .. "%.%d+> %a+ %d+/%d+$", lines[4])
    supervisor.stop(sup)
  end)

  it("draws the children of each other node in a cluster named after it, with solid edges", function()
    local sup, b, c, p = two_node_tree()
    local text = assert(observer.dot{root = sup})
    local function plain(s) return (s:gsub("%p", "%%%0")) end
    for _, n in ipairs({{b.name, p.rb}, {c.name, p.rc}}) do
      local cluster = text:match('subgraph "cluster_%d+" {\n    label="' .. plain(n[1]) .. '";[^\n]*\n(.-)\n  }')
      assert(cluster, "a cluster for " .. n[1] .. " in\n" .. text)
      assert.matches('^    "' .. plain(tostring(n[2])) .. '" %[shape=ellipse', cluster)
      assert.matches('  "' .. plain(tostring(sup)) .. '" %-> "' .. plain(tostring(n[2])) .. '";\n', text)
    end
    assert.is_nil(text:find("dashed, dir", 1, true), "no link is drawn beside the tree:\n" .. text)
    supervisor.stop(sup)
  end)

  it("shows a supervisor on another node with its own children there", function()
    local b = D.start_child()
    local sub = {id = "sub", node = b.name, type = "supervisor",
                 start = {"erlangen.supervisor.start_link", {children = {S.child("w")}}}}
    local sup = S.start{children = {sub}}
    local w = select(2, S.events(1))[1][3]
    local tree = assert(observer.tree{root = sup})
    local pid = supervisor.which_children(sup)[1].pid
    local node, parent = find_node(tree, pid)
    assert.are.same({sup, b.name, "supervisor"}, {parent.pid, node.node, node.label})
    assert.are.same({{w, b.name}}, where(node.children, {w}))
    supervisor.stop(sup)
  end)

  it("shows a child on this node under its supervisor on another node", function()
    local b = D.start_child()
    erlangen.spawn_opt({node = b.name}, "erlangen.supervisor.start",
      {name = "osup", children = {remote("here", erlangen.node())}})
    local here = select(2, S.events(1, "the child here"))[1][3]
    assert.are.equal(erlangen.node(), erlangen.node(here))
    local tree = assert(observer.tree{root = {"osup", b.name}})
    assert.are.equal(b.name, tree[1].node)
    assert.are.same({{here, erlangen.node()}}, where(tree[1].children, {here}))
    supervisor.stop({"osup", b.name})
  end)
end)
