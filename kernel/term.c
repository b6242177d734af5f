/*
** term.c — pids and refs as interned Lua userdata.
*/
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <lauxlib.h>
#include "term.h"

/* Registry keys: the address of these statics is the key. */
static const char *const term_mt_name[] = { NULL, "erlangen.pid", "erlangen.ref" };
static const char term_cache_key = 'c';
static const char term_kind_key = 'k';   /* in our metatables: the kind, as an integer */

/* The module's one global. `refs` is the node-wide ref counter: atomic, so
** any thread may draw from it; refs are never reused while the node runs.
** `node_name` is set once at kernel start, before any pid of another node
** can exist. */
static struct {
  _Atomic uint64_t refs;
  const char *(*_Atomic node_name)(uint32_t node);
} T = { .refs = 1 };

term_id term_new_ref(void) {
  term_id id = { atomic_fetch_add_explicit(&T.refs, 1, memory_order_relaxed), 0, 0 };
  return id;
}

void term_set_namer(const char *(*node_name)(uint32_t node)) { atomic_store(&T.node_name, node_name); }

typedef struct term_ud { term_id id; enum term_kind kind; } term_ud;

static int term_tostring(lua_State *L) {
  term_ud *u = lua_touserdata(L, 1);
  const char *(*namer)(uint32_t) = atomic_load(&T.node_name);
  const char *node = u->id.node && namer ? namer(u->id.node) : NULL;
  if (node)   /* a pid or ref of another node shows that node's name */
    lua_pushfstring(L, u->kind == TERM_PID ? "<%s.%I>" : "#Ref<%s.%I>", node, (lua_Integer)u->id.n);
  else if (u->kind == TERM_PID)
    lua_pushfstring(L, "<%d.%I>", (int)u->id.node, (lua_Integer)u->id.n);
  else
    lua_pushfstring(L, "#Ref<%d.%I>", (int)u->id.node, (lua_Integer)u->id.n);
  return 1;
}

static int term_lt(lua_State *L) {  /* ordering, so pids can be sorted */
  term_id a, b;
  enum term_kind ka = term_test(L, 1, &a), kb = term_test(L, 2, &b);
  if (ka == TERM_NONE || ka != kb) return luaL_error(L, "attempt to compare %s with %s",
                                                     luaL_typename(L, 1), luaL_typename(L, 2));
  lua_pushboolean(L, a.node != b.node ? a.node < b.node :
                     a.creation != b.creation ? a.creation < b.creation : a.n < b.n);
  return 1;
}

static void term_metatable(lua_State *L, enum term_kind kind) {
  if (luaL_newmetatable(L, term_mt_name[kind])) {
    lua_pushcfunction(L, term_tostring); lua_setfield(L, -2, "__tostring");
    lua_pushcfunction(L, term_lt); lua_setfield(L, -2, "__lt");
    lua_pushstring(L, kind == TERM_PID ? "pid" : "ref"); lua_setfield(L, -2, "__name");
    lua_pushboolean(L, 0); lua_setfield(L, -2, "__metatable");
    lua_pushinteger(L, kind); lua_rawsetp(L, -2, &term_kind_key);
  }
}

/* Pushes the weak-valued cache table, creating it on first use. */
static void term_cache(lua_State *L) {
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &term_cache_key) != LUA_TTABLE) {
    lua_pop(L, 1);
    lua_newtable(L);
    lua_createtable(L, 0, 1);
    lua_pushliteral(L, "v"); lua_setfield(L, -2, "__mode");
    lua_setmetatable(L, -2);
    lua_pushvalue(L, -1);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &term_cache_key);
  }
}

void term_push(lua_State *L, enum term_kind kind, term_id id) {
  char key[1 + sizeof id];
  key[0] = (char)kind;
  memcpy(key + 1, &id, sizeof id);
  term_cache(L);
  lua_pushlstring(L, key, sizeof key);
  if (lua_rawget(L, -2) == LUA_TUSERDATA) { lua_remove(L, -2); return; }
  lua_pop(L, 1);
  term_ud *u = lua_newuserdatauv(L, sizeof *u, 0);
  u->id = id; u->kind = kind;
  term_metatable(L, kind);
  lua_setmetatable(L, -2);
  lua_pushlstring(L, key, sizeof key);
  lua_pushvalue(L, -2);
  lua_rawset(L, -4);
  lua_remove(L, -2);
}

/* One look into the value's metatable (a key only this file knows) rather
** than fetching each of ours from the registry by name: term_test runs on
** every send. The size check keeps a foreign userdata that was given our
** metatable through the debug library from being read as a term. */
enum term_kind term_test(lua_State *L, int idx, term_id *out) {
  if (lua_type(L, idx) != LUA_TUSERDATA || !lua_getmetatable(L, idx)) return TERM_NONE;
  lua_Integer k = lua_rawgetp(L, -1, &term_kind_key) == LUA_TNUMBER ? lua_tointeger(L, -1) : 0;
  lua_pop(L, 2);
  if ((k != TERM_PID && k != TERM_REF) || lua_rawlen(L, idx) != sizeof(term_ud)) return TERM_NONE;
  if (out) *out = ((term_ud *)lua_touserdata(L, idx))->id;
  return (enum term_kind)k;
}

term_id term_check(lua_State *L, int arg, enum term_kind kind) {
  term_id id = {0, 0, 0};
  enum term_kind got = term_test(L, arg, &id);
  if (got != kind) {
    const char *what = got == TERM_PID ? "pid" : got == TERM_REF ? "ref" : luaL_typename(L, arg);
    const char *msg = lua_pushfstring(L, "%s expected, got %s",
                                      kind == TERM_PID ? "pid" : "ref", what);
    luaL_argerror(L, arg, msg);
  }
  return id;
}
