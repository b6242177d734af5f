-- spec/repl_spec.lua — the erlangen REPL on a terminal: Ctrl-C and Ctrl-D, an
-- exit signal at the prompt, output from other processes, Tab completion and
-- the history.
--
-- The REPL runs under spec/c/ptyrun (built in $ERLANGEN_BUILD), which gives
-- it a pseudo-terminal, ends it by its pid when its input closes, and kills it
-- after LIMIT seconds. Output is awaited by blocking reads on a FIFO; they end
-- when ptyrun does, so every wait is bounded.

local BUILD = os.getenv("ERLANGEN_BUILD") or "build"
local BIN = os.getenv("ERLANGEN_BIN") or BUILD .. "/erlangen"
local PTYRUN = BUILD .. "/spec/c/ptyrun"
local LIMIT = 20  -- seconds a session may take

local H = require "spec.helpers"
local q = H.quote

local function make_dir()
  local dir = os.tmpname()
  os.remove(dir)
  assert(os.execute("mkdir -p " .. q(dir)))
  return dir
end

local read_file = H.read_file

local function contains(haystack, needle)
  return haystack:find(needle, 1, true) ~= nil
end

local function assert_contains(text, needle)
  assert(contains(text, needle), string.format("expected to find %q in:\n%s", needle, text))
end

-- Starts the REPL on a terminal with HOME at `home` (where the history file
-- goes). s.send types; s.wait_for reads until its needle appears after what
-- earlier waits consumed and returns what it read; s.close ends the session.
local function start(home)
  local fifo = home .. "/terminal"
  os.remove(fifo)
  assert(os.execute("mkfifo " .. q(fifo)))
  local cmd = string.format("HOME=%s TERM=dumb exec %s %d %s > %s 2>&1",
                            q(home), q(PTYRUN), LIMIT, q(BIN), q(fifo))
  local s = { home = home, seen = "" }
  s.input = assert(io.popen(cmd, "w"))
  s.output = assert(io.open(fifo, "rb"))
  local first = s.output:read("l") or ""
  s.child = first:match("^ptyrun %d+ (%d+)$")
  assert(s.child, "ptyrun did not start: " .. first)
  function s.send(text)
    s.input:write(text)
    s.input:flush()
  end
  function s.wait_for(needle)
    local got = ""
    while not contains(got, needle) do
      local c = s.output:read(1)
      if c == nil then
        error(string.format("the terminal never showed %q; it showed:\n%s", needle, s.seen .. got))
      end
      got = got .. c
    end
    s.seen = s.seen .. got
    return got
  end
  -- The FIFO first, so that ptyrun never blocks on it; then its input, on
  -- whose end ptyrun ends the REPL by its pid and exits (pclose waits).
  function s.close()
    s.output:close()
    s.input:close()
  end
  return s
end

-- Types Ctrl-D at the prompt and waits for the REPL to exit with status 0.
local function quit(s)
  s.send("\4")
  s.wait_for("ptyrun: exit 0")
end

describe("the erlangen REPL on a terminal", function()
  local home, session

  before_each(function()
    home = make_dir()
    session = start(home)
    session.wait_for("> ")
  end)
  after_each(function()
    session.close()
    os.execute("rm -rf " .. q(home))
  end)

  it("interrupts a running loop on Ctrl-C and keeps answering", function()
    -- ThreadSanitizer defers SIGINT until the thread next calls into libc.
    if os.getenv("ERLANGEN_SANITIZER") == "tsan" then pending("under ThreadSanitizer: SIGINT is deferred") end
    session.send("io.write('spin' .. 'ning\\n') io.flush() while true do end\n")
    session.wait_for("spinning")
    session.send("\3")
    local shown = session.wait_for("> ")
    assert_contains(shown, "interrupted")
    session.send("print(20 + 22)\n")
    session.wait_for("42")
  end)

  it("interrupts a receive that would wait forever on Ctrl-C", function()
    if os.getenv("ERLANGEN_SANITIZER") == "tsan" then pending("under ThreadSanitizer: SIGINT is deferred") end
    session.send("io.write('wait' .. 'ing\\n') io.flush() erlangen.receive()\n")
    session.wait_for("waiting")
    session.send("\3")
    local shown = session.wait_for("> ")
    assert_contains(shown, "interrupted")
    session.send("erlangen.is_alive(erlangen.self())\n")
    session.wait_for("true")
  end)

  it("clears the line on Ctrl-C at the prompt", function()
    if os.getenv("ERLANGEN_SANITIZER") == "tsan" then pending("under ThreadSanitizer: SIGINT is deferred") end
    session.send("undefined_name")
    session.wait_for("undefined_name")
    session.send("\3")
    session.wait_for("> ")
    session.send("'kept' .. 'going'\n")
    local shown = session.wait_for("keptgoing")
    assert.is_nil(shown:find("undefined_name", 1, true), shown)
  end)

  it("ends on Ctrl-D at the prompt with status 0", function()
    quit(session)
  end)

  it("prints a command's output before the next prompt", function()
    session.send("for i = 1, 3 do print('n' .. i) end\n")
    local shown = session.wait_for("> ")
    assert_contains(shown, "n1\r\nn2\r\nn3\r\n> ")
  end)

  it("keeps the order of a command's stdout and stderr", function()
    session.send("io.stdout:write('o' .. '1\\n') io.stderr:write('e' .. '1\\n') print('o' .. '2')\n")
    local shown = session.wait_for("> ")
    assert_contains(shown, "o1\r\ne1\r\no2\r\n> ")
  end)

  it("runs a command's programs with stdout and stderr on a terminal", function()
    session.send("os.execute('test -t 1 && test -t 2 && echo on-a-' .. 'terminal')\n")
    session.wait_for("on-a-terminal")
  end)

  it("reports a linked process's crash at the prompt, then runs the next command as typed", function()
    session.send("before = erlangen.self()\n")
    session.wait_for("> ")
    session.send("erlangen.spawn_link(function() error('bo' .. 'om') end)\n")
    -- Reported while nothing is typed: the prompt loop saw the exit signal.
    session.wait_for("** exception exit: stdin:1: boom")
    session.wait_for("> ")
    session.send("print(6 * 7)\n")
    local shown = session.wait_for("> ")
    assert_contains(shown, "42\r\n")
    assert.is_nil(shown:find("exit:", 1, true), shown)
    -- The REPL goes on as a fresh process, as the Erlang shell does.
    session.send("print(erlangen.self() ~= before, erlangen.is_alive(before))\n")
    session.wait_for("true\tfalse")
  end)

  it("prints another process's output above the prompt and keeps the line being typed", function()
    local fifo = home .. "/async"
    assert(os.execute("mkfifo " .. q(fifo)))
    session.send(string.format("erlangen.spawn(function() local f = io.open(%q) " ..
                               "print('as' .. 'ync ' .. f:read('l')) end)\n", fifo))
    session.wait_for("<0.")
    session.wait_for("> ")
    session.send("'ke' .. 'pt'")
    session.wait_for("'ke' .. 'pt'")
    -- The process waits in open until a writer comes; timeout bounds the writer.
    assert(os.execute("timeout 5 sh -c " .. q("echo hello > " .. q(fifo))))
    session.wait_for("async hello")
    -- Then the prompt and the typed line again, on a line of their own.
    local shown = session.wait_for("> 'ke' .. 'pt'")
    assert.truthy(shown:match("^\r?\n"), shown)
    session.send("\n")
    session.wait_for('"kept"')
  end)

  it("completes a field of a table on Tab", function()
    session.send("erlangen.is_al\t(erlangen.self())\n")
    session.wait_for("erlangen.is_alive(erlangen.self())")
    session.wait_for("true")
  end)

  it("completes a field of the string library on Tab", function()
    session.send("string.fo\t('%d', 6 * 7)\n")
    session.wait_for('"42"')
  end)

  it("lists the fields that complete an ambiguous prefix", function()
    session.send("erlangen.sp\t")
    -- The list, then the prompt and the line grown to the common prefix.
    local shown = session.wait_for("> erlangen.spawn")
    for _, name in ipairs({ "spawn", "spawn_link", "spawn_monitor", "spawn_opt" }) do
      assert_contains(shown, "erlangen." .. name .. " ")
    end
  end)

  it("completes a global on Tab", function()
    session.send("my_long_global = 7\n")
    session.wait_for("> ")
    session.send("my_long_g\t * 6\n")
    session.wait_for("42")
  end)

  it("completes a string's method on Tab", function()
    session.send("s = 'abc'\n")
    session.wait_for("> ")
    session.send("s:up\t()\n")
    session.wait_for('"ABC"')
  end)

  it("completes fields found through an __index table", function()
    session.send("obj = setmetatable({}, { __index = { greet_me = 6 } })\n")
    session.wait_for("> ")
    session.send("obj.gre\t * 7\n")
    session.wait_for("42")
  end)

  it("runs no __index function while completing", function()
    session.send("t = setmetatable({}, { __index = function() print('IN' .. 'DEX') end })\n")
    session.wait_for("> ")
    session.send("t.ab\t\21print('do' .. 'ne')\n")
    local shown = session.wait_for("done")
    assert.is_nil(shown:find("INDEX", 1, true), shown)
  end)

  it("indents with Tab at the start of a line", function()
    session.send("\t1 + 1\n")
    session.wait_for("2\r\n")
  end)

  it("keeps the history in ~/.erlangen_history", function()
    session.send("'remember' .. 'me'\n")
    session.wait_for("rememberme")
    session.wait_for("> ")  -- Ctrl-D reaches readline only at the prompt
    quit(session)
    assert_contains(read_file(home .. "/.erlangen_history") or "", "'remember' .. 'me'")
  end)

  -- Types a loop of three lines; its output shows whether it ran as one chunk.
  local function enter_loop(s)
    s.send("for i = 1, 2 do\n")
    s.wait_for(">> ")
    s.send("print('li' .. 'ne' .. i)\n")
    s.wait_for(">> ")
    s.send("end\n")
    s.wait_for("line2")
    s.wait_for("> ")
  end

  it("recalls a multi-line entry as one history entry", function()
    enter_loop(session)
    session.send("\16\n")  -- Ctrl-P: the previous entry, then run it
    local shown = session.wait_for("> ")
    assert_contains(shown, "line1\r\nline2\r\n")
  end)

  it("recalls a multi-line entry as one after a restart with the same HOME", function()
    enter_loop(session)
    quit(session)
    session.close()
    session = start(home)
    session.wait_for("> ")
    session.send("\16\n")
    local shown = session.wait_for("line2")
    assert_contains(shown, "line1\r\nline2")
  end)
end)
