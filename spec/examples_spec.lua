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

-- The first ```lua block of a doc page, written to a temporary file.
local function lead_example(page)
  local f = assert(io.open(page))
  local text = f:read("a")
  f:close()
  local code = assert(text:match("```lua\n(.-)```"), page .. " has no lua block")
  local file = os.tmpname()
  f = assert(io.open(file, "w"))
  f:write(code)
  f:close()
  return file, code
end

-- Runs `file` under the interpreter or a stock lua5.4 (LUA_CPATH only) and
-- returns the exit status, stdout and stderr.
local function run_split(how, file)
  local err = os.tmpname()
  local cmd = how == "lua" and ("env LUA_CPATH='" .. build .. "/lua/?.so;;' lua5.4") or bin
  local p = io.popen("timeout 20 " .. cmd .. " " .. file .. " 2>" .. err)
  local out = p:read("a")
  local _, _, code = p:close()
  local e = io.open(err):read("a")
  os.remove(err)
  return code, out, e
end

for _, how in ipairs{"erlangen", "lua"} do
  local under = how == "lua" and "a stock lua5.4 (LUA_CPATH only)" or "the erlangen interpreter"
  describe("the lead example of doc/supervisor.md", function()
    it("prints what its --> comments say under " .. under, function()
      if how == "lua" and H.sanitizer() then return pending("a stock lua5.4 cannot load a sanitizer build") end
      local file, code = lead_example("doc/supervisor.md")
      local want = {}
      for line in code:gmatch("%-%-> ([^\n]*)") do want[#want + 1] = line .. "\n" end
      local status, out, err = run_split(how, file)
      os.remove(file)
      assert.are.same({0, table.concat(want)}, {status, out}, err)
      assert.matches(" child started id=cache ", err, 1, true)
    end)
  end)

  describe("the lead example of doc/log.md", function()
    it("writes its two records to stderr under " .. under, function()
      if how == "lua" and H.sanitizer() then return pending("a stock lua5.4 cannot load a sanitizer build") end
      local file = lead_example("doc/log.md")
      local status, out, err = run_split(how, file)
      os.remove(file)
      assert.are.same({0, ""}, {status, out})
      local lines = {}
      for l in err:gmatch("[^\n]+") do lines[#lines + 1] = l end
      assert.are.equal(2, #lines, err)
      assert.matches(" info    <[%d.]+> listening port=7000$", lines[1])
      assert.matches(" error   <[%d.]+> request failed peer=10.0.0.7:51012 reason=timeout$", lines[2])
    end)
  end)
end
