-- erlangen.top — a refreshing terminal table of a cluster's busiest processes (as etop, observer_cli).
--
-- main{node = NODE} connects this node to NODE and, every `interval`
-- seconds, takes one erlangen.snapshot of NODE and of every node this node
-- has a link to. Rates (cpu%, messages in and out per second) are the
-- difference of two snapshots of the same node over the time between their
-- answers, so the first frame of a node has none. Keys re-sort the table at
-- once; `q` (or Ctrl-C, which raw mode delivers as a byte) quits.
--
-- The pure parts (rows from two snapshots, sort, the table for a width, the
-- locale and size rules) are exported for tests that need no terminal. The
-- terminal part is raw mode through `stty` on the controlling terminal,
-- restored when main returns or raises, and by a guard process when main's
-- process is ended by an exit signal (which no pcall sees).

local erlangen = require "erlangen"

local top = {}

-- Sort keys: the key pressed and the column it sorts by, busiest first.
top.KEYS = {c = "cpu", m = "mailbox", r = "received", s = "sent", M = "memory", d = "dropped"}

local TICK = 0.1          -- seconds a key read waits (stty time 1): the refresh resolution
local MIN_TIMEOUT = 1     -- seconds a node gets to answer at least, however short the interval

-- Rows from snapshots ----------------------------------------------------------

-- (after - before) / dt, `before` absent counting as 0; nil when `after` is.
local function rate(before, after, dt)
  if after == nil or dt <= 0 then return nil end
  return math.max(0, after - (before or 0)) / dt
end

-- The CPU share of one core, in percent, that a process used between two of
-- its info tables `dt` seconds apart; nil without a `cpu` in `after` or a
-- positive dt. A process new since `before` (nil) counts from 0.
function top.cpu_percent(before, after, dt)
  local r = rate(before and before.cpu, after.cpu, dt)
  return r and 100 * r
end

-- The rows of one node: each info table of `cur.procs` copied, with
-- cpu_pct, in_rate and out_rate computed against `prev` (nil for the first
-- snapshot of the node: then no rates). `prev` and `cur` are
-- {at = erlangen.now() when the snapshot came, procs = snapshot}.
function top.rows(prev, cur)
  local before = {}
  if prev then
    for _, info in ipairs(prev.procs) do before[info.pid] = info end
  end
  local dt = prev and cur.at - prev.at
  local rows = {}
  for _, info in ipairs(cur.procs) do
    local row = {}
    for k, v in pairs(info) do row[k] = v end
    if dt then
      local b = before[info.pid]
      row.cpu_pct = top.cpu_percent(b, info, dt)
      row.in_rate = rate(b and b.received, info.received, dt)
      row.out_rate = rate(b and b.sent, info.sent, dt)
    end
    rows[#rows + 1] = row
  end
  return rows
end

-- Sorting ------------------------------------------------------------------

-- What each sort key compares: the rate first where there is one (busiest
-- now), then the total; a row without the value sorts after every row with one.
local SORT_BY = {
  cpu = {"cpu_pct", "cpu"},
  mailbox = {"mailbox"},
  received = {"in_rate", "received"},
  sent = {"out_rate", "sent"},
  memory = {"memory"},
  dropped = {"dropped"},
}

-- The serial of a pid ("<0.42>", "<b@h.42>" → 42): ties go in spawn order.
local function serial(pid) return tonumber(tostring(pid):match("(%d+)>$")) or 0 end

-- Sorts `rows` in place by `key` (a value of top.KEYS), busiest first; ties
-- by node name, then spawn order. Returns rows.
function top.sort(rows, key)
  local fields = SORT_BY[key]
  if not fields then
    error(string.format("top.sort: unknown sort key '%s'", tostring(key)), 2)
  end
  table.sort(rows, function(a, b)
    for _, f in ipairs(fields) do
      local x, y = a[f] or -1, b[f] or -1
      if x ~= y then return x > y end
    end
    local na, nb = a.node or "", b.node or ""
    if na ~= nb then return na < nb end
    return serial(a.pid) < serial(b.pid)
  end)
  return rows
end

-- The terminal's character set and size -------------------------------------

-- Whether the locale is UTF-8: the first of LC_ALL, LC_CTYPE and LANG that
-- is set and not empty decides (POSIX order); none set is the C locale.
-- `getenv` defaults to os.getenv.
function top.utf8_locale(getenv)
  getenv = getenv or os.getenv
  for _, var in ipairs({"LC_ALL", "LC_CTYPE", "LANG"}) do
    local v = getenv(var)
    if v and v ~= "" then return v:lower():find("utf%-?8") ~= nil end
  end
  return false
end

-- rows, columns of the terminal: from `stty size` output ("24 80"), else
-- $LINES and $COLUMNS, else 24 and 80.
function top.terminal_size(stty_size, getenv)
  getenv = getenv or os.getenv
  local r, c = tostring(stty_size or ""):match("^%s*(%d+)%s+(%d+)")
  r, c = tonumber(r), tonumber(c)
  if not (r and c and r > 0 and c > 0) then
    r, c = tonumber(getenv("LINES") or ""), tonumber(getenv("COLUMNS") or "")
  end
  return (r and r > 0) and math.floor(r) or 24, (c and c > 0) and math.floor(c) or 80
end

-- Text cells -------------------------------------------------------------------

-- `s` made safe for one cell: control characters become "?", and so does
-- every non-ASCII byte unless `utf8ok` and `s` is valid UTF-8 (a C-locale
-- terminal would show those bytes as garbage).
local function clean(s, utf8ok)
  s = s:gsub("%c", "?")
  if not (utf8ok and utf8.len(s)) then s = s:gsub("[\128-\255]", "?") end
  return s
end

-- The width of a cleaned string: one column a character (no wide glyphs).
local function width(s) return utf8.len(s) or #s end

-- `s` cut to `w` columns, its last one the mark `more` when it was cut.
local function cut(s, w, more)
  if width(s) <= w then return s end
  if w <= 0 then return "" end
  return s:sub(1, (utf8.offset(s, w) or #s + 1) - 1) .. more
end

local function pad(s, w, right)
  local gap = string.rep(" ", w - width(s))
  return right and gap .. s or s .. gap
end

-- A count or rate in at most 6 columns: 999, 9.5, 12K, 3.4M, 1.2G.
local function amount(n)
  if n == nil then return "-" end
  if n < 10 and n ~= math.floor(n) then return string.format("%.1f", n) end
  if n < 1000 then return string.format("%d", math.floor(n + 0.5)) end
  for _, u in ipairs({{1e3, "K"}, {1e6, "M"}, {1e9, "G"}}) do
    local v = n / u[1]
    if v < 999.5 then return (v < 10 and string.format("%.1f", v) or string.format("%d", math.floor(v + 0.5))) .. u[2] end
  end
  return string.format("%.0fT", n / 1e12)
end

-- Bytes: 900, 12K, 3.4M (powers of 1024).
local function bytes(n)
  if n == nil then return "-" end
  if n < 1024 then return string.format("%d", n) end
  for _, u in ipairs({{2^10, "K"}, {2^20, "M"}, {2^30, "G"}}) do
    local v = n / u[1]
    if v < 1023.5 then return (v < 10 and string.format("%.1f", v) or string.format("%d", math.floor(v + 0.5))) .. u[2] end
  end
  return string.format("%.0fT", n / 2^40)
end

-- The table --------------------------------------------------------------------

-- Columns in display order. `keep` ranks them for a narrow terminal (the
-- lowest is dropped first; the sorted column ranks just below pid); `w` is
-- a fixed width, `flex` columns take their content's width up to `max`
-- (name shrinks to `min` before any column is dropped).
local COLUMNS = {
  {id = "pid", title = "pid", keep = 100, flex = true, min = 5, max = 28},
  {id = "node", title = "node", keep = 10, flex = true, min = 4, max = 24},
  {id = "name", title = "name", keep = 80, flex = true, min = 8, max = 28},
  {id = "status", title = "status", keep = 20, w = 7},
  {id = "mailbox", title = "mailbox", sort = "mailbox", keep = 60, w = 7, right = true},
  {id = "memory", title = "memory", sort = "memory", keep = 50, w = 6, right = true},
  {id = "cpu", title = "cpu%", sort = "cpu", keep = 70, w = 5, right = true},
  {id = "in", title = "in/s", sort = "received", keep = 40, w = 5, right = true},
  {id = "out", title = "out/s", sort = "sent", keep = 30, w = 5, right = true},
  {id = "dropped", title = "dropped", sort = "dropped", keep = 15, w = 7, right = true},
}

-- The text of column `id` for `row`, before cleaning.
local function cell(id, row)
  if id == "pid" then return tostring(row.pid)
  elseif id == "node" then return row.node or ""
  elseif id == "name" then
    if row.name and row.label then return row.name .. " [" .. row.label .. "]" end
    return row.name or (row.label and "[" .. row.label .. "]") or ""
  elseif id == "status" then return row.status or ""
  elseif id == "mailbox" then return amount(row.mailbox)
  elseif id == "memory" then return bytes(row.memory)
  elseif id == "cpu" then return row.cpu_pct and string.format("%.1f", row.cpu_pct) or "-"
  elseif id == "in" then return amount(row.in_rate)
  elseif id == "out" then return amount(row.out_rate)
  elseif id == "dropped" then return amount(row.dropped)
  end
end

local BORDERS = {
  utf8 = {h = "─", v = "│", top = {"┌", "┬", "┐"}, mid = {"├", "┼", "┤"}, bottom = {"└", "┴", "┘"},
          mark = "▼", more = "…"},
  ascii = {h = "-", v = "|", top = {"+", "+", "+"}, mid = {"+", "+", "+"}, bottom = {"+", "+", "+"},
           mark = "*", more = "~"},
}

-- The columns that fit `width_avail` and their widths. Each flex column
-- starts at its content's width (name at most NAME_WANT); columns ranked
-- below name are dropped first, lowest first; then name shrinks to its
-- minimum; then the lowest-ranked of the rest go, pid last (cut to fit if
-- even it alone does not). Room left over widens name to its content.
local NAME_WANT = 20

local function layout(cols, width_avail)
  local shown, name = {}, nil
  for _, c in ipairs(cols) do
    shown[#shown + 1] = c
    if c.id == "name" then name = c end
  end
  local function total()
    local n = 1
    for _, c in ipairs(shown) do n = n + c.width + 3 end
    return n
  end
  local function drop_lowest(above)
    local low
    for i, c in ipairs(shown) do
      if c.rank < above and (not low or c.rank < shown[low].rank) then low = i end
    end
    if not low then return false end
    if shown[low] == name then name = nil end
    table.remove(shown, low)
    return true
  end
  if name then name.width = math.min(name.natural, math.max(name.min, NAME_WANT)) end
  while total() > width_avail and name and drop_lowest(name.rank) do end
  if name and total() > width_avail then name.width = math.max(name.min, name.width - (total() - width_avail)) end
  while total() > width_avail and #shown > 1 do drop_lowest(math.huge) end
  if total() > width_avail then shown[1].width = math.max(1, width_avail - 4) end
  if name then name.width = math.min(name.natural, name.width + math.max(0, width_avail - total())) end
  return shown
end

-- The lines of the table of `rows` (in their order) for a terminal of
-- `opts.width` columns: opts.utf8 (box drawing, else ASCII), opts.sort (the
-- sort key, marked in its column's title). No line is wider than the width.
function top.format(rows, opts)
  local w = opts.width
  if type(w) ~= "number" or w < 1 then
    error("top.format: option 'width' must be a positive number, got " .. tostring(w), 2)
  end
  local b = opts.utf8 and BORDERS.utf8 or BORDERS.ascii
  local cols = {}
  for _, def in ipairs(COLUMNS) do
    local c = {id = def.id, right = def.right, min = def.min, cells = {}}
    c.title = def.title .. (def.sort and def.sort == opts.sort and b.mark or "")
    c.rank = (def.sort and def.sort == opts.sort) and 90 or def.keep
    local natural = width(c.title)
    for i, row in ipairs(rows) do
      c.cells[i] = clean(cell(def.id, row), opts.utf8)
      natural = math.max(natural, width(c.cells[i]))
    end
    if def.flex then
      c.min = math.max(width(c.title), def.min)
      c.natural = math.max(c.min, math.min(natural, def.max))
      c.width = c.natural
    else
      c.width = math.max(def.w, natural)
    end
    cols[#cols + 1] = c
  end
  local shown = layout(cols, w)
  local function rule(parts)
    local segs = {}
    for i, c in ipairs(shown) do segs[i] = string.rep(b.h, c.width + 2) end
    return parts[1] .. table.concat(segs, parts[2]) .. parts[3]
  end
  local function line(texts)
    local segs = {}
    for i, c in ipairs(shown) do segs[i] = " " .. pad(cut(texts[i], c.width, b.more), c.width, c.right) .. " " end
    return b.v .. table.concat(segs, b.v) .. b.v
  end
  local titles = {}
  for i, c in ipairs(shown) do titles[i] = c.title end
  local lines = {rule(b.top), line(titles), rule(b.mid)}
  for r = 1, #rows do
    local texts = {}
    for i, c in ipairs(shown) do texts[i] = c.cells[r] end
    lines[#lines + 1] = line(texts)
  end
  lines[#lines + 1] = rule(b.bottom)
  for i, l in ipairs(lines) do lines[i] = cut(l, w, "") end
  return lines
end

-- The whole screen: `state` is {node, interval, sort, nodes = {{name, count
-- | gone = reason}}, rows (sorted)}; size {rows = height, columns = width};
-- max_rows caps the table. Returns its lines, none wider than the terminal.
function top.screen(state, size, utf8ok, max_rows)
  local w, h = size.columns, size.rows
  local dot = utf8ok and " · " or " - "
  local head = {string.format("erlangen top%snode %s%severy %g s%ssorted by %s",
                              dot, state.node, dot, state.interval, dot, state.sort)}
  local parts = {}
  for _, n in ipairs(state.nodes or {}) do
    parts[#parts + 1] = n.gone and string.format("%s gone (%s)", n.name, n.gone)
                        or string.format("%s %d procs", n.name, n.count or 0)
  end
  head[2] = "nodes: " .. (#parts > 0 and table.concat(parts, ", ") or "(waiting for the first snapshot)")
  local foot = "keys: c cpu  m mailbox  r in  s out  M memory  d dropped  q quit"
  local room = math.max(1, h - #head - 5)  -- 3 rules, the titles, the keys line
  if max_rows then room = math.min(room, max_rows) end
  local shown = {}
  for i = 1, math.min(room, #(state.rows or {})) do shown[i] = state.rows[i] end
  local lines = {}
  for _, l in ipairs(head) do lines[#lines + 1] = cut(clean(l, utf8ok), w, "") end
  for _, l in ipairs(top.format(shown, {width = w, utf8 = utf8ok, sort = state.sort})) do lines[#lines + 1] = l end
  lines[#lines + 1] = cut(foot, w, "")
  for i = #lines, h + 1, -1 do lines[i] = nil end  -- a screen too short loses its bottom
  return lines
end

-- The terminal -----------------------------------------------------------------

local function shell(cmd)
  local p = io.popen(cmd .. " 2>/dev/null")
  if not p then return nil end
  local s = p:read("a")
  local ok = p:close()
  return ok and s or nil
end

-- Puts the controlling terminal into raw mode (no line editing, no echo,
-- keys as bytes; a read waits at most TICK) and returns the settings to
-- restore, or nil when there is no terminal to change.
local function raw_mode()
  local saved = shell("stty -g < /dev/tty")
  saved = saved and saved:match("^%s*([%w:=-]+)%s*$")  -- goes back into a shell command
  if not saved then return nil end
  if not os.execute("stty -icanon -echo -isig min 0 time " .. math.floor(TICK * 10) .. " < /dev/tty 2>/dev/null") then
    return nil
  end
  return saved
end

local function restore(saved)
  if saved then os.execute("stty " .. saved .. " < /dev/tty 2>/dev/null") end
end

local ENTER = "\27[?1049h\27[?25l"   -- the alternate screen, the cursor hidden
local LEAVE = "\27[?25h\27[?1049l"

-- One frame: from the top left, each line cleared to its end, the rest of
-- the screen cleared; no newline after the last line, so nothing scrolls.
local function draw(out, lines)
  out:write("\27[H", table.concat(lines, "\27[K\n"), "\27[K\27[J")
  out:flush()
end

-- The cluster ------------------------------------------------------------------

local function node_name(n) return (n:gsub(":%d+$", "")) end

-- Takes a snapshot of every node: st.node (as given, port included)
-- first, then each of erlangen.nodes() by name. A node that was listed
-- before and whose snapshot fails, or that is no longer linked, stays
-- listed as gone with the reason (it is asked again once linked again).
local function refresh(st)
  local target = node_name(st.node)
  local names, asked = {}, {[target] = true}
  for _, n in ipairs(erlangen.nodes()) do
    local name = node_name(n)
    if not asked[name] then names[#names + 1] = name; asked[name] = true end
  end
  table.sort(names)
  table.insert(names, 1, target)
  local rows, listed = {}, {}
  for _, name in ipairs(names) do
    local ok, procs = pcall(erlangen.snapshot, name == target and st.node or name, st.timeout)
    if ok then
      local cur = {at = erlangen.now(), procs = procs}
      for _, r in ipairs(top.rows(st.known[name], cur)) do rows[#rows + 1] = r end
      st.known[name], st.gone[name] = cur, nil
      listed[#listed + 1] = {name = name, count = #procs}
    else
      st.known[name], st.gone[name] = nil, tostring(procs):match(": (%w+)$") or tostring(procs)
      listed[#listed + 1] = {name = name, gone = st.gone[name]}
    end
  end
  for name in pairs(st.known) do
    if not asked[name] then st.known[name], st.gone[name] = nil, "noconnection" end
  end
  local lost = {}
  for name in pairs(st.gone) do if not asked[name] then lost[#lost + 1] = name end end
  table.sort(lost)
  for _, name in ipairs(lost) do listed[#listed + 1] = {name = name, gone = st.gone[name]} end
  st.nodes, st.rows = listed, rows
end

-- Options ----------------------------------------------------------------------

local ACCEPTS = {node = true, interval = true, rows = true, out = true, input = true, sort = true}

local function check_opts(opts)
  if type(opts) ~= "table" then
    error(string.format("bad argument #1 to 'top.main' (table expected, got %s)", type(opts)), 3)
  end
  for k in pairs(opts) do
    if not ACCEPTS[k] then error(string.format("top.main: unknown option '%s'", tostring(k)), 3) end
  end
  local function bad(name, what)
    error(string.format("top.main: option '%s' must be %s, got %s", name, what,
      type(opts[name]) == "string" and string.format("%q", opts[name]) or erlangen.type(opts[name])), 3)
  end
  if type(opts.node) ~= "string" or not opts.node:find("^[^@]+@[^@]+$") then bad("node", "a node name") end
  local i = opts.interval
  if i ~= nil and (type(i) ~= "number" or not (i > 0 and i < math.huge)) then bad("interval", "a positive number of seconds") end
  local r = opts.rows
  if r ~= nil and (math.type(r) ~= "integer" or r < 1) then bad("rows", "a positive integer") end
  if opts.sort ~= nil and not SORT_BY[opts.sort] then
    bad("sort", "one of cpu, mailbox, received, sent, memory, dropped")
  end
  local function has(v, method) return (type(v) == "userdata" or type(v) == "table") and v[method] ~= nil end
  if opts.out ~= nil and not has(opts.out, "write") then bad("out", "a file") end
  if opts.input ~= nil and not has(opts.input, "read") then bad("input", "a file") end
end

-- Main -------------------------------------------------------------------------

-- Reads one key, waiting at most about TICK; nil when none came. An input
-- at its end (not a raw terminal) is waited on, not spun on.
local function key(input)
  local t0 = erlangen.now()
  local k = input:read(1)
  if k == nil and erlangen.now() - t0 < TICK / 2 then erlangen.sleep(TICK) end
  return k
end

local function run(st)
  local out = st.out
  out:write(string.format("erlangen top: node %s, every %g s\r\n", st.node, st.interval))
  out:flush()
  local size, utf8ok = nil, top.utf8_locale()
  local function frame()
    draw(out, top.screen(st, size, utf8ok, st.max_rows))
  end
  local next_at = erlangen.now()
  while true do
    if erlangen.now() >= next_at then
      refresh(st)
      top.sort(st.rows, st.sort)
      local h, w = top.terminal_size(shell("stty size < /dev/tty"))
      size = {rows = h, columns = w}
      frame()
      next_at = math.max(next_at + st.interval, erlangen.now())
    end
    local k = key(st.input)
    if k == "q" or k == "\3" then return end
    if k and top.KEYS[k] then
      st.sort = top.KEYS[k]
      top.sort(st.rows, st.sort)
      frame()
    end
  end
end

-- Restores the terminal when the process `watched` ends by an exit signal,
-- which no pcall of it sees; told "done" when main restored it itself. It
-- traps exits so that a node that stops gives it its grace period to do so.
top.GUARD_LABEL = "erlangen.top terminal guard"

local function guard(saved, watched, screen)
  erlangen.set_label(top.GUARD_LABEL)
  erlangen.trap_exit(true)
  local ref = erlangen.monitor(watched)
  local m = erlangen.receive(function(m)
    return m == "done" or (type(m) == "table" and m[1] == "DOWN" and m[2] == ref)
  end)
  if m ~= "done" then
    if screen then io.stdout:write(LEAVE); io.stdout:flush() end
    restore(saved)
  end
end

-- Runs the top until `q`: opts.node (required: "name@host" or
-- "name@host:port"), interval (seconds, default 1), rows (at most this many
-- processes; default as many as the terminal has room for), sort (the first
-- sort key, default "cpu"), out and input (default io.stdout and io.stdin).
-- This process must be a node; it connects to opts.node first.
function top.main(opts)
  check_opts(opts)
  if erlangen.node() == "nonode@nohost" then
    error("top.main: this process is not a node (erlangen.start_node first)", 2)
  end
  if node_name(opts.node) ~= erlangen.node() then
    local ok, err = erlangen.connect(opts.node)
    if not ok then error(string.format("top.main: cannot connect to %s: %s", opts.node, tostring(err)), 2) end
  end
  local interval = opts.interval or 1
  local st = {
    node = opts.node, interval = interval, timeout = math.max(interval, MIN_TIMEOUT),
    max_rows = opts.rows, sort = opts.sort or "cpu", out = opts.out or io.stdout,
    input = opts.input or io.stdin, known = {}, gone = {}, nodes = {}, rows = {},
  }
  local saved = raw_mode()
  local guardian = saved and erlangen.spawn(guard, saved, erlangen.self(), st.out == io.stdout)
  local ok, err = xpcall(function()
    st.out:write(ENTER)
    run(st)
  end, debug.traceback)
  pcall(function()
    st.out:write(LEAVE)
    st.out:flush()
  end)
  restore(saved)
  if guardian then erlangen.send(guardian, "done") end
  if not ok then error(err, 0) end
end

return top
