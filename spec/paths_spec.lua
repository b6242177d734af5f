-- Where modules are found: stdlib/ from the build tree, LUA_PATH honoured.
local erlangen = require "erlangen"
local H = require "spec.helpers"

local root = io.popen("pwd"):read("l")
local stdlib = root .. "/stdlib/?.lua"

describe("package.path", function()
  it("reaches stdlib/ of the source tree in the state that required erlangen", function()
    assert.is_truthy(package.path:find(stdlib, 1, true), package.path)
  end)

  it("reaches stdlib/ of the source tree in a spawned process", function()
    erlangen.spawn(function(parent) erlangen.send(parent, {"path", package.path}) end, erlangen.self())
    local m = H.recv(H.tagged("path"), "the child's package.path")
    assert.is_truthy(m[2]:find(stdlib, 1, true), m[2])
  end)

  it("keeps LUA_PATH's entries in a spawned process", function()
    local want = os.getenv("LUA_PATH"):match("[^;]+")
    erlangen.spawn(function(parent) erlangen.send(parent, {"path", package.path}) end, erlangen.self())
    local m = H.recv(H.tagged("path"), "the child's package.path")
    assert.is_truthy(m[2]:find(want, 1, true), "expected " .. want .. " in " .. m[2])
  end)
end)
