-- erlangen.observer — the live process tree as a table, indented text, Graphviz DOT and SVG.
--
-- The tree is the spawn tree: a process's parent is the process that spawned
-- it (erlangen.info(pid).parent). Supervisors start their children in their
-- own process, so under supervision it is the supervision tree. A process
-- whose parent has ended (or that has none, like a host thread) is a root.
-- Links that are not a parent/child edge are shown beside the tree.
--
-- Every function takes a snapshot: one erlangen.processes(), then one
-- erlangen.info() per process. Processes that end meanwhile are left out;
-- ones started meanwhile may be missing. Nothing here stops or pauses them.
-- A root on another node is snapshot there, by a process spawned on it; so
-- is a supervisor's child on another node, which is grafted under its
-- supervisor (the only message the observer sends a process is a supervisor's
-- which_children: to one linked to another node, or to every one with ids).
--
-- observer.serve starts the web observer (observer_web.lua); trace_agent and
-- node_links are what it spawns on other nodes.

local erlangen = require "erlangen"
local gen = require "erlangen.gen"

local observer = {}

-- Options --------------------------------------------------------------------

-- The options each public function accepts.
local ACCEPTS = {
  tree = {root = true, ids = true},
  text = {root = true, ascii = true},
  print = {root = true, ascii = true},
  dot = {root = true},
  svg = {root = true, dot = true},
  write_dot = {root = true},
  write_svg = {root = true, dot = true},
}

local REMOTE_TIMEOUT = 5   -- seconds to build the subtree of a root on another node

-- Checks the options table given as argument `argn` of observer.<fname> and
-- returns it (an empty table for nil). Raises at `level` (the public
-- function's caller when called straight from it: 3).
local function check_opts(fname, opts, argn, level)
  if opts == nil then return {} end
  if type(opts) ~= "table" then
    error(string.format("bad argument #%d to 'observer.%s' (table expected, got %s)",
      argn, fname, type(opts)), level)
  end
  local accepts = ACCEPTS[fname]
  for k in pairs(opts) do
    if not accepts[k] then
      error(string.format("observer.%s: unknown option '%s'", fname, tostring(k)), level)
    end
  end
  local root = opts.root
  if root ~= nil and (erlangen.is_ref(root) or not gen.is_address(root)) then
    error(string.format("observer.%s: option 'root' must be a pid, a name or {name, node}, got %s",
      fname, erlangen.type(root)), level)
  end
  for _, flag in ipairs({"ascii", "ids"}) do
    if opts[flag] ~= nil and type(opts[flag]) ~= "boolean" then
      error(string.format("observer.%s: option '%s' must be a boolean, got %s",
        fname, flag, type(opts[flag])), level)
    end
  end
  if opts.dot ~= nil and (type(opts.dot) ~= "string" or opts.dot == "") then
    error(string.format("observer.%s: option 'dot' must be a non-empty string, got %s",
      fname, type(opts.dot) == "string" and "an empty string" or type(opts.dot)), level)
  end
  return opts
end

local function check_path(fname, path, level)
  if type(path) ~= "string" then
    error(string.format("bad argument #1 to 'observer.%s' (string expected, got %s)",
      fname, type(path)), level)
  end
end

-- The snapshot ---------------------------------------------------------------

-- Sort key of a pid: this node first, then other nodes by name; within a
-- node, the number from "<...n>", so that siblings come in spawn order
-- (pids are never reused and grow with each spawn).
local function pid_key(pid)
  local node = erlangen.node(pid)
  return node == erlangen.node() and "" or node, tonumber(tostring(pid):match("%.(%d+)>$")) or 0
end

local function by_pid(a, b)
  local na, sa = pid_key(a)
  local nb, sb = pid_key(b)
  if na ~= nb then return na < nb end
  return sa < sb
end

local function sorted_pids(list)
  local copy = {}
  for i, p in ipairs(list or {}) do copy[i] = p end
  table.sort(copy, by_pid)
  return copy
end

local function by_node_pid(a, b) return by_pid(a.pid, b.pid) end

-- The supervisor that adopted `node`, a process spawned with no parent (a
-- node-wide service such as erlangen.log's logger, which a supervisor may
-- link in as its child): the one erlangen supervisor of this node it is
-- linked to, unless that supervisor descends from it. nil for none.
local function adopter(node, nodes)
  local found
  for _, pid in ipairs(node.links) do
    local s = nodes[pid]
    if s and s.label == "supervisor" and s.trap_exit then
      if found then return nil end   -- two: no telling which
      found = s
    end
  end
  local up = found
  while up do
    if up == node then return nil end
    up = up.parent and nodes[up.parent]
  end
  return found
end

-- Builds every live process's node and links each to its parent's node.
-- Returns the roots (in pid order) and the nodes by pid. A parent is always
-- spawned before its child, so following parents never loops.
local function snapshot()
  local nodes, list = {}, {}
  local here = erlangen.node()
  for _, pid in ipairs(erlangen.processes()) do
    local info = erlangen.info(pid)
    if info then
      local node = {
        pid = pid, node = here, name = info.name, label = info.label, status = info.status,
        mailbox = info.mailbox, capacity = info.capacity, dropped = info.dropped,
        parent = info.parent, links = sorted_pids(info.links), children = {},
        trap_exit = info.trap_exit,
      }
      nodes[pid] = node
      list[#list + 1] = node
    end
  end
  table.sort(list, by_node_pid)
  local roots = {}
  for _, node in ipairs(list) do
    local parent
    if node.parent then parent = nodes[node.parent] else parent = adopter(node, nodes) end
    if parent then
      parent.children[#parent.children + 1] = node
    else
      roots[#roots + 1] = node
    end
  end
  return roots, nodes
end

-- Children on other nodes ------------------------------------------------------

-- A supervisor's child on another node was spawned there, so no snapshot of
-- this node holds it: it is grafted under its supervisor, as its own node
-- sees it. Only an erlangen.supervisor (label "supervisor", trapping exits)
-- that links to a pid of another node is asked its which_children; the
-- others are never sent anything, so a stuck one cannot hide the tree.

local remote_forest

-- An erlangen.supervisor: the only processes the observer ever sends a request.
local function is_erlangen_supervisor(node)
  return node.label == "supervisor" and node.trap_exit
end

local function asks_children(node)
  if not is_erlangen_supervisor(node) then return false end
  for _, pid in ipairs(node.links) do
    if erlangen.node(pid) ~= node.node then return true end
  end
  return false
end

-- The seconds left until `deadline`.
local function left(deadline) return math.max(0, deadline - erlangen.now()) end

-- Grafts under each supervisor of `trees` (and of what is grafted) its
-- children on other nodes, asking each node once and by `deadline`. A child
-- whose node did not answer is a node with only pid, node, status (the
-- reason: "noconnection") and empty links and children; one that ended
-- meanwhile is left out. With `ids`, every supervisor is asked, and each
-- child it names gets the field `id`. Returns the set of grafted pids.
local function graft(trees, deadline, ids)
  local supervisor = require "erlangen.supervisor"
  local wanted, nodes_asked = {}, {}   -- node name -> { {sup = tree node, pid = child, id = id} }
  local function visit(node)
    for _, child in ipairs(node.children) do visit(child) end
    if not (asks_children(node) or (ids and is_erlangen_supervisor(node))) then return end
    local ok, list = pcall(supervisor.which_children, node.pid, left(deadline))
    if not ok then return end    -- it ended or did not answer: its links still show
    local here = {}
    for _, child in ipairs(node.children) do here[child.pid] = child end
    for _, c in ipairs(list) do
      if c.pid and c.node ~= node.node then
        if not wanted[c.node] then wanted[c.node] = {}; nodes_asked[#nodes_asked + 1] = c.node end
        table.insert(wanted[c.node], {sup = node, pid = c.pid, id = ids and c.id or nil})
      elseif c.pid and here[c.pid] and ids then
        here[c.pid].id = c.id
      end
    end
  end
  for _, tree in ipairs(trees) do visit(tree) end
  local grafted = {}
  local function mark(node)
    grafted[node.pid] = true
    for _, child in ipairs(node.children) do mark(child) end
  end
  table.sort(nodes_asked)
  for _, name in ipairs(nodes_asked) do
    local asks, pids = wanted[name], {}
    for i, a in ipairs(asks) do pids[i] = a.pid end
    local got, why = remote_forest(name, pids, deadline, ids)
    for i, a in ipairs(asks) do
      local tree = got and got[i]
      if not got then
        tree = {pid = a.pid, node = name, status = why, links = {}, children = {}}
      end
      if tree then
        tree.id = a.id
        mark(tree)
        local kids = a.sup.children
        kids[#kids + 1] = tree
        table.sort(kids, by_node_pid)
      end
    end
  end
  return grafted
end

-- The subtrees of `roots` (pids or names of this node), children on other
-- nodes grafted by `deadline`, as a list holding for each root its node or
-- false when it is not a live process.
local function local_forests(roots, deadline, ids)
  local _, nodes = snapshot()
  local trees, found = {}, {}
  for i, root in ipairs(roots) do
    local pid = gen.resolve(root)
    trees[i] = pid and nodes[pid] or false
    if trees[i] then found[#found + 1] = trees[i] end
  end
  graft(found, deadline, ids)
  return trees
end

-- The body of a remote spawn that builds the subtrees of `roots` on its own
-- node (erlangen.info is local only) within `budget` seconds and sends
-- {reply_to, trees} back (trees as local_forests gives them; `ids` as graft's).
function observer.remote_forest(reply_to, roots, budget, ids)
  local deadline = erlangen.now() + budget
  local trees = local_forests(roots, deadline, ids)
  erlangen.send(reply_to, {reply_to, trees}, left(deadline) + 1)
end

-- The subtrees of `roots` built on `node` (a list as local_forests gives
-- it), or nil, "noconnection" when the node cannot be reached or does not
-- answer by `deadline`, nil, "noproc" when the builder ended unanswered. The node gets half the time left for its own grafts,
-- so that its answer can arrive in time.
function remote_forest(node, roots, deadline, ids)
  local wait = left(deadline)
  if wait <= 0 then return nil, "noconnection" end
  local alias = erlangen.alias()
  local ok, pid, mref = pcall(erlangen.spawn_opt, {node = node, monitor = true, timeout = wait},
                              "erlangen.observer.remote_forest", alias, roots, wait / 2, ids)
  if not ok then erlangen.unalias(alias); return nil, "noconnection" end
  local m = erlangen.receive(function(x)
    return type(x) == "table" and (x[1] == alias or (x[1] == "DOWN" and x[2] == mref))
  end, left(deadline))
  erlangen.unalias(alias)
  erlangen.demonitor(mref, true)
  if m and m[1] == alias then return m[2] end
  if m and m[4] ~= "noconnection" then return nil, "noproc" end
  if not m then erlangen.exit(pid, "kill") end
  return nil, "noconnection"
end

-- The forest to show for `opts`: every root, or only opts.root's subtree
-- (built on the root's node), supervisors' children on other nodes grafted
-- within REMOTE_TIMEOUT. Returns nil, "noproc" when opts.root is not a live
-- process, nil, "noconnection" when its node cannot be reached.
local function forest(opts)
  local root = opts.root
  local deadline = erlangen.now() + REMOTE_TIMEOUT
  if root == nil then
    local roots = snapshot()
    local grafted = graft(roots, deadline, opts.ids)
    local kept = {}     -- a root grafted under a supervisor elsewhere is shown there only
    for _, r in ipairs(roots) do
      if not grafted[r.pid] then kept[#kept + 1] = r end
    end
    return kept
  end
  local node = gen.node_of(root)
  local trees, why
  if node == erlangen.node() then
    trees = local_forests({root}, deadline, opts.ids)
  else
    trees, why = remote_forest(node, {type(root) == "table" and root[1] or root}, deadline, opts.ids)
    if not trees then return nil, why end
  end
  if not trees[1] then return nil, "noproc" end
  return {trees[1]}
end

-- The links of `node` that are not an edge of the tree; `up` is the pid of
-- the node it is drawn under (its supervisor, for a child on another node).
local function extra_links(node, up)
  local tree_edge = {}
  if node.parent then tree_edge[node.parent] = true end
  if up then tree_edge[up] = true end
  for _, child in ipairs(node.children) do tree_edge[child.pid] = true end
  local extra = {}
  for _, pid in ipairs(node.links) do
    if not tree_edge[pid] then extra[#extra + 1] = pid end
  end
  return extra
end

local function is_supervisor(node)
  return node.label ~= nil and node.label:match("^supervisor%f[^%w_]") ~= nil
end

-- observer.tree([opts]) -> { node, ... } | nil, "noproc"
function observer.tree(opts)
  local o = check_opts("tree", opts, 1, 3)
  return forest(o)
end

-- Text -----------------------------------------------------------------------

local GLYPHS = {
  unicode = {mid = "├─ ", last = "└─ ", bar = "│  ", blank = "   "},
  ascii = {mid = "|- ", last = "`- ", bar = "|  ", blank = "   "},
}

-- A name or label on one line: control characters become \n or \ddd.
local function one_line(s)
  return (s:gsub("%c", function(c)
    if c == "\n" then return "\\n" end
    return string.format("\\%03d", c:byte())
  end))
end

-- nil for a child on another node that did not answer (no mailbox known).
local function fill(node)
  if not node.mailbox then return nil end
  local s = node.mailbox .. "/" .. node.capacity
  if node.dropped and node.dropped > 0 then s = s .. " (" .. node.dropped .. " dropped)" end
  return s
end

-- name <pid> [label] status mailbox/capacity [(n dropped)] [~ linked to <pid>, ...]
local function text_line(node, up)
  local parts = {}
  if node.name then parts[#parts + 1] = one_line(node.name) end
  parts[#parts + 1] = tostring(node.pid)
  if node.label then parts[#parts + 1] = "[" .. one_line(node.label) .. "]" end
  parts[#parts + 1] = node.status
  parts[#parts + 1] = fill(node)
  local extra = extra_links(node, up)
  if #extra > 0 then
    local shown = {}
    for i, pid in ipairs(extra) do shown[i] = tostring(pid) end
    parts[#parts + 1] = "~ linked to " .. table.concat(shown, ", ")
  end
  return table.concat(parts, " ")
end

local function text_walk(node, up, lead, rest, g, lines)
  lines[#lines + 1] = lead .. text_line(node, up)
  local n = #node.children
  for i, child in ipairs(node.children) do
    local last = i == n
    text_walk(child, node.pid, rest .. (last and g.last or g.mid), rest .. (last and g.blank or g.bar),
      g, lines)
  end
end

local function text(opts)
  local roots, err = forest(opts)
  if not roots then return nil, err end
  local g = opts.ascii and GLYPHS.ascii or GLYPHS.unicode
  local lines = {}
  for _, root in ipairs(roots) do text_walk(root, nil, "", "", g, lines) end
  lines[#lines + 1] = ""
  return table.concat(lines, "\n")
end

-- observer.text([opts]) -> string | nil, "noproc"
function observer.text(opts)
  local o = check_opts("text", opts, 1, 3)
  return text(o)
end

-- observer.print([opts]): writes observer.text(opts) to io.stdout.
function observer.print(opts)
  local o = check_opts("print", opts, 1, 3)
  local s = text(o)
  io.stdout:write(s or ("no process " .. tostring(o.root) .. "\n"))
  io.stdout:flush()
end

-- DOT ------------------------------------------------------------------------

-- Bytes of `s` that are not valid UTF-8 become the text \xHH.
local function valid_utf8(s)
  local out, i = {}, 1
  while i <= #s do
    local len, bad = utf8.len(s, i)
    if len then out[#out + 1] = s:sub(i); break end
    out[#out + 1] = s:sub(i, bad - 1)
    out[#out + 1] = string.format("\\x%02X", s:byte(bad))
    i = bad + 1
  end
  return table.concat(out)
end

-- The body of a DOT quoted string showing `s` as it is: a backslash or quote
-- is escaped, a newline becomes a line break, other control characters \ddd.
local function dot_escape(s)
  s = valid_utf8(s)
  return (s:gsub('[%c\\"]', function(c)
    if c == "\\" then return "\\\\" end
    if c == '"' then return '\\"' end
    if c == "\n" then return "\\n" end
    return string.format("\\\\%03d", c:byte())
  end))
end

local function dot_id(pid) return '"' .. dot_escape(tostring(pid)) .. '"' end

local function dot_node(node)
  local rows = {}
  if node.name then rows[#rows + 1] = dot_escape(node.name) end
  rows[#rows + 1] = dot_escape(tostring(node.pid))
  if node.label then rows[#rows + 1] = "[" .. dot_escape(node.label) .. "]" end
  rows[#rows + 1] = node.status .. (fill(node) and " " .. fill(node) or "")
  return string.format('  %s [shape=%s, label="%s"];', dot_id(node.pid),
    is_supervisor(node) and "box" or "ellipse", table.concat(rows, "\\n"))
end

local function dot(opts)
  local roots, err = forest(opts)
  if not roots then return nil, err end
  local out = {
    "digraph erlangen {",
    '  graph [charset="UTF-8"];',
    '  node [fontname="monospace", fontsize=10];',
  }
  local shown, all, up = {}, {}, {}
  local function collect(node, parent)
    shown[node.pid] = true
    all[#all + 1] = node
    up[node] = parent
    for _, child in ipairs(node.children) do collect(child, node.pid) end
  end
  for _, root in ipairs(roots) do collect(root) end
  -- The processes of each other node are drawn in a cluster labelled with its name.
  local here, others, of_node = erlangen.node(), {}, {}
  for _, node in ipairs(all) do
    if node.node == here then
      out[#out + 1] = dot_node(node)
    else
      if not of_node[node.node] then others[#others + 1] = node.node; of_node[node.node] = {} end
      table.insert(of_node[node.node], node)
    end
  end
  table.sort(others)
  for i, name in ipairs(others) do
    out[#out + 1] = string.format('  subgraph "cluster_%d" {', i)
    out[#out + 1] = string.format('    label="%s"; style=dashed;', dot_escape(name))
    for _, node in ipairs(of_node[name]) do out[#out + 1] = "  " .. dot_node(node) end
    out[#out + 1] = "  }"
  end
  for _, node in ipairs(all) do
    for _, child in ipairs(node.children) do
      out[#out + 1] = string.format("  %s -> %s;", dot_id(node.pid), dot_id(child.pid))
    end
  end
  -- Each link once; a linked process outside the drawing is a plain pid.
  local outside, drawn = {}, {}
  for _, node in ipairs(all) do
    for _, pid in ipairs(extra_links(node, up[node])) do
      local a, b = tostring(node.pid), tostring(pid)
      local pair = by_pid(node.pid, pid) and a .. " " .. b or b .. " " .. a
      if not drawn[pair] then
        drawn[pair] = true
        if not shown[pid] and not outside[pid] then
          outside[pid] = true
          out[#out + 1] = string.format('  %s [shape=plaintext, label="%s"];',
            dot_id(pid), dot_escape(b))
        end
        out[#out + 1] = string.format("  %s -> %s [style=dashed, dir=none];",
          dot_id(node.pid), dot_id(pid))
      end
    end
  end
  out[#out + 1] = "}"
  out[#out + 1] = ""
  return table.concat(out, "\n")
end

-- observer.dot([opts]) -> string | nil, "noproc"
function observer.dot(opts)
  local o = check_opts("dot", opts, 1, 3)
  return dot(o)
end

-- SVG ------------------------------------------------------------------------

local function shell_quote(s)
  return "'" .. s:gsub("'", "'\\''") .. "'"
end

local function read_file(path)
  local f = io.open(path, "rb")
  if not f then return "" end
  local s = f:read("a") or ""
  f:close()
  return s
end

local function write_file(path, s)
  local f, err = io.open(path, "wb")
  if not f then return nil, err end
  local ok, werr = f:write(s)
  local cok, cerr = f:close()
  if not ok then return nil, werr end
  if not cok then return nil, cerr end
  return true
end

-- Whether the shell finds the command `cmd` (a name on PATH or a path).
local function have_command(cmd)
  local p = io.popen("command -v " .. shell_quote(cmd) .. " 2>/dev/null")
  if not p then return false end
  local found = p:read("a")
  p:close()
  return found ~= nil and found ~= ""
end

-- Runs `dot -Tsvg` on the DOT text of `opts` and returns the SVG text.
-- io.popen, not os.execute: system() would ignore SIGINT for every thread.
local function svg(opts)
  local cmd = opts.dot or "dot"
  if not have_command(cmd) then return nil, "graphviz 'dot' not found" end
  local source, err = dot(opts)
  if not source then return nil, err end
  local input, errors = os.tmpname(), os.tmpname()
  local ok, werr = write_file(input, source)
  if not ok then
    os.remove(input); os.remove(errors)
    return nil, werr
  end
  local p = io.popen(string.format("%s -Tsvg %s 2>%s", shell_quote(cmd), shell_quote(input),
    shell_quote(errors)))
  local out = p and p:read("a") or ""
  local exited = p and p:close()
  local complaint = read_file(errors)
  os.remove(input); os.remove(errors)
  if not exited or not out:find("<svg", 1, true) then
    complaint = complaint:gsub("%s+$", "")
    return nil, "dot failed" .. (complaint ~= "" and ": " .. complaint or "")
  end
  return out
end

-- observer.svg([opts]) -> string | nil, reason
function observer.svg(opts)
  local o = check_opts("svg", opts, 1, 3)
  return svg(o)
end

-- observer.write_dot(path [, opts]) -> true | nil, reason
function observer.write_dot(path, opts)
  check_path("write_dot", path, 3)
  local o = check_opts("write_dot", opts, 2, 3)
  local s, err = dot(o)
  if not s then return nil, err end
  return write_file(path, s)
end

-- observer.write_svg(path [, opts]) -> true | nil, reason
function observer.write_svg(path, opts)
  check_path("write_svg", path, 3)
  local o = check_opts("write_svg", opts, 2, 3)
  local s, err = svg(o)
  if not s then return nil, err end
  return write_file(path, s)
end

-- The web observer --------------------------------------------------------------

-- observer.serve{listen =, allow_kill =, token =} -> url, supervisor | nil, reason
-- (stdlib/erlangen/observer_web.lua; doc/observer.md, "The web observer").
function observer.serve(opts)
  return require("erlangen.observer_web").serve(opts, 2)
end

-- The body of a remote spawn that tells `reply_to` the nodes its node has a
-- link to: {reply_to, node, nodes}. For the cluster graph (erlangen.nodes is local).
function observer.node_links(reply_to)
  erlangen.send(reply_to, {reply_to, erlangen.node(), erlangen.nodes()}, 1)
end

local FLOW_EDGES = 1000     -- distinct edges an agent keeps per interval; more are counted only

-- A pid as text that means the same on every node: "<node.serial>", also
-- for a pid of this node (which tostring shows as "<0.serial>").
local function node_pid_text(pid)
  local s = tostring(pid)
  if erlangen.is_pid(pid) and erlangen.node(pid) == erlangen.node() then
    return (s:gsub("^<0%.", "<" .. erlangen.node():gsub("%%", "%%%%") .. "."))
  end
  return s
end

-- A trace destination as text: a pid as node_pid_text gives it, an alias as
-- tostring does; a name, or {name, node}, as the pid it names, looked up
-- once and kept in `names` (the flow page draws processes, and the
-- lookups of a DHT, say, go to {name, node}), else as "name on node".
local function show_dest(to, names)
  local name, node = to, nil
  if type(to) == "table" and type(to[1]) == "string" then name, node = to[1], to[2] end
  if type(name) ~= "string" then return node_pid_text(to) end
  local key = name .. "\0" .. tostring(node)
  if names[key] == nil then
    local ok, pid = pcall(erlangen.whereis, name, node, node and 0.5 or nil)
    names[key] = ok and pid and node_pid_text(pid) or (node and name .. " on " .. tostring(node) or name)
  end
  return names[key]
end

-- The body of the flow page's agent on each node (spawned there by the web
-- observer; it exists wherever the stdlib does): traces the sends of every
-- process of its node and tells `collector` every `interval` seconds
-- {"flow", node, edges, more}, edges being { {from, to, n} } (from and to as
-- node_pid_text and show_dest give them) and `more` the sends left out past FLOW_EDGES. Its own sends are not
-- counted, so it never feeds itself. It stops tracing and ends when the
-- collector ends (its monitor's DOWN, "noconnection" included). Without
-- erlangen.trace on its node it sends {"flow", node, nil, 0, "no trace"} and ends.
function observer.trace_agent(collector, interval)
  local me, here = erlangen.self(), erlangen.node()
  local mref = erlangen.monitor(collector)
  if type(erlangen.trace) ~= "function" then
    erlangen.send(collector, {"flow", here, nil, 0, "no trace"}, 1)
    return
  end
  local ok, err = pcall(erlangen.trace, "all", {send = true}, me)
  if not ok then
    erlangen.send(collector, {"flow", here, nil, 0, tostring(err)}, 1)
    return
  end
  local edges, count, more, names = {}, 0, 0, {}
  local flush_at = erlangen.now() + interval
  while true do
    local m = erlangen.receive(math.max(0, flush_at - erlangen.now()))
    if type(m) == "table" and m[1] == "DOWN" and m[2] == mref then
      pcall(erlangen.trace, "all", false)
      return
    elseif type(m) == "table" and m[1] == "trace" and m[3] == "send" and m[2] ~= me then
      local to = show_dest(m[5], names)
      local key = node_pid_text(m[2]) .. "\0" .. to
      local e = edges[key]
      if e then e[3] = e[3] + 1
      elseif count < FLOW_EDGES then
        count = count + 1
        edges[key] = {node_pid_text(m[2]), to, 1}
      else
        more = more + 1
      end
    end
    if erlangen.now() >= flush_at then
      if count > 0 or more > 0 then
        local list = {}
        for _, e in pairs(edges) do list[#list + 1] = e end
        erlangen.send(collector, {"flow", here, list, more})   -- dropped when its mailbox is full
      end
      edges, count, more = {}, 0, 0
      flush_at = erlangen.now() + interval
    end
  end
end

return observer
