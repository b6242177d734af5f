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
/* Of other nodes' pids and refs: the same, with a __gc that drops the ref. */
static const char *const term_remote_mt_name[] = { NULL, "erlangen.rpid", "erlangen.rref" };
static const char term_cache_key = 'c';

/* The module's one global. `refs` is the node-wide ref counter: atomic, so
** any thread may draw from it; refs are never reused while the node runs.
** `nodes` is set once by remote_install (release), before any pid of
** another node can exist; read with acquire. */
static struct {
  _Atomic uint64_t refs;
  const term_nodes *_Atomic nodes;
} T = { .refs = 1 };

term_id term_new_ref(void) {
  term_id id = { atomic_fetch_add_explicit(&T.refs, 1, memory_order_relaxed), 0, 0 };
  return id;
}

void term_set_nodes(const term_nodes *nodes) {
  atomic_store_explicit(&T.nodes, nodes, memory_order_release);
}

static const term_nodes *nodes(void) { return atomic_load_explicit(&T.nodes, memory_order_acquire); }

/* The block of a pid or ref userdata. `mark` is TERM_MARK xor its kind: a
** userdata is ours when it has this size and a mark that decodes to a kind.
** No other library makes such a block by chance (64 bits must match), and
** Lua code cannot make a full userdata at all. */
typedef struct term_ud { term_id id; uint64_t mark; } term_ud;
#define TERM_MARK UINT64_C(0x8f1d6b2ce07a4935)

static enum term_kind ud_kind(const term_ud *u) {
  uint64_t k = u->mark ^ TERM_MARK;
  return k == TERM_PID || k == TERM_REF ? (enum term_kind)k : TERM_NONE;
}

static int term_tostring(lua_State *L) {
  term_id id;
  enum term_kind k = term_test(L, 1, &id);
  if (k == TERM_NONE) {   /* a foreign block given our metatable through the debug library */
    lua_pushfstring(L, "userdata: %p", lua_touserdata(L, 1));
    return 1;
  }
  const term_nodes *ns = id.node ? nodes() : NULL;
  const char *node = ns ? ns->name(id.node) : NULL;
  if (node)   /* a pid or ref of another node shows that node's name */
    lua_pushfstring(L, k == TERM_PID ? "<%s.%I>" : "#Ref<%s.%I>", node, (lua_Integer)id.n);
  else if (k == TERM_PID)
    lua_pushfstring(L, "<%d.%I>", (int)id.node, (lua_Integer)id.n);
  else
    lua_pushfstring(L, "#Ref<%d.%I>", (int)id.node, (lua_Integer)id.n);
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

/* __gc of another node's pid or ref. */
static int term_gc(lua_State *L) {
  term_id id;
  const term_nodes *ns = nodes();
  if (term_test(L, 1, &id) != TERM_NONE && id.node && ns) ns->unref(id.node);
  return 0;
}

static void term_metatable(lua_State *L, enum term_kind kind, int remote) {
  if (luaL_newmetatable(L, (remote ? term_remote_mt_name : term_mt_name)[kind])) {
    if (remote) { lua_pushcfunction(L, term_gc); lua_setfield(L, -2, "__gc"); }
    lua_pushcfunction(L, term_tostring); lua_setfield(L, -2, "__tostring");
    lua_pushcfunction(L, term_lt); lua_setfield(L, -2, "__lt");
    lua_pushstring(L, kind == TERM_PID ? "pid" : "ref"); lua_setfield(L, -2, "__name");
    lua_pushboolean(L, 0); lua_setfield(L, -2, "__metatable");
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
  u->id = id; u->mark = TERM_MARK ^ (uint64_t)kind;
  const term_nodes *ns = id.node ? nodes() : NULL;
  term_metatable(L, kind, ns != NULL);
  lua_setmetatable(L, -2);   /* the __gc is set before the ref is taken: it is always dropped */
  if (ns) ns->ref(id.node);
  lua_pushlstring(L, key, sizeof key);
  lua_pushvalue(L, -2);
  lua_rawset(L, -4);
  lua_remove(L, -2);
}

/* One look at the value's own block, rather than at its metatable (a
** chain of three loads, each a cache miss in a process that has not run
** for a while): term_test runs on every send. A foreign userdata given our
** metatable through the debug library is not a term; a term whose
** metatable the debug library took away still is one. */
enum term_kind term_test(lua_State *L, int idx, term_id *out) {
  if (lua_type(L, idx) != LUA_TUSERDATA || lua_rawlen(L, idx) != sizeof(term_ud)) return TERM_NONE;
  const term_ud *u = lua_touserdata(L, idx);
  enum term_kind k = ud_kind(u);
  if (k != TERM_NONE && out) *out = u->id;
  return k;
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
