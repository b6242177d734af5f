-- The layout of the kernel: the core (kernel/) knows the network layer
-- (kernel/net/) only through remote.h (doc/netlink.md, "The seam").

local H = require "spec.helpers"

local function read(path) return assert(H.read_file(path), "cannot read " .. path) end

local function lines_of(cmd)
  local out = {}
  local p = assert(io.popen(cmd))
  for line in p:lines() do out[#out + 1] = line end
  p:close()
  return out
end

local function set_of(list)
  local s = {}
  for _, v in ipairs(list) do s[v] = true end
  return s
end

describe("the kernel's core", function()
  it("includes no header of the network layer", function()
    local net = set_of(lines_of("ls kernel/net"))
    assert.is_true(net["conn.h"] and net["node.h"] and net["dist.h"], "kernel/net/ is not where it should be")
    local core, offending = 0, {}
    for _, file in ipairs(lines_of("ls kernel")) do
      if file:match("%.[ch]$") then
        core = core + 1
        for inc in read("kernel/" .. file):gmatch('#include%s+"([^"]+)"') do
          if net[inc] then offending[#offending + 1] = file .. " includes " .. inc end
        end
      end
    end
    assert.is_true(core >= 20, "found only " .. core .. " core files in kernel/")
    assert.are.same({}, offending)
  end)

  it("builds alone, calling nothing of the network layer", function()
    local build = assert(os.getenv("ERLANGEN_BUILD"), "ERLANGEN_BUILD is set by spec/run")
    local lib = build .. "/liberlangen_core.a"
    assert.is_true(io.open(lib) ~= nil, lib .. " was not built")
    local defined = set_of(lines_of("nm --defined-only " .. lib .. " | awk 'NF == 3 { print $3 }'"))
    local wanted = {}
    for _, sym in ipairs(lines_of("nm -u " .. lib .. " | awk 'NF == 2 { print $2 }'")) do
      if not defined[sym] and (sym:match("^dist_") or sym:match("^node_") or sym:match("^conn_") or
          sym:match("^noise_") or sym:match("^frame_") or sym:match("^key_") or sym:match("^pmapd?_") or
          sym:match("^sodium_") or sym:match("^randombytes")) then
        wanted[#wanted + 1] = sym
      end
    end
    assert.are.same({}, wanted)
  end)
end)
