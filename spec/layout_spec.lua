-- The layout of the kernel: the core knows the network layer only through
-- remote.h (doc/netlink.md, "The seam").

-- The network layer's modules, by file stem.
local NET = {"conn", "crypto", "dist", "frame", "keyfile", "node", "noise", "portmap"}

local function read(path)
  local f = assert(io.open(path))
  local s = f:read("a")
  f:close()
  return s
end

local function ls(dir, pattern)
  local out = {}
  local p = assert(io.popen("ls " .. dir))
  for name in p:lines() do
    if name:match(pattern) then out[#out + 1] = name end
  end
  p:close()
  return out
end

describe("the kernel's core", function()
  it("includes no header of the network layer", function()
    local net = {}
    for _, stem in ipairs(NET) do net[stem .. ".h"] = true end
    local core, offending = 0, {}
    for _, file in ipairs(ls("kernel", "%.[ch]$")) do
      if not net[file:gsub("%.c$", ".h")] then
        core = core + 1
        for inc in read("kernel/" .. file):gmatch('#include%s+"([^"]+)"') do
          if net[inc] then offending[#offending + 1] = file .. " includes " .. inc end
        end
      end
    end
    assert.is_true(core >= 20, "found only " .. core .. " core files in kernel/")
    assert.are.same({}, offending)
  end)
end)
