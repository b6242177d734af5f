-- dht_id.lua — 128-bit Kademlia ids: hashing, XOR distance, buckets.
--
-- An id is a 16-byte string (big-endian), so it is a table key and travels
-- in a message as it is. Distances are two 64-bit integers (hi, lo) compared
-- unsigned (math.ult): Lua's string comparison follows the locale.
-- Ids are a hash of a node name or of a key. The hash is not cryptographic:
-- ids only need to spread evenly over the space.
local dht_id = {}

dht_id.BITS = 128

local M1, M2 = 0xff51afd7ed558ccd, 0xc4ceb9fe1a85ec53
local P1, P2 = 0x100000001b3, 0x9e3779b97f4a7c15   -- odd multipliers, one per lane

-- MurmurHash3's 64-bit finalizer: every input bit reaches every output bit.
local function fmix(x)
  x = (x ~ (x >> 33)) * M1
  x = (x ~ (x >> 33)) * M2
  return x ~ (x >> 33)
end

local function pack(hi, lo) return string.pack(">i8i8", hi, lo) end

-- Whether v is an id.
function dht_id.is_id(v) return type(v) == "string" and #v == 16 end

-- The id of string s: two FNV-1a lanes with different multipliers, finalized.
function dht_id.of(s)
  if type(s) ~= "string" then error("bad argument #1 to 'of' (string expected, got " .. type(s) .. ")", 2) end
  local a, b = 0xcbf29ce484222325, 0x6a09e667f3bcc908
  for i = 1, #s do
    local c = s:byte(i)
    a = (a ~ c) * P1
    b = (b ~ c) * P2
  end
  return pack(fmix(a ~ (b >> 29) ~ #s), fmix(b ~ (a >> 31)))
end

-- The XOR distance between ids a and b, as (hi, lo).
function dht_id.distance(a, b)
  local ah, al = string.unpack(">i8i8", a)
  local bh, bl = string.unpack(">i8i8", b)
  return ah ~ bh, al ~ bl
end

-- Whether a is strictly closer to target than b.
function dht_id.closer(target, a, b)
  local ah, al = dht_id.distance(target, a)
  local bh, bl = dht_id.distance(target, b)
  if ah ~= bh then return math.ult(ah, bh) end
  return math.ult(al, bl)
end

-- Leading zero bits of a 64-bit integer (64 for 0).
local function clz(x)
  local n = 0
  while n < 64 and (x & (1 << (63 - n))) == 0 do n = n + 1 end
  return n
end

-- The bucket of `other` in the table of `self`: the length of their common
-- prefix, 0 (the far half of the space) to 127; nil when the ids are equal.
function dht_id.bucket(self, other)
  local h, l = dht_id.distance(self, other)
  if h ~= 0 then return clz(h) end
  if l ~= 0 then return 64 + clz(l) end
  return nil
end

-- x with its first n bits (n < 64) kept, bit n flipped, the rest from r.
local function branch(x, n, r)
  local keep = n == 0 and 0 or (-1 << (64 - n))
  local flip = 1 << (63 - n)
  return (x & keep) | (~x & flip) | (r & ~keep & ~flip)
end

-- A random id in bucket i (0 to 127) of self: self's first i bits, bit i
-- flipped, the rest random (for refreshing that bucket).
function dht_id.random_in_bucket(self, i)
  local h, l = string.unpack(">i8i8", self)
  local rh, rl = math.random(math.mininteger, math.maxinteger), math.random(math.mininteger, math.maxinteger)
  if i < 64 then return pack(branch(h, i, rh), rl) end
  return pack(h, branch(l, i - 64, rl))
end

-- The id as 32 lowercase hex digits.
function dht_id.hex(id)
  return (id:gsub(".", function(c) return string.format("%02x", c:byte()) end))
end

return dht_id
