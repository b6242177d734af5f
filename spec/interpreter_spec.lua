-- spec/interpreter_spec.lua — the `erlangen` executable: options, `arg`, exit
-- status, shutdown, and the REPL through -i with piped input (on a terminal:
-- spec/repl_spec.lua).
--
-- The executable is $ERLANGEN_BIN (default build/erlangen). Every run is
-- bounded by coreutils `timeout`, so a hang fails the spec instead of
-- stalling it.

local BIN = os.getenv("ERLANGEN_BIN") or "build/erlangen"
local LIMIT = 20  -- seconds any one run of the executable may take

-- Shell quoting.
local H = require "spec.helpers"
local q = H.quote

local read_file = H.read_file

local function write_file(path, text)
  local f = assert(io.open(path, "wb"))
  f:write(text)
  f:close()
end

local function make_dir()
  local dir = os.tmpname()
  os.remove(dir)
  assert(os.execute("mkdir -p " .. q(dir)))
  return dir
end

local function remove_dir(dir)
  os.execute("rm -rf " .. q(dir))
end

-- Runs the executable with `args` (a list of words), feeding `input` on
-- stdin (none: /dev/null) and setting `env` (a table), for at most `limit`
-- seconds (timeout's status 124 after that). Returns the exit code, stdout
-- and stderr.
local function run(args, input, env, limit)
  local dir = make_dir()
  local words = {}
  for k, v in pairs(env or {}) do words[#words + 1] = k .. "=" .. q(v) end
  words[#words + 1] = "timeout -k 2 " .. (limit or LIMIT) .. " " .. q(BIN)
  for _, a in ipairs(args or {}) do words[#words + 1] = q(a) end
  local stdin = "/dev/null"
  if input then
    stdin = dir .. "/in"
    write_file(stdin, input)
  end
  local cmd = string.format("env %s < %s > %s 2> %s", table.concat(words, " "),
                            q(stdin), q(dir .. "/out"), q(dir .. "/err"))
  local _, _, code = os.execute(cmd)
  local out, err = read_file(dir .. "/out"), read_file(dir .. "/err")
  remove_dir(dir)
  return code, out, err
end

-- Runs a REPL through -i on piped input; returns stdout and stderr.
local function repl(input)
  local code, out, err = run({ "-i" }, input)
  assert.are.equal(0, code, "the REPL exited with " .. tostring(code) .. ": " .. err)
  return out, err
end

local function contains(haystack, needle)
  return haystack:find(needle, 1, true) ~= nil
end

-- Asserts that `text` contains `needle`, naming both when it does not.
local function assert_contains(text, needle)
  assert(contains(text, needle),
         string.format("expected to find %q in:\n%s", needle, text))
end

describe("the erlangen interpreter", function()
  local dir

  before_each(function() dir = make_dir() end)
  after_each(function() remove_dir(dir) end)

  local function script(text)
    local path = dir .. "/script.lua"
    write_file(path, text)
    return path
  end

  it("prints its version with -v", function()
    local code, out = run({ "-v" })
    assert.are.equal(0, code)
    assert.truthy(out:match("^erlangen %d+%.%d+"), out)
    assert_contains(out, "Lua 5.4")
  end)

  it("runs the statement given with -e", function()
    local code, out = run({ "-e", "print(6 * 7)" })
    assert.are.equal(0, code)
    assert.are.equal("42\n", out)
  end)

  it("shows warnings only after -W or warn(\"@on\"), as lua does", function()
    local code, _, err = run({ "-e", "warn('hidden')" })
    assert.are.equal(0, code)
    assert.are.equal("", err)
    code, _, err = run({ "-W", "-e", "warn('shown', ' in ', 'parts') warn('@off') warn('not')" })
    assert.are.equal(0, code)
    assert.are.equal("Lua warning: shown in parts\n", err)
  end)

  it("accounts the main process's memory like any other process's", function()
    local code, out = run({ "-e", [[
      local before = erlangen.info(erlangen.self()).memory
      local t = {}
      for i = 1, 20000 do t[i] = i end
      print(before > 0, erlangen.info(erlangen.self()).memory >= before + 20000 * 8)]] })
    assert.are.equal(0, code)
    assert.are.equal("true\ttrue\n", out)
  end)

  it("runs the main process with the generational collector, as every process", function()
    local code, out = run({ "-e", "print(collectgarbage('incremental'))" })
    assert.are.equal(0, code)
    assert.are.equal("generational\n", out)
  end)

  it("runs several -e options in order", function()
    local _, out = run({ "-e", "x = 1", "-ex = x + 1", "-e", "print(x)" })
    assert.are.equal("2\n", out)
  end)

  it("requires a module into a global of the same name with -l", function()
    write_file(dir .. "/greeting.lua", "return { text = 'hello' }")
    local code, out = run({ "-l", "greeting", "-e", "print(greeting.text)" }, nil,
                          { LUA_PATH = dir .. "/?.lua;;" })
    assert.are.equal(0, code)
    assert.are.equal("hello\n", out)
  end)

  it("requires a module into another global with -l g=mod", function()
    write_file(dir .. "/greeting.lua", "return { text = 'hello' }")
    local _, out = run({ "-lg=greeting", "-e", "print(g.text, greeting)" }, nil,
                       { LUA_PATH = dir .. "/?.lua;;" })
    assert.are.equal("hello\tnil\n", out)
  end)

  it("provides the erlangen module as a global", function()
    local _, out = run({ "-e", "print(erlangen == require 'erlangen')" })
    assert.are.equal("true\n", out)
  end)

  it("puts the script at arg[0] and its arguments above it", function()
    local path = script("print(arg[0], arg[1], arg[2], #arg)")
    local _, out = run({ path, "a", "b" })
    assert.are.equal(path .. "\ta\tb\t2\n", out)
  end)

  it("puts the interpreter and its options at negative indices of arg", function()
    local path = script("print(arg[-3], arg[-2], arg[-1])")
    local _, out = run({ "-e", "x = 1", path })
    assert.are.equal(BIN .. "\t-e\tx = 1\n", out)
  end)

  it("passes the script's arguments as the chunk's varargs", function()
    local path = script("print(select('#', ...), ...)")
    local _, out = run({ path, "x", "y" })
    assert.are.equal("2\tx\ty\n", out)
  end)

  it("reads the script from stdin given -", function()
    local code, out = run({ "-", "p" }, "print('from stdin', arg[0], ...)")
    assert.are.equal(0, code)
    assert.are.equal("from stdin\t-\tp\n", out)
  end)

  it("runs stdin when it is not a terminal and there is no script", function()
    local _, out = run({}, "print('piped')")
    assert.are.equal("piped\n", out)
  end)

  it("stops handling options after --", function()
    local path = script("print(...)")
    local code, out = run({ "--", path, "-e", "-v" })
    assert.are.equal(0, code)
    assert.are.equal("-e\t-v\n", out)
  end)

  it("runs LUA_INIT before the script", function()
    local _, out = run({ "-e", "print(greeting)" }, nil, { LUA_INIT = "greeting = 'set'" })
    assert.are.equal("set\n", out)
  end)

  it("ignores LUA_INIT given -E", function()
    local _, out = run({ "-E", "-e", "print(greeting)" }, nil, { LUA_INIT = "greeting = 'set'" })
    assert.are.equal("nil\n", out)
  end)

  it("exits with status 0 when the main chunk succeeds", function()
    local code, _, err = run({ script("local x = 1") })
    assert.are.equal(0, code)
    assert.are.equal("", err)
  end)

  it("exits with status 1 and a traceback on stderr when the main chunk raises", function()
    local path = script("local function f() error('boom') end\nf()")
    local code, out, err = run({ path })
    assert.are.equal(1, code)
    assert.are.equal("", out)
    assert.truthy(err:match("^erlangen: .*script%.lua:1: boom"), err)
    assert_contains(err, "stack traceback:")
  end)

  it("exits with status 1 for an error in -e", function()
    local code, _, err = run({ "-e", "error('bad')" })
    assert.are.equal(1, code)
    assert_contains(err, "(command line):1: bad")
  end)

  it("exits with status 1 for a missing script", function()
    local code, _, err = run({ dir .. "/missing.lua" })
    assert.are.equal(1, code)
    assert_contains(err, "cannot open")
  end)

  it("treats erlangen.exit('normal') in the main chunk as success", function()
    local code, _, err = run({ "-e", "erlangen.exit('normal')" })
    assert.are.equal(0, code)
    assert.are.equal("", err)
  end)

  it("exits with the status given to os.exit", function()
    local code = run({ "-e", "os.exit(3)" })
    assert.are.equal(3, code)
  end)

  it("prints a usage message and fails for an unknown option", function()
    local code, out, err = run({ "-x" })
    assert.are_not.equal(0, code)
    assert.are.equal("", out)
    assert_contains(err, "unrecognized option '-x'")
    assert_contains(err, "usage: erlangen [options] [script [args]]")
  end)

  it("prints a usage message and fails when -e has no statement", function()
    local code, _, err = run({ "-e" })
    assert.are_not.equal(0, code)
    assert_contains(err, "'-e' needs argument")
  end)
end)

describe("the erlangen interpreter as a node", function()
  local dir, key
  before_each(function()
    dir = make_dir()
    key = dir .. "/cluster.key"
    write_file(key, string.rep("k", 32))
    os.execute("chmod 600 " .. q(key))
  end)
  after_each(function() remove_dir(dir) end)

  it("starts as the node --name names, with --key, --listen and --tick", function()
    local code, out, err = run({ "--name", "cli@127.0.0.1", "--key", key, "--listen", "127.0.0.1:0",
                                 "--tick", "2", "--no-port-mapper",
                                 "-e", "print(erlangen.node(), #erlangen.nodes())" })
    assert.are.equal(0, code, err)
    assert.are.equal("cli@127.0.0.1\t0\n", out)
  end)

  it("takes the key file from ERLANGEN_KEY_FILE", function()
    local code, out, err = run({ "--name", "env@127.0.0.1", "--listen", "127.0.0.1:0", "--no-port-mapper",
                                 "-e", "print(erlangen.node())" }, nil, { ERLANGEN_KEY_FILE = key })
    assert.are.equal(0, code, err)
    assert.are.equal("env@127.0.0.1\n", out)
  end)

  it("refuses to start with a key file that group or others can read, naming the file", function()
    os.execute("chmod 644 " .. q(key))
    local code, out, err = run({ "--name", "loose@127.0.0.1", "--key", key, "--no-port-mapper",
                                 "-e", "print('ran')" })
    assert.are_not.equal(0, code)
    assert.are.equal("", out)
    assert_contains(err, "has mode 0644")
    assert_contains(err, key)
  end)

  it("does not link libsodium: the executable loads it when a node starts", function()
    -- Linked, its static TLS would cost every process thread a stack page
    -- (doc/performance.md, "RSS per idle process").
    local p = assert(io.popen("readelf -d " .. q(BIN) .. " 2>&1"))
    local dynamic = p:read("a")
    p:close()
    assert_contains(dynamic, "NEEDED")
    assert.is_nil(dynamic:find("libsodium", 1, true), dynamic)
  end)

  it("names the libsodium it could not load when a node starts", function()
    local env = { ERLANGEN_LIBSODIUM = dir .. "/no-such-libsodium.so" }
    local code, out, err = run({ "--name", "nosodium@127.0.0.1", "--key", key, "--no-port-mapper",
                                 "-e", "print('ran')" }, nil, env)
    assert.are_not.equal(0, code)
    assert.are.equal("", out)
    assert_contains(err, "cannot load " .. env.ERLANGEN_LIBSODIUM)
  end)

  it("refuses a libsodium that lacks its functions, naming the first one missing", function()
    local code, out, err = run({ "--name", "nosodium@127.0.0.1", "--key", key, "--no-port-mapper",
                                 "-e", "print('ran')" }, nil, { ERLANGEN_LIBSODIUM = "libm.so.6" })
    assert.are_not.equal(0, code)
    assert.are.equal("", out)
    assert_contains(err, "libm.so.6 has no function sodium_init")
  end)

  it("refuses a --tick that is not a positive number", function()
    local code, out, err = run({ "--name", "t@127.0.0.1", "--key", key, "--tick", "soon",
                                 "--no-port-mapper", "-e", "print('ran')" })
    assert.are_not.equal(0, code)
    assert.are.equal("", out)
    assert_contains(err, "--tick 'soon'")
  end)

  for _, option in ipairs({ "--name", "--key", "--listen", "--tick" }) do
    it("says that " .. option .. " needs an argument when it has none", function()
      local code, out, err = run({ option })
      assert.are_not.equal(0, code)
      assert.are.equal("", out)
      assert_contains(err, "erlangen: '" .. option .. "' needs argument\n")
      assert_contains(err, "usage: erlangen [options] [script [args]]")
    end)
  end

  it("says that --port needs an argument when the port mapper gets none", function()
    local code, out, err = run({ "--port-mapper", "--port" })
    assert.are_not.equal(0, code)
    assert.are.equal("", out)
    assert_contains(err, "erlangen: '--port' needs argument\n")
    assert_contains(err, "usage: erlangen --port-mapper [--port N]")
  end)

  it("names the word the port mapper does not know", function()
    local code, _, err = run({ "--port-mapper", "--port", "0", "extra" })
    assert.are_not.equal(0, code)
    assert_contains(err, "erlangen: unrecognized option 'extra'\n")
  end)
end)

describe("the erlangen interpreter at exit", function()
  local dir

  before_each(function() dir = make_dir() end)
  after_each(function() remove_dir(dir) end)

  -- A script whose spawned process traps exits, writes what it receives to
  -- `report`, and then ignores everything (so only "kill" ends it).
  local function trapping_script(report)
    local path = dir .. "/main.lua"
    write_file(path, string.format([[
      local erlangen = require "erlangen"
      local main, report = erlangen.self(), %q
      erlangen.spawn(function()
        erlangen.trap_exit(true)
        erlangen.send(main, "trapping")
        local msg = erlangen.receive()
        local f = io.open(report, "w")
        f:write(tostring(msg[1]), " ", tostring(msg[3]))
        f:close()
        while true do erlangen.receive() end
      end)
      assert(erlangen.receive(5) == "trapping", "the process did not start")
    ]], report))
    return path
  end

  it("sends shutdown to a process left running when the main chunk returns", function()
    local report = dir .. "/report"
    local code, _, err = run({ trapping_script(report) }, nil, { ERLANGEN_GRACE = "0.5" })
    assert.are.equal(0, code, err)
    assert.are.equal("EXIT shutdown", read_file(report))
  end)

  it("kills a process that ignores shutdown once the grace period is over", function()
    -- The process never ends by itself: without the kill `timeout` would end
    -- the run after 5 s with status 124.
    local code, _, err = run({ trapping_script(dir .. "/report") }, nil,
                             { ERLANGEN_GRACE = "0.5" }, 5)
    assert.are.equal(0, code, err)
  end)
end)

describe("the erlangen REPL with piped input", function()
  it("evaluates an expression and prints its value", function()
    local out = repl("1+1\n")
    assert_contains(out, "> 2\n")
  end)

  it("prints the version first, as lua -i does", function()
    local out = repl("")
    assert.truthy(out:match("^erlangen %d+%.%d+"), out)
  end)

  it("prints every value of a multiple-value expression", function()
    local out = repl("1, 'two', nil\n")
    assert_contains(out, '> 1\t"two"\tnil\n')
  end)

  it("evaluates a statement and prints nothing", function()
    local out = repl("x = 5\nx\n")
    assert_contains(out, "> > 5\n")
  end)

  it("prints a nested table readably", function()
    local out = repl("{1, {2, {3}}, name = 'x', [true] = false}\n")
    assert_contains(out, '> {1, {2, {3}}, name = "x", [true] = false}\n')
  end)

  it("limits the depth of nested tables", function()
    local out = repl("{{{{{1}}}}}\n")
    assert_contains(out, "> {{{{...}}}}\n")
  end)

  it("elides the tail of a long table", function()
    local out = repl("t = {} for i = 1, 1000 do t[i] = i end\nt\n")
    assert_contains(out, "(950 more)")
  end)

  it("marks a cycle instead of following it", function()
    local out = repl("t = {} t.self = t\nt\n")
    assert_contains(out, "{self = <cycle>}")
  end)

  it("quotes strings", function()
    local out = repl([["a\nb" .. '"']] .. "\n")
    assert_contains(out, [["a\nb\""]])
  end)

  it("prints a pid readably", function()
    local out = repl("erlangen.self()\n")
    assert.truthy(out:match("> <%d+%.%d+>\n"), out)
  end)

  it("prints pids inside tables readably", function()
    local out = repl("{erlangen.self()}\n")
    assert.truthy(out:match("> {<%d+%.%d+>}\n"), out)
  end)

  it("is a live process", function()
    local out = repl("erlangen.is_alive(erlangen.self())\n")
    assert_contains(out, "> true\n")
  end)

  it("receives messages sent to itself", function()
    local out = repl("erlangen.send(erlangen.self(), 'ping')\nerlangen.receive(0)\n")
    assert_contains(out, '> "ping"\n')
  end)

  it("prints and empties the mailbox with flush()", function()
    local out = repl("erlangen.send(erlangen.self(), 'hi')\nflush()\nerlangen.receive(0)\n")
    assert_contains(out, 'Shell got "hi"\n')
    assert_contains(out, '> nil\t"timeout"\n')
  end)

  it("continues a multi-line function definition", function()
    local out = repl("function double(x)\nreturn x * 2\nend\ndouble(21)\n")
    assert_contains(out, ">> ")
    assert_contains(out, "> 42\n")
  end)

  it("reports an error in one line and goes on with the next", function()
    local out, err = repl("error('oops')\n1+2\n")
    assert_contains(err, "stdin:1: oops")
    assert_contains(out, "> 3\n")
  end)

  it("reports a syntax error and goes on with the next line", function()
    local out, err = repl("1 +* 2\n3\n")
    assert_contains(err, "stdin:1:")
    assert_contains(out, "> 3\n")
  end)

  it("evaluates =expr as return expr", function()
    local out = repl("=3*3\n")
    assert_contains(out, "> 9\n")
  end)
end)
