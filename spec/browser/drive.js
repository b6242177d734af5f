// spec/browser/drive.js — headless Chromium for spec/browser_spec.lua, driven over one TCP connection.
//
//   node spec/browser/drive.js [LIFE_SECONDS]
// launches Debian's /usr/bin/chromium headless through playwright-core,
// listens on 127.0.0.1 (a free port) and prints one line on stdout:
//   ready PORT NODE_PID CHROMIUM_PID
// then serves one client. Each request is one line, fields separated by
// tabs; each answer is one line, "ok" or "error" and then tab-separated
// fields (a field never holds a tab or a newline):
//   open URL                 load URL, wait for body[data-ready="1"]   → ok
//   shot PATH                screenshot of the whole page into PATH    → ok
//   count SELECTOR           the number of matching elements (playwright
//                            selectors: CSS, and :visible)              → ok N
//   attrs SELECTOR NAME      attribute NAME of each match, in order    → ok V...
//   click SELECTOR           click the first match                     → ok
//   fill SELECTOR TEXT       type TEXT into the first match (an input)  → ok
//   sort COLUMN              click table#processes th[data-sort=COLUMN]; once the column is in
//                            order (or after WAIT) the values of its cells in tr[data-pid]
//                            rows, each as "pid|number|text" (number NaN if the
//                            text holds none)                           → ok V...
//   await_pids SCOPE GONE NEW MS   wait up to MS ms until no [data-pid=GONE] and a
//                            [data-pid=NEW] are inside SCOPE            → ok, or error PIDS...
//   errors                   page errors, console errors and failed loads (but
//                            /favicon.ico) since the last errors        → ok E...
//   quit                     close the browser and exit
// Every wait is bounded (WAIT unless told). The driver ends, closing the
// browser, when the client disconnects, on quit, or after LIFE_SECONDS.
"use strict";
const net = require("net");
const { chromium } = require("playwright-core");

const WAIT = 10000;  // ms any one page wait may take
const LIFE = (Number(process.argv[2]) || 300) * 1000;
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";

const clean = (s) => String(s).replace(/[\t\n\r]+/g, " ");

// The cell values of the column headed by th[data-sort=name], in row order:
// a cell's data-value if it has one, else its text; with the number read
// from it ("12", "3.5 KiB", "2 ms"; NaN if none).
function columnValues(name) {
  const scale = { "": 1, b: 1, kb: 1e3, kib: 1024, mb: 1e6, mib: 1048576, gb: 1e9, gib: 1073741824,
                  s: 1, ms: 1e-3, "µs": 1e-6, us: 1e-6, ns: 1e-9, "%": 1 };
  const th = document.querySelector(`table#processes th[data-sort="${name}"]`);
  if (!th) return null;
  const idx = th.cellIndex;
  return [...document.querySelectorAll("table#processes tr[data-pid]")].map((tr) => {
    const td = tr.cells[idx];
    const text = td ? (td.getAttribute("data-value") ?? td.textContent).trim() : "";
    const m = text.replace(/,/g, "").match(/(-?[0-9]*\.?[0-9]+(?:e[-+]?[0-9]+)?)\s*([a-zµ%]*)/i);
    const f = m ? scale[m[2].toLowerCase()] : undefined;
    return { pid: tr.getAttribute("data-pid"), n: m && f !== undefined ? Number(m[1]) * f : NaN, text };
  });
}

function ordered(vals) {
  if (!vals || vals.some((v) => Number.isNaN(v.n))) return false;
  const up = vals.every((v, i) => i === 0 || vals[i - 1].n <= v.n);
  const down = vals.every((v, i) => i === 0 || vals[i - 1].n >= v.n);
  return up || down;
}

async function main() {
  const server0 = await chromium.launchServer({
    executablePath: CHROMIUM, headless: true, timeout: 60000,
    args: ["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"],
  });
  const browser = await chromium.connect(server0.wsEndpoint(), { timeout: 60000 });
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  const errors = [];
  page.on("pageerror", (e) => errors.push("pageerror: " + e.message));
  page.on("console", (m) => {
    if (m.type() === "error" && !m.text().startsWith("Failed to load resource")) errors.push("console: " + m.text());
  });
  page.on("response", (r) => {  // a failed load says which URL, unlike its console line
    if (r.status() >= 400 && !r.url().endsWith("/favicon.ico")) errors.push(`http ${r.status()}: ${r.url()}`);
  });

  let ending = false;
  const end = async (code) => {
    if (ending) return;
    ending = true;
    try { await browser.close(); await server0.close(); } catch (e) { /* already gone */ }
    process.exit(code);
  };
  setTimeout(() => end(2), LIFE).unref();

  const commands = {
    async open(url) {
      await page.goto(url, { waitUntil: "load", timeout: WAIT });
      await page.waitForSelector('body[data-ready="1"]', { state: "attached", timeout: WAIT });
      return [];
    },
    async shot(path) {
      await page.screenshot({ path, fullPage: true, timeout: WAIT });
      return [];
    },
    async count(sel) { return [await page.locator(sel).count()]; },
    async attrs(sel, name) {
      return page.$$eval(sel, (els, n) => els.map((e) => e.getAttribute(n) ?? ""), name);
    },
    async click(sel) { await page.locator(sel).first().click({ timeout: WAIT }); return []; },
    async fill(sel, text) { await page.locator(sel).first().fill(text, { timeout: WAIT }); return []; },
    async sort(col) {
      await page.locator(`table#processes th[data-sort="${col}"]`).click({ timeout: WAIT });
      try {
        await page.waitForFunction(`(${ordered})((${columnValues})(${JSON.stringify(col)}))`,
                                   null, { timeout: WAIT, polling: 50 });
      } catch (e) { /* the spec reports the values it gets */ }
      const vals = await page.evaluate(columnValues, col);
      if (!vals) throw new Error(`no table#processes th[data-sort="${col}"]`);
      return vals.map((v) => `${v.pid}|${v.n}|${v.text}`);
    },
    async await_pids(scope, gone, fresh, ms) {
      const cond = ([s, g, n]) => {
        const root = document.querySelector(s);
        if (!root) return false;
        const pids = [...root.querySelectorAll("[data-pid]")].map((e) => e.getAttribute("data-pid"));
        return !pids.includes(g) && pids.includes(n);
      };
      try {
        await page.waitForFunction(cond, [scope, gone, fresh], { timeout: Number(ms), polling: 50 });
        return [];
      } catch (e) {
        const pids = await page.$$eval(`${scope} [data-pid]`, (els) => els.map((x) => x.getAttribute("data-pid")));
        const err = new Error("still " + pids.join(" "));
        err.fields = pids;
        throw err;
      }
    },
    async errors() { return errors.splice(0); },
  };

  const server = net.createServer((sock) => {
    server.close();  // one client
    sock.setEncoding("utf8");
    let buf = "";
    let queue = Promise.resolve();
    sock.on("data", (chunk) => {
      buf += chunk;
      let nl;
      while ((nl = buf.indexOf("\n")) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        queue = queue.then(async () => {
          const [cmd, ...args] = line.split("\t");
          if (cmd === "quit") { sock.end("ok\n"); return end(0); }
          const fn = commands[cmd];
          let reply;
          try {
            if (!fn) throw new Error("unknown command " + cmd);
            reply = ["ok", ...(await fn(...args))];
          } catch (e) {
            reply = ["error", e.message.split("\n")[0], ...(e.fields || [])];
          }
          sock.write(reply.map(clean).join("\t") + "\n");
        });
      }
    });
    sock.on("close", () => end(0));
    sock.on("error", () => end(1));
  });
  server.listen(0, "127.0.0.1", () => {
    process.stdout.write(`ready ${server.address().port} ${process.pid} ${server0.process().pid}\n`);
  });
}

main().catch((e) => {
  process.stdout.write("failed " + clean(e.message) + "\n");
  process.exit(1);
});
