// The web observer's pages (served by erlangen.observer_web): plain JS and SVG, nothing from outside the node.
// Each page draws from the JSON API and redraws on the ticks of /api/events; body[data-ready=1] once
// it has drawn its first data. A list the API leaves out is an empty one (lua-cjson writes no []).
(function () {
  'use strict';
  const token = new URLSearchParams(location.search).get('token');
  const allowKill = document.body.dataset.allowKill === '1';
  const main = document.getElementById('main');
  const status = document.getElementById('status');
  const SVGNS = 'http://www.w3.org/2000/svg';
  const PALETTE = ['#4e79a7', '#f28e2b', '#59a14f', '#e15759', '#76b7b2', '#edc948', '#b07aa1', '#ff9da7', '#9c755f'];

  const list = (x) => (Array.isArray(x) ? x : []);

  // A same-origin URL carrying the token, if the page has one.
  function url(path, query) {
    const u = new URL(path, location.origin);
    if (token) u.searchParams.set('token', token);
    for (const k in query || {}) u.searchParams.set(k, query[k]);
    return u.pathname + u.search;
  }

  async function api(path, query, init) {
    const r = await fetch(url(path, query), init);
    const body = await r.json();
    if (!r.ok) throw new Error(body.error || String(r.status));
    return body;
  }

  function el(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    for (const k in attrs || {}) e.setAttribute(k, attrs[k]);
    for (const k of kids) e.append(k instanceof Node ? k : document.createTextNode(String(k)));
    return e;
  }

  function sv(tag, attrs, ...kids) {
    const e = document.createElementNS(SVGNS, tag);
    for (const k in attrs || {}) e.setAttribute(k, attrs[k]);
    for (const k of kids) e.append(k instanceof Node ? k : document.createTextNode(String(k)));
    return e;
  }

  function ready() { document.body.dataset.ready = '1'; }
  function say(text, bad) { status.textContent = text; status.className = bad ? 'error' : ''; }

  // One colour per node name, the same on every page of this tab.
  const colours = {};
  function colour(node) {
    if (!(node in colours)) colours[node] = PALETTE[Object.keys(colours).length % PALETTE.length];
    return colours[node];
  }

  function processLink(pid) { return el('a', {href: url('/process', {pid})}, pid); }

  function killButton(pid, after) {
    const b = el('button', {class: 'kill', 'data-pid': pid}, 'kill');
    b.onclick = async (ev) => {
      ev.stopPropagation();
      try {
        await api('/api/kill', {}, {method: 'POST', headers: {'Content-Type': 'application/json'},
                                   body: JSON.stringify({pid})});
        say('killed ' + pid);
        if (after) after();
      } catch (e) { say(e.message, true); }
    };
    return b;
  }

  // Calls redraw() now and on every tick (or only on ticks where want(tick) holds).
  function live(redraw, want) {
    let busy = false;
    const run = async () => {
      if (busy) return;
      busy = true;
      try { await redraw(); ready(); } catch (e) { say(e.message, true); } finally { busy = false; }
    };
    run();
    const es = new EventSource(url('/api/events'));
    es.addEventListener('tick', (e) => { const t = JSON.parse(e.data); if (!want || want(t)) run(); });
    es.onerror = () => say('no events: reconnecting', true);
    return es;
  }

  // Cluster -----------------------------------------------------------------------------------

  function rate(x) { return x === undefined ? '-' : x < 10 ? x.toFixed(1) : Math.round(x); }

  function cluster() {
    const box = el('div');
    main.append(el('h2', {}, 'Cluster'), box);
    live(async () => {
      const d = await api('/api/nodes');
      const W = 720, H = 460, cx = W / 2, cy = H / 2, R = d.nodes.length > 1 ? 170 : 0;
      const at = {};
      d.nodes.forEach((n, i) => {
        const a = (2 * Math.PI * i) / d.nodes.length - Math.PI / 2;
        at[n.name] = [cx + R * Math.cos(a), cy + R * Math.sin(a)];
      });
      const byName = Object.fromEntries(d.nodes.map((n) => [n.name, n]));
      const g = sv('svg', {id: 'cluster', width: W, height: H, viewBox: `0 0 ${W} ${H}`});
      for (const [a, b] of list(d.links)) {
        if (!at[a] || !at[b]) continue;
        // The kernel counts messages per process, not per link: a link is drawn as wide as the
        // traffic of its quieter end.
        const t = Math.min(byName[a].sent_rate || 0, byName[b].sent_rate || 0);
        g.append(sv('line', {x1: at[a][0], y1: at[a][1], x2: at[b][0], y2: at[b][1], stroke: '#999',
                             'stroke-width': 1 + Math.min(8, Math.log2(1 + t)), 'data-link': a + ' ' + b}));
      }
      for (const n of d.nodes) {
        const [x, y] = at[n.name];
        const grp = sv('g', {'data-node': n.name, transform: `translate(${x},${y})`});
        grp.append(sv('circle', {r: 34, fill: colour(n.name), opacity: n.status === 'up' ? 0.9 : 0.3}),
          sv('text', {'text-anchor': 'middle', y: 50, class: 'node-label'}, n.name + (n.self ? ' (observer)' : '')),
          sv('text', {'text-anchor': 'middle', y: 64},
             n.status === 'up' ? `${n.processes} processes, ${rate(n.sent_rate)} sent/s, ${rate(n.received_rate)} received/s`
                               : n.status));
        g.append(grp);
      }
      box.replaceChildren(g);
      say(`${d.nodes.length} nodes`);
    });
  }

  // Processes ---------------------------------------------------------------------------------

  const COLUMNS = [
    ['pid', 'pid'], ['node', 'node'], ['name', 'name'], ['label', 'label'], ['status', 'status'],
    ['mailbox', 'mailbox', true], ['memory', 'memory', true], ['cpu', 'cpu', true],
    ['received', 'received', true], ['sent', 'sent', true], ['dropped', 'dropped', true],
  ];
  const SORTABLE = new Set(['mailbox', 'memory', 'cpu', 'received', 'sent', 'dropped']);

  function processes() {
    let sortKey = 'mailbox', rows = [];
    const filter = el('input', {id: 'filter', type: 'search', placeholder: 'filter: pid, node, name, label'});
    const table = el('table', {id: 'processes'});
    const head = el('tr');
    for (const [key, title] of COLUMNS) {
      const th = el('th', SORTABLE.has(key) ? {'data-sort': key} : {}, title);
      if (SORTABLE.has(key)) th.onclick = () => { sortKey = key; draw(); };
      head.append(th);
    }
    if (allowKill) head.append(el('th'));
    const body = el('tbody');
    table.append(el('thead', {}, head), body);
    main.append(el('h2', {}, 'Processes'), filter, table);
    filter.oninput = () => draw();

    function draw() {
      for (const th of head.children) th.classList.toggle('sorted', th.dataset.sort === sortKey);
      const f = filter.value.toLowerCase();
      const shown = rows.filter((p) => !f || [p.pid, p.node, p.name, p.label].some((v) => v && v.toLowerCase().includes(f)));
      shown.sort((a, b) => (b[sortKey] || 0) - (a[sortKey] || 0));
      body.replaceChildren(...shown.map((p) => {
        const tr = el('tr', {'data-pid': p.pid});
        for (const [key, , num] of COLUMNS) {
          let v = p[key] === undefined ? '' : p[key];
          if (key === 'cpu' && v !== '') v = v.toFixed(3);
          if (key === 'mailbox') v = `${p.mailbox}/${p.capacity}`;
          tr.append(el('td', num ? {class: 'num'} : {}, key === 'pid' ? processLink(p.pid) : v));
        }
        if (allowKill) tr.append(el('td', {}, killButton(p.pid)));
        return tr;
      }));
    }

    live(async () => {
      const d = await api('/api/processes');
      rows = d.processes;
      draw();
      const down = d.nodes.filter((n) => n.status !== 'up').map((n) => `${n.name}: ${n.status}`);
      say(`${rows.length} processes on ${d.nodes.length} nodes` + (down.length ? '; ' + down.join(', ') : ''), down.length > 0);
    });
  }

  // Process -----------------------------------------------------------------------------------

  function processPage() {
    const pid = new URLSearchParams(location.search).get('pid') || '';
    const box = el('div');
    main.append(el('h2', {}, 'Process ' + pid), box);
    const FIELDS = ['node', 'name', 'label', 'status', 'mailbox', 'capacity', 'dropped', 'memory', 'cpu',
                    'sent', 'received', 'started', 'trap_exit', 'parent', 'links', 'monitors', 'monitored_by'];
    const es = live(async () => {
      let d;
      try { d = await api('/api/process', {pid}); } catch (e) {
        box.replaceChildren(el('p', {class: 'error', id: 'process-error'}, e.message));
        es.close();
        return;
      }
      const p = d.process, dl = el('dl', {id: 'process', 'data-pid': p.pid});
      for (const f of FIELDS) {
        let v = p[f];
        if (['links', 'monitors', 'monitored_by'].includes(f)) v = list(v);
        let shown;
        if (Array.isArray(v)) {
          shown = el('span');
          v.forEach((x, i) => { if (i) shown.append(', '); shown.append(processLink(x)); });
        } else if (f === 'parent' && v) shown = processLink(v);
        else if (f === 'started' && v) shown = new Date(v * 1000).toISOString();
        else shown = v === undefined ? '' : String(v);
        dl.append(el('dt', {}, f), el('dd', {}, shown));
      }
      box.replaceChildren(dl);
      if (allowKill) box.append(killButton(p.pid));
    });
  }

  // Supervision tree ----------------------------------------------------------------------------

  function tree() {
    const box = el('div', {id: 'tree-box'});
    const legend = el('div', {class: 'legend'});
    main.append(el('h2', {}, 'Supervision tree'), legend, box,
                el('p', {}, el('a', {href: url('/api/tree.svg')}, 'the same tree drawn by Graphviz')));
    live(async () => {
      const d = await api('/api/tree');
      // Leaves take one row each, a parent sits at the middle of its children's rows.
      const ROW = 22, COL = 190, rows = [];
      let next = 0, depth = 0;
      function place(n, level) {
        depth = Math.max(depth, level);
        const kids = list(n.children).map((c) => place(c, level + 1));
        const y = kids.length ? (kids[0].y + kids[kids.length - 1].y) / 2 : next++ * ROW + 20;
        const p = {n, x: 10 + level * COL, y, kids};
        rows.push(p);
        return p;
      }
      d.roots.forEach((r) => place(r, 0));
      const W = 40 + (depth + 1) * COL, H = next * ROW + 30;
      const g = sv('svg', {id: 'tree', width: W, height: H, viewBox: `0 0 ${W} ${H}`});
      const nodes = new Set();
      for (const p of rows) {
        for (const k of p.kids) {
          g.append(sv('path', {d: `M${p.x + 8},${p.y} C${p.x + COL / 2},${p.y} ${k.x - COL / 2},${k.y} ${k.x - 8},${k.y}`,
                               fill: 'none', stroke: '#bbb'}));
        }
      }
      for (const p of rows) {
        const n = p.n;
        nodes.add(n.node);
        const sup = n.label === 'supervisor' || (n.label || '').startsWith('supervisor ');
        const a = sv('a', {href: url('/process', {pid: n.pid})});
        const grp = sv('g', {'data-pid': n.pid, 'data-node': n.node, transform: `translate(${p.x},${p.y})`});
        grp.append(sup ? sv('rect', {x: -6, y: -6, width: 12, height: 12, fill: colour(n.node)})
                       : sv('circle', {r: 6, fill: colour(n.node)}));
        const label = [n.id !== undefined ? String(n.id) : n.name, n.pid].filter((x) => x !== undefined).join(' ');
        grp.append(sv('text', {x: 10, y: 4}, label),
                   sv('title', {}, `${n.pid} on ${n.node}\n${n.label || ''} ${n.status} ${n.mailbox ?? ''}`));
        a.append(grp);
        g.append(a);
      }
      box.replaceChildren(g);
      legend.replaceChildren(...[...nodes].sort().map((n) => el('span', {}, el('i', {style: `background:${colour(n)}`}), n)));
      say(`${rows.length} processes`);
    }, (t) => t.spawned || t.exited || t.first);
  }

  // Message flow --------------------------------------------------------------------------------

  function flow() {
    const box = el('div');
    const note = el('p', {}, 'Sends traced on every node (erlangen.trace); an edge lights up when messages pass.');
    main.append(el('h2', {}, 'Message flow'), note, box);
    const edges = new Map();   // "from to" -> {from, to, n, at}
    const procs = new Map();   // pid -> {pid, node}
    const W = 760, H = 560;
    function nodeOf(pid) { const m = /^<(.+)\.\d+>$/.exec(pid); return m && m[1] !== '0' ? m[1] : 'this node'; }
    function draw() {
      const now = performance.now(), pids = [...procs.keys()].sort();
      const at = {};
      pids.forEach((p, i) => {
        const a = (2 * Math.PI * i) / Math.max(1, pids.length) - Math.PI / 2;
        at[p] = [W / 2 + 240 * Math.cos(a), H / 2 + 240 * Math.sin(a)];
      });
      const g = sv('svg', {id: 'flow', width: W, height: H, viewBox: `0 0 ${W} ${H}`});
      for (const e of edges.values()) {
        if (!at[e.from] || !at[e.to]) continue;
        const age = (now - e.at) / 1000, hot = Math.max(0.08, 1 - age / 3);
        g.append(sv('line', {x1: at[e.from][0], y1: at[e.from][1], x2: at[e.to][0], y2: at[e.to][1],
                             stroke: age < 1 ? '#e15759' : '#888', 'stroke-opacity': hot,
                             'stroke-width': 1 + Math.min(6, Math.log2(1 + e.last)),
                             'data-from': e.from, 'data-to': e.to},
                         sv('title', {}, `${e.from} -> ${e.to}: ${e.n} messages`)));
      }
      for (const p of pids) {
        const grp = sv('g', {'data-pid': p, transform: `translate(${at[p][0]},${at[p][1]})`});
        grp.append(sv('circle', {r: 5, fill: colour(procs.get(p).node)}), sv('text', {x: 8, y: 4}, p));
        g.append(grp);
      }
      box.replaceChildren(g);
    }
    const es = new EventSource(url('/api/events', {flow: 1}));
    es.addEventListener('tick', () => { draw(); ready(); });
    es.addEventListener('flow', (ev) => {
      const f = JSON.parse(ev.data);
      if (f.error) { say(`${f.node}: ${f.error}`, true); return; }
      for (const e of list(f.edges)) {
        if (!e.to.startsWith('<')) continue;   // a name or alias: no process to draw
        const key = e.from + ' ' + e.to, old = edges.get(key);
        edges.set(key, {from: e.from, to: e.to, n: (old ? old.n : 0) + e.n, last: e.n, at: performance.now()});
        for (const p of [e.from, e.to]) if (!procs.has(p)) procs.set(p, {pid: p, node: nodeOf(p)});
      }
      if (f.more) say(`${f.node}: ${f.more} sends not drawn`);
    });
    setInterval(draw, 250);
  }

  // -------------------------------------------------------------------------------------------

  const PAGES = {'/': ['nav-cluster', cluster], '/processes': ['nav-processes', processes],
                 '/process': ['nav-processes', processPage], '/tree': ['nav-tree', tree], '/flow': ['nav-flow', flow]};
  for (const a of document.querySelectorAll('nav a')) a.href = url(new URL(a.href).pathname);
  const page = PAGES[location.pathname] || PAGES['/'];
  document.getElementById(page[0]).classList.add('current');
  page[1]();
})();
