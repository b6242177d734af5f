/*
** test_codec.c — the message codec: round trips, errors with paths, limits,
** functions and modules across two lua_States, and a decoder fuzz loop.
** Links only term.c, codec.c and liblua.
*/
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <lua.h>
#include <lauxlib.h>
#include <lualib.h>
#include "ctest.h"
#include "codec.h"
#include "term.h"

static const codec_limits LIM_FN = { .max_size = CODEC_DEFAULT_MAX_SIZE, .max_depth = CODEC_DEFAULT_MAX_DEPTH, .allow_functions = 1 };
static const codec_limits LIM_DATA = { .max_size = CODEC_DEFAULT_MAX_SIZE, .max_depth = CODEC_DEFAULT_MAX_DEPTH, .allow_functions = 0 };

/* ---- Lua helpers available in every test state ---- */

static int l_pid(lua_State *L) {
  term_id id = { (uint64_t)luaL_checkinteger(L, 1), (uint32_t)luaL_optinteger(L, 2, 0),
                 (uint32_t)luaL_optinteger(L, 3, 0) };
  term_push(L, TERM_PID, id);
  return 1;
}

static int l_ref(lua_State *L) {
  term_id id = { (uint64_t)luaL_checkinteger(L, 1), 0, 0 };
  term_push(L, TERM_REF, id);
  return 1;
}

static int l_ud(lua_State *L) { lua_newuserdatauv(L, 8, 0); return 1; }

static int l_light(lua_State *L) { static int x; lua_pushlightuserdata(L, &x); return 1; }

static int l_secret(lua_State *L) { lua_pushliteral(L, "secret"); return 1; }

/* A C function that no loaded module holds. */
static int l_loose(lua_State *L) { lua_pushcfunction(L, l_secret); return 1; }

/* encode(...) -> bytes, or nil and the error (functions allowed). */
static int l_encode(lua_State *L) {
  int n = lua_gettop(L);
  codec_buf b = {0};
  if (codec_encode(L, 1, n, n == 1 ? "msg" : "args", &LIM_FN, &b)) { lua_pushnil(L); lua_insert(L, -2); return 2; }
  lua_pushlstring(L, (const char *)b.data, b.len);
  codec_buf_free(&b);
  return 1;
}

/* decode(bytes) -> true, values... or false, error (same state). */
static int l_decode(lua_State *L) {
  size_t len;
  const char *s = luaL_checklstring(L, 1, &len);
  lua_settop(L, 1);
  int n = codec_decode(L, (const unsigned char *)s, len, &LIM_FN);
  lua_pushboolean(L, n >= 0);
  lua_replace(L, 1);
  return n >= 0 ? n + 1 : 2;
}

static lua_State *state_new(const char *where) {
  lua_State *L = luaL_newstate();
  luaL_openlibs(L);
  lua_register(L, "pid", l_pid);
  lua_register(L, "ref", l_ref);
  lua_register(L, "ud", l_ud);
  lua_register(L, "light", l_light);
  lua_register(L, "loose", l_loose);
  lua_register(L, "encode", l_encode);
  lua_register(L, "decode", l_decode);
  lua_pushstring(L, where);
  lua_setglobal(L, "where");
  return L;
}

/* Runs a chunk; a failure is reported as a failed check. */
static void run(lua_State *L, const char *code) {
  int ok = luaL_dostring(L, code) == LUA_OK;
  CHECK(ok, "setup chunk runs", "%s: %s", code, lua_tostring(L, -1));
  lua_settop(L, 0);
}

/* 1 if `return (expr)` is truthy in L. */
static int truthy(lua_State *L, const char *expr) {
  char code[2048];
  snprintf(code, sizeof code, "return (%s)", expr);
  int top = lua_gettop(L);
  int ok = luaL_dostring(L, code) == LUA_OK && lua_toboolean(L, -1);
  if (luaL_dostring(L, "return 1") != LUA_OK) ok = 0;
  lua_settop(L, top);
  return ok;
}

#define LCHECK(L, expr, name) CHECK(truthy(L, expr), name, "expected %s", expr)

static char xerr[512];

/* Runs `make` in A, encodes its results with `lim`, decodes them in B with
** `dlim` and stores them in B's global `got` (got.n = count). Returns the
** count, -1 on a codec error (message in xerr), -2 if `make` failed. Also
** checks that both stacks are left balanced. */
static int xfer2(lua_State *A, lua_State *B, const char *make, const codec_limits *lim,
                 const codec_limits *dlim, size_t *size) {
  int ta = lua_gettop(A), tb = lua_gettop(B);
  xerr[0] = '\0';
  if (luaL_loadstring(A, make) || lua_pcall(A, 0, LUA_MULTRET, 0)) {
    snprintf(xerr, sizeof xerr, "make failed: %s", lua_tostring(A, -1));
    lua_settop(A, ta);
    return -2;
  }
  int n = lua_gettop(A) - ta;
  codec_buf b = {0};
  int r = codec_encode(A, ta + 1, n, n == 1 ? "msg" : "args", lim, &b);
  if (r) {
    snprintf(xerr, sizeof xerr, "%s", lua_tostring(A, -1));
    CHECK(lua_gettop(A) == ta + n + 1 && b.data == NULL && b.len == 0, "encode error leaves one string",
          "top %d, expected %d", lua_gettop(A), ta + n + 1);
    lua_settop(A, ta);
    return -1;
  }
  if (lua_gettop(A) != ta + n) CHECK(0, "encode leaves the stack", "top %d, expected %d", lua_gettop(A), ta + n);
  lua_settop(A, ta);
  if (size) *size = b.len;
  int k = codec_decode(B, b.data, b.len, dlim);
  codec_buf_free(&b);
  if (k < 0) {
    snprintf(xerr, sizeof xerr, "%s", lua_tostring(B, -1));
    if (lua_gettop(B) != tb + 1) CHECK(0, "decode error leaves one string", "top %d", lua_gettop(B));
    lua_settop(B, tb);
    return -1;
  }
  if (lua_gettop(B) != tb + k) CHECK(0, "decode pushes its values", "top %d, expected %d", lua_gettop(B), tb + k);
  lua_createtable(B, k, 1);
  for (int i = 1; i <= k; i++) { lua_pushvalue(B, tb + i); lua_rawseti(B, -2, i); }
  lua_pushinteger(B, k);
  lua_setfield(B, -2, "n");
  lua_setglobal(B, "got");
  lua_settop(B, tb);
  return k;
}

static int xfer(lua_State *A, lua_State *B, const char *make, const codec_limits *lim) {
  return xfer2(A, B, make, lim, lim, NULL);
}

/* Expects encoding `make` in A to fail with exactly `msg`. */
static void expect_error(lua_State *A, const char *make, const codec_limits *lim, const char *msg,
                         const char *name) {
  int r = xfer(A, A, make, lim);
  CHECK(r == -1 && strcmp(xerr, msg) == 0, name, "got %d '%s', expected '%s'", r, xerr, msg);
}

/* ---- scalars and tables ---- */

static void test_scalars(lua_State *A, lua_State *B) {
  int n = xfer(A, B, "return nil, true, false, 0, 1, -1, math.maxinteger, math.mininteger, "
                     "1.5, 1/0, -1/0, 0/0, -0.0, 2^53, 'a\\0b\\0', '', 3.0", &LIM_FN);
  CHECK(n == 17, "scalars: all values arrive, nil included", "n = %d %s", n, xerr);
  LCHECK(B, "got[1] == nil and got[2] == true and got[3] == false", "nil and booleans round-trip");
  LCHECK(B, "math.type(got[4]) == 'integer' and got[4] == 0 and got[5] == 1 and got[6] == -1",
         "small integers round-trip as integers");
  LCHECK(B, "got[7] == math.maxinteger and math.type(got[7]) == 'integer'", "maxinteger round-trips");
  LCHECK(B, "got[8] == math.mininteger and math.type(got[8]) == 'integer'", "mininteger round-trips");
  LCHECK(B, "got[9] == 1.5 and got[10] == 1/0 and got[11] == -1/0", "floats and infinities round-trip");
  LCHECK(B, "got[12] ~= got[12]", "nan round-trips");
  LCHECK(B, "got[13] == 0 and 1/got[13] == -1/0 and math.type(got[13]) == 'float'", "-0.0 keeps its sign");
  LCHECK(B, "got[14] == 2^53 and math.type(got[14]) == 'float'", "2^53 stays a float");
  LCHECK(B, "got[15] == 'a\\0b\\0' and #got[15] == 4 and got[16] == ''", "strings with NULs round-trip");
  LCHECK(B, "math.type(got[17]) == 'float' and got[17] == 3", "integral floats stay floats");

  n = xfer(A, B, "return nil, 1, nil", &LIM_FN);
  LCHECK(B, "got.n == 3 and got[1] == nil and got[2] == 1 and got[3] == nil", "nil in argument lists");
  CHECK(n == 3, "nil in argument lists: count", "n = %d", n);
  n = xfer(A, B, "return", &LIM_FN);
  CHECK(n == 0, "zero values encode and decode", "n = %d %s", n, xerr);

  xfer(A, B, "local t = {} for i = 0, 255 do t[#t + 1] = string.char(i) end "
             "return table.concat(t):rep(3), string.rep('xy', 1 << 19)", &LIM_FN);
  LCHECK(B, "#got[1] == 768 and got[1]:byte(1) == 0 and got[1]:byte(256) == 255 and "
            "got[1]:byte(768) == 255 and got[2] == string.rep('xy', 1 << 19)",
         "binary and long strings round-trip");
  for (int i = -70; i <= 70; i++) {
    char make[128];
    snprintf(make, sizeof make, "return 1 << %d, -(1 << %d), (1 << %d) - 1", i < 0 ? -i : i, i < 0 ? -i : i,
             i < 0 ? -i : i);
    if (xfer(A, B, make, &LIM_FN) != 3) { CHECK(0, "integer powers of two round-trip", "%s", xerr); return; }
    snprintf(make, sizeof make, "got[1] == 1 << %d and got[2] == -(1 << %d) and got[3] == (1 << %d) - 1",
             i < 0 ? -i : i, i < 0 ? -i : i, i < 0 ? -i : i);
    if (!truthy(B, make)) { CHECK(0, "integer powers of two round-trip", "%s", make); return; }
  }
  CHECK(1, "integer powers of two round-trip", " ");
}

/* One boolean, number or string takes a short way through codec_encode
** (when the caller gives storage) and codec_decode: its bytes must be the
** general encoder's (which a call without storage takes), and both must
** still honour max_size and decode back to the same value. */
static void test_single_values(lua_State *L) {
  static const char *vals[] = { "true", "false", "0", "1", "-1", "63", "64", "-65", "math.maxinteger",
                                "math.mininteger", "1.5", "-0.0", "1/0", "0/0", "2^53", "''", "'a\\0b'",
                                "string.rep('x', 127)", "string.rep('y', 128)", "string.rep('z', 300)" };
  int same = 1, back = 1;
  for (size_t i = 0; i < sizeof vals / sizeof vals[0]; i++) {
    char code[128];
    snprintf(code, sizeof code, "return %s", vals[i]);
    run(L, "x = nil");
    if (luaL_dostring(L, code) != LUA_OK) { CHECK(0, "single values: chunk runs", "%s", code); return; }
    codec_buf general = {0}, shortway = {0};
    shortway.data = malloc(512);
    shortway.cap = 512;
    int r1 = codec_encode(L, -1, 1, "msg", &LIM_DATA, &general);
    int r2 = codec_encode(L, -1, 1, "msg", &LIM_DATA, &shortway);
    if (r1 || r2 || general.len != shortway.len || memcmp(general.data, shortway.data, general.len) != 0) {
      same = 0;
      fprintf(stderr, "  %s: general %d len %zu, short %d len %zu\n", vals[i], r1, general.len, r2, shortway.len);
    }
    int n = r2 ? -1 : codec_decode(L, shortway.data, shortway.len, &LIM_DATA);
    if (n != 1 || !(lua_rawequal(L, -1, -2) || (lua_type(L, -1) == LUA_TNUMBER && lua_tonumber(L, -1) != lua_tonumber(L, -1)))
        || lua_isinteger(L, -1) != lua_isinteger(L, -2)) {
      back = 0;
      fprintf(stderr, "  %s does not decode to itself (n = %d)\n", vals[i], n);
    }
    if (n == 1 && lua_type(L, -1) == LUA_TNUMBER && lua_tonumber(L, -1) == 0 && !lua_isinteger(L, -1) &&
        1 / lua_tonumber(L, -1) > 0) back = 0;   /* -0.0 lost its sign */
    lua_settop(L, 0);
    codec_buf_free(&general);
    codec_buf_free(&shortway);
  }
  CHECK(same, "a single value takes the general encoder's bytes when storage is given", " ");
  CHECK(back, "a single value decodes to itself, integer or float, -0.0 and nan included", " ");

  /* codec_encode_single alone: 0 for what it does not take */
  unsigned char tiny[16];
  run(L, "x = nil");
  lua_pushstring(L, "twelve bytes");                            /* 17 encoded: over 16 */
  lua_pushinteger(L, -3);
  lua_newtable(L);
  size_t over = codec_encode_single(L, 1, &LIM_DATA, tiny, sizeof tiny);
  size_t fits = codec_encode_single(L, 2, &LIM_DATA, tiny, sizeof tiny);
  size_t table = codec_encode_single(L, 3, &LIM_DATA, tiny, sizeof tiny);
  CHECK(over == 0 && table == 0 && fits == 5 && memcmp(tiny, "\x01\x00\x01\x03\x05", 5) == 0 &&
        lua_gettop(L) == 3, "codec_encode_single takes a fitting scalar only, and leaves the stack",
        "over %zu, fits %zu, table %zu, top %d", over, fits, table, lua_gettop(L));
  lua_settop(L, 0);
  /* the longest integer is 14 bytes: 13 of room are not enough */
  unsigned char *thirteen = malloc(13);
  lua_pushinteger(L, (lua_Integer)1 << 62);
  size_t wrote = codec_encode_single(L, 1, &LIM_DATA, thirteen, 13);
  codec_buf given = { thirteen, 0, 13 };
  int rc = codec_encode(L, 1, 1, "msg", &LIM_DATA, &given);   /* grows it: under ASan, no overflow */
  codec_limits at13 = { .max_size = 13, .max_depth = CODEC_DEFAULT_MAX_DEPTH, .allow_functions = 0 };
  unsigned char roomy13[64];
  size_t over13 = codec_encode_single(L, 1, &at13, roomy13, sizeof roomy13);
  CHECK(wrote == 0 && rc == 0 && given.len == 14 && over13 == 0,
        "an integer of 14 bytes is not written into 13 bytes of room, nor under a max_size of 13",
        "wrote %zu, rc %d, len %zu, over %zu", wrote, rc, given.len, over13);
  codec_buf_free(&given);
  lua_settop(L, 0);

  /* storage too small for the value: the general way grows it */
  lua_pushstring(L, "a string longer than sixteen bytes");
  codec_buf b = {0};
  b.data = malloc(16);
  b.cap = 16;
  int r = codec_encode(L, -1, 1, "msg", &LIM_DATA, &b);
  CHECK(r == 0 && b.len == 5 + 34 && b.cap >= b.len && memcmp(b.data + 5, "a string longer", 15) == 0,
        "a single value larger than the storage given is encoded all the same", "r %d len %zu", r, b.len);
  /* max_size holds on both ways, with storage given */
  codec_limits tight = { .max_size = 20, .max_depth = CODEC_DEFAULT_MAX_DEPTH, .allow_functions = 0 };
  lua_settop(L, 1);
  r = codec_encode(L, -1, 1, "msg", &tight, &b);
  CHECK(r == -1 && strstr(lua_tostring(L, -1), "larger than 20 bytes") != NULL,
        "a single string over max_size is refused though the storage given holds it", "r %d %s", r,
        r ? lua_tostring(L, -1) : "");
  lua_settop(L, 0);
  run(L, "big = {string.rep('x', 30)}");
  lua_getglobal(L, "big");
  codec_buf roomy = { malloc(512), 0, 512 };
  r = codec_encode(L, -1, 1, "msg", &tight, &roomy);
  CHECK(r == -1 && roomy.data && strstr(lua_tostring(L, -1), "larger than 20 bytes") != NULL,
        "a table over max_size is refused though the storage given holds it", "r %d", r);
  codec_buf_free(&roomy);
  lua_settop(L, 0);
  lua_pushinteger(L, 7);
  r = codec_encode(L, -1, 1, "msg", &tight, &b);
  CHECK(r == 0 && b.len == 5 && memcmp(b.data, "\x01\x00\x01\x03\x0e", 5) == 0,
        "a single integer within max_size: version, flags, count, tag, zigzag varint", "r %d len %zu", r, b.len);
  lua_settop(L, 0);
  int n = codec_decode(L, b.data, b.len, &LIM_DATA);
  CHECK(n == 1 && lua_isinteger(L, -1) && lua_tointeger(L, -1) == 7, "and decodes to 7", "n %d", n);
  lua_settop(L, 0);
  n = codec_decode(L, b.data, b.len, &(codec_limits){ .max_size = 4 });
  CHECK(n == -1 && strstr(lua_tostring(L, -1), "larger than 4 bytes") != NULL,
        "decode refuses a single value over max_size", "n %d", n);
  lua_settop(L, 0);
  codec_buf_free(&b);
}

static void test_tables(lua_State *A, lua_State *B) {
  int n = xfer(A, B, "return {a = {b = {c = {1, 2, 3}}}, list = {1, 2, 3, nil, 5}, [1.5] = true, "
                     "[true] = 't', [false] = 'f', [-1] = 'neg', [0] = 'zero', [100] = 'far', s = 'x', "
                     "['with space'] = {}, 'first', 'second'}", &LIM_FN);
  CHECK(n == 1, "nested table encodes", "%s", xerr);
  LCHECK(B, "got[1].a.b.c[3] == 3 and #got[1].a.b.c == 3", "nested tables round-trip");
  LCHECK(B, "got[1].list[1] == 1 and got[1].list[3] == 3 and got[1].list[4] == nil and got[1].list[5] == 5",
         "arrays with holes round-trip");
  LCHECK(B, "got[1][1.5] == true and got[1][true] == 't' and got[1][false] == 'f'", "float and boolean keys");
  LCHECK(B, "got[1][-1] == 'neg' and got[1][0] == 'zero' and got[1][100] == 'far'", "integer keys outside 1..n");
  LCHECK(B, "got[1][1] == 'first' and got[1][2] == 'second' and got[1].s == 'x' and next(got[1]['with space']) == nil",
         "mixed array and hash parts");
  LCHECK(A, "#encode({[1] = 1, [1 << 20] = 2, [1 << 40] = 3}) < 40", "sparse integer keys are not padded");

  xfer(A, B, "local t = {} for i = 1, 20000 do t['k' .. i] = i end for i = 1, 300 do t[i] = -i end return t",
       &LIM_FN);
  LCHECK(B, "(function() local n = 0 for k, v in pairs(got[1]) do n = n + 1 end "
            "return n == 20300 and got[1].k20000 == 20000 and got[1][300] == -300 end)()",
         "tables with more than 2^14 pairs round-trip");

  xfer(A, B, "local t = {} t.self = t t[1] = t return t", &LIM_FN);
  LCHECK(B, "got[1].self == got[1] and got[1][1] == got[1]", "cycles keep their identity");
  xfer(A, B, "local a = {x = 1} return {a, a, k = a, [a] = a}", &LIM_FN);
  LCHECK(B, "got[1][1] == got[1][2] and got[1].k == got[1][1] and got[1][got[1][1]] == got[1][1]",
         "shared references keep their identity, keys included");
  xfer(A, B, "local a = {} return a, {a}, a", &LIM_FN);
  LCHECK(B, "got[1] == got[3] and got[2][1] == got[1] and got.n == 3", "sharing across arguments");
  xfer(A, B, "local a, b = {}, {} a.b = b b.a = a return {a, b}", &LIM_FN);
  LCHECK(B, "got[1][1].b == got[1][2] and got[1][2].a == got[1][1]", "mutual cycles");
  xfer(A, B, "return setmetatable({x = 1}, {__index = function() return 42 end})", &LIM_FN);
  LCHECK(B, "getmetatable(got[1]) == nil and got[1].y == nil and got[1].x == 1", "metatables are not carried");
}

static void test_terms(lua_State *A, lua_State *B) {
  int n = xfer(A, B, "return pid(42), ref(7), {p = pid(42), [pid(9)] = 'nine'}, pid(5, 3, 9), pid(1, 0xffffffff, 7)",
               &LIM_FN);
  CHECK(n == 5, "pids and refs encode", "%s", xerr);
  LCHECK(B, "rawequal(got[1], pid(42)) and rawequal(got[2], ref(7))", "decoded pids and refs are the interned ones");
  LCHECK(B, "rawequal(got[3].p, got[1]) and got[3][pid(9)] == 'nine'", "pids work as keys after decoding");
  LCHECK(B, "rawequal(got[4], pid(5, 3, 9)) and got[4] ~= pid(5) and rawequal(got[5], pid(1, 0xffffffff, 7))",
         "node and creation survive");
  LCHECK(B, "got[1] ~= ref(42)", "a pid is not a ref with the same serial");
  xfer(A, A, "return pid(77), {pid(77)}", &LIM_FN);
  LCHECK(A, "rawequal(got[1], pid(77)) and rawequal(got[2][1], got[1])", "pids decode interned in the same state");
}

/* ---- functions and modules ---- */

static void test_functions(lua_State *A, lua_State *B) {
  int n = xfer(A, B, "local x = 10 return function(y) return x + y end", &LIM_FN);
  CHECK(n == 1, "a closure encodes", "%s", xerr);
  LCHECK(B, "got[1](5) == 15", "a closure keeps its upvalue");

  xfer(A, B, "local function fact(n) if n <= 1 then return 1 end return n * fact(n - 1) end return fact", &LIM_FN);
  LCHECK(B, "got[1](10) == 3628800 and select(2, debug.getupvalue(got[1], 1)) == got[1]",
         "a recursive local function refers to itself");

  xfer(A, B, "local c = 0 local function inc() c = c + 1 return c end local function get() return c end "
             "return inc, get", &LIM_FN);
  LCHECK(B, "(function() got[1]() got[1]() return got[2]() == 2 end)() and "
            "debug.upvalueid(got[1], 1) == debug.upvalueid(got[2], 1)",
         "two closures keep sharing one upvalue");
  xfer(A, B, "local n, m = 0, 100 local t = {} t.inc = function() n = n + 1 m = m + 1 end "
             "t.get = function() return m, n end return t", &LIM_FN);
  LCHECK(B, "(function() got[1].inc() local m, n = got[1].get() return m == 101 and n == 1 end)()",
         "shared upvalues inside a table");

  xfer(A, B, "return function() return where end, function() newglobal = 123 end", &LIM_FN);
  LCHECK(B, "got[1]() == 'B'", "_ENV becomes the receiving state's globals");
  LCHECK(B, "(function() got[2]() return newglobal == 123 end)()", "globals written by a copied function land in the receiver");
  LCHECK(A, "newglobal == nil", "the sender's globals are untouched");

  xfer(A, B, "local t = {} t.f = function() return t end return t", &LIM_FN);
  LCHECK(B, "got[1].f() == got[1]", "a function and its table keep their cycle");
  xfer(A, B, "local env = setmetatable({v = 'own'}, {__index = _G}) "
             "return load('return v, where', 'chunk', 't', env)", &LIM_FN);
  LCHECK(B, "(function() local v, w = got[1]() return v == nil and w == 'B' end)()",
         "an _ENV upvalue becomes the receiver's globals even when it held a private table");
  xfer(A, B, "local _ENV = {x = 1} function f() return x end return f, _ENV", &LIM_FN);
  LCHECK(B, "got[1]() == nil and got[2].x == 1 and got[2] ~= _G", "a private environment travels only as a value");

  xfer(A, B, "local s = string return function(x) return s.upper(x) end", &LIM_FN);
  LCHECK(B, "got[1]('ab') == 'AB' and rawequal(select(2, debug.getupvalue(got[1], 1)), string)",
         "a module upvalue is the receiver's module");
  n = xfer(A, B, "local fmt, p = string.format, print return function(...) return fmt(...) end, p, "
                 "string.format, string, _G, table.concat, io.write, math", &LIM_FN);
  CHECK(n == 8, "module C functions encode", "%s", xerr);
  LCHECK(B, "got[1]('%d-%s', 5, 'x') == '5-x'", "a C function upvalue resolves by name");
  LCHECK(B, "rawequal(got[2], print) and rawequal(got[3], string.format) and rawequal(got[6], table.concat) and "
            "rawequal(got[7], io.write)", "module C functions are the receiver's");
  LCHECK(B, "rawequal(got[4], string) and rawequal(got[5], _G) and rawequal(got[8], math)",
         "module tables are the receiver's");
  run(A, "function global_lua_fn() return 'copied' end");
  xfer(A, B, "return global_lua_fn", &LIM_FN);
  LCHECK(B, "got[1]() == 'copied' and global_lua_fn == nil", "Lua functions in _G are copied as bytecode");
  n = xfer(A, B, "return encode", &LIM_FN);
  LCHECK(B, "got.n == 1 and rawequal(got[1], encode)", "a host C function in _G resolves by name");
}

static void test_modules(lua_State *A, lua_State *B) {
  run(A, "package.loaded.mymod = {val = 'A'}");
  run(B, "package.preload.mymod = function() return {val = 'B'} end");
  int n = xfer(A, B, "local m = require 'mymod' return function() return m.val end", &LIM_FN);
  CHECK(n == 1, "a function with a module upvalue encodes", "%s", xerr);
  LCHECK(B, "got[1]() == 'B' and package.loaded.mymod.val == 'B'", "an absent module is required by the receiver");

  run(A, "package.loaded.nomod = {}");
  n = xfer(A, B, "return package.loaded.nomod, print", &LIM_FN);
  CHECK(n == -1 && strstr(xerr, "codec: cannot load module 'nomod'") == xerr, "a missing module is a decode error naming it",
        "%d %s", n, xerr);

  /* a module loaded after the map was built: met with a function inside, it
  ** triggers a re-sync and a restart */
  xfer(A, B, "return {1}", &LIM_FN);
  run(A, "package.loaded.late = {x = 1, f = print}");
  run(B, "package.loaded.late = {marker = 'B'}");
  n = xfer(A, B, "return {package.loaded.late}", &LIM_FN);
  LCHECK(B, "got[1][1].marker == 'B'", "a module required after the cache was built is sent by name");
  run(A, "package.loaded.late = nil");
  n = xfer(A, B, "return {{x = 1, f = print}}", &LIM_FN);
  LCHECK(B, "got[1][1].x == 1 and rawequal(got[1][1].f, print) and got[1][1].marker == nil",
         "a table no longer loaded is copied");
  n = xfer(A, B, "return {1, {2}}, string, function() return 3 end", &LIM_FN);
  LCHECK(B, "got[1][2][1] == 2 and rawequal(got[2], string) and got[3]() == 3",
         "tables copied before the first function are re-checked for modules");
  run(A, "package.loaded.consts = {pi = 3}");
  run(B, "package.loaded.consts = {pi = 4}");
  xfer(A, B, "return package.loaded.consts", &LIM_FN);
  LCHECK(B, "got[1].pi == 3 and not rawequal(got[1], package.loaded.consts)",
         "a module without functions in a data-only message is copied as data");
  xfer(A, B, "return package.loaded.consts, print", &LIM_FN);
  LCHECK(B, "rawequal(got[1], package.loaded.consts)", "with a function in the message it goes by name");
  run(A, "local m = {} m.fn = function() return 1 end package.loaded.luamod = m");
  run(B, "package.loaded.luamod = {fn = function() return 'B' end}");
  xfer(A, B, "return package.loaded.luamod.fn", &LIM_FN);
  LCHECK(B, "got[1]() == 1", "Lua functions of modules are copied as bytecode");
  run(A, "local m = {} m.cf = string.len package.loaded.aliasmod = m");
  xfer(A, B, "return string.len", &LIM_FN);
  LCHECK(B, "rawequal(got[1], string.len)", "a C function in two modules prefers the standard library");
}

/* ---- errors ---- */

static void test_errors(lua_State *A) {
  expect_error(A, "return {conn = ud()}", &LIM_FN, "msg.conn: cannot send userdata", "userdata field names its path");
  expect_error(A, "return {1, 2, coroutine.create(print)}", &LIM_FN, "msg[3]: cannot send thread",
               "coroutine element names its index");
  expect_error(A, "return 1, {x = ud()}", &LIM_FN, "args[2].x: cannot send userdata", "argument lists use root[i]");
  expect_error(A, "local sock = ud() return {handler = function() return sock end}", &LIM_FN,
               "msg.handler.<upvalue sock>: cannot send userdata", "upvalues are named in paths");
  expect_error(A, "return {[ud()] = 1}", &LIM_FN, "msg.<key>: cannot send userdata", "keys are named in paths");
  expect_error(A, "return {['a b\"'] = {light()}}", &LIM_FN, "msg[\"a b\\\"\"][1]: cannot send light userdata",
               "odd string keys are quoted");
  expect_error(A, "return {[10] = ud(), [1] = 1}", &LIM_FN, "msg[10]: cannot send userdata", "integer keys");
  expect_error(A, "return {[true] = {[2.5] = ud()}}", &LIM_FN, "msg[true][2.5]: cannot send userdata",
               "boolean and float keys");
  expect_error(A, "return {f = loose()}", &LIM_FN, "msg.f: cannot send C function", "a loose C function is refused");
  expect_error(A, "return {f = coroutine.wrap(function() end)}", &LIM_FN, "msg.f: cannot send C function",
               "a C closure outside modules is refused");
  expect_error(A, "return ud()", &LIM_FN, "msg: cannot send userdata", "a root userdata");
  expect_error(A, "return function() end", &LIM_DATA, "msg: cannot send function",
               "functions are refused without allow_functions");
  expect_error(A, "return {cb = print}", &LIM_DATA, "msg.cb: cannot send function",
               "C functions are refused without allow_functions");
  int r = xfer(A, A, "return string", &LIM_DATA);
  CHECK(r == -1 && strncmp(xerr, "msg.", 4) == 0 && strstr(xerr, ": cannot send function"),
        "modules are copied, not named, without allow_functions", "%s", xerr);

  const char *deep = "local t = {} local c = t for i = 2, %d do c.x = {} c = c.x end return t";
  char make[256];
  snprintf(make, sizeof make, deep, 100);
  CHECK(xfer(A, A, make, &LIM_FN) == 1, "100 levels are allowed by default", "%s", xerr);
  snprintf(make, sizeof make, deep, 101);
  r = xfer(A, A, make, &LIM_FN);
  CHECK(r == -1 && strstr(xerr, ": nesting deeper than 100") && strncmp(xerr, "msg.x.x.x", 9) == 0,
        "101 levels are too deep", "%s", xerr);
  codec_limits three = { .max_size = CODEC_DEFAULT_MAX_SIZE, .max_depth = 3, .allow_functions = 1 };
  CHECK(xfer(A, A, "return {{{}}}", &three) == 1, "max_depth 3 allows 3 levels", "%s", xerr);
  expect_error(A, "return {{{{}}}}", &three, "msg[1][1][1]: nesting deeper than 3", "max_depth 3 refuses 4 levels");
  CHECK(xfer(A, A, "return function() return {{{{{}}}}} end", &three) == 1,
        "tables built by code are not levels of the message", "%s", xerr);
  expect_error(A, "local a = {{{}}} return function() return a end", &three,
               "msg.<upvalue a>[1][1]: nesting deeper than 3", "upvalues count as a level");
  codec_limits huge = { .max_size = CODEC_DEFAULT_MAX_SIZE, .max_depth = 1000000, .allow_functions = 1 };
  snprintf(make, sizeof make, deep, CODEC_HARD_DEPTH);
  CHECK(xfer(A, A, make, &huge) == 1, "CODEC_HARD_DEPTH levels round-trip", "%s", xerr);
  LCHECK(A, "(function() local n, c = 0, got[1] while c do n = n + 1 c = c.x end return n == 1000 end)()",
         "a 1000-level chain arrives whole");
  snprintf(make, sizeof make, deep, CODEC_HARD_DEPTH + 1);
  r = xfer(A, A, make, &huge);
  CHECK(r == -1 && strstr(xerr, "nesting deeper than 1000"), "max_depth is capped at CODEC_HARD_DEPTH", "%s", xerr);

  codec_limits small = { .max_size = 100, .max_depth = CODEC_DEFAULT_MAX_DEPTH, .allow_functions = 1 };
  expect_error(A, "return string.rep('x', 200)", &small, "message larger than 100 bytes", "max_size is enforced");
  size_t size = 0;
  xfer2(A, A, "return {string.rep('y', 300), n = 7}", &LIM_FN, &LIM_FN, &size);
  codec_limits exact = { .max_size = size, .max_depth = CODEC_DEFAULT_MAX_DEPTH, .allow_functions = 1 };
  CHECK(xfer(A, A, "return {string.rep('y', 300), n = 7}", &exact) == 1, "a message of exactly max_size fits", "%s",
        xerr);
  exact.max_size = size - 1;
  r = xfer(A, A, "return {string.rep('y', 300), n = 7}", &exact);
  CHECK(r == -1 && strstr(xerr, "message larger than"), "one byte over max_size fails", "%s", xerr);
  codec_limits tiny = { .max_size = 2, .max_depth = CODEC_DEFAULT_MAX_DEPTH, .allow_functions = 1 };
  expect_error(A, "return 1", &tiny, "message larger than 2 bytes", "even the header respects max_size");

  /* negative index and stack balance on the C API */
  lua_settop(A, 0);
  lua_pushinteger(A, 5);
  lua_newtable(A);
  codec_buf b = {0};
  int e = codec_encode(A, -1, 1, "msg", &LIM_FN, &b);
  CHECK(e == 0 && lua_gettop(A) == 2 && b.len > 0, "codec_encode takes relative indices", "%d", e);
  codec_buf_free(&b);
  CHECK(b.data == NULL && b.len == 0, "codec_buf_free empties the buffer", " ");
  lua_settop(A, 0);
}

static void test_decode_errors(lua_State *L) {
  struct { const char *name; const char *bytes; size_t len; const char *err; } cases[] = {
    { "empty input", "", 0, "codec: truncated" },
    { "bad version", "\x02\x00\x01\x00", 4, "codec: unsupported format version 2" },
    { "unknown flags", "\x01\x80\x01\x00", 4, "codec: unknown header flags" },
    { "trailing bytes", "\x01\x00\x01\x00\x00", 5, "codec: 1 trailing bytes" },
    { "missing value", "\x01\x00\x02\x00", 4, "codec: truncated" },
    { "huge string length", "\x01\x00\x01\x05\xff\xff\xff\xff\xff\xff\xff\xff\x3f", 13, "codec: truncated" },
    { "varint overflow", "\x01\x00\x01\x03\xff\xff\xff\xff\xff\xff\xff\xff\xff\x7f", 14, "codec: varint overflow" },
    { "eleven-byte varint", "\x01\x00\x01\x03\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x00", 15, "codec: varint overflow" },
    { "huge table counts", "\x01\x00\x01\x06\xff\xff\xff\xff\x0f\x00", 10, "codec: truncated" },
    { "back-reference without flag", "\x01\x00\x01\x07\x00", 5, "codec: bad back-reference" },
    { "back-reference ahead", "\x01\x01\x01\x06\x00\x01\x02\x07\x05", 9, "codec: bad back-reference" },
    { "nil key", "\x01\x00\x01\x06\x00\x01\x00\x02", 8, "codec: table key is nil" },
    { "NaN key", "\x01\x00\x01\x06\x00\x01\x04\x00\x00\x00\x00\x00\x00\xf8\x7f\x02", 16, "codec: table key is NaN" },
    { "bad tag", "\x01\x00\x01\x3f", 4, "codec: bad tag 0x3f" },
    { "bad pid kind", "\x01\x00\x01\x08\x03\x00\x00\x01", 8, "codec: bad pid or ref kind 3" },
    { "pid node too large", "\x01\x00\x01\x08\x01\x80\x80\x80\x80\x10\x00\x01", 12, "codec: bad pid or ref node" },
    { "function without allow_functions", "\x01\x00\x01\x09\x00\x00", 6, "codec: functions and module references" },
    { "module without allow_functions", "\x01\x00\x01\x0c\x06string", 11, "codec: functions and module references" },
    { "globals without allow_functions", "\x01\x00\x01\x0b", 4, "codec: functions and module references" },
    { "too many values", "\x01\x00\xff\xff\xff\xff\x0f", 7, "codec: truncated" },
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    lua_settop(L, 0);
    int n = codec_decode(L, (const unsigned char *)cases[i].bytes, cases[i].len, &LIM_DATA);
    const char *m = n < 0 ? lua_tostring(L, -1) : "";
    char name[128];
    snprintf(name, sizeof name, "decode refuses %s", cases[i].name);
    CHECK(n == -1 && lua_gettop(L) == 1 && m && strncmp(m, cases[i].err, strlen(cases[i].err)) == 0, name,
          "n=%d top=%d '%s'", n, lua_gettop(L), m ? m : "(null)");
  }
  lua_settop(L, 0);
  unsigned char nm[] = { 1, 0, 1, 6, 0x80, 0x00, 0x80, 0x00 };   /* narr, nhash: 0 in two bytes */
  int n = codec_decode(L, nm, sizeof nm, &LIM_DATA);
  CHECK(n == 1 && lua_istable(L, -1), "non-minimal varints decode", "%d", n);
  lua_settop(L, 0);

  /* every strict prefix of a valid message is refused */
  run(L, "msg = encode({1, 'two', {3, x = pid(4)}, y = 2.5, z = {true, false}}, 'second')");
  lua_getglobal(L, "msg");
  size_t len;
  const char *s = lua_tolstring(L, -1, &len);
  int all = 1;
  for (size_t k = 0; k < len; k++) {
    int top = lua_gettop(L);
    if (codec_decode(L, (const unsigned char *)s, k, &LIM_FN) != -1 || lua_gettop(L) != top + 1) all = 0;
    lua_settop(L, top);
  }
  CHECK(all, "every truncation of a valid message is refused", "len %zu", len);
  codec_limits shallow = { .max_size = CODEC_DEFAULT_MAX_SIZE, .max_depth = 1, .allow_functions = 0 };
  n = codec_decode(L, (const unsigned char *)s, len, &shallow);
  CHECK(n == -1 && strcmp(lua_tostring(L, -1), "codec: nesting deeper than 1") == 0, "decode enforces max_depth",
        "%s", n < 0 ? lua_tostring(L, -1) : "decoded");
  lua_settop(L, 1);
  codec_limits tight = { .max_size = len - 1, .max_depth = CODEC_DEFAULT_MAX_DEPTH, .allow_functions = 0 };
  n = codec_decode(L, (const unsigned char *)s, len, &tight);
  CHECK(n == -1 && strstr(lua_tostring(L, -1), "message larger than"), "decode enforces max_size", " ");
  lua_settop(L, 0);

  /* functions encoded locally are refused by an untrusted decode */
  run(L, "fnmsg = encode(function() return 1 end)");
  lua_getglobal(L, "fnmsg");
  s = lua_tolstring(L, -1, &len);
  n = codec_decode(L, (const unsigned char *)s, len, &LIM_DATA);
  CHECK(n == -1 && strstr(lua_tostring(L, -1), "not accepted"), "bytecode needs allow_functions to decode", " ");
  lua_settop(L, 0);
  run(L, "bad = encode(function() return 1 end):gsub('\\27Lua', '\\27Lub')");
  lua_getglobal(L, "bad");
  s = lua_tolstring(L, -1, &len);
  n = codec_decode(L, (const unsigned char *)s, len, &LIM_FN);
  CHECK(n == -1 && strstr(lua_tostring(L, -1), "codec: bad function"), "a corrupt chunk header is refused", "%s",
        n < 0 ? lua_tostring(L, -1) : "decoded");
  lua_settop(L, 0);
}

/* ---- small C stacks ---- */

typedef struct deep_job { lua_State *L; int ok; } deep_job;

/* Encodes and decodes the 1000-level chain at the top of the stack. */
static void *deep_thread(void *ud) {
  deep_job *j = ud;
  codec_limits lim = { .max_size = CODEC_DEFAULT_MAX_SIZE, .max_depth = CODEC_HARD_DEPTH, .allow_functions = 1 };
  codec_buf b = {0};
  int top = lua_gettop(j->L);
  j->ok = codec_encode(j->L, top, 1, "msg", &lim, &b) == 0 &&
          codec_decode(j->L, b.data, b.len, &lim) == 1 && lua_istable(j->L, -1);
  codec_buf_free(&b);
  lua_settop(j->L, top);
  return NULL;
}

/* Nesting costs no C stack: the deepest message allowed goes through on a
** 64 KiB thread, the smallest stack a process thread may be given. */
static void test_small_stack(lua_State *L) {
  if (luaL_dostring(L, "local t = {} local c = t for i = 2, 1000 do c[1] = {x = c} c = c[1] end return t")) {
    CHECK(0, "deep chain builds", "%s", lua_tostring(L, -1));
    return;
  }
  deep_job j = { L, 0 };
  pthread_attr_t attr;
  pthread_t th;
  pthread_attr_init(&attr);
  pthread_attr_setstacksize(&attr, 64 * 1024);
  int r = pthread_create(&th, &attr, deep_thread, &j);
  if (r == 0) pthread_join(th, NULL);
  pthread_attr_destroy(&attr);
  CHECK(r == 0 && j.ok, "1000 levels encode and decode on a 64 KiB thread stack", "create %d, ok %d", r, j.ok);
  lua_settop(L, 0);
}

/* ---- memory errors ---- */

/* Allocations that may still grow memory before the allocator refuses; -1: no limit. */
static long alloc_budget = -1;

static void *limited_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  (void)ud;
  if (nsize == 0) { free(ptr); return NULL; }
  if (ptr == NULL || nsize > osize) {   /* Lua expects shrinking never to fail */
    if (alloc_budget == 0) return NULL;
    if (alloc_budget > 0) alloc_budget--;
  }
  return realloc(ptr, nsize);
}

static const unsigned char *mem_msg;
static size_t mem_len;

static int mem_decode(lua_State *L) {
  int n = codec_decode(L, mem_msg, mem_len, &LIM_FN);
  lua_pushinteger(L, n);
  return 1;
}

static int mem_encode(lua_State *L) {
  codec_buf b = {0};
  int r = codec_encode(L, 1, lua_gettop(L), "args", &LIM_FN, &b);
  codec_buf_free(&b);
  lua_pushinteger(L, r);
  return 1;
}

/* Lua memory errors in the middle of a decode or of building the module
** map surface as errors and leak nothing (LeakSanitizer checks the leaks). */
static void test_memory_errors(lua_State *A) {
  int r = 0;
  if (luaL_dostring(A, "local s, x = string, 3 local t = {1, 'x', {y = pid(3), z = string.rep('q', 100)}} "
                       "t.f = function(a) return s.format('%d', a + x) end return t, print, string, ref(4)")) {
    CHECK(0, "memory test message builds", "%s", lua_tostring(A, -1));
    return;
  }
  codec_buf b = {0};
  r = codec_encode(A, 1, lua_gettop(A), "args", &LIM_FN, &b);
  lua_settop(A, 0);
  CHECK(r == 0, "memory test message encodes", " ");
  mem_msg = b.data; mem_len = b.len;
  lua_State *M = lua_newstate(limited_alloc, NULL);
  luaL_openlibs(M);
  lua_register(M, "pid", l_pid);
  lua_register(M, "ref", l_ref);
  int ok = 0, memerr = 0, other = 0;
  for (long budget = 0; budget < 5000 && !ok; budget++) {
    lua_pushcfunction(M, mem_decode);
    alloc_budget = budget;
    int st = lua_pcall(M, 0, LUA_MULTRET, 0);
    alloc_budget = -1;
    if (st == LUA_OK && lua_tointeger(M, -1) == 4) ok = 1;
    else if (st == LUA_ERRMEM || (st == LUA_OK && lua_tointeger(M, -1) == -1)) memerr++;
    else other++;
    lua_settop(M, 0);
    lua_gc(M, LUA_GCCOLLECT);
  }
  CHECK(ok && memerr > 0 && other == 0, "decode survives memory errors at every allocation",
        "ok %d, memory errors %d, other %d", ok, memerr, other);
  ok = memerr = other = 0;
  for (long budget = 0; budget < 5000 && !ok; budget++) {
    lua_pushfstring(M, "package.loaded.m%d = {} return {1, {2}}, string, print, function() return string end",
                    (int)budget);      /* a new module each time: the map is rebuilt */
    if (luaL_dostring(M, lua_tostring(M, -1))) { other++; break; }
    lua_remove(M, 1);
    lua_pushcfunction(M, mem_encode);
    lua_insert(M, 1);
    alloc_budget = budget;
    int st = lua_pcall(M, lua_gettop(M) - 1, 1, 0);
    alloc_budget = -1;
    if (st == LUA_OK && lua_tointeger(M, -1) == 0) ok = 1;
    else if (st == LUA_ERRMEM) memerr++;
    else other++;
    lua_settop(M, 0);
    lua_gc(M, LUA_GCCOLLECT);
  }
  CHECK(ok && memerr > 0 && other == 0, "encode survives memory errors in the module map",
        "ok %d, memory errors %d, other %d", ok, memerr, other);
  lua_close(M);
  codec_buf_free(&b);
}

/* ---- fuzz ---- */

static uint64_t rng_state = 0x2545F4914F6CDD1DULL;

static uint64_t rng(void) {     /* xorshift64* */
  rng_state ^= rng_state >> 12;
  rng_state ^= rng_state << 25;
  rng_state ^= rng_state >> 27;
  return rng_state * 0x2545F4914F6CDD1DULL;
}

/* The short decoder against the general one, on single values made valid,
** near valid and broken. The header flag CODEC_F_SHARED (0x01) changes
** nothing for a scalar but turns the short way off, so decoding the same
** bytes with it set is the general decoder's verdict: both must agree on
** the count, the value (type, integer or float, its bits) or the error. */
static int same_value(lua_State *L, int a, int b) {
  if (lua_type(L, a) != lua_type(L, b)) return 0;
  if (lua_type(L, a) != LUA_TNUMBER) return lua_rawequal(L, a, b);
  if (lua_isinteger(L, a) != lua_isinteger(L, b)) return 0;
  if (lua_isinteger(L, a)) return lua_tointeger(L, a) == lua_tointeger(L, b);
  lua_Number x = lua_tonumber(L, a), y = lua_tonumber(L, b);
  return memcmp(&x, &y, sizeof x) == 0;
}

static void test_short_decoder_agrees(lua_State *L) {
  static const unsigned char tags[] = { 0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x3f };
  unsigned char b[40], g[40];
  long n_short = 0, differ = 0;
  for (long it = 0; it < 100000; it++) {
    size_t len = 4;
    b[0] = rng() % 16 ? 1 : (unsigned char)rng();                 /* version */
    b[1] = 0;
    b[2] = rng() % 8 ? 1 : (unsigned char)(rng() % 3);            /* the count */
    b[3] = tags[rng() % sizeof tags];
    size_t body = rng() % 4 == 0 ? rng() % 24 : rng() % 12;
    for (size_t j = 0; j < body; j++) {
      unsigned r = (unsigned)rng();
      b[len++] = r % 4 == 0 ? 0xff : r % 4 == 1 ? 0x80 : r % 4 == 2 ? (unsigned char)(r >> 8) & 0x7f : (unsigned char)(r >> 8);
    }
    if (b[3] == 0x05 && body && rng() % 2) b[4] = (unsigned char)(body - 1 + (rng() % 3) - 1);   /* length near right */
    codec_limits lim = LIM_DATA;
    if (rng() % 8 == 0) lim.max_size = 1 + rng() % 20;
    memcpy(g, b, len);
    g[1] = 0x01;
    lua_settop(L, 0);
    int ns = codec_decode(L, b, len, &lim);
    int top = lua_gettop(L);
    int ng = codec_decode(L, g, len, &lim);
    int ok;
    if (ns < 0 || ng < 0)
      ok = ns == ng && strcmp(lua_tostring(L, top), lua_tostring(L, -1)) == 0;
    else
      ok = ns == ng && top == ns && lua_gettop(L) == 2 * ns && (ns != 1 || same_value(L, 1, 2));
    if (ns == 1 && b[0] == 1 && b[2] == 1) n_short++;
    if (!ok && differ++ < 3) {
      fprintf(stderr, "  differ: ns %d ng %d, bytes", ns, ng);
      for (size_t j = 0; j < len; j++) fprintf(stderr, " %02x", b[j]);
      fprintf(stderr, "\n");
    }
  }
  lua_settop(L, 0);
  CHECK(differ == 0 && n_short > 1000, "the short decoder agrees with the general one on single values",
        "%ld of 100000 differ; %ld decoded", differ, n_short);
}

static void test_fuzz(lua_State *L) {
  /* Seeds use no string or userdata keys: those iterate in an order that
  ** depends on Lua's per-state hash seed, and the corpus must be the same
  ** bytes on every run for the fixed-seed mutations to be reproducible. */
  static const char *seeds[] = {
    "return 1, 'two', nil, true, false, 2.5, -0.0, 0/0, math.mininteger",
    "return {1, 2, 3, [10] = 'y', [true] = {}, [-5] = 1.25}",
    "local t = {} t[2] = t t[1] = t return t, t",
    "local a = {1} return {a, a, {a, [7] = a}}",
    "return {pid(1), ref(2), {[false] = pid(3, 1, 2), [3] = ref(99)}}",
    "return string.rep('abc', 50), {string.rep('\\0', 20)}",
    "local t = {} for i = 1, 40 do t[i] = {i, tostring(i)} end return t",
    "local t = {} local c = t for i = 1, 30 do c[1] = {i} c = c[1] end return t",
    "return {[1.5] = 1, [2^60] = 2, [-1] = {}, [0] = {[2] = {[3] = {'d'}}}}",
    "local t = {} for i = 1, 200 do t[i * 7] = i end return t",
  };
  enum { NSEEDS = sizeof seeds / sizeof seeds[0], MAXLEN = 4096 };
  unsigned char *corpus[NSEEDS];
  size_t clen[NSEEDS];
  for (int i = 0; i < NSEEDS; i++) {
    if (luaL_dostring(L, seeds[i]) != LUA_OK) {
      CHECK(0, "fuzz seed runs", "%s: %s", seeds[i], lua_tostring(L, -1));
      return;
    }
    int n = lua_gettop(L);
    codec_buf b = {0};
    if (codec_encode(L, 1, n, "msg", &LIM_DATA, &b) != 0) {
      CHECK(0, "fuzz seed encodes", "%s: %s", seeds[i], lua_tostring(L, -1));
      lua_settop(L, 0);
      return;
    }
    corpus[i] = b.data; clen[i] = b.len;
    lua_settop(L, 0);
    int k = codec_decode(L, b.data, b.len, &LIM_DATA);
    CHECK(k == n, "fuzz seed round-trips", "%s: %d %s", seeds[i], k, k < 0 ? lua_tostring(L, -1) : "");
    lua_settop(L, 0);
  }
  static unsigned char buf[MAXLEN];
  long iterations = 200000, decoded = 0, refused = 0, unbalanced = 0;
  for (long it = 0; it < iterations; it++) {
    int s = (int)(rng() % NSEEDS);
    size_t len = clen[s];
    memcpy(buf, corpus[s], len);
    int rounds = 1 + (int)(rng() % 3);
    for (int r = 0; r < rounds; r++) {
      switch (rng() % 8) {
      case 0: case 1:                 /* bit flips */
        if (len) { size_t at = rng() % len; buf[at] ^= (unsigned char)(1u << (rng() % 8)); }
        break;
      case 2:                         /* truncation */
        if (len) len = rng() % len;
        break;
      case 3: {                       /* insertion */
        size_t at = len ? rng() % (len + 1) : 0, k = 1 + rng() % 8;
        if (len + k > MAXLEN) break;
        memmove(buf + at + k, buf + at, len - at);
        for (size_t j = 0; j < k; j++) buf[at + j] = (unsigned char)rng();
        len += k;
        break;
      }
      case 4: {                       /* length-field corruption: a large or boundary varint */
        if (len < 4) break;
        size_t at = 2 + rng() % (len - 2);
        static const unsigned char forms[][5] = {
          { 0xff, 0xff, 0xff, 0xff, 0x0f }, { 0x80, 0x80, 0x80, 0x80, 0x01 }, { 0x7f, 0, 0, 0, 0 },
          { 0xff, 0x7f, 0, 0, 0 }, { 0x00, 0, 0, 0, 0 }, { 0x81, 0x00, 0, 0, 0 } };
        const unsigned char *f = forms[rng() % 6];
        for (size_t j = 0; j < 5 && at + j < len; j++) buf[at + j] = f[j];
        break;
      }
      case 5:                         /* byte set to a tag value */
        if (len) { size_t at = rng() % len; buf[at] = (unsigned char)(rng() % 16); }
        break;
      case 6: {                       /* deletion */
        if (len < 2) break;
        size_t at = rng() % len, k = 1 + rng() % (len - at < 8 ? len - at : 8);
        memmove(buf + at, buf + at + k, len - at - k);
        len -= k;
        break;
      }
      case 7:                         /* random bytes after a valid header */
        if (rng() % 4 == 0) {
          len = 3 + rng() % 64;
          buf[0] = 1; buf[1] = (unsigned char)(rng() % 2); buf[2] = (unsigned char)(1 + rng() % 4);
          for (size_t j = 3; j < len; j++) buf[j] = (unsigned char)(rng() % 20);
        }
        break;
      }
    }
    int n = codec_decode(L, buf, len, &LIM_DATA);
    if (n >= 0) decoded++; else refused++;
    if (lua_gettop(L) != (n >= 0 ? n : 1) && unbalanced++ == 0) {
      printf("# unbalanced after input %ld:", it);
      for (size_t j = 0; j < len; j++) printf(" %02x", buf[j]);
      printf("\n");
    }
    lua_settop(L, 0);
    if ((it & 4095) == 0) lua_gc(L, LUA_GCCOLLECT);
  }
  for (int i = 0; i < NSEEDS; i++) free(corpus[i]);
  printf("# fuzz: %ld inputs, %ld decoded, %ld refused\n", iterations, decoded, refused);
  CHECK(unbalanced == 0, "fuzzed decodes leave the stack balanced", "%ld unbalanced", unbalanced);
  CHECK(decoded + refused == iterations && refused > iterations / 2 && decoded > 0,
        "fuzzed decodes return a count or -1", "%ld decoded, %ld refused", decoded, refused);

  /* random well-formed values round-trip to equal values */
  run(L, "function rnd(depth) "
         "  local k = math.random(1, depth > 3 and 5 or 7) "
         "  if k == 1 then return math.random(-1 << 40, 1 << 40) "
         "  elseif k == 2 then return math.random() * 1e6 "
         "  elseif k == 3 then return string.rep(string.char(math.random(0, 255)), math.random(0, 20)) "
         "  elseif k == 4 then return math.random(2) == 1 "
         "  elseif k == 5 then return pid(math.random(1, 100)) "
         "  else local t = {} for i = 1, math.random(0, 6) do t[i] = rnd(depth + 1) end "
         "       for i = 1, math.random(0, 6) do t['k' .. i] = rnd(depth + 1) end return t end "
         "end "
         "function same(a, b) "
         "  if type(a) ~= 'table' then return rawequal(a, b) or (a ~= a and b ~= b) end "
         "  if type(b) ~= 'table' then return false end "
         "  for k, v in pairs(a) do if not same(v, b[k]) then return false end end "
         "  for k in pairs(b) do if a[k] == nil then return false end end "
         "  return true "
         "end "
         "math.randomseed(7) "
         "ok_all = true "
         "for i = 1, 2000 do local v = rnd(0) local r = {decode(encode(v))} "
         "  if not r[1] or not same(v, r[2]) then ok_all = false end end");
  LCHECK(L, "ok_all", "2000 random values round-trip equal");
}

int main(void) {
  lua_State *A = state_new("A"), *B = state_new("B");
  test_scalars(A, B);
  test_single_values(A);
  test_tables(A, B);
  test_terms(A, B);
  test_functions(A, B);
  test_modules(A, B);
  test_errors(A);
  test_decode_errors(B);
  test_memory_errors(A);
  test_small_stack(A);
  test_fuzz(B);
  test_short_decoder_agrees(B);
  CHECK(lua_gettop(A) == 0 && lua_gettop(B) == 0, "states end with empty stacks", "%d %d", lua_gettop(A),
        lua_gettop(B));
  lua_close(A);
  lua_close(B);
  return ctest_end();
}
