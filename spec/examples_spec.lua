-- The examples/ scripts run as documented.
local H = require "spec.helpers"
local bin = os.getenv("ERLANGEN_BIN") or "build/erlangen"
local build = os.getenv("ERLANGEN_BUILD") or "build"

local function run(cmd)
  local p = io.popen("timeout 20 " .. cmd .. " 2>&1")
  local out = p:read("a")
  local _, _, code = p:close()
  return code, out
end

describe("examples/pingpong.lua", function()
  it("prints 2 and exits 0 under the erlangen interpreter", function()
    assert.are.same({0, "2\n"}, {run(bin .. " examples/pingpong.lua")})
  end)

  it("prints 2 and exits 0 under a stock lua5.4 with require \"erlangen\"", function()
    if H.sanitizer() then
      return pending("the sanitizer builds' module needs a preloaded runtime")
    end
    local code, out = run("env LUA_CPATH='" .. build .. "/lua/?.so;;' lua5.4 examples/pingpong.lua")
    assert.are.same({0, "2\n"}, {code, out})
  end)
end)
