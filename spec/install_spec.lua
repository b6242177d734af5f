-- Installed use: meson install into a scratch prefix, luarocks make into a
-- scratch tree, and the Debian package. Each builds from a scratch copy of
-- the checkout, which is removed before the installed copy is used, so a
-- path into the source or build tree cannot make a check pass.
-- Tagged #install: tools/test.sh runs these once, in the plain suite; they
-- are pending only where a tool is missing (tools/setup.sh --test installs
-- them all).

local root = io.popen("pwd"):read("l")

-- Runs a shell command; returns true/false and its output (stdout and stderr).
local function sh(cmd)
  local p, err = io.popen("(" .. cmd .. ") 2>&1")
  if not p then return false, "cannot start a shell for: " .. cmd .. ": " .. tostring(err) end
  local out = p:read("a")
  local ok, _, code = p:close()
  return ok == true, out, code
end

local H = require "spec.helpers"
local q = H.quote

local function read(path) return assert(H.read_file(path), "cannot read " .. path) end

-- The tools among `names` that are not on PATH, as one string ("" if none).
local function missing(names)
  local gone = {}
  for _, n in ipairs(names) do
    if not sh("command -v " .. n) then gone[#gone + 1] = n end
  end
  return table.concat(gone, ", ")
end

-- A stock environment: nothing from spec/run (LUA_PATH, LUA_CPATH, ERLANGEN_*)
-- reaches the installed copy unless a check passes it.
local function clean_env(extra)
  return "env -i PATH=/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin HOME=" .. q(os.getenv("HOME") or "/root") .. " LC_ALL=C.UTF-8 "
      .. (extra or "") .. " "
end

-- A new scratch directory holding `src/`, a copy of the checkout's files
-- (tracked, and untracked but not ignored: what a commit would hold).
local function scratch_copy()
  local ok, dir = sh("mktemp -d /tmp/erlangen-install.XXXXXX")
  assert(ok, "mktemp: " .. dir)
  dir = dir:gsub("%s+$", "")
  local copied, out = sh("mkdir " .. q(dir .. "/src") .. " && cd " .. q(root)
    .. " && git ls-files -z --cached --others --exclude-standard"
    .. " | xargs -0 sh -c 'for f; do [ -e \"$f\" ] && printf \"%s\\0\" \"$f\"; done' _"
    .. " | tar --null -T - -cf - | tar -xf - -C " .. q(dir .. "/src"))
  assert(copied, "copying the checkout to " .. dir .. ": " .. out)
  return dir
end

local function tail(s, n)
  local lines = {}
  for l in s:gmatch("[^\n]+") do lines[#lines + 1] = l end
  return table.concat(lines, "\n", math.max(1, #lines - (n or 30) + 1))
end

-- The version in meson.build's project().
local function meson_version()
  return read(root .. "/meson.build"):match("project%(.-version%s*:%s*'([^']+)'")
end

-- The ERLANGEN_* environment variables the C sources read.
local function erlangen_env_names()
  local names, seen = {}, {}
  local _, files = sh("cd " .. q(root) .. " && find kernel lua cli -name '*.[ch]' 2>/dev/null | sed 's|^|" .. root .. "/|'")
  for path in files:gmatch("[^\n]+") do
    local text = read(path)
    for n in text:gmatch('getenv%("(ERLANGEN_[%w_]+)"%)') do
      if not seen[n] then seen[n] = true; names[#names + 1] = n end
    end
    for n in text:gmatch('#define%s+[%w_]+_ENV%s+"(ERLANGEN_[%w_]+)"') do
      if not seen[n] then seen[n] = true; names[#names + 1] = n end
    end
  end
  table.sort(names)
  return names
end

describe("the packaging files", function()
  it("give the rockspec the version of meson.build", function()
    local v = meson_version()
    local f = io.open(root .. "/erlangen-" .. v .. "-1.rockspec")
    assert.is_not_nil(f, "no erlangen-" .. v .. "-1.rockspec for meson.build's version " .. v)
    local spec = f:read("a")
    f:close()
    assert.are.equal(v .. "-1", spec:match('\nversion%s*=%s*"([^"]+)"'))
  end)

  it("give debian/changelog the version of meson.build", function()
    assert.are.equal(meson_version(), read(root .. "/debian/changelog"):match("^erlangen %(([^)]+)%)"))
  end)
end)

describe("meson install into a scratch prefix #install", function()
  local gone = missing({"meson", "ninja", "cc", "pkg-config", "lua5.4", "man", "readelf", "git"})
  local dir, prefix, libdir, built, log

  setup(function()
    if gone ~= "" then return end
    dir = scratch_copy()
    prefix = dir .. "/prefix"
    built, log = sh("cd " .. q(dir) .. " && meson setup bld src --prefix=" .. q(prefix)
      .. " && ninja -C bld && meson install -C bld --quiet")
    -- The installed copy is checked without its sources and build tree.
    sh("rm -rf " .. q(dir .. "/src") .. " " .. q(dir .. "/bld"))
    if built then
      local _, pc = sh("find " .. q(prefix .. "/lib") .. " -path '*/pkgconfig/erlangen.pc'")
      libdir = pc:match("^([^\n]+)/pkgconfig/erlangen%.pc\n")
    end
  end)

  teardown(function()
    if dir then sh("rm -rf " .. q(dir)) end
  end)

  local function check(what)
    if gone ~= "" then pending("needs " .. gone .. " (bash tools/setup.sh --test installs it)"); return false end
    assert(built, "the build and install into " .. tostring(prefix) .. " failed:\n" .. tail(log or ""))
    assert(libdir, "no erlangen.pc under " .. prefix .. "/lib*")
    return true
  end

  it("puts the module in <prefix>/lib/lua/5.4, where lua5.4 looks for /usr/local and /usr", function()
    if not check() then return end
    local f = io.open(prefix .. "/lib/lua/5.4/erlangen.so")
    assert.is_not_nil(f, "no " .. prefix .. "/lib/lua/5.4/erlangen.so")
    f:close()
    local _, cpath = sh(clean_env() .. "lua5.4 -e 'print(package.cpath)'")
    assert.matches("/usr/local/lib/lua/5.4/?.so;", cpath, 1, true)
  end)

  it("lets a stock lua5.4 require the module with LUA_CPATH pointing into the prefix only", function()
    if not check() then return end
    local ok, out = sh(clean_env("LUA_CPATH=" .. q(prefix .. "/lib/lua/5.4/?.so"))
      .. "lua5.4 -e 'local e = require \"erlangen\"; print(e.self())'")
    assert(ok, "lua5.4 could not require the installed module:\n" .. out)
    assert.matches("^<0%.%d+>\n$", out)
  end)

  it("lets the installed module find the installed stdlib, in the main state and a spawned one", function()
    if not check() then return end
    local code = [[
      local e = require "erlangen"
      require "erlangen.supervisor"
      print(package.searchpath("erlangen.supervisor", package.path))
      e.spawn(function(parent)
        require "erlangen.server"
        e.send(parent, package.searchpath("erlangen.server", package.path))
      end, e.self())
      print(e.receive(5))]]
    -- LUA_PATH empty: only the path the kernel adds can reach the stdlib.
    local ok, out = sh(clean_env("LUA_PATH= LUA_CPATH=" .. q(prefix .. "/lib/lua/5.4/?.so"))
      .. "lua5.4 -e " .. q(code))
    assert(ok, "lua5.4 with the installed module:\n" .. out)
    local stdlib = prefix .. "/share/lua/5.4/erlangen/"
    assert.are.equal(stdlib .. "supervisor.lua\n" .. stdlib .. "server.lua\n", out)
  end)

  it("installs an erlangen command that finds the installed stdlib", function()
    if not check() then return end
    local ok, out = sh(clean_env("LUA_PATH=") .. q(prefix .. "/bin/erlangen")
      .. " -e 'require \"erlangen.timer\"; print(package.searchpath(\"erlangen.timer\", package.path))'")
    assert(ok, "the installed erlangen:\n" .. out)
    assert.are.equal(prefix .. "/share/lua/5.4/erlangen/timer.lua\n", out)
  end)

  it("lets a node of a stock lua5.4 start the installed erlangen as its port mapper", function()
    if not check() then return end
    local key = dir .. "/cluster.key"
    assert(sh("head -c 32 /dev/urandom > " .. q(key) .. " && chmod 600 " .. q(key)))
    -- A free port for this check's own port mapper, so no other one answers.
    local socket = require "socket"
    local probe = assert(socket.bind("127.0.0.1", 0))
    local _, port = probe:getsockname()
    probe:close()
    local ok, out = sh("timeout 20 " .. clean_env("ERLANGEN_PORT_MAPPER_PORT=" .. port
      .. " LUA_CPATH=" .. q(prefix .. "/lib/lua/5.4/?.so")) .. "lua5.4 -e "
      .. q("print(require 'erlangen'.start_node{name = 'inst@127.0.0.1', listen = '127.0.0.1:0', key_file = '"
           .. key .. "'})"))
    -- The daemon outlives the node: find it by its command line (a process
    -- that is about to exit may match too), and stop it.
    local _, pids = sh("for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline 2>/dev/null"
      .. " | grep -q -- '--port-mapper --port " .. port .. " $' && echo ${p#/proc/}; done")
    local exes = {}
    for pid in pids:gmatch("%d+") do
      local _, exe = sh("readlink /proc/" .. pid .. "/exe")
      if exe ~= "" then exes[#exes + 1] = exe:gsub("\n$", "") end
      sh("kill " .. pid)
    end
    assert(ok, "start_node under lua5.4 with the installed module:\n" .. out)
    assert.is_true(#exes > 0, "no port mapper on port " .. port .. " after start_node")
    for _, exe in ipairs(exes) do assert.are.equal(prefix .. "/bin/erlangen", exe) end
  end)

  it("gives the shared library a versioned soname", function()
    if not check() then return end
    local ok, out = sh("readelf -d " .. q(libdir .. "/liberlangen.so"))
    assert(ok, out)
    local soname = out:match("Library soname: %[([^%]]+)%]")
    assert.is_not_nil(soname, "no SONAME in liberlangen.so:\n" .. out)
    assert.matches("^liberlangen%.so%.%d+$", soname)
  end)

  it("installs erlangen.pc requiring lua5.4, and erlangen.h in <prefix>/include", function()
    if not check() then return end
    local pc = read(libdir .. "/pkgconfig/erlangen.pc")
    assert.matches("\nRequires: lua5.4\n", pc, 1, true)
    local ok, flags = sh("PKG_CONFIG_PATH=" .. q(libdir .. "/pkgconfig") .. " pkg-config --cflags --libs erlangen")
    assert(ok, "pkg-config erlangen: " .. flags)
    assert.matches("-I" .. prefix .. "/include", flags, 1, true)
    assert.matches("-lerlangen", flags, 1, true)
    assert.matches("-llua5.4", flags, 1, true)
    assert.is_not_nil(io.open(prefix .. "/include/erlangen.h"), "no " .. prefix .. "/include/erlangen.h")
  end)

  -- Builds host.c with doc/embedding.md's line; returns the program's output.
  local function build_and_run(source)
    local exe = dir .. "/host"
    local ok, out = sh("cd " .. q(dir) .. " && PKG_CONFIG_PATH=" .. q(libdir .. "/pkgconfig")
      .. " cc " .. q(source) .. " $(PKG_CONFIG_PATH=" .. q(libdir .. "/pkgconfig")
      .. " pkg-config --cflags --libs erlangen) -o " .. q(exe))
    assert(ok, "cc " .. source .. " $(pkg-config --cflags --libs erlangen) failed:\n" .. out)
    ok, out = sh("timeout 20 " .. clean_env("LUA_PATH= LD_LIBRARY_PATH=" .. q(libdir)) .. q(exe))
    assert(ok, exe .. " failed:\n" .. out)
    return out
  end

  it("builds examples/embed/host.c with pkg-config alone, and it runs", function()
    if not check() then return end
    local out = build_and_run(root .. "/examples/embed/host.c")
    local got, want = out:match("reply: (%d+) %(expected (%d+)%)")
    assert.is_not_nil(got, "no reply line in:\n" .. out)
    assert.are.equal(want, got)
    assert.matches("stopped, 0 killed", out, 1, true)
  end)

  it("builds a host whose processes require the installed stdlib", function()
    if not check() then return end
    local src = dir .. "/stdlib_host.c"
    local f = assert(io.open(src, "w"))
    f:write([[
#include <stdio.h>
#include <lauxlib.h>
#include <erlangen.h>
int main(void) {
  if (erlangen_start(NULL) != 0) { fputs("cannot start the kernel\n", stderr); return 1; }
  lua_State *L = erlangen_attach();
  if (!L) { fputs("attach failed\n", stderr); return 1; }
  if (luaL_dostring(L, "require 'erlangen.log'; print(package.searchpath('erlangen.log', package.path))"))
    { fprintf(stderr, "%s\n", lua_tostring(L, -1)); return 1; }
  erlangen_detach(L);
  erlangen_stop(1.0);
  return 0;
}
]])
    f:close()
    assert.are.equal(prefix .. "/share/lua/5.4/erlangen/log.lua\n", build_and_run(src))
  end)

  -- man -l with groff's warnings on; the page rendered in UTF-8, so an
  -- option written without \- would show as U+2010 and not match.
  local function man_page()
    local page = prefix .. "/share/man/man1/erlangen.1"
    local ok, out = sh(clean_env("MANWIDTH=120") .. "man --warnings -l -P cat " .. q(page) .. " 2>" .. q(dir .. "/man.err"))
    assert(ok, "man -l " .. page .. " failed:\n" .. out .. read(dir .. "/man.err"))
    return out, read(dir .. "/man.err")
  end

  it("installs erlangen(1), which man -l renders without warnings", function()
    if not check() then return end
    local out, err = man_page()
    assert.are.equal("", err)
    for _, section in ipairs({"NAME", "SYNOPSIS", "OPTIONS", "ENVIRONMENT", "FILES", "EXIT STATUS"}) do
      assert.matches("\n" .. section .. "\n", out, 1, true)
    end
  end)

  it("has erlangen(1) name every option of the usage message", function()
    if not check() then return end
    local _, usage = sh(clean_env() .. q(prefix .. "/bin/erlangen") .. " --no-such-option")
    local out = man_page()
    local opts = {}
    for o in usage:match("Available options are:(.*)$"):gmatch("%f[%w%-](%-%-?[%w][%w%-]*)") do
      opts[#opts + 1] = o
    end
    assert.is_true(#opts >= 10, "too few options found in the usage message:\n" .. usage)
    for _, o in ipairs(opts) do
      assert.is_truthy(out:find(o, 1, true), "erlangen(1) does not mention " .. o)
    end
  end)

  it("has erlangen(1) name every ERLANGEN_ variable the C code reads, and the files", function()
    if not check() then return end
    local out = man_page()
    local names = erlangen_env_names()
    assert.is_true(#names >= 3, "too few ERLANGEN_ variables found in kernel/, lua/ and cli/")
    for _, n in ipairs(names) do
      assert.is_truthy(out:find(n, 1, true), "erlangen(1) does not mention " .. n)
    end
    for _, s in ipairs({"LUA_INIT", "LUA_PATH", "LUA_CPATH", "~/.erlangen_history", "~/.erlangen/cluster.key"}) do
      assert.is_truthy(out:find(s, 1, true), "erlangen(1) does not mention " .. s)
    end
  end)
end)

describe("luarocks make into a scratch tree #install", function()
  local gone = missing({"luarocks", "meson", "ninja", "cc", "lua5.4", "git"})
  local dir, tree, built, log

  setup(function()
    if gone ~= "" then return end
    dir = scratch_copy()
    tree = dir .. "/tree"
    built, log = sh("cd " .. q(dir .. "/src") .. " && " .. clean_env()
      .. "luarocks --lua-version 5.4 make --tree " .. q(tree))
    sh("rm -rf " .. q(dir .. "/src"))
  end)

  teardown(function()
    if dir then sh("rm -rf " .. q(dir)) end
  end)

  local function check()
    if gone ~= "" then pending("needs " .. gone .. " (bash tools/setup.sh --test installs it)"); return false end
    assert(built, "luarocks make --tree " .. tostring(tree) .. " failed:\n" .. tail(log or ""))
    return true
  end

  it("lets lua5.4 require the module and the stdlib after luarocks path", function()
    if not check() then return end
    local ok, out = sh(clean_env() .. "sh -c " .. q("eval \"$(luarocks --lua-version 5.4 path --tree " .. q(tree)
      .. ")\" && lua5.4 -e 'require \"erlangen.supervisor\"; print(package.searchpath(\"erlangen\", package.cpath));"
      .. " print(package.searchpath(\"erlangen.supervisor\", package.path))'"))
    assert(ok, "lua5.4 after luarocks path:\n" .. out)
    assert.are.equal(tree .. "/lib/lua/5.4/erlangen.so\n" .. tree .. "/share/lua/5.4/erlangen/supervisor.lua\n", out)
  end)

  it("installs the erlangen command, which finds the tree's stdlib without luarocks path", function()
    if not check() then return end
    local ok, out = sh(clean_env("LUA_PATH=") .. q(tree .. "/bin/erlangen")
      .. " -e 'require \"erlangen.server\"; print(package.searchpath(\"erlangen.server\", package.path))'")
    assert(ok, tree .. "/bin/erlangen:\n" .. out)
    assert.are.equal(tree .. "/share/lua/5.4/erlangen/server.lua\n", out)
  end)
end)

describe("the Debian package #install", function()
  local gone = missing({"dpkg-buildpackage", "dh", "dpkg-deb", "meson", "ninja", "lua5.4", "git"})
  local dir, deb, built, log, files, extracted
  local version = meson_version()

  setup(function()
    if gone ~= "" then return end
    dir = scratch_copy()
    -- dpkg-buildpackage writes the .deb into the parent of the source: dir.
    built, log = sh("cd " .. q(dir .. "/src") .. " && " .. clean_env("DEB_BUILD_OPTIONS=parallel=2")
      .. "dpkg-buildpackage -us -uc -b")
    sh("rm -rf " .. q(dir .. "/src"))
    local _, arch = sh("dpkg --print-architecture")
    deb = dir .. "/erlangen_" .. version .. "_" .. arch:gsub("%s+$", "") .. ".deb"
    if built then
      local ok, out = sh("dpkg -c " .. q(deb))
      if ok then
        files = {}
        for path in out:gmatch("%s%./([^\n]-)%f[%s\n]") do files[path] = true end
      end
      extracted = dir .. "/root"
      sh("dpkg -x " .. q(deb) .. " " .. q(extracted))
    end
  end)

  teardown(function()
    if dir then sh("rm -rf " .. q(dir)) end
  end)

  local function check()
    if gone ~= "" then pending("needs " .. gone .. " (bash tools/setup.sh --test installs it)"); return false end
    assert(built, "dpkg-buildpackage -us -uc -b failed:\n" .. tail(log or ""))
    assert(files, "dpkg -c " .. deb .. " listed nothing")
    return true
  end

  local function has(path)
    assert.is_true(files[path] == true, "the .deb has no /" .. path)
  end

  it("builds erlangen_" .. version .. "_<arch>.deb", function()
    if not check() then return end
    local f = io.open(deb)
    assert.is_not_nil(f, "no " .. deb)
    f:close()
  end)

  it("holds the binary, the header, erlangen.pc and the man page", function()
    if not check() then return end
    has("usr/bin/erlangen")
    has("usr/include/erlangen.h")
    has("usr/share/man/man1/erlangen.1.gz")
    local pc
    for p in pairs(files) do if p:match("^usr/lib/[^/]+/pkgconfig/erlangen%.pc$") then pc = p end end
    assert.is_not_nil(pc, "the .deb has no /usr/lib/<triplet>/pkgconfig/erlangen.pc")
  end)

  it("puts the module where Debian's lua5.4 looks for it", function()
    if not check() then return end
    local _, cpath = sh(clean_env() .. "lua5.4 -e 'print(package.cpath)'")
    local found
    for template in cpath:gmatch("[^;\n]+") do
      local p = template:gsub("%?", "erlangen"):gsub("^/", "")
      if files[p] then found = p end
    end
    assert.is_not_nil(found, "no erlangen.so in the .deb on lua5.4's package.cpath: " .. cpath)
  end)

  it("holds every stdlib module where lua5.4 looks for it", function()
    if not check() then return end
    local _, path = sh(clean_env() .. "lua5.4 -e 'print(package.path)'")
    assert.matches("/usr/share/lua/5.4/?.lua;", path, 1, true)
    local _, names = sh("cd " .. q(root .. "/stdlib/erlangen") .. " && ls *.lua")
    for name in names:gmatch("[^\n]+") do has("usr/share/lua/5.4/erlangen/" .. name) end
  end)

  it("builds its erlangen with /usr/share/lua/5.4 as the stdlib's place", function()
    if not check() then return end
    local ok, out = sh(clean_env("LUA_PATH=") .. q(extracted .. "/usr/bin/erlangen") .. " -e 'print(package.path)'")
    assert(ok, "the packaged erlangen:\n" .. out)
    assert.are.equal("/usr/share/lua/5.4/?.lua", out:match("^[^;]+"))
  end)

  it("depends on the libsodium it loads at run time", function()
    if not check() then return end
    local _, depends = sh("dpkg-deb -f " .. q(deb) .. " Depends")
    assert.matches("libsodium%d+", depends)
  end)
end)
