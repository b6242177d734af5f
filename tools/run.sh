#!/usr/bin/env bash
# tools/run.sh [erlangen options] [script [args]]
# Installs what is missing, builds, then runs the erlangen interpreter:
# the REPL without arguments, or the given script.
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
bash "$root/tools/setup.sh" build
exec "$root/build/erlangen" "$@"
