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
-- A root on another node is snapshot there, by a process spawned on it.

local erlangen = require "erlangen"
local gen = require "erlangen.gen"

local observer = {}

-- Options --------------------------------------------------------------------

-- The options each public function accepts.
local ACCEPTS = {
  tree = {root = true},
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
  if opts.ascii ~= nil and type(opts.ascii) ~= "boolean" then
    error(string.format("observer.%s: option 'ascii' must be a boolean, got %s",
      fname, type(opts.ascii)), level)
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

-- Sort key of a pid: its node and number from "<node.n>", so that siblings
-- come in spawn order (pids are never reused and grow with each spawn).
local function pid_order(pid)
  local node, n = tostring(pid):match("^<(%d+)%.(%d+)>$")
  return (tonumber(node) or 0) * 2^53 + (tonumber(n) or 0)
end

local function by_pid(a, b) return pid_order(a) < pid_order(b) end

local function sorted_pids(list)
  local copy = {}
  for i, p in ipairs(list or {}) do copy[i] = p end
  table.sort(copy, by_pid)
  return copy
end

-- Builds every live process's node and links each to its parent's node.
-- Returns the roots (in pid order) and the nodes by pid. A parent is always
-- spawned before its child, so following parents never loops.
local function snapshot()
  local nodes, list = {}, {}
  for _, pid in ipairs(erlangen.processes()) do
    local info = erlangen.info(pid)
    if info then
      local node = {
        pid = pid, name = info.name, label = info.label, status = info.status,
        mailbox = info.mailbox, capacity = info.capacity, dropped = info.dropped,
        parent = info.parent, links = sorted_pids(info.links), children = {},
        order = pid_order(pid),
      }
      nodes[pid] = node
      list[#list + 1] = node
    end
  end
  table.sort(list, function(a, b) return a.order < b.order end)
  local roots = {}
  for _, node in ipairs(list) do
    node.order = nil
    local parent = node.parent and nodes[node.parent]
    if parent then
      parent.children[#parent.children + 1] = node
    else
      roots[#roots + 1] = node
    end
  end
  return roots, nodes
end

-- The subtree of `root` (a pid or name of this node) as {node}, or nil,
-- "noproc" when it is not a live process.
local function local_forest(root)
  local _, nodes = snapshot()
  local pid = gen.resolve(root)
  local node = pid and nodes[pid]
  if not node then return nil, "noproc" end
  return {node}
end

-- The body of a remote spawn that builds `root`'s subtree on its own node
-- (erlangen.info is local only) and sends {reply_to, forest, err} back.
function observer.remote_forest(reply_to, root)
  local trees, err = local_forest(root)
  erlangen.send(reply_to, {reply_to, trees, err}, REMOTE_TIMEOUT)
end

-- `root`'s subtree built on `node`; nil, "noproc" or "noconnection" when
-- the root is not running there or the node does not answer in time.
local function remote_forest(node, root)
  local alias = erlangen.alias()
  local ok, pid, mref = pcall(erlangen.spawn_opt, {node = node, monitor = true, timeout = REMOTE_TIMEOUT},
                              "erlangen.observer.remote_forest", alias, root)
  if not ok then erlangen.unalias(alias); return nil, "noconnection" end
  local m = erlangen.receive(function(x)
    return type(x) == "table" and (x[1] == alias or (x[1] == "DOWN" and x[2] == mref))
  end, REMOTE_TIMEOUT)
  erlangen.unalias(alias)
  erlangen.demonitor(mref, true)
  if m and m[1] == alias then return m[2], m[3] end
  if m and m[4] ~= "noconnection" then return nil, "noproc" end
  erlangen.exit(pid, "kill")
  return nil, "noconnection"
end

-- The forest to show for `opts`: every root, or only opts.root's subtree
-- (built on the root's node). Returns nil, "noproc" when opts.root is not a
-- live process, nil, "noconnection" when its node cannot be reached.
local function forest(opts)
  local root = opts.root
  if root == nil then return (snapshot()) end
  local node = gen.node_of(root)
  if node == erlangen.node() then return local_forest(root) end
  return remote_forest(node, type(root) == "table" and root[1] or root)
end

-- The links of `node` that are not an edge of the tree.
local function extra_links(node)
  local tree_edge = {}
  if node.parent then tree_edge[node.parent] = true end
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

local function fill(node)
  local s = node.mailbox .. "/" .. node.capacity
  if node.dropped and node.dropped > 0 then s = s .. " (" .. node.dropped .. " dropped)" end
  return s
end

-- name <pid> [label] status mailbox/capacity [(n dropped)] [~ linked to <pid>, ...]
local function text_line(node)
  local parts = {}
  if node.name then parts[#parts + 1] = one_line(node.name) end
  parts[#parts + 1] = tostring(node.pid)
  if node.label then parts[#parts + 1] = "[" .. one_line(node.label) .. "]" end
  parts[#parts + 1] = node.status
  parts[#parts + 1] = fill(node)
  local extra = extra_links(node)
  if #extra > 0 then
    local shown = {}
    for i, pid in ipairs(extra) do shown[i] = tostring(pid) end
    parts[#parts + 1] = "~ linked to " .. table.concat(shown, ", ")
  end
  return table.concat(parts, " ")
end

local function text_walk(node, lead, rest, g, lines)
  lines[#lines + 1] = lead .. text_line(node)
  local n = #node.children
  for i, child in ipairs(node.children) do
    local last = i == n
    text_walk(child, rest .. (last and g.last or g.mid), rest .. (last and g.blank or g.bar),
      g, lines)
  end
end

local function text(opts)
  local roots, err = forest(opts)
  if not roots then return nil, err end
  local g = opts.ascii and GLYPHS.ascii or GLYPHS.unicode
  local lines = {}
  for _, root in ipairs(roots) do text_walk(root, "", "", g, lines) end
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
  rows[#rows + 1] = node.status .. " " .. fill(node)
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
  local shown, all = {}, {}
  local function collect(node)
    shown[node.pid] = true
    all[#all + 1] = node
    for _, child in ipairs(node.children) do collect(child) end
  end
  for _, root in ipairs(roots) do collect(root) end
  for _, node in ipairs(all) do out[#out + 1] = dot_node(node) end
  for _, node in ipairs(all) do
    for _, child in ipairs(node.children) do
      out[#out + 1] = string.format("  %s -> %s;", dot_id(node.pid), dot_id(child.pid))
    end
  end
  -- Each link once; a linked process outside the drawing is a plain pid.
  local outside, drawn = {}, {}
  for _, node in ipairs(all) do
    for _, pid in ipairs(extra_links(node)) do
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

return observer
