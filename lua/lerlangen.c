/*
** lerlangen.c — the `erlangen` Lua module: processes, messages, signals,
** names and introspection, over the kernel in kernel/.
*/
#include <dlfcn.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <lauxlib.h>
#include "erlangen_config.h"
#include "codec.h"
#include "conn.h"
#include "dist.h"
#include "node.h"
#include "portmap.h"
#include "erlangen.h"
#include "kernel.h"
#include "sig.h"
#include "process.h"
#include "registry.h"
#include "state.h"
#include "term.h"
#include "trace.h"

static const char sentinel_key = 's';      /* registry: stops the kernel when a stock lua closes */

#define SCRATCH_KEEP (64u * 1024u)   /* largest send buffer kept for reuse */

/* ---- the calling process ---- */

static void set_extra(lua_State *L, proc *p) { *(proc **)lua_getextraspace(L) = p; }

static lua_State *main_thread(lua_State *L) {
  lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_MAINTHREAD);
  lua_State *main = lua_tothread(L, -1);
  lua_pop(L, 1);
  return main;
}

/* Ends the calling host thread's process, if it has one, with "normal". */
static void detach_self(lua_State *L) {
  proc *p = proc_self();
  if (p && p->attached) {
    set_extra(main_thread(L), NULL);   /* erlangen_interrupt must not see it freed */
    state_bind(L, NULL);               /* nor the allocator */
    size_t len;
    const unsigned char *r = kern_reason(KR_NORMAL, &len);
    proc_detach(p, r, len);
  }
  state_set_current(NULL);
}

static int raise_doom(lua_State *L, proc *p) {
  /* An attached process exits here, except inside receive's protected
  ** steps: receive exits it when they return (it holds queue entries). */
  if (p->attached && !p->in_receive) proc_exit_doomed(p);
  return state_raise_doom(L, p);
}

/* The process of the calling thread. A host thread that is not a process
** yet (stock lua) is attached; an attached process that has exited is
** replaced by a fresh one, as the Erlang shell does. */
static proc *cur(lua_State *L) {
  proc *p = proc_self();
  int replace = p && p->attached && p->status != PROC_ALIVE;
  if (replace) {
    detach_self(L);
    p = NULL;
  }
  if (!p) {
    /* A kernel thread preparing a state for its next process (the host's
    ** open_libs runs then) has no process to act as. */
    if (!replace && state_is_kernel(L))
      luaL_error(L, "erlangen: no process yet (called while a process state is being prepared)");
    if (kern_ensure() != 0) luaL_error(L, "erlangen: the kernel is not running");
    lua_State *main = main_thread(L);
    p = proc_attach(main);
    if (!p) luaL_error(L, "erlangen: out of memory");
    set_extra(main, p);
    state_bind(main, p);
    state_set_current(L);   /* the Lua thread running now, maybe a coroutine */
  }
  if (atomic_load_explicit(&p->doomed, memory_order_acquire)) raise_doom(L, p);
  /* A load first: the exchange writes, and this runs on every call. */
  if (atomic_load_explicit(&p->interrupt, memory_order_relaxed) && atomic_exchange(&p->interrupt, 0))
    luaL_error(L, "interrupted");
  return p;
}

/* sent and received have one writer, the owner: a load and a store, no
** locked read-modify-write. */
static inline void count_one(_Atomic uint64_t *c) {
  atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + 1, memory_order_relaxed);
}

static int cancelled(void *ud) {
  proc *p = ud;
  return atomic_load(&p->doomed) || atomic_load(&p->interrupt);
}

/* The timeout at `arg`: a non-negative number of seconds. */
static double check_timeout(lua_State *L, int arg) {
  lua_Number t = luaL_checknumber(L, arg);
  luaL_argcheck(L, t >= 0 && t == t, arg, "timeout must be a non-negative number");
  return t;
}

static double opt_deadline(lua_State *L, int arg) {
  if (lua_isnoneornil(L, arg)) return INFINITY;
  return mbox_now() + check_timeout(L, arg);
}

/* ---- encoding helpers ---- */

/* Encodes n values at `first` or raises the codec's error. */
static codec_buf encode_or_raise(lua_State *L, int first, int n, const char *root, int fns) {
  codec_limits lim = kern_limits(fns);
  codec_buf b = {0};
  if (codec_encode(L, first, n, root, &lim, &b) != 0) lua_error(L);  /* b stays empty */
  return b;
}


static int free_box(lua_State *L) {
  void **box = lua_touserdata(L, 1);
  free(*box);
  *box = NULL;
  return 0;
}

/* Pushes a box for one malloc'ed block, freed when the box is collected. */
static void **malloc_box(lua_State *L) {
  void **box = lua_newuserdatauv(L, sizeof *box, 0);
  *box = NULL;
  if (luaL_newmetatable(L, "erlangen.malloc_box")) {
    lua_pushcfunction(L, free_box);
    lua_setfield(L, -2, "__gc");
  }
  lua_setmetatable(L, -2);
  return box;
}

/* ---- tracing ---- */

/* Sends {"trace", self, event, v1 [, v2]} to self's tracer (trace.h): the
** values at stack indexes a and b (0: none). A value that cannot be sent
** is replaced by its tostring. Never waits, never raises but for memory. */
static void trace_event(lua_State *L, proc *self, const char *event, int a, int b) {
  a = a ? lua_absindex(L, a) : 0;
  b = b ? lua_absindex(L, b) : 0;
  lua_createtable(L, 5, 0);
  lua_pushliteral(L, "trace");
  lua_rawseti(L, -2, 1);
  term_push(L, TERM_PID, self->pid);
  lua_rawseti(L, -2, 2);
  lua_pushstring(L, event);
  lua_rawseti(L, -2, 3);
  if (a) { lua_pushvalue(L, a); lua_rawseti(L, -2, 4); }
  if (b) { lua_pushvalue(L, b); lua_rawseti(L, -2, 5); }
  codec_limits lim = kern_limits(1);
  codec_buf buf = {0};
  for (int i = 4; codec_encode(L, -1, 1, "msg", &lim, &buf) != 0; i++) {
    lua_pop(L, 1);   /* the codec's message */
    if (i > 5) break;
    lua_rawgeti(L, -1, i);
    luaL_tolstring(L, -1, NULL);
    lua_rawseti(L, -3, i);
    lua_pop(L, 1);
  }
  if (buf.data) trace_deliver(self, buf.data, buf.len);
  codec_buf_free(&buf);
  lua_pop(L, 1);
}

#define TRACED(self, ev) (__builtin_expect(atomic_load_explicit(&(self)->trace, memory_order_relaxed) & (ev), 0))

/* ---- spawning ---- */

static void check_entry(lua_State *L, int arg) {
  int t = lua_type(L, arg);
  if (t != LUA_TFUNCTION && t != LUA_TSTRING)
    luaL_typeerror(L, arg, "function or \"module.function\"");
}

/* The caller's package.path and package.cpath, for a child that inherits
** them (pushed: they live until the caller's frame ends); one that is what
** a new state has anyway is not passed. */
static void inherit_paths(lua_State *L, proc_opts *o, int path, int cpath) {
  if (lua_getglobal(L, "package") != LUA_TTABLE) return;
  const char *def = state_default_paths();
  if (path && lua_getfield(L, -1, "path") == LUA_TSTRING) {
    o->path = lua_tostring(L, -1);
    if (def && strcmp(o->path, def) == 0) o->path = NULL;
  }
  if (cpath && lua_getfield(L, path ? -2 : -1, "cpath") == LUA_TSTRING) {
    o->cpath = lua_tostring(L, -1);
    if (def && strcmp(o->cpath, def + strlen(def) + 1) == 0) o->cpath = NULL;
  }
}

/* Spawns with the function at `fn` and the values above it as arguments;
** pushes pid (and ref when monitoring). The child gets the caller's
** package paths unless o says which (o->path, o->cpath) or `inherit` is 0. */
static int do_spawn_paths(lua_State *L, int fn, const proc_opts *opts, int inherit_path, int inherit_cpath) {
  proc *self = cur(L);
  check_entry(L, fn);
  /* One message for the function and its arguments, so that sharing
  ** between them survives. */
  codec_buf b = encode_or_raise(L, fn, lua_gettop(L) - fn + 1, CODEC_ROOT_SPAWN, 1);
  proc_opts copy = *opts;
  const proc_opts *o = &copy;
  inherit_paths(L, &copy, inherit_path && !opts->path, inherit_cpath && !opts->cpath);
  unsigned char *payload = b.data;
  size_t len = b.len;
  term_id pid, ref;
  const char *err = proc_spawn(self, o, ENTRY_CODEC, payload, len, NULL, &pid, &ref);
  if (err) {
    if (o->name) return luaL_error(L, "spawn: name '%s' %s", o->name, err);
    return luaL_error(L, "spawn: %s", err);
  }
  term_push(L, TERM_PID, pid);
  if (TRACED(self, TRACE_SPAWN)) trace_event(L, self, "spawn", -1, 0);
  if (o->monitor) { term_push(L, TERM_REF, ref); return 2; }
  return 1;
}

static int do_spawn(lua_State *L, int fn, const proc_opts *o) { return do_spawn_paths(L, fn, o, 1, 1); }

static int l_spawn(lua_State *L) { proc_opts o = {0}; return do_spawn(L, 1, &o); }
static int l_spawn_link(lua_State *L) { proc_opts o = {0}; o.link = 1; return do_spawn(L, 1, &o); }
static int l_spawn_monitor(lua_State *L) { proc_opts o = {0}; o.monitor = 1; return do_spawn(L, 1, &o); }

static lua_Integer positive_option(lua_State *L, const char *key) {
  int isnum;
  lua_Integer v = lua_tointegerx(L, -1, &isnum);
  if (!isnum || v <= 0) luaL_error(L, "spawn_opt: option '%s' must be a positive integer", key);
  return v;
}

/* The node index named by the string at `idx`, or raises a bad-argument
** error for argument `arg`. */
static uint32_t node_at(lua_State *L, int idx, int arg) {
  const char *name = lua_tostring(L, idx);
  if (!name) luaL_typeerror(L, arg, "node name");
  uint32_t node;
  char err[300];
  if (dist_node_index(name, &node, err, sizeof err) != 0) luaL_argerror(L, arg, err);
  return node;
}

static uint32_t check_node(lua_State *L, int arg) { return node_at(L, arg, arg); }

/* Encodes the values at first..top in the wire form, or raises naming what
** cannot cross: Lua code never leaves this OS process. */
static codec_buf encode_wire(lua_State *L, int first, int n, const char *root, const char *what) {
  codec_limits lim = kern_limits(0);
  lim.wire = 1;
  codec_buf b = {0};
  if (codec_encode(L, first, n, root, &lim, &b) != 0)
    luaL_error(L, "%s: %s (Lua functions never cross nodes)", what, lua_tostring(L, -1));
  return b;
}

/* spawn_opt{node = ...}: "module.function" and arguments run on that node. */
static int spawn_remote(lua_State *L, uint32_t idx, const proc_opts *o, double timeout) {
  proc *self = cur(L);
  if (lua_type(L, 2) != LUA_TSTRING)
    return luaL_error(L, "spawn_opt: with 'node', the function must be a \"module.function\" name "
                         "(Lua functions never cross nodes)");
  if (idx == 0) return do_spawn(L, 2, o);
  codec_buf b = encode_wire(L, 2, lua_gettop(L) - 1, CODEC_ROOT_SPAWN, "spawn_opt");
  term_id pid, ref;
  char err[200];
  int flags = (o->link ? DIST_SPAWN_LINK : 0) | (o->monitor ? DIST_SPAWN_MONITOR : 0) |
              (o->trap_exit ? DIST_SPAWN_TRAP_EXIT : 0);
  int rc = dist_spawn(self, idx, b.data, b.len, flags, &ref, mbox_now() + timeout,
                      &pid, err, sizeof err);
  codec_buf_free(&b);
  cur(L);
  if (rc != 0) return luaL_error(L, "spawn_opt: on %s: %s", node_name(idx), err);
  term_push(L, TERM_PID, pid);
  if (TRACED(self, TRACE_SPAWN)) trace_event(L, self, "spawn", -1, 0);
  if (o->monitor) { term_push(L, TERM_REF, ref); return 2; }
  return 1;
}

static int l_spawn_opt(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  proc_opts o = {0};
  int remote = 0, inherit_path = 1, inherit_cpath = 1;
  uint32_t idx = 0;
  double timeout = 5;
  lua_pushnil(L);
  while (lua_next(L, 1)) {
    if (lua_type(L, -2) != LUA_TSTRING) return luaL_error(L, "spawn_opt: option names must be strings");
    const char *k = lua_tostring(L, -2);
    if (!strcmp(k, "link")) o.link = lua_toboolean(L, -1);
    else if (!strcmp(k, "monitor")) o.monitor = lua_toboolean(L, -1);
    else if (!strcmp(k, "trap_exit")) o.trap_exit = lua_toboolean(L, -1);
    else if (!strcmp(k, "mailbox")) {
      lua_Integer v = positive_option(L, k);
      if (v > 0x7fffffff) return luaL_error(L, "spawn_opt: option 'mailbox' is too large");
      o.mailbox = (unsigned)v;
    } else if (!strcmp(k, "max_memory")) o.max_memory = (size_t)positive_option(L, k);
    else if (!strcmp(k, "name")) {
      if (lua_type(L, -1) != LUA_TSTRING || lua_rawlen(L, -1) == 0)
        return luaL_error(L, "spawn_opt: option 'name' must be a non-empty string");
      o.name = lua_tostring(L, -1);  /* kept alive by the options table */
    } else if (!strcmp(k, "node")) {
      if (lua_type(L, -1) != LUA_TSTRING) return luaL_error(L, "spawn_opt: option 'node' must be a node name");
      idx = node_at(L, lua_gettop(L), 1);
      remote = 1;
    } else if (!strcmp(k, "path") || !strcmp(k, "cpath")) {
      int is_path = k[0] == 'p';
      if (lua_type(L, -1) == LUA_TSTRING) *(is_path ? &o.path : &o.cpath) = lua_tostring(L, -1);
      else if (lua_type(L, -1) == LUA_TBOOLEAN && !lua_toboolean(L, -1)) *(is_path ? &inherit_path : &inherit_cpath) = 0;
      else return luaL_error(L, "spawn_opt: option '%s' must be a string, or false for the node's default", k);
    } else if (!strcmp(k, "timeout")) {
      if (lua_type(L, -1) != LUA_TNUMBER || !(lua_tonumber(L, -1) > 0))
        return luaL_error(L, "spawn_opt: option 'timeout' must be a positive number");
      timeout = lua_tonumber(L, -1);
    } else return luaL_error(L, "spawn_opt: unknown option '%s'", k);
    lua_pop(L, 1);
  }
  if (remote && (o.name || o.mailbox || o.max_memory || o.path || o.cpath || !inherit_path || !inherit_cpath))
    return luaL_error(L, "spawn_opt: with 'node', only 'link', 'monitor', 'trap_exit' and 'timeout' "
                         "are supported (a remote spawn uses that node's paths)");
  if (remote) return spawn_remote(L, idx, &o, timeout);
  return do_spawn_paths(L, 2, &o, inherit_path, inherit_cpath);
}

static int l_self(lua_State *L) {
  term_push(L, TERM_PID, cur(L)->pid);
  return 1;
}

/* ---- values ---- */

static int l_type(lua_State *L) {
  luaL_checkany(L, 1);
  term_id id;
  enum term_kind k = term_test(L, 1, &id);
  if (k == TERM_PID) lua_pushliteral(L, "pid");
  else if (k == TERM_REF) lua_pushliteral(L, "ref");
  else lua_pushstring(L, luaL_typename(L, 1));
  return 1;
}

static int l_is_pid(lua_State *L) {
  term_id id;
  lua_pushboolean(L, term_test(L, 1, &id) == TERM_PID);
  return 1;
}

static int l_is_ref(lua_State *L) {
  term_id id;
  lua_pushboolean(L, term_test(L, 1, &id) == TERM_REF);
  return 1;
}

/* ---- exit signals ---- */

static int l_exit(lua_State *L) {
  proc *self = cur(L);
  term_id to;
  if (lua_gettop(L) >= 2 && term_test(L, 1, &to) == TERM_PID) {
    luaL_argcheck(L, !lua_isnil(L, 2), 2, "reason expected, got nil");
    codec_buf r = encode_or_raise(L, 2, 1, "reason", 1);
    sig_exit(to, self->pid, r.data, r.len, 0);
    codec_buf_free(&r);
    cur(L);  /* an exit to ourselves takes effect now */
    lua_pushboolean(L, 1);
    return 1;
  }
  if (lua_gettop(L) >= 2) term_check(L, 1, TERM_PID);
  luaL_argcheck(L, !lua_isnoneornil(L, 1), 1, "reason expected");
  lua_settop(L, 1);
  return state_exit(L);
}

static int l_trap_exit(lua_State *L) {
  proc *self = cur(L);
  if (lua_isnone(L, 1)) {
    pthread_mutex_lock(&self->lock);
    int v = self->trap_exit;
    pthread_mutex_unlock(&self->lock);
    lua_pushboolean(L, v);
    return 1;
  }
  lua_pushboolean(L, sig_trap_exit(self, lua_toboolean(L, 1)));
  return 1;
}

/* ---- messages ---- */

/* Resolves a pid, a registered name or an alias at `arg`; returns 0 if no
** such process. *alias gets the alias (n = 0 otherwise). */
static int dest_pid(lua_State *L, int arg, term_id *pid, term_id *alias) {
  *alias = (term_id){0, 0, 0};
  if (lua_type(L, arg) == LUA_TSTRING) return reg_whereis(lua_tostring(L, arg), pid);
  enum term_kind k = term_test(L, arg, pid);
  if (k == TERM_REF) {
    *alias = *pid;
    return reg_alias_owner(*alias, pid);
  }
  if (k != TERM_PID) luaL_typeerror(L, arg, "pid, name or alias");
  return 1;
}

/* send to a pid or alias of another node, or to {name, node}. */
static int send_remote(lua_State *L, term_id id, enum term_kind kind) {
  luaL_argcheck(L, !lua_isnoneornil(L, 2), 2, "message expected, got nil");
  double deadline = lua_isnoneornil(L, 3) ? -INFINITY : opt_deadline(L, 3);
  uint32_t idx = 0;
  const char *name = NULL;
  if (kind == TERM_NONE) {   /* {name, node} */
    lua_rawgeti(L, 1, 1);
    lua_rawgeti(L, 1, 2);
    if (lua_type(L, -2) != LUA_TSTRING || lua_type(L, -1) != LUA_TSTRING)
      luaL_argerror(L, 1, "{name, node} expected");
    name = lua_tostring(L, -2);
    idx = node_at(L, lua_gettop(L), 1);
    lua_pop(L, 2);   /* the options table keeps both strings alive */
    if (idx == 0) {  /* this node's own name: a local send */
      lua_pushstring(L, name);
      lua_replace(L, 1);
      return -1;
    }
  }
  codec_buf b = encode_wire(L, 2, 1, "msg", "send to another node");
  int rc = name ? dist_send_name(idx, name, b.data, b.len, deadline)
         : kind == TERM_REF ? dist_send_alias(id, b.data, b.len, deadline)
         : dist_send(id, b.data, b.len, deadline);
  codec_buf_free(&b);
  if (rc == DIST_OK) {
    proc *self = proc_self();
    count_one(&self->sent);
    if (TRACED(self, TRACE_SEND)) trace_event(L, self, "send", 2, 1);
    lua_pushboolean(L, 1);
    return 1;
  }
  if (rc == DIST_TOOBIG) return luaL_error(L, "send to another node: message larger than a node link carries");
  lua_pushboolean(L, 0);
  if (rc == DIST_FULL) lua_pushliteral(L, "full");
  else if (rc == DIST_NOCONN) lua_pushliteral(L, "noconnection");
  else lua_pushliteral(L, "noproc");
  return 2;
}

static int l_send(lua_State *L) {
  proc *self = cur(L);
  term_id pid, alias = {0, 0, 0};
  int known;
  enum term_kind k = lua_type(L, 1) == LUA_TUSERDATA ? term_test(L, 1, &pid) : TERM_NONE;
  if (k == TERM_PID && pid.node == 0) {   /* the common case: one look at the value */
    known = 1;
    self->dest_ud = lua_touserdata(L, 1);   /* for receive's prefetch */
  }
  else if (lua_type(L, 1) == LUA_TTABLE || (k != TERM_NONE && pid.node != 0)) {
    int n = send_remote(L, pid, k);
    if (n >= 0) return n;
    known = dest_pid(L, 1, &pid, &alias);          /* {name, this node}: a local name */
  } else known = dest_pid(L, 1, &pid, &alias);
  luaL_argcheck(L, !lua_isnoneornil(L, 2), 2, "message expected, got nil");
  double timeout = lua_isnoneornil(L, 3) ? 0 : check_timeout(L, 3);  /* the clock is read only if full */
  codec_limits lim = kern_limits(1);
  codec_buf *b = &self->scratch;
  /* One boolean, number or short string is encoded on the C stack, a line
  ** this thread has just used, rather than into the scratch buffer, a line
  ** it last touched a round ago (a cache miss in a ring of 1,000). */
  unsigned char small[48];
  size_t len = codec_encode_single(L, 2, &lim, small, sizeof small);
  const unsigned char *bytes = small;
  if (!len) {
    if (codec_encode(L, 2, 1, "msg", &lim, b) != 0) return lua_error(L);  /* before proc_get: may raise */
    bytes = b->data;
    len = b->len;
  }
  proc *p = known ? proc_dest(self, pid) : NULL;
  if (!p) {
    lua_pushboolean(L, 0);
    lua_pushliteral(L, "noproc");
    return 2;
  }
  /* with an alias: receive drops it if the alias is gone by then */
  mbox_msg *m = mbox_msg_new(MBOX_MSG, bytes, len, (term_id){0, 0, 0}, alias);
  if (b->cap > SCRATCH_KEEP) codec_buf_free(b);  /* do not hold on to a huge buffer */
  int rc = m ? mbox_put(&p->mb, m, timeout, cancelled, self) : MBOX_FULL;
  proc_dest_done(self, p);
  if (rc == MBOX_OK) {
    count_one(&self->sent);
    if (TRACED(self, TRACE_SEND)) trace_event(L, self, "send", 2, 1);
    lua_pushboolean(L, 1);
    return 1;
  }
  if (rc == MBOX_CANCELLED) cur(L);
  lua_pushboolean(L, 0);
  if (rc == MBOX_CLOSED) lua_pushliteral(L, "noproc");
  else lua_pushliteral(L, "full");
  return 2;
}

/* Monitors of {name, node}: their DOWN names the process as {name, node},
** not by pid. The calling state's registry maps each such monitor's ref
** serial to {name, node} until its DOWN is taken or it is demonitored. */
static const char named_key = 'n';

static void named_remember(lua_State *L, term_id ref, const char *name, const char *node) {
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &named_key) != LUA_TTABLE) {
    lua_pop(L, 1);
    lua_newtable(L);
    lua_pushvalue(L, -1);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &named_key);
  }
  lua_createtable(L, 2, 0);
  lua_pushstring(L, name);
  lua_rawseti(L, -2, 1);
  lua_pushstring(L, node);
  lua_rawseti(L, -2, 2);
  lua_rawseti(L, -2, (lua_Integer)ref.n);
  lua_pop(L, 1);
}

/* Pushes a fresh {name, node} for monitor `ref` and returns 1, or pushes
** nothing and returns 0 if it is not a monitor of a name. */
static int named_push(lua_State *L, term_id ref) {
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &named_key) != LUA_TTABLE) { lua_pop(L, 1); return 0; }
  if (lua_rawgeti(L, -1, (lua_Integer)ref.n) != LUA_TTABLE) { lua_pop(L, 2); return 0; }
  lua_createtable(L, 2, 0);
  lua_rawgeti(L, -2, 1);
  lua_rawseti(L, -2, 1);
  lua_rawgeti(L, -2, 2);
  lua_rawseti(L, -2, 2);
  lua_replace(L, -3);
  lua_pop(L, 1);
  return 1;
}

static void named_forget(lua_State *L, term_id ref) {
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &named_key) == LUA_TTABLE) {
    lua_pushnil(L);
    lua_rawseti(L, -2, (lua_Integer)ref.n);
  }
  lua_pop(L, 1);
}

/* Pushes the Lua value of a queued entry and returns 0, or pushes an error
** message and returns -1 when a message cannot be decoded here. An EXIT or
** DOWN always succeeds (a reason that cannot be decoded is replaced). */
static int push_entry(lua_State *L, mbox_msg *m) {
  codec_limits lim = kern_limits(!m->wire);
  lim.wire = m->wire;
  if (m->kind == MBOX_MSG) {
    int n = codec_decode(L, m->data, m->len, &lim);
    if (n == 1) return 0;
    if (n >= 0) { lua_pop(L, n); lua_pushliteral(L, "a message held no value"); }
    return -1;
  }
  lua_createtable(L, m->kind == MBOX_DOWN ? 4 : 3, 0);
  lua_pushstring(L, m->kind == MBOX_DOWN ? "DOWN" : "EXIT");
  lua_rawseti(L, -2, 1);
  int i = 2;
  if (m->kind == MBOX_DOWN) { term_push(L, TERM_REF, mbox_msg_ref(m)); lua_rawseti(L, -2, i++); }
  if (m->kind != MBOX_DOWN || !named_push(L, mbox_msg_ref(m))) term_push(L, TERM_PID, mbox_msg_from(m));
  lua_rawseti(L, -2, i++);
  int n = codec_decode(L, m->data, m->len, &lim);
  if (n != 1) {
    lua_pop(L, n < 0 ? 1 : n);
    lua_pushliteral(L, "(an exit reason that cannot be decoded here)");
  }
  lua_rawseti(L, -2, i);
  return 0;
}

static int dropped(lua_State *L) {
  return luaL_error(L, "receive: dropped a message that cannot be decoded here: %s",
                    lua_tostring(L, -1));
}

/* The protected step of receive. Args: entry, match function or nil.
** Returns true, the value, the verdict (true without a match function); or
** false, a message when the entry cannot be decoded. Errors of the match
** function propagate. */
static int receive_step(lua_State *L) {
  mbox_msg *m = lua_touserdata(L, 1);
  if (push_entry(L, m) != 0) {
    lua_pushboolean(L, 0);
    lua_insert(L, -2);
    return 2;
  }
  if (lua_isnil(L, 2)) lua_pushboolean(L, 1);
  else {
    lua_pushvalue(L, 2);
    lua_pushvalue(L, -2);
    lua_call(L, 1, 1);
  }
  if (m->kind == MBOX_DOWN && lua_toboolean(L, -1)) named_forget(L, mbox_msg_ref(m));   /* taken */
  lua_pushboolean(L, 1);
  lua_rotate(L, -3, 1);
  return 3;
}

/* Before parking: a doom or interrupt that arrived after the last check
** may already be counted in `seq`, so look once more (the flags are stored
** before the wake word is bumped). */
static void check_before_park(lua_State *L, proc *self) {
  if (atomic_load(&self->doomed) || atomic_load(&self->interrupt)) {
    mbox_disarm(&self->mb);
    cur(L);
  }
}

/* A message sent through an alias that its owner has since deactivated:
** unalias promises that such a message is never seen. */
static int stale(proc *self, mbox_msg *m) {
  if (m->kind != MBOX_MSG || !m->tagged) return 0;
  return !reg_alias_active(self, mbox_msg_ref(m));
}

/* The entry receive decodes without a protected call: its header and up
** to QUICK_MAX bytes, copied out of the mailbox's entry. */
#define QUICK_MAX 128
typedef union quick_entry {
  mbox_msg m;
  unsigned char room[sizeof(mbox_msg) + QUICK_MAX];
} quick_entry;

/* Returns the message of entry m, taken off the queue, to a plain receive:
** decoding may run Lua code (a module the message names is required), so
** it is protected, and with in_receive set so that code cannot take entries
** from under us. Frees m if `owned`. */
static int receive_protected(lua_State *L, proc *self, mbox_msg *m, int owned) {
  lua_pushcfunction(L, receive_step);
  lua_pushlightuserdata(L, m);
  lua_pushnil(L);
  self->in_receive = 1;
  int st = lua_pcall(L, 2, 3, 0);
  self->in_receive = 0;
  if (owned) mbox_msg_free(m);
  if (atomic_load(&self->doomed)) cur(L);
  if (st != LUA_OK) return lua_error(L);
  if (!lua_toboolean(L, -3)) { lua_pop(L, 1); return dropped(L); }
  lua_pop(L, 1);
  if (TRACED(self, TRACE_RECEIVE)) trace_event(L, self, "receive", -1, 0);
  return 1;
}

static int l_receive(lua_State *L) {
  proc *self = cur(L);
  int match = lua_type(L, 1) == LUA_TFUNCTION || lua_type(L, 1) == LUA_TTABLE;
  if (!match && !lua_isnoneornil(L, 1) && lua_type(L, 1) != LUA_TNUMBER)
    luaL_typeerror(L, 1, "match function or timeout");
  double deadline = opt_deadline(L, match ? 2 : 1);
  if (self->in_receive) return luaL_error(L, "receive: called inside a match function (or while its message is decoded)");
  mbox_msg *prev = NULL;
  for (;;) {
    uint32_t seq;
    if (!match) {  /* the common case: take the head in one locked step */
      mbox_msg *m = mbox_pop(&self->mb, &seq);
      if (m && stale(self, m)) { mbox_msg_free(m); continue; }
      if (m) count_one(&self->received);
      if (m && m->kind == MBOX_MSG && !m->wire && m->len <= QUICK_MAX && !self->mem_limit) {
        /* A short local message: decoded without a protected call from a
        ** copy (the entry goes back at once, so an error raised by the
        ** decoder, only ever "not enough memory", leaks nothing; a process
        ** with max_memory takes the protected way, so that going over its
        ** limit here ends it with the exit "memory" as anywhere else in
        ** receive, not with an error its own pcall could catch). Without
        ** functions the decoder runs no Lua code of ours, so no entry is
        ** held for a match or a require to disturb. One that holds a
        ** function, or anything else the quick decode refuses, takes the
        ** protected way, from the copy. A finalizer that the decoder's
        ** allocations run may call receive meanwhile: it takes the next
        ** message, which is all it could do anyway. */
        quick_entry q;   /* its alias, if any, was checked by stale() */
        mbox_msg_copy(&q.m, m);
        mbox_msg_free(m);
        codec_limits lim = kern_limits(0);
        int n = codec_decode(L, q.m.data, q.m.len, &lim);
        if (n == 1) {
          if (atomic_load(&self->doomed)) cur(L);
          if (TRACED(self, TRACE_RECEIVE)) trace_event(L, self, "receive", -1, 0);
          return 1;
        }
        lua_pop(L, n < 0 ? 1 : n);
        return receive_protected(L, self, &q.m, 0);
      }
      if (m) return receive_protected(L, self, m, 1);
    } else {
      mbox_msg *m = mbox_next(&self->mb, prev, &seq);
      if (m && stale(self, m)) { mbox_take(&self->mb, prev, m); mbox_msg_free(m); continue; }
      if (m) {
        /* While we hold m and prev, no Lua code of ours (the match, or a
        ** module the decoder requires) may take entries: in_receive forbids
        ** receive and demonitor-flush, and defers an attached process's exit. */
        int top = lua_gettop(L);
        lua_pushcfunction(L, receive_step);
        lua_pushlightuserdata(L, m);
        lua_pushvalue(L, 1);
        self->in_receive = 1;
        int st = lua_pcall(L, 2, 3, 0);
        self->in_receive = 0;
        if (atomic_load(&self->doomed)) cur(L);  /* raises; m and prev are not touched again */
        if (st != LUA_OK) return lua_error(L);   /* the match raised: the message stays */
        if (!lua_toboolean(L, -3)) {             /* cannot be decoded: drop it */
          mbox_take(&self->mb, prev, m);
          mbox_msg_free(m);
          count_one(&self->received);
          lua_pushvalue(L, -2);
          return dropped(L);
        }
        if (lua_toboolean(L, -1)) {
          mbox_take(&self->mb, prev, m);
          mbox_msg_free(m);
          count_one(&self->received);
          lua_pop(L, 1);
          if (TRACED(self, TRACE_RECEIVE)) trace_event(L, self, "receive", -1, 0);
          return 1;
        }
        lua_settop(L, top);
        prev = m;
        continue;
      }
    }
    check_before_park(L, self);
    int timed_out = mbox_park(&self->mb, seq, deadline) != 0;
    /* Woken: the next send most likely goes where the last one went. Its
    ** pid's block (two lines: Lua's header, then ours) and the destination
    ** mailbox's senders' line were last touched a round ago in a ring, so
    ** start loading them now, under the decode and the Lua code before that
    ** send, instead of in the send, where the first is a dependent load.
    ** Read prefetches only: the destination may be awake and reading that
    ** line. dest_ud may be stale, which a prefetch does not mind. */
    if (!timed_out && self->dest) {
      if (self->dest_ud) {   /* NULL until a send to a pid (a name does not set it) */
        __builtin_prefetch((const void *)((uintptr_t)self->dest_ud - 32));   /* Lua's header */
        __builtin_prefetch(self->dest_ud);
      }
      __builtin_prefetch(&self->dest->mb.inbox);
    }
    cur(L);  /* a doom or an interrupt ends the wait */
    if (timed_out) {
      lua_pushnil(L);
      lua_pushliteral(L, "timeout");
      return 2;
    }
  }
}

static int l_sleep(lua_State *L) {
  proc *self = cur(L);
  lua_Number t = luaL_checknumber(L, 1);
  luaL_argcheck(L, t >= 0 && t < 1e9, 1, "seconds must be a number from 0 to 1e9");
  double deadline = mbox_now() + t;
  for (;;) {
    uint32_t seq = mbox_arm(&self->mb);   /* shows as "waiting"; messages do not wake us */
    check_before_park(L, self);
    if (mbox_now() >= deadline) { mbox_disarm(&self->mb); return 0; }
    mbox_park(&self->mb, seq, deadline);
    cur(L);
  }
}

static int l_now(lua_State *L) { lua_pushnumber(L, mbox_now()); return 1; }

static int l_system_time(lua_State *L) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  lua_pushnumber(L, (lua_Number)ts.tv_sec + ts.tv_nsec / 1e9);
  return 1;
}

/* ---- links and monitors ---- */

static int l_link(lua_State *L) {
  proc *self = cur(L);
  term_id pid = term_check(L, 1, TERM_PID);
  int rc = sig_link(self, pid);
  if (TRACED(self, TRACE_LINK)) trace_event(L, self, "link", 1, 0);
  if (rc == SIG_OK) { lua_pushboolean(L, 1); return 1; }
  if (rc == SIG_NOMEM) return luaL_error(L, "link: out of memory");
  pthread_mutex_lock(&self->lock);
  int trapping = self->trap_exit;
  pthread_mutex_unlock(&self->lock);
  enum kern_reason why = rc == SIG_NOCONN ? KR_NOCONNECTION : KR_NOPROC;
  if (!trapping) {
    if (why == KR_NOCONNECTION) lua_pushliteral(L, "noconnection");
    else lua_pushliteral(L, "noproc");
    return lua_error(L);
  }
  size_t len;
  const unsigned char *r = kern_reason(why, &len);
  sig_exit(self->pid, pid, r, len, 0);
  lua_pushboolean(L, 1);
  return 1;
}

static int l_unlink(lua_State *L) {
  proc *self = cur(L);
  sig_unlink(self, term_check(L, 1, TERM_PID));
  if (TRACED(self, TRACE_LINK)) trace_event(L, self, "unlink", 1, 0);
  lua_pushboolean(L, 1);
  return 1;
}

/* monitor({name, node}): the node resolves the name; one that is not
** registered gives a DOWN "noproc" at once. */
static int monitor_name(lua_State *L, proc *self) {
  lua_rawgeti(L, 1, 1);
  lua_rawgeti(L, 1, 2);
  if (lua_type(L, -2) != LUA_TSTRING || lua_type(L, -1) != LUA_TSTRING)
    return luaL_argerror(L, 1, "{name, node} expected (two strings)");
  size_t nl;
  const char *name = lua_tolstring(L, -2, &nl);
  luaL_argcheck(L, nl > 0 && nl <= DIST_NAME_MAX && strlen(name) == nl, 1,
                "name must be a non-empty string without NUL, at most 255 bytes");
  uint32_t idx = node_at(L, lua_gettop(L), 1);
  term_id ref;
  if (idx == 0) {
    term_id pid = {0, 0, 0};   /* no process: the DOWN says noproc */
    reg_whereis(name, &pid);
    if (sig_monitor(self, pid, &ref) != SIG_OK) return luaL_error(L, "monitor: out of memory");
  } else {
    ref = term_new_ref();
    term_id target = {0, idx, 0};
    sig_monitor_remote(self, target, ref);
    if (dist_monitor_name(self->pid, idx, name, ref) != DIST_OK) {
      size_t len;
      const unsigned char *why = kern_reason(KR_NOCONNECTION, &len);
      sig_down(self->pid, ref, target, why, len, 0);
    }
  }
  named_remember(L, ref, name, idx == 0 ? node_self() : node_name(idx));
  term_push(L, TERM_REF, ref);
  return 1;
}

static int l_monitor(lua_State *L) {
  proc *self = cur(L);
  term_id pid, alias;
  if (lua_type(L, 1) == LUA_TTABLE) return monitor_name(L, self);
  if (lua_type(L, 1) != LUA_TSTRING) pid = term_check(L, 1, TERM_PID);
  else if (!dest_pid(L, 1, &pid, &alias)) return luaL_error(L, "monitor: no process registered as '%s'", lua_tostring(L, 1));
  term_id ref;
  if (sig_monitor(self, pid, &ref) != SIG_OK) return luaL_error(L, "monitor: out of memory");
  term_push(L, TERM_REF, ref);
  return 1;
}

static int l_demonitor(lua_State *L) {
  proc *self = cur(L);
  term_id ref = term_check(L, 1, TERM_REF);
  int flush = lua_toboolean(L, 2);
  if (flush && self->in_receive) return luaL_error(L, "demonitor: flush inside a match function");
  sig_demonitor(self, ref, flush);
  if (flush) named_forget(L, ref);   /* without flush, a DOWN already queued still names it */
  lua_pushboolean(L, 1);
  return 1;
}

static int l_ref(lua_State *L) {
  term_push(L, TERM_REF, term_new_ref());
  return 1;
}

/* ---- aliases ---- */

static int l_alias(lua_State *L) {
  proc *self = cur(L);
  term_id ref;
  if (reg_alias(self, &ref) != 0) return luaL_error(L, "alias: out of memory");
  term_push(L, TERM_REF, ref);
  return 1;
}

static int l_unalias(lua_State *L) {
  proc *self = cur(L);
  lua_pushboolean(L, reg_unalias(self, term_check(L, 1, TERM_REF)));
  return 1;
}

/* ---- names ---- */

static const char *check_name(lua_State *L, int arg) {
  size_t len;
  const char *name = luaL_checklstring(L, arg, &len);
  luaL_argcheck(L, len > 0 && strlen(name) == len, arg, "name must be a non-empty string without NUL");
  return name;
}

static int l_register(lua_State *L) {
  cur(L);
  const char *name = check_name(L, 1);
  term_id pid = term_check(L, 2, TERM_PID);
  proc *p = proc_get(pid);
  int rc = p ? reg_register(name, p) : REG_DEAD;
  if (p) proc_release(p);
  switch (rc) {
  case REG_OK: lua_pushboolean(L, 1); return 1;
  case REG_TAKEN: return luaL_error(L, "register: name '%s' is already registered", name);
  case REG_HAS_NAME: return luaL_error(L, "register: %s already has a name", luaL_tolstring(L, 2, NULL));
  default: return luaL_error(L, "register: %s is not alive", luaL_tolstring(L, 2, NULL));
  }
}

static int l_unregister(lua_State *L) {
  cur(L);
  const char *name = check_name(L, 1);
  if (reg_unregister(name) != 0) return luaL_error(L, "unregister: name '%s' is not registered", name);
  lua_pushboolean(L, 1);
  return 1;
}

/* whereis(name [, node [, timeout]]): another node is asked. */
static int l_whereis(lua_State *L) {
  const char *name = check_name(L, 1);
  uint32_t idx = lua_isnoneornil(L, 2) ? 0 : check_node(L, 2);
  term_id pid;
  if (idx == 0) {
    if (reg_whereis(name, &pid)) term_push(L, TERM_PID, pid);
    else lua_pushnil(L);
    return 1;
  }
  proc *self = cur(L);
  luaL_argcheck(L, strlen(name) <= DIST_NAME_MAX, 1, "name longer than 255 bytes");
  double timeout = lua_isnoneornil(L, 3) ? 5 : check_timeout(L, 3);
  char err[200];
  int rc = dist_whereis(self, idx, name, mbox_now() + timeout, &pid, err, sizeof err);
  cur(L);
  if (rc < 0) return luaL_error(L, "whereis: '%s' on %s: %s", name, node_name(idx), err);
  if (rc == 1) term_push(L, TERM_PID, pid);
  else lua_pushnil(L);
  return 1;
}

/* Names and pids are copied out under the kernel's locks into Lua-owned
** memory, and only then turned into Lua values (which may raise). */
static int l_registered(lua_State *L) {
  size_t cap = 256, need;
  char *buf;
  for (;;) {
    buf = lua_newuserdatauv(L, cap, 0);
    need = reg_snapshot(buf, cap);
    if (need <= cap) break;
    lua_pop(L, 1);
    cap = need + 256;
  }
  lua_newtable(L);
  lua_Integer i = 0;
  for (size_t at = 0; at < need; at += strlen(buf + at) + 1) {
    lua_pushstring(L, buf + at);
    lua_rawseti(L, -2, ++i);
  }
  return 1;
}

/* ---- introspection ---- */

/* Pushes an array of the n pids. */
static void push_pid_array(lua_State *L, const term_id *ids, size_t n) {
  lua_createtable(L, (int)n, 0);
  for (size_t i = 0; i < n; i++) {
    term_push(L, TERM_PID, ids[i]);
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
}

typedef struct pid_list { term_id *ids; size_t n, cap; int overflow; } pid_list;

static void collect_pid(proc *p, void *ud) {
  pid_list *c = ud;
  if (c->n < c->cap) c->ids[c->n++] = p->pid; else c->overflow = 1;
}

static int local_processes(lua_State *L) {
  pid_list c;
  for (;;) {
    c.cap = proc_count() + 64;
    c.ids = lua_newuserdatauv(L, c.cap * sizeof *c.ids, 0);
    c.n = 0;
    c.overflow = 0;
    proc_foreach(collect_pid, &c);
    if (!c.overflow) break;
    lua_pop(L, 1);
  }
  push_pid_array(L, c.ids, c.n);
  return 1;
}

#define LABEL_MAX 256   /* longest label kept, in bytes */

static int l_set_label(lua_State *L) {
  proc *self = cur(L);
  size_t len = 0;
  const char *s = lua_isnoneornil(L, 1) ? NULL : luaL_checklstring(L, 1, &len);
  luaL_argcheck(L, len <= LABEL_MAX, 1, "label longer than 256 bytes");
  char *copy = s ? malloc(len + 1) : NULL;
  if (s && !copy) return luaL_error(L, "set_label: out of memory");
  if (copy) memcpy(copy, s, len + 1);
  pthread_mutex_lock(&self->lock);
  char *old = self->label;
  self->label = copy;
  pthread_mutex_unlock(&self->lock);
  free(old);
  return 0;
}

/* erlangen.tree(opts): the process-tree view of stdlib erlangen.observer. */
static int l_tree(lua_State *L) {
  lua_settop(L, 1);
  lua_getglobal(L, "require");
  lua_pushliteral(L, "erlangen.observer");
  lua_call(L, 1, 1);
  lua_getfield(L, -1, "print");
  lua_pushvalue(L, 1);
  lua_call(L, 1, LUA_MULTRET);
  return lua_gettop(L) - 2;
}

/* A pid of this node at `arg`, or raises (introspection is local, as in Erlang). */
static term_id check_local_pid(lua_State *L, int arg) {
  term_id pid = term_check(L, arg, TERM_PID);
  if (pid.node != 0) luaL_argerror(L, arg, "pid of another node (introspection is local)");
  return pid;
}

static int l_is_alive(lua_State *L) {
  proc *p = proc_get(check_local_pid(L, 1));
  lua_pushboolean(L, p && proc_alive(p));
  if (p) proc_release(p);
  return 1;
}

static void push_pids(lua_State *L, term_id *ids, size_t n, const char *field) {
  push_pid_array(L, ids, n);
  lua_setfield(L, -2, field);
}

/* Pushes the info table of local process `pid`, or nil. */
static int push_info(lua_State *L, term_id pid) {
  proc *p = proc_get(pid);
  if (!p) { lua_pushnil(L); return 1; }
  pthread_mutex_lock(&p->lock);
  int alive = p->status == PROC_ALIVE, trap = p->trap_exit;
  char label[LABEL_MAX + 1];
  int labelled = p->label != NULL;
  if (labelled) memcpy(label, p->label, strlen(p->label) + 1);
  size_t nl = p->links.n, nm = p->monitors.n, nw = p->monitored_by.n;
  double cpu = -1;   /* the CPU time of the thread running it, while one does */
  clockid_t clock;
  struct timespec ts;
  if (atomic_load(&p->has_thread) && pthread_getcpuclockid(p->thread, &clock) == 0 &&
      clock_gettime(clock, &ts) == 0)
    cpu = (double)ts.tv_sec + ts.tv_nsec / 1e9 - p->cpu_base;
  term_id *ids = malloc((nl + nm + nw + 1) * sizeof *ids);
  if (ids) {
    for (size_t i = 0; i < nl; i++) ids[i] = ((proc_link *)p->links.items)[i].pid;
    for (size_t i = 0; i < nm; i++) ids[nl + i] = ((proc_mon *)p->monitors.items)[i].pid;
    for (size_t i = 0; i < nw; i++) ids[nl + nm + i] = ((proc_mon *)p->monitored_by.items)[i].pid;
  }
  pthread_mutex_unlock(&p->lock);
  if (!alive || !ids) { free(ids); proc_release(p); lua_pushnil(L); return 1; }
  unsigned count, capacity;
  uint64_t dropped;
  int waiting;
  mbox_stats(&p->mb, &count, &capacity, &dropped, &waiting);
  char name[256];
  int named = reg_name_of(p, name, sizeof name);
  size_t mem = atomic_load_explicit(&p->mem_pub, memory_order_relaxed);
  term_id parent = p->parent;
  uint64_t sent = atomic_load_explicit(&p->sent, memory_order_relaxed);
  uint64_t received = atomic_load_explicit(&p->received, memory_order_relaxed);
  double started = p->started;
  proc_release(p);
  lua_createtable(L, 0, 18);
  if (labelled) { lua_pushstring(L, label); lua_setfield(L, -2, "label"); }
  if (parent.n) { term_push(L, TERM_PID, parent); lua_setfield(L, -2, "parent"); }
  lua_pushstring(L, waiting ? "waiting" : "running"); lua_setfield(L, -2, "status");
  if (named) { lua_pushstring(L, name); lua_setfield(L, -2, "name"); }
  lua_pushinteger(L, count); lua_setfield(L, -2, "mailbox");
  lua_pushinteger(L, capacity); lua_setfield(L, -2, "capacity");
  lua_pushinteger(L, (lua_Integer)dropped); lua_setfield(L, -2, "dropped");
  lua_pushboolean(L, trap); lua_setfield(L, -2, "trap_exit");
  lua_pushinteger(L, (lua_Integer)mem); lua_setfield(L, -2, "memory");
  lua_pushinteger(L, (lua_Integer)sent); lua_setfield(L, -2, "sent");
  lua_pushinteger(L, (lua_Integer)received); lua_setfield(L, -2, "received");
  if (cpu >= 0) { lua_pushnumber(L, cpu); lua_setfield(L, -2, "cpu"); }
  lua_pushnumber(L, started); lua_setfield(L, -2, "started");
  lua_pushstring(L, node_self()); lua_setfield(L, -2, "node");
  push_pids(L, ids, nl, "links");
  push_pids(L, ids + nl, nm, "monitors");
  push_pids(L, ids + nl + nm, nw, "monitored_by");
  free(ids);
  return 1;
}

/* Pushes an array of the info tables of every live process, each with
** its `pid`. */
static int local_snapshot(lua_State *L) {
  local_processes(L);
  lua_Integer n = (lua_Integer)lua_rawlen(L, -1), k = 0;
  lua_createtable(L, (int)n, 0);
  for (lua_Integer i = 1; i <= n; i++) {
    lua_rawgeti(L, -2, i);
    term_id pid;
    term_test(L, -1, &pid);
    push_info(L, pid);
    if (lua_istable(L, -1)) {
      lua_insert(L, -2);
      lua_setfield(L, -2, "pid");
      lua_rawseti(L, -2, ++k);
    } else lua_pop(L, 2);   /* it ended meanwhile */
  }
  lua_remove(L, -2);
  return 1;
}

/* ---- introspection of another node ---- */

/* Asks node idx the query `kind` with the value at `arg` (or none) and
** pushes the answer; raises "<what>: <why>" naming the node. */
static int ask_node(lua_State *L, uint32_t idx, int kind, int arg, double timeout, const char *what) {
  proc *self = cur(L);
  codec_buf args = {0};
  if (arg) args = encode_wire(L, arg, 1, "args", what);
  unsigned char *answer = NULL;
  size_t alen = 0;
  char err[200];
  int rc = dist_query(self, idx, kind, args.data, args.len, mbox_now() + timeout, &answer, &alen, err, sizeof err);
  codec_buf_free(&args);
  cur(L);
  if (rc != 0) return luaL_error(L, "%s: on %s: %s", what, node_name(idx), err);
  void **box = malloc_box(L);   /* frees the answer if decoding raises */
  *box = answer;
  codec_limits lim = kern_limits(0);
  lim.wire = 1;
  int n = codec_decode(L, answer, alen, &lim);
  if (n != 1) return luaL_error(L, "%s: on %s: a bad answer", what, node_name(idx));
  return 1;
}

/* The timeout at `arg` (default 5 s) for a question to another node. */
static double remote_timeout(lua_State *L, int arg) {
  return lua_isnoneornil(L, arg) ? 5 : check_timeout(L, arg);
}

/* Answers info and processes for another node (dist_set_query_handler), in
** a state of its own. */
static int answer_step(lua_State *L) {
  int kind = (int)lua_tointeger(L, 1);
  const unsigned char *args = lua_touserdata(L, 2);
  size_t n = (size_t)lua_tointeger(L, 3);
  codec_buf *out = lua_touserdata(L, 4);
  lua_settop(L, 0);
  if (kind == DIST_Q_INFO) {
    codec_limits lim = kern_limits(0);
    lim.wire = 1;
    term_id pid;
    if (codec_decode(L, args, n, &lim) != 1 || term_test(L, 1, &pid) != TERM_PID)
      return luaL_error(L, "info: a pid expected");
    if (pid.node != 0) lua_pushnil(L);   /* not one of ours (an old incarnation) */
    else push_info(L, pid);
  } else if (kind == DIST_Q_PROCESSES) {
    local_processes(L);
  } else if (kind == DIST_Q_SNAPSHOT) {
    local_snapshot(L);
  } else return luaL_error(L, "a query this node does not know");
  codec_limits lim = kern_limits(0);
  lim.wire = 1;
  if (codec_encode(L, lua_gettop(L), 1, "answer", &lim, out) != 0) return lua_error(L);
  return 0;
}

static int answer_query(int kind, const unsigned char *args, size_t n, codec_buf *out, char *err, size_t errlen) {
  lua_State *L = luaL_newstate();
  if (!L) { snprintf(err, errlen, "out of memory"); return -1; }
  lua_pushcfunction(L, answer_step);
  lua_pushinteger(L, kind);
  lua_pushlightuserdata(L, (void *)args);
  lua_pushinteger(L, (lua_Integer)n);
  lua_pushlightuserdata(L, out);
  int rc = lua_pcall(L, 4, 0, 0) == LUA_OK ? 0 : -1;
  if (rc != 0) {
    snprintf(err, errlen, "%s", lua_isstring(L, -1) ? lua_tostring(L, -1) : "error");
    codec_buf_free(out);
  }
  lua_close(L);
  return rc;
}

static int l_info(lua_State *L) {
  term_id pid = term_check(L, 1, TERM_PID);
  if (pid.node == 0) return push_info(L, pid);
  return ask_node(L, pid.node, DIST_Q_INFO, 1, remote_timeout(L, 2), "info");
}

/* snapshot([node [, timeout]]) */
static int l_snapshot(lua_State *L) {
  uint32_t idx = lua_isnoneornil(L, 1) ? 0 : check_node(L, 1);
  if (idx == 0) return local_snapshot(L);
  return ask_node(L, idx, DIST_Q_SNAPSHOT, 0, remote_timeout(L, 2), "snapshot");
}

/* processes([node [, timeout]]) */
static int l_processes(lua_State *L) {
  uint32_t idx = lua_isnoneornil(L, 1) ? 0 : check_node(L, 1);
  if (idx == 0) return local_processes(L);
  return ask_node(L, idx, DIST_Q_PROCESSES, 0, remote_timeout(L, 2), "processes");
}

/* ---- tracing: erlangen.trace ---- */

static unsigned check_trace_flags(lua_State *L, int arg) {
  luaL_checktype(L, arg, LUA_TTABLE);
  static const struct { const char *name; unsigned bit; } names[] = {
    {"send", TRACE_SEND}, {"receive", TRACE_RECEIVE}, {"spawn", TRACE_SPAWN}, {"exit", TRACE_EXIT},
    {"link", TRACE_LINK},
  };
  unsigned events = 0;
  lua_pushnil(L);
  while (lua_next(L, arg)) {
    const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : NULL;
    size_t i = 0;
    while (k && i < sizeof names / sizeof names[0] && strcmp(k, names[i].name)) i++;
    if (!k || i == sizeof names / sizeof names[0])
      luaL_error(L, "trace: unknown event '%s' (send, receive, spawn, exit, link)", k ? k : luaL_typename(L, -2));
    if (lua_toboolean(L, -1)) events |= names[i].bit;
    lua_pop(L, 1);
  }
  return events;
}

/* trace(target, flags, tracer) / trace(target, false) */
static int l_trace(lua_State *L) {
  cur(L);
  int all = lua_type(L, 1) == LUA_TSTRING && strcmp(lua_tostring(L, 1), "all") == 0;
  term_id target = {0, 0, 0}, tracer = {0, 0, 0};
  if (!all) target = check_local_pid(L, 1);
  unsigned events = 0;
  if (!(lua_isboolean(L, 2) && !lua_toboolean(L, 2))) {
    events = check_trace_flags(L, 2);
    tracer = check_local_pid(L, 3);
    proc *t = proc_get(tracer);
    int alive = t && proc_alive(t);
    if (t) proc_release(t);
    if (!alive) return luaL_error(L, "trace: the tracer %s is not alive", luaL_tolstring(L, 3, NULL));
    if (!all && term_eq(target, tracer) && events) return luaL_argerror(L, 3, "a process cannot trace itself");
  }
  if (all) trace_set_all(events, tracer);
  else if (trace_set(target, events, tracer) != 0) {
    proc *p = proc_get(target);
    int alive = p && proc_alive(p);
    if (p) proc_release(p);
    return luaL_error(L, alive ? "trace: out of memory" : "trace: %s is not alive", luaL_tolstring(L, 1, NULL));
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* ---- distribution ---- */

static const char *opt_string(lua_State *L, int t, const char *k) {
  int ty = lua_getfield(L, t, k);
  if (ty != LUA_TNIL && ty != LUA_TSTRING) luaL_error(L, "start_node: option '%s' must be a string", k);
  const char *s = lua_tostring(L, -1);   /* kept alive by the options table */
  lua_pop(L, 1);
  return s;
}

static int l_start_node(lua_State *L) {
  cur(L);
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_pushnil(L);
  while (lua_next(L, 1)) {
    const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : "?";
    if (strcmp(k, "name") && strcmp(k, "listen") && strcmp(k, "key_file") && strcmp(k, "tick") &&
        strcmp(k, "port_mapper") && strcmp(k, "buffer"))
      return luaL_error(L, "start_node: unknown option '%s'", k);
    lua_pop(L, 1);
  }
  dist_opts o = {0};
  o.name = opt_string(L, 1, "name");
  if (!o.name) return luaL_error(L, "start_node: option 'name' is required");
  o.listen = opt_string(L, 1, "listen");
  o.key_file = opt_string(L, 1, "key_file");
  lua_getfield(L, 1, "tick");
  if (!lua_isnil(L, -1) && !(lua_isnumber(L, -1) && lua_tonumber(L, -1) > 0))
    return luaL_error(L, "start_node: option 'tick' must be a positive number of seconds");
  o.tick = lua_tonumber(L, -1);
  lua_getfield(L, 1, "buffer");
  if (!lua_isnil(L, -1) && !(lua_isinteger(L, -1) && lua_tointeger(L, -1) > 0))
    return luaL_error(L, "start_node: option 'buffer' must be a positive number of bytes");
  o.out_bound = (size_t)lua_tointeger(L, -1);
  o.port_mapper = lua_getfield(L, 1, "port_mapper") == LUA_TNIL || lua_toboolean(L, -1);
  lua_pop(L, 3);
  proc_opts paths = {0};   /* the caller's package paths become the node's */
  inherit_paths(L, &paths, 1, 1);
  o.path = paths.path;
  o.cpath = paths.cpath;
  char err[300];
  if (dist_start(&o, err, sizeof err) != 0) return luaL_error(L, "start_node: %s", err);
  lua_pushstring(L, node_self());
  lua_pushinteger(L, dist_port());
  return 2;
}

static int l_node(lua_State *L) {
  if (lua_isnoneornil(L, 1)) { lua_pushstring(L, node_self()); return 1; }
  term_id id;
  if (term_test(L, 1, &id) == TERM_NONE) luaL_typeerror(L, 1, "pid or ref");
  const char *name = node_name(id.node);
  lua_pushstring(L, name ? name : NODE_NONAME);
  return 1;
}

static void push_name(const char *name, void *ud) {
  lua_State *L = ud;
  lua_pushstring(L, name);
  lua_rawseti(L, -2, (lua_Integer)lua_rawlen(L, -2) + 1);
}

static int l_nodes(lua_State *L) {
  lua_newtable(L);
  node_each_up(push_name, L);
  return 1;
}

static int l_connect(lua_State *L) {
  cur(L);
  uint32_t idx = check_node(L, 1);
  char err[300];
  if (idx == 0) { lua_pushboolean(L, 1); return 1; }
  if (dist_connect(idx, err, sizeof err) == 0) { lua_pushboolean(L, 1); return 1; }
  lua_pushboolean(L, 0);
  lua_pushstring(L, err);
  return 2;
}

static int l_disconnect(lua_State *L) {
  uint32_t idx = check_node(L, 1);
  struct conn *c = idx ? node_conn(idx) : NULL;
  if (c) { conn_close(c, 1); conn_release(c); }
  lua_pushboolean(L, c != NULL);
  return 1;
}

static int l_monitor_node(lua_State *L) {
  proc *self = cur(L);
  uint32_t idx = check_node(L, 1);
  int on = lua_isnone(L, 2) || lua_toboolean(L, 2);
  luaL_argcheck(L, idx != 0, 1, "this node itself");
  if (on && !dist_started()) return luaL_error(L, "monitor_node: this node is not started (start_node)");
  if (dist_monitor_node(self, idx, on) != 0) return luaL_error(L, "monitor_node: out of memory");
  lua_pushboolean(L, 1);
  return 1;
}

static int l_monitor_nodes(lua_State *L) {
  proc *self = cur(L);
  luaL_checkany(L, 1);
  if (dist_monitor_nodes(self, lua_toboolean(L, 1)) != 0) return luaL_error(L, "monitor_nodes: out of memory");
  lua_pushboolean(L, 1);
  return 1;
}

/* node_names([host [, timeout]]): the port mapper's listing, sorted by name. */
static int l_node_names(lua_State *L) {
  cur(L);
  const char *host = luaL_optstring(L, 1, NULL);
  double timeout = lua_isnoneornil(L, 2) ? 2 : check_timeout(L, 2);
  luaL_argcheck(L, timeout > 0, 2, "timeout must be positive");
  void **box = malloc_box(L);   /* frees the listing if building the table raises */
  pmap_name *v = NULL;
  size_t n = 0;
  char err[300];
  if (pmap_names(host, timeout, &v, &n, err, sizeof err) != 0)
    return luaL_error(L, "node_names: %s", err);
  *box = v;
  lua_createtable(L, (int)n, 0);
  for (size_t i = 0; i < n; i++) {
    lua_createtable(L, 0, 2);
    lua_pushstring(L, v[i].name);
    lua_setfield(L, -2, "name");
    lua_pushinteger(L, v[i].port);
    lua_setfield(L, -2, "port");
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  return 1;
}

/* ---- configuration and the codec ---- */

static int l_configure(lua_State *L) {
  lua_settop(L, 1);    /* the table of previous values goes to slot 2 */
  kern_ensure();
  kern_config c = kern_config_get();
  lua_createtable(L, 0, 4);
  lua_pushinteger(L, c.mailbox); lua_setfield(L, -2, "mailbox");
  lua_pushinteger(L, (lua_Integer)c.max_message); lua_setfield(L, -2, "max_message");
  lua_pushinteger(L, c.max_depth); lua_setfield(L, -2, "max_depth");
  lua_pushinteger(L, (lua_Integer)c.stack_size); lua_setfield(L, -2, "stack_size");
  if (lua_isnoneornil(L, 1)) return 1;
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_pushnil(L);
  while (lua_next(L, 1)) {
    const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : "?";
    int isnum;
    lua_Integer v = lua_tointegerx(L, -1, &isnum);
    if (!isnum || v <= 0) return luaL_error(L, "configure: '%s' must be a positive integer", k);
    if (!strcmp(k, "mailbox") && v <= 0x7fffffff) c.mailbox = (unsigned)v;
    else if (!strcmp(k, "max_message") && (uint64_t)v <= CODEC_HARD_SIZE) c.max_message = (size_t)v;
    else if (!strcmp(k, "max_depth") && v <= CODEC_HARD_DEPTH) c.max_depth = (int)v;
    else if (!strcmp(k, "stack_size") && v >= (lua_Integer)ERLANGEN_MIN_STACK) c.stack_size = (size_t)v;
    else if (!strcmp(k, "mailbox") || !strcmp(k, "max_message") || !strcmp(k, "max_depth") ||
             !strcmp(k, "stack_size"))
      return luaL_error(L, "configure: '%s' is out of range", k);
    else return luaL_error(L, "configure: unknown key '%s'", k);
    lua_pop(L, 1);
  }
  kern_config_set(&c);
  lua_settop(L, 2);
  return 1;
}

static int l_encode(lua_State *L) {
  codec_buf b = encode_or_raise(L, 1, lua_gettop(L), "value", 0);
  lua_pushlstring(L, (const char *)b.data, b.len);
  codec_buf_free(&b);
  return 1;
}

static int l_decode(lua_State *L) {
  size_t len;
  const char *s = luaL_checklstring(L, 1, &len);
  codec_limits lim = kern_limits(0);
  int n = codec_decode(L, (const unsigned char *)s, len, &lim);
  if (n < 0) return lua_error(L);
  return n;
}

/* ---- the module ---- */

static int stop_at_close(lua_State *L) {
  detach_self(L);
  kern_stop(1.0);
  return 0;
}

/* os.exit in a stock lua: the kernel stops first, as when the state closes,
** so that the logger writes what it holds; then the original os.exit runs.
** Upvalue 1: the original. */
static int os_exit_stopping(lua_State *L) {
  detach_self(L);
  kern_stop(1.0);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  lua_call(L, lua_gettop(L) - 1, 0);
  return 0;
}

static void wrap_os_exit(lua_State *L) {
  if (lua_getglobal(L, "os") == LUA_TTABLE && lua_getfield(L, -1, "exit") == LUA_TFUNCTION) {
    lua_pushcclosure(L, os_exit_stopping, 1);
    lua_setfield(L, -2, "exit");
  } else if (lua_type(L, -1) == LUA_TTABLE)
    lua_pop(L, 1);   /* os.exit, not a function */
  lua_pop(L, 1);     /* os */
}

static const luaL_Reg funcs[] = {
  {"spawn", l_spawn}, {"spawn_link", l_spawn_link}, {"spawn_monitor", l_spawn_monitor},
  {"spawn_opt", l_spawn_opt}, {"self", l_self},
  {"type", l_type}, {"is_pid", l_is_pid}, {"is_ref", l_is_ref},
  {"exit", l_exit}, {"trap_exit", l_trap_exit},
  {"send", l_send}, {"receive", l_receive}, {"sleep", l_sleep}, {"now", l_now},
  {"system_time", l_system_time},
  {"link", l_link}, {"unlink", l_unlink}, {"monitor", l_monitor}, {"demonitor", l_demonitor},
  {"ref", l_ref}, {"alias", l_alias}, {"unalias", l_unalias},
  {"set_label", l_set_label}, {"tree", l_tree},
  {"start_node", l_start_node}, {"node", l_node}, {"nodes", l_nodes}, {"connect", l_connect},
  {"disconnect", l_disconnect}, {"monitor_node", l_monitor_node},
  {"monitor_nodes", l_monitor_nodes}, {"node_names", l_node_names},
  {"register", l_register}, {"unregister", l_unregister}, {"whereis", l_whereis},
  {"registered", l_registered},
  {"processes", l_processes}, {"is_alive", l_is_alive}, {"info", l_info}, {"snapshot", l_snapshot},
  {"trace", l_trace},
  {"configure", l_configure}, {"encode", l_encode}, {"decode", l_decode},
  {NULL, NULL}
};

/* In a stock lua: keep this library mapped for good (kernel threads run its
** code until the kernel stops), start the kernel, and stop it when the
** state closes or os.exit is called. */
static void open_in_foreign_state(lua_State *L) {
  Dl_info info;
  if (dladdr((void *)luaopen_erlangen, &info) && info.dli_fname)
    dlopen(info.dli_fname, RTLD_NOW | RTLD_NODELETE | RTLD_GLOBAL);
  if (kern_ensure() != 0) luaL_error(L, "erlangen: cannot start the kernel");
  state_add_stdlib_path(L);
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &sentinel_key) == LUA_TNIL) {
    lua_newuserdatauv(L, 1, 0);
    lua_createtable(L, 0, 1);
    lua_pushcfunction(L, stop_at_close);
    lua_setfield(L, -2, "__gc");
    lua_setmetatable(L, -2);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &sentinel_key);
    wrap_os_exit(L);
  }
  lua_pop(L, 1);
  cur(L);
}

int luaopen_erlangen(lua_State *L) {
  static _Atomic int answering;   /* the query handler is installed once */
  if (!atomic_load_explicit(&answering, memory_order_relaxed) && !atomic_exchange(&answering, 1))
    dist_set_query_handler(answer_query);
  if (!state_is_kernel(L)) open_in_foreign_state(L);
  luaL_newlib(L, funcs);
  lua_pushstring(L, ERLANGEN_VERSION);
  lua_setfield(L, -2, "_VERSION");
  return 1;
}

/* ---- the rest of the public C API ---- */

int erlangen_spawn(lua_State *L, int nargs, erlangen_pid *pid) {
  int fn = lua_gettop(L) - nargs;
  if (!kern_running() || fn < 1) {
    lua_pushliteral(L, "erlangen_spawn: the kernel is not running, or no function given");
    return -1;
  }
  lua_pushcfunction(L, l_spawn);
  lua_insert(L, fn);
  if (lua_pcall(L, nargs + 1, 1, 0) != LUA_OK) return -1;
  term_id id = {0, 0, 0};
  term_test(L, -1, &id);
  lua_pop(L, 1);
  if (pid) *pid = id.n;
  return 0;
}

static int open_all(lua_State *L) {
  state_open(L);
  return 0;
}

lua_State *erlangen_attach(void) {
  if (!kern_running() || proc_self()) return NULL;
  lua_State *L = state_new_host();
  if (!L) return NULL;
  proc *p = proc_attach(L);
  if (!p) { state_close_host(L); return NULL; }
  set_extra(L, p);
  state_bind(L, p);
  state_set_current(L);
  lua_pushcfunction(L, open_all);
  if (lua_pcall(L, 0, 0, 0) != LUA_OK) {
    erlangen_detach(L);
    return NULL;
  }
  return L;
}

void erlangen_detach(lua_State *L) {
  detach_self(L);
  state_close_host(L);
}

void erlangen_interrupt(lua_State *L) {
  proc *p = *(proc **)lua_getextraspace(L);
  if (p) {
    atomic_store(&p->interrupt, 1);
    mbox_wake(&p->mb);
  }
  state_arm_hook(L);
}

/* ---- the stdlib from a stock lua ----
** `require "erlangen.log"` before `require "erlangen"`: no Lua searcher
** knows the stdlib's directory yet, so Lua's all-in-one searcher finds this
** library by the name's root and calls luaopen_erlangen_log. The opener
** requires "erlangen" (which puts the stdlib on package.path) and then
** loads the module's file from there. Every module of stdlib/erlangen/ has
** an opener below. */
static int open_stdlib_module(lua_State *L, const char *name) {
  lua_getglobal(L, "require");
  lua_pushliteral(L, "erlangen");
  lua_call(L, 1, 0);
  lua_getglobal(L, "package");
  lua_getfield(L, -1, "searchpath");
  lua_pushstring(L, name);
  lua_getfield(L, -3, "path");
  lua_call(L, 2, 2);
  if (lua_isnil(L, -2))
    return luaL_error(L, "module '%s' not found in package.path:%s", name, lua_tostring(L, -1));
  lua_pop(L, 1);
  const char *file = lua_tostring(L, -1);
  if (luaL_loadfile(L, file) != LUA_OK) return lua_error(L);
  lua_pushstring(L, name);
  lua_pushstring(L, file);
  lua_call(L, 2, 1);   /* as Lua's own searcher calls a module: name, file */
  return 1;
}

#define STDLIB_OPENER(m) \
  int luaopen_erlangen_##m(lua_State *L); \
  int luaopen_erlangen_##m(lua_State *L) { return open_stdlib_module(L, "erlangen." #m); }
STDLIB_OPENER(gen)
STDLIB_OPENER(global)
STDLIB_OPENER(log)
STDLIB_OPENER(observer)
STDLIB_OPENER(pg)
STDLIB_OPENER(server)
STDLIB_OPENER(service)
STDLIB_OPENER(supervisor)
STDLIB_OPENER(timer)
