-- spec/browser/fixture.lua — a stand-in for the web observer with the DOM hooks it agreed to, to prove spec/browser_spec.lua's harness.
--
-- fixture.serve(report, opts) runs in a process of its own (spawn
-- "browser.fixture.serve"): it listens on 127.0.0.1 (a free port), sends
-- {"fixture_url", url} to `report`, then answers HTTP requests one at a
-- time until it receives "stop". opts: sup (the supervisor whose children
-- /tree draws), nodes (other nodes whose processes /processes lists too),
-- allow_kill (whether pages show button.kill). Its pages carry the hooks of
-- the real observer (nav a#nav-*, table#processes with th[data-sort] and
-- tr[data-pid], input#filter, svg#tree with [data-pid], button.kill,
-- body[data-ready="1"]); their data is read from erlangen when a page is
-- asked for, and /tree polls /api/tree so that a restart shows up live.
-- POST /api/kill?pid= kills (with allow_kill). It is a test fixture: no
-- keep-alive, no escaping beyond HTML's and URLs'.
local erlangen = require "erlangen"
local socket = require "socket"
local supervisor = require "erlangen.supervisor"

local fixture = {}

local function esc(s)
  return (tostring(s):gsub('[&<>"]', {["&"] = "&amp;", ["<"] = "&lt;", [">"] = "&gt;", ['"'] = "&quot;"}))
end

local function unescape(s)
  return (s:gsub("+", " "):gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

local NAV = '<nav><a id="nav-cluster" href="/">cluster</a> <a id="nav-processes" href="/processes">processes</a> '
         .. '<a id="nav-tree" href="/tree">tree</a> <a id="nav-flow" href="/flow">flow</a></nav>'

local function page(title, body, script)
  return "<!doctype html><html><head><meta charset=\"utf-8\"><title>" .. esc(title) .. "</title>"
      .. "<style>body{font-family:sans-serif} td,th{padding:2px 8px} th{cursor:pointer}</style></head><body>"
      .. NAV .. "<h1>fixture: " .. esc(title) .. "</h1>" .. body
      .. "<script>" .. (script or "") .. "\ndocument.body.dataset.ready = '1';</script></body></html>"
end

-- Every process of this node and of opts.nodes, as info tables with pid.
local function all_processes(opts)
  local list = erlangen.snapshot()
  for _, node in ipairs(opts.nodes or {}) do
    local ok, remote = pcall(erlangen.snapshot, node, 2)
    if ok then for _, i in ipairs(remote) do list[#list + 1] = i end end
  end
  return list
end

local SORT = [[
document.querySelectorAll('table#processes th[data-sort]').forEach((th) => th.addEventListener('click', () => {
  const i = th.cellIndex, body = document.querySelector('table#processes tbody');
  const rows = [...body.querySelectorAll('tr[data-pid]')];
  rows.sort((a, b) => Number(b.cells[i].dataset.value) - Number(a.cells[i].dataset.value));
  rows.forEach((r) => body.appendChild(r));
}));
document.querySelector('input#filter').addEventListener('input', (e) => {
  document.querySelectorAll('table#processes tr[data-pid]').forEach((r) => {
    r.hidden = !r.textContent.includes(e.target.value);
  });
});]]

local function processes_page(opts)
  local rows = {}
  for _, i in ipairs(all_processes(opts)) do
    rows[#rows + 1] = string.format(
      '<tr data-pid="%s"><td><a href="/process?pid=%s">%s</a></td><td>%s</td><td data-value="%d">%d</td>'
      .. '<td data-value="%d">%.1f KiB</td><td data-value="%.9f">%.3f ms</td>%s</tr>',
      esc(i.pid), esc(i.pid), esc(i.pid), esc(i.node), i.mailbox, i.mailbox, i.memory, i.memory / 1024,
      i.cpu, i.cpu * 1000, opts.allow_kill and '<td><button class="kill">kill</button></td>' or "")
  end
  return page("processes", '<input id="filter" placeholder="filter"><table id="processes"><thead><tr>'
    .. '<th>pid</th><th>node</th><th data-sort="mailbox">mailbox</th><th data-sort="memory">memory</th>'
    .. '<th data-sort="cpu">cpu</th></tr></thead><tbody>' .. table.concat(rows) .. "</tbody></table>", SORT)
end

local KILL = [[
document.querySelectorAll('button.kill').forEach((b) => b.addEventListener('click', () => {
  fetch('/api/kill?pid=' + encodeURIComponent(b.dataset.pid), {method: 'POST'});
}));]]

-- The info of the process whose tostring is `text`, or nil.
local function find(opts, text)
  for _, i in ipairs(all_processes(opts)) do
    if tostring(i.pid) == text then return i end
  end
end

local function process_page(opts, query)
  local want = unescape(query:match("pid=([^&]*)") or "")
  local i = find(opts, want)
  if i then
    return page("process " .. want, string.format(
      "<dl><dt>pid</dt><dd>%s</dd><dt>node</dt><dd>%s</dd><dt>mailbox</dt><dd>%d</dd><dt>links</dt><dd>%d</dd></dl>%s",
      esc(want), esc(i.node), i.mailbox, #i.links,
      opts.allow_kill and '<button class="kill" data-pid="' .. esc(want) .. '">kill</button>' or ""), KILL)
  end
  return page("process " .. want, "<p>no such process</p>")
end

-- The supervisor and its children, one line each: pid, id, node.
local function tree_lines(opts)
  local lines = {tostring(opts.sup) .. "\tsupervisor\t" .. erlangen.node(opts.sup)}
  local ok, children = pcall(supervisor.which_children, opts.sup, 2)
  for _, c in ipairs(ok and children or {}) do
    if c.pid then lines[#lines + 1] = tostring(c.pid) .. "\t" .. tostring(c.id) .. "\t" .. tostring(c.node) end
  end
  return table.concat(lines, "\n")
end

local TREE = [[
const NS = 'http://www.w3.org/2000/svg', svg = document.querySelector('svg#tree');
function draw(text) {
  svg.replaceChildren();
  text.split('\n').forEach((line, k) => {
    const [pid, id, node] = line.split('\t');
    const g = document.createElementNS(NS, 'g'), t = document.createElementNS(NS, 'text');
    g.setAttribute('data-pid', pid);
    t.setAttribute('x', k ? 40 : 10); t.setAttribute('y', 20 + 20 * k);
    t.textContent = `${id} ${pid} (${node})`;
    g.appendChild(t); svg.appendChild(g);
  });
}
draw(document.querySelector('#data').textContent);
setInterval(() => fetch('/api/tree').then((r) => r.text()).then(draw), 200);]]

local function tree_page(opts)
  return page("tree", '<svg id="tree" width="600" height="200"></svg><pre id="data" hidden>'
    .. esc(tree_lines(opts)) .. "</pre>", TREE)
end

local function cluster_page()
  local items = {"<li>" .. esc(erlangen.node()) .. " (this node)</li>"}
  for _, n in ipairs(erlangen.nodes()) do items[#items + 1] = "<li>" .. esc(n) .. "</li>" end
  return page("cluster", "<ul id=\"nodes\">" .. table.concat(items) .. "</ul>")
end

local ROUTES = {
  ["/"] = cluster_page,
  ["/processes"] = processes_page,
  ["/process"] = process_page,
  ["/tree"] = tree_page,
  ["/flow"] = function() return page("flow", '<svg id="flow" width="600" height="200"></svg>') end,
}

local function answer(c, opts)
  c:settimeout(2)
  local line = c:receive("*l")
  if not line then return end
  repeat local h = c:receive("*l") until not h or h == ""
  local method, target = line:match("^(%u+) (%S+) HTTP/1%.%d$")
  local path, query = (target or ""):match("^([^?]*)%??(.*)$")
  local status, ctype, body = "200 OK", "text/html; charset=utf-8", nil
  if method == "POST" and path == "/api/kill" and opts.allow_kill then
    local i = find(opts, unescape(query:match("pid=([^&]*)") or ""))
    if i then erlangen.exit(i.pid, "kill") end
    ctype, body = "text/plain", i and "killed\n" or "no such process\n"
  elseif method ~= "GET" then
    status, ctype, body = "405 Method Not Allowed", "text/plain", "GET only\n"
  elseif path == "/api/tree" then
    ctype, body = "text/plain; charset=utf-8", tree_lines(opts)
  elseif ROUTES[path] then
    local ok, html = pcall(ROUTES[path], opts, query)
    if ok then body = html else status, ctype, body = "500 Internal Server Error", "text/plain", tostring(html) end
  else
    status, ctype, body = "404 Not Found", "text/plain", "not found\n"
  end
  c:send(string.format("HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s",
                       status, ctype, #body, body))
end

function fixture.serve(report, opts)
  local server = assert(socket.bind("127.0.0.1", 0))
  local _, port = server:getsockname()
  server:settimeout(0.1)
  erlangen.send(report, {"fixture_url", "http://127.0.0.1:" .. port .. "/"})
  while not erlangen.receive(function(m) return m == "stop" end, 0) do
    local c = server:accept()
    if c then
      answer(c, opts)
      c:close()
    end
  end
  server:close()
end

return fixture
