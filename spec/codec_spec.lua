-- The message codec through erlangen.encode / erlangen.decode: round trips,
-- sharing and cycles, special floats, pids and refs, limits, and a decoder
-- that must survive any byte string.
local erlangen = require "erlangen"
local H = require "spec.helpers"

local encode, decode = erlangen.encode, erlangen.decode

-- Encodes the values and decodes them again, returning a packed table.
local function round(...)
  return table.pack(decode(encode(...)))
end

describe("the codec", function()
  before_each(H.before)
  after_each(H.after)

  describe("round trips", function()
    it("encodes to a string", function()
      assert.are.equal("string", type(encode({1, 2, 3})))
    end)

    it("keep booleans, integers, floats and strings", function()
      local r = round(true, false, 0, -7, 3.25, "text")
      assert.are.same({n = 6, true, false, 0, -7, 3.25, "text"}, r)
    end)

    it("keep integer and float subtypes apart", function()
      local r = round(1, 1.0, math.maxinteger, math.mininteger)
      assert.are.equal("integer", math.type(r[1]))
      assert.are.equal("float", math.type(r[2]))
      assert.are.equal(math.maxinteger, r[3])
      assert.are.equal(math.mininteger, r[4])
    end)

    it("keep inf, -inf, nan and -0.0", function()
      local r = round(math.huge, -math.huge, 0/0, -0.0)
      assert.are.equal(math.huge, r[1])
      assert.are.equal(-math.huge, r[2])
      assert.is_true(r[3] ~= r[3], "expected nan, got " .. tostring(r[3]))
      assert.are.equal(-math.huge, 1 / r[4], "expected -0.0, got " .. tostring(r[4]))
    end)

    it("keep binary strings, NUL and high bytes included", function()
      local s = "\0\1\2\255\254" .. string.rep("\0", 10) .. "end"
      assert.are.equal(s, round(s)[1])
    end)

    it("keep a string of one megabyte", function()
      local s = string.rep("0123456789abcdef", 65536)
      assert.are.equal(s, round(s)[1])
    end)

    it("keep nil among several values, and the count of values", function()
      local r = round(1, nil, 3, nil)
      assert.are.equal(4, r.n)
      assert.are.same({n = 4, 1, nil, 3, nil}, r)
    end)

    it("keep nested tables with array and hash parts and keys of every kind", function()
      local t = {1, 2, {3, {4}}, name = "x", [true] = "t", [2.5] = "f", [-1] = "neg",
                 inner = {deep = {deeper = {"yes"}}}}
      assert.are.same(t, round(t)[1])
    end)

    it("keep holes in arrays", function()
      local got = round({1, nil, 3})[1]
      assert.are.equal(1, got[1])
      assert.is_nil(got[2])
      assert.are.equal(3, got[3])
    end)

    it("keep a table used as a key", function()
      local k = {"key"}
      local got = round({[k] = "value", k = k})[1]
      assert.are.equal("value", got[got.k])
    end)

    it("keep a cycle", function()
      local t = {name = "loop"}
      t.self = t
      local got = round(t)[1]
      assert.are.equal(got, got.self)
      assert.are.equal("loop", got.self.name)
    end)

    it("keep a longer cycle through several tables", function()
      local a, b, c = {}, {}, {}
      a.next, b.next, c.next = b, c, a
      local got = round(a)[1]
      assert.are.equal(got, got.next.next.next)
      assert.are_not.equal(got, got.next)
    end)

    it("keep shared references within one value", function()
      local shared = {"shared"}
      local got = round({shared, shared, x = shared})[1]
      assert.are.equal(got[1], got[2])
      assert.are.equal(got[1], got.x)
    end)

    it("keep shared references across the values of one message", function()
      local shared = {}
      local r = round(shared, {shared})
      assert.are.equal(r[1], r[2][1])
    end)

    it("give fresh tables, not the originals", function()
      local t = {1}
      assert.are_not.equal(t, round(t)[1])
    end)

    it("keep pids, which stay == and work as table keys", function()
      local me = erlangen.self()
      local got = round(me, {[me] = "me"})
      assert.are.equal(me, got[1])
      assert.are.equal("me", got[2][me])
    end)

    it("keep the pid of another process", function()
      local pid = H.idle()
      assert.are.equal(pid, round(pid)[1])
    end)

    it("keep refs, which stay == and work as table keys", function()
      local r = erlangen.ref()
      local got = round(r, {[r] = "ref"})
      assert.are.equal(r, got[1])
      assert.are.equal("ref", got[2][r])
    end)

    it("drop metatables", function()
      local got = round(setmetatable({1}, {__index = {extra = "meta"}}))[1]
      assert.is_nil(getmetatable(got))
      assert.is_nil(got.extra)
      assert.are.equal(1, got[1])
    end)

    it("copy a table's raw contents without calling its metamethods", function()
      local t = setmetatable({a = 1}, {
        __index = function() error("__index called") end,
        __pairs = function() error("__pairs called") end,
        __len = function() error("__len called") end,
      })
      assert.are.same({a = 1}, round(t)[1])
    end)
  end)

  describe("refusals", function()
    it("refuse a Lua function in encode", function()
      local err = H.error_of(function() encode({f = function() end}) end)
      assert.matches("f: cannot send", err, 1, true)
    end)

    it("refuse a C function in encode", function()
      local err = H.error_of(function() encode({p = print}) end)
      assert.matches("p: cannot send", err, 1, true)
    end)

    it("refuse a userdata, naming its path", function()
      local f = io.tmpfile()
      local err = H.error_of(function() encode({conn = f}) end)
      f:close()
      assert.matches("conn: cannot send userdata", err, 1, true)
    end)

    it("refuse a coroutine, naming its path", function()
      local err = H.error_of(function() encode({list = {{co = coroutine.create(print)}}}) end)
      assert.matches("co: cannot send", err, 1, true)
      assert.matches("list", err, 1, true)
    end)

    it("refuse decoding something that is not a string", function()
      local err = H.error_of(function() decode({}) end)
      assert.matches("bad argument #1 to 'decode'", err, 1, true)
    end)
  end)

  describe("limits", function()
    it("accept nesting well under the depth limit", function()
      local got = round(H.nested(50))[1]
      for _ = 1, 49 do got = got[1] end
      assert.are.same({}, got)
    end)

    it("raise \"nesting deeper than N\" past the default depth of 100", function()
      local err = H.error_of(function() encode(H.nested(150)) end)
      assert.matches("nesting deeper than 100", err, 1, true)
    end)

    it("raise \"nesting deeper than N\" past a configured depth", function()
      local old = erlangen.configure({max_depth = 20})
      finally(function() erlangen.configure(old) end)
      assert.has_no.errors(function() encode(H.nested(10)) end)
      local err = H.error_of(function() encode(H.nested(30)) end)
      assert.matches("nesting deeper than 20", err, 1, true)
    end)

    it("raise a clean error, not a crash, for a million levels of nesting", function()
      local err = H.error_of(function() encode(H.nested(1000000)) end)
      assert.matches("nesting deeper than", err, 1, true)
    end)

    it("refuse to decode a message nested deeper than the configured depth", function()
      local bytes = encode(H.nested(60))
      local old = erlangen.configure({max_depth = 20})
      finally(function() erlangen.configure(old) end)
      local ok, err = pcall(decode, bytes)
      assert.is_false(ok)
      assert.are.equal("string", type(err))
    end)

    it("raise \"message larger than N bytes\" past a configured size", function()
      local old = erlangen.configure({max_message = 1000})
      finally(function() erlangen.configure(old) end)
      assert.has_no.errors(function() encode(string.rep("x", 500)) end)
      local err = H.error_of(function() encode(string.rep("x", 2000)) end)
      assert.matches("message larger than 1000 bytes", err, 1, true)
    end)

    it("count the whole message, not one string, against the size limit", function()
      local old = erlangen.configure({max_message = 1000})
      finally(function() erlangen.configure(old) end)
      local many = {}
      for i = 1, 20 do many[i] = string.rep("y", 100) end
      local err = H.error_of(function() encode(many) end)
      assert.matches("message larger than 1000 bytes", err, 1, true)
    end)
  end)

  describe("the decoder on untrusted bytes", function()
    -- A few valid messages to mutate: every kind of value the codec carries.
    local function samples()
      local cyc = {tag = "c"}; cyc.me = cyc
      local shared = {1}
      return {
        encode(nil), encode(true), encode(42), encode(-1.5), encode(0/0),
        encode("hello\0world"), encode({1, 2, 3}), encode({a = {b = {c = "d"}}}),
        encode(cyc), encode({shared, shared}), encode(erlangen.self()), encode(erlangen.ref()),
        encode(1, nil, "three"), encode(string.rep("z", 300)),
        encode({[1.5] = true, [false] = {}, list = {1, 2, {3}}}),
      }
    end

    -- Decodes `bytes`: it must return values or raise a string error.
    local function try(bytes, what)
      local ok, err = pcall(decode, bytes)
      if not ok and type(err) ~= "string" then
        error(string.format("decode raised a %s (not a string) for %s: %q", type(err), what, bytes), 2)
      end
    end

    it("raise an error for bytes that are not a message", function()
      local ok, err = pcall(decode, "this is not a message")
      assert.is_false(ok)
      assert.are.equal("string", type(err))
    end)

    it("survive every truncation of every sample", function()
      for i, s in ipairs(samples()) do
        for len = 0, #s - 1 do try(s:sub(1, len), "sample " .. i .. " cut to " .. len) end
      end
    end)

    it("survive random bytes and random mutations of valid messages", function()
      local seed = os.time()
      math.randomseed(seed)
      local base = samples()
      local deadline = erlangen.now() + 3
      local count = 0
      local function rbytes(n)
        local t = {}
        for i = 1, n do t[i] = string.char(math.random(0, 255)) end
        return table.concat(t)
      end
      while erlangen.now() < deadline do
        count = count + 1
        local what = "seed " .. seed .. ", case " .. count
        local r = math.random(5)
        if r == 1 then
          try(rbytes(math.random(0, 64)), what)
        else
          local s = base[math.random(#base)]
          local b = {s:byte(1, -1)}
          for _ = 1, math.random(1, 4) do
            local pos = math.random(1, math.max(1, #b))
            local op = math.random(4)
            if op == 1 and #b > 0 then b[pos] = math.random(0, 255)                -- flip
            elseif op == 2 then table.insert(b, pos, math.random(0, 255))         -- insert
            elseif op == 3 and #b > 0 then table.remove(b, pos)                   -- delete
            else b[pos] = ({0x00, 0x7f, 0x80, 0xff})[math.random(4)] end           -- edge byte
          end
          local bytes = {}
          for i = 1, #b do bytes[i] = string.char(b[i]) end
          try(table.concat(bytes), what)
        end
      end
      assert.is_true(count > 1000, "only " .. count .. " cases ran in 3 s")
    end)

    it("do not let mutated messages grow memory beyond what they justify", function()
      if H.under_tsan() then return pending("under ThreadSanitizer: its shadow memory makes RSS meaningless") end
      collectgarbage(); collectgarbage()
      local before = H.rss_kb()
      math.randomseed(12345)
      local s = encode({list = {1, 2, 3, 4, 5}, name = string.rep("n", 50)})
      for _ = 1, 20000 do
        local b = {s:byte(1, -1)}
        b[math.random(#b)] = 0xff
        b[math.random(#b)] = 0x7f
        local bytes = {}
        for i = 1, #b do bytes[i] = string.char(b[i]) end
        pcall(decode, table.concat(bytes))
      end
      collectgarbage(); collectgarbage()
      local grown = H.rss_kb() - before
      assert.is_true(grown < 64 * 1024, "RSS grew by " .. grown .. " KiB")
    end)
  end)
end)
