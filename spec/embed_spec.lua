-- The embedding example (examples/embed/host.c): a C host that starts the
-- kernel, exposes a C function to actors, exchanges messages and stops.
local build = os.getenv("ERLANGEN_BUILD") or "build"

describe("the embedding example host", function()
  local out, ok, how, code
  setup(function()
    local p = io.popen("timeout 20 " .. build .. "/examples/embed/embed_host 2>&1")
    out = p:read("a")
    ok, how, code = p:close()
  end)

  it("exits with status 0", function()
    assert.are.same({true, "exit", 0}, {ok, how, code})
  end)

  it("sends to the actor it spawned from a string", function()
    assert.matches("sent: true", out, 1, true)
  end)

  it("gets the reply computed by its own C function inside the actor", function()
    local got, want = out:match("reply: (%d+) %(expected (%d+)%)")
    assert.is_not_nil(got, "no reply line in: " .. out)
    assert.are.equal(want, got)
  end)

  it("spawns \"module.function\" with arguments through erlangen_spawn", function()
    assert.matches("module.function: by name", out, 1, true)
  end)

  it("spawns a Lua file through erlangen_spawn_file", function()
    assert.matches("file: from a file", out, 1, true)
  end)

  it("stops the kernel with nothing left to kill", function()
    assert.matches("stopped, 0 killed", out, 1, true)
  end)
end)
