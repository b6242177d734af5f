-- dht_routing.lua — a Kademlia routing table: k-buckets of contacts.
--
-- A contact is {id = <16-byte id>, addr = "name@host:port"}. Bucket i holds
-- the contacts whose id shares exactly i leading bits with the table's own
-- id (dht_id.bucket). Invariants:
--   * a bucket holds at most k contacts, least recently seen first, and at
--     most k spares, most recently seen last;
--   * an id is at most once in the table (as a contact or a spare), and the
--     table's own id never.
-- A full bucket keeps its contacts (a node that has stayed up is likely to
-- stay up) and keeps a newcomer as a spare. A contact leaves only through
-- remove, when its node goes down: the most recently seen spare takes its
-- place. (Kademlia pings the oldest contact instead; here the kernel's
-- nodedown says who is gone.)
-- The table is plain data: it can be copied into another process.
local dht_id = require "dht_id"

local dht_routing = {}

-- A new empty table for own id `self_id` with buckets of `k` contacts.
function dht_routing.new(self_id, k)
  if not dht_id.is_id(self_id) then error("bad argument #1 to 'new' (id expected)", 2) end
  if math.type(k) ~= "integer" or k < 1 then
    error("bad argument #2 to 'new' (positive integer expected, got " .. tostring(k) .. ")", 2)
  end
  return {self = self_id, k = k, buckets = {}}
end

local function index_of(list, id)
  for i, c in ipairs(list) do if c.id == id then return i end end
  return nil
end

-- Records that contact `c` was seen. Returns "added" (a new contact),
-- "updated" (known: now the most recently seen, with c's addr), "spare"
-- (its bucket is full: kept as a spare) or "self".
function dht_routing.insert(rt, c)
  local i = dht_id.bucket(rt.self, c.id)
  if not i then return "self" end
  local b = rt.buckets[i]
  if not b then b = {contacts = {}, spares = {}}; rt.buckets[i] = b end
  local j = index_of(b.contacts, c.id)
  if j then
    table.remove(b.contacts, j)
    table.insert(b.contacts, c)
    return "updated"
  end
  j = index_of(b.spares, c.id)
  if j then table.remove(b.spares, j) end
  if #b.contacts < rt.k then
    table.insert(b.contacts, c)
    return "added"
  end
  table.insert(b.spares, c)
  if #b.spares > rt.k then table.remove(b.spares, 1) end
  return "spare"
end

-- Removes the contact or spare with id `id`. Returns the removed contact
-- (nil if it was not there) and the spare promoted in its place, if any.
function dht_routing.remove(rt, id)
  local i = dht_id.bucket(rt.self, id)
  local b = i and rt.buckets[i]
  if not b then return nil end
  local j = index_of(b.spares, id)
  if j then return table.remove(b.spares, j), nil end
  j = index_of(b.contacts, id)
  if not j then return nil end
  local gone = table.remove(b.contacts, j)
  local promoted = table.remove(b.spares)
  if promoted then table.insert(b.contacts, promoted) end
  return gone, promoted
end

-- The contact with id `id`, or nil (spares are not contacts).
function dht_routing.get(rt, id)
  local i = dht_id.bucket(rt.self, id)
  local b = i and rt.buckets[i]
  local j = b and index_of(b.contacts, id)
  return j and b.contacts[j] or nil
end

-- Every contact (no spares), nearest buckets last.
function dht_routing.contacts(rt)
  local all = {}
  for i = 0, dht_id.BITS - 1 do
    local b = rt.buckets[i]
    if b then for _, c in ipairs(b.contacts) do all[#all + 1] = c end end
  end
  return all
end

-- The indexes of the buckets that hold a contact, in increasing order.
function dht_routing.buckets(rt)
  local used = {}
  for i = 0, dht_id.BITS - 1 do
    if rt.buckets[i] and #rt.buckets[i].contacts > 0 then used[#used + 1] = i end
  end
  return used
end

-- The n contacts of `list` nearest to `target`, nearest first (a new list;
-- all of them when n is nil). Equal ids do not occur among contacts.
function dht_routing.nearest(list, target, n)
  local sorted = {}
  for i, c in ipairs(list) do sorted[i] = c end
  table.sort(sorted, function(a, b) return dht_id.closer(target, a.id, b.id) end)
  for i = #sorted, (n or #sorted) + 1, -1 do sorted[i] = nil end
  return sorted
end

-- The n contacts of the table nearest to `target`, nearest first.
function dht_routing.closest(rt, target, n)
  return dht_routing.nearest(dht_routing.contacts(rt), target, n)
end

return dht_routing
