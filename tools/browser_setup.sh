#!/usr/bin/env bash
# tools/browser_setup.sh
# Installs what spec/browser_spec.lua needs, only what is missing: Debian's
# chromium (/usr/bin/chromium, run headless) and spec/browser's npm
# packages (playwright-core, pinned by spec/browser/package-lock.json,
# installed with `npm ci` into spec/browser/node_modules). Node.js and npm
# come with the machine. Must run as root on a fresh machine; prints
# nothing and uses no network when everything is already there.
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
if ! dpkg -s chromium >/dev/null 2>&1; then
  echo "installing: chromium" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >&2
  apt-get install -y -q --no-install-recommends chromium >&2
fi
command -v node >/dev/null && command -v npm >/dev/null \
  || { echo "tools/browser_setup.sh: node and npm are needed (they come with the machine)" >&2; exit 1; }
cd "$root/spec/browser"
# The installed playwright-core's version, and the one the lock file pins.
versions=$(node -e '
  const fs = require("fs");
  const want = JSON.parse(fs.readFileSync("package-lock.json")).packages["node_modules/playwright-core"].version;
  let have = "none";
  try { have = JSON.parse(fs.readFileSync("node_modules/playwright-core/package.json")).version; } catch (e) {}
  console.log(have + " " + want);')
if [ "${versions% *}" != "${versions#* }" ]; then
  echo "installing: spec/browser npm packages (playwright-core ${versions#* })" >&2
  npm ci --no-audit --no-fund --loglevel=error >&2
fi
