-- The rock of a checkout: `luarocks --lua-version 5.4 make [--tree T]` builds
-- with meson and installs the module erlangen.so, the stdlib (erlangen.*) and
-- the `erlangen` command. The version follows meson.build's project().
rockspec_format = "3.0"
package = "erlangen"
version = "0.1.0-1"
source = {
   url = "git+file://.",
}
description = {
   summary = "Erlang-style processes for Lua 5.4: OS threads, bounded mailboxes, links, supervisors",
   detailed = [[
Each process is an OS thread with its own lua_State; messages are copied by
one codec; links, monitors, exit signals and trap_exit follow Erlang's
semantics. Comes with supervisor, server, timer, log and observer modules and
the `erlangen` interpreter, which also runs nodes linked over TCP.]],
   license = "MIT",
}
dependencies = {
   "lua >= 5.4, < 5.5",
}
build_dependencies = {}
external_dependencies = {}
-- meson's prefix is the tree (PREFIX is T/lib/luarocks/rocks-5.4/erlangen/
-- VERSION), so the paths compiled in (the stdlib for `require`, the command
-- that starts the port mapper) are where luarocks deploys them. meson install
-- puts everything under a staging directory; the module, the stdlib and the
-- command are then copied to where luarocks deploys from.
build = {
   type = "command",
   build_command = [[
set -e
tree=`realpath -m "$(PREFIX)/../../../../.."`
if [ -f build-rock/build.ninja ]; then meson configure build-rock --prefix="$tree"
else meson setup build-rock --prefix="$tree"; fi
ninja -C build-rock
]],
   install_command = [[
set -e
tree=`realpath -m "$(PREFIX)/../../../../.."`
rm -rf build-rock/stage
meson install -C build-rock --quiet --no-rebuild --destdir stage
stage=build-rock/stage$tree
mkdir -p "$(LIBDIR)" "$(LUADIR)" "$(BINDIR)"
cp "$stage/lib/lua/5.4/erlangen.so" "$(LIBDIR)/"
cp -R "$stage/share/lua/5.4/." "$(LUADIR)/"
cp "$stage/bin/erlangen" "$(BINDIR)/"
]],
}
