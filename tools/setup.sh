#!/usr/bin/env bash
# tools/setup.sh [BUILD_DIR [meson options...]]
# Installs the Debian 12 packages erlangen needs (only those missing), then
# configures and builds BUILD_DIR (default: build). Must run as root on a
# fresh machine; quiet when everything is already there.
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
packages="lua5.4 liblua5.4-dev libsodium-dev libreadline-dev pkg-config meson ninja-build gcc
          lua-busted lua-socket bsdutils clang libclang-rt-14-dev graphviz"
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
ninja -C "$build" >&2
