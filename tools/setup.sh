#!/usr/bin/env bash
# tools/setup.sh [--test] [BUILD_DIR [meson options...]]
# Installs the Debian 12 packages erlangen needs (only those missing), then
# configures and builds BUILD_DIR (default: build). --test adds the packages
# only the tests need (spec/install_spec.lua's luarocks, debhelper, man).
# Must run as root on a fresh machine; quiet when everything is already there
# and the build is up to date (ninja's progress shows only when it builds).
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
packages="lua5.4 liblua5.4-dev libsodium-dev libreadline-dev pkg-config meson ninja-build gcc
          lua-busted lua-socket lua-cjson bsdutils clang libclang-rt-14-dev graphviz"
if [ "${1:-}" = "--test" ]; then
  packages="$packages luarocks debhelper build-essential man-db groff-base"
  shift
fi
missing=""
for p in $packages; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  echo "installing:$missing" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >&2
  apt-get install -y -q --no-install-recommends $missing >&2
fi
build=${1:-build}
[ $# -gt 0 ] && shift
cd "$root"
if [ ! -f "$build/build.ninja" ]; then meson setup "$build" "$@" >&2; fi
ninja -C "$build" | { grep -v -e '^ninja: Entering directory' -e '^ninja: no work to do\.$' >&2 || true; }
exit "${PIPESTATUS[0]}"
