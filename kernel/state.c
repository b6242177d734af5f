/*
** state.c — a process's lua_State: allocator and memory limit, libraries,
** the doom hook, and running the process's entry.
*/
#include <dlfcn.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <lauxlib.h>
#include <lualib.h>
#include "erlangen_config.h"
#include "kernel.h"
#include "process.h"
#include "registry.h"
#include "poison.h"
#include "state.h"

#define HOOK_MASK (LUA_MASKCALL | LUA_MASKRET | LUA_MASKCOUNT)
#define DOOM_SLACK (1u << 20)   /* a doomed state may exceed its limit by this to unwind */

/* The module's one global: the Lua thread the calling thread runs, read by
** the signal handler of that same thread; only that thread writes it. */
static __thread lua_State *volatile S_current;

static const char exit_mt_key = 'x';   /* registry key of the exit object's metatable */
static const char trace_key = 't';     /* registry key of the last crash traceback */
static const char kernel_key = 'k';    /* registry key set in states the kernel opened */
static const char gc_co_key = 'g';     /* registry key of gc_run's idle coroutine */

int state_is_kernel(lua_State *L) {
  int ours = lua_rawgetp(L, LUA_REGISTRYINDEX, &kernel_key) != LUA_TNIL;
  lua_pop(L, 1);
  return ours;
}

void state_set_current(lua_State *L) { S_current = L; }

/* ---- the hook that makes a doomed process die ---- */

static void doom_hook(lua_State *L, lua_Debug *ar) {
  (void)ar;
  proc *p = proc_self();
  if (!p) { lua_sethook(L, NULL, 0, 0); return; }
  if (atomic_load_explicit(&p->doomed, memory_order_acquire)) {
    if (p->attached) {  /* raise once; the host's code goes on under a new pid */
      lua_sethook(L, NULL, 0, 0);
      /* Inside a selective receive the exit waits until receive lets go
      ** of its queue entries (it calls back when the match returns). */
      if (!p->in_receive) proc_exit_doomed(p);
    }
    state_raise_doom(L, p);
  }
  if (atomic_exchange(&p->interrupt, 0)) {
    lua_sethook(L, NULL, 0, 0);
    lua_pushliteral(L, "interrupted");
    lua_error(L);
  }
  lua_sethook(L, NULL, 0, 0);
  /* A doom that landed after the check above armed the hook again, and we
  ** just cleared it: arm it once more. */
  if (atomic_load_explicit(&p->doomed, memory_order_acquire)) state_arm_hook(L);
}

void state_arm_hook(lua_State *L) { lua_sethook(L, doom_hook, HOOK_MASK, 1); }

static void on_signal(int sig) {
  (void)sig;
  lua_State *L = S_current;
  if (L) state_arm_hook(L);
}

void state_init_signals(void) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sa.sa_flags = SA_RESTART;
  sigemptyset(&sa.sa_mask);
  sigaction(STATE_SIGNAL, &sa, NULL);
}

/* ---- exit objects ---- */

static int exit_tostring(lua_State *L) {
  lua_getfield(L, 1, "reason");
  luaL_tolstring(L, -1, NULL);
  lua_pushfstring(L, "exit: %s", lua_tostring(L, -1));
  return 1;
}

/* Pushes the metatable of exit objects. */
static void exit_mt(lua_State *L) {
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &exit_mt_key) == LUA_TTABLE) return;
  lua_pop(L, 1);
  lua_createtable(L, 0, 2);
  lua_pushcfunction(L, exit_tostring);
  lua_setfield(L, -2, "__tostring");
  lua_pushliteral(L, "erlangen.exit");
  lua_setfield(L, -2, "__name");
  lua_pushvalue(L, -1);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &exit_mt_key);
}

int state_exit(lua_State *L) {
  lua_createtable(L, 0, 1);
  lua_insert(L, -2);
  lua_setfield(L, -2, "reason");
  exit_mt(L);
  lua_setmetatable(L, -2);
  return lua_error(L);
}

int state_raise_doom(lua_State *L, proc *p) {
  size_t len;
  unsigned char *copy = proc_doom_copy(p, &len);
  codec_limits lim = kern_limits(1);
  int n = copy ? codec_decode(L, copy, len, &lim) : 0;   /* 0: nothing pushed */
  free(copy);
  if (n != 1) {
    lua_pop(L, n < 0 ? 1 : n);
    lua_pushliteral(L, "killed");
  }
  return state_exit(L);
}

int state_exit_reason(lua_State *L, proc *p) {
  if (atomic_load(&p->doomed)) return 0;  /* the doom reason wins; see state_run */
  if (lua_type(L, -1) != LUA_TTABLE || !lua_getmetatable(L, -1)) return 0;
  exit_mt(L);
  int is_exit = lua_rawequal(L, -1, -2);
  lua_pop(L, 2);
  if (!is_exit) return 0;
  lua_getfield(L, -1, "reason");
  return 1;
}

/* erlangen.exit(reason) for the binding: raises an exit object. */
/* ---- allocation ---- */

static void publish(state_slot *s) {
  if (s->owner) atomic_store_explicit(&s->owner->mem_pub, s->used, memory_order_relaxed);
}

/* ---- the arena (see state_slot) ----
** Carving is a bump of arena_top. A block freed while carving goes back:
** the last one by moving the top down, any other into a short list of
** holes that later carves fill first (the opening grows a few tables, and
** each growth frees the smaller part). A small block freed after the
** opening is kept for reuse (see "small blocks"), a larger one stays unused
** until the state is closed. Under AddressSanitizer the arena's free parts
** are poisoned, so a use of a freed block is caught. */

/* What malloc gives (any type, userdata included). It is also the small
** blocks' class step: a carved block has room for its whole class. */
#define ARENA_ALIGN STATE_SMALL_STEP
#define ARENA_FIRST (40u << 10)  /* a slot's first guess; then what its last opening used */

static size_t arena_round(size_t n) { return (n + ARENA_ALIGN - 1) & ~(size_t)(ARENA_ALIGN - 1); }

/* The class of a small block of n (1..STATE_SMALL_MAX) bytes; its blocks
** have room for arena_round(n). */
static size_t small_class(size_t n) { return (n - 1) / STATE_SMALL_STEP; }

static int in_arena(const state_slot *s, const void *ptr) {
  const unsigned char *q = ptr;
  return s->arena && q >= s->arena && q < s->arena + s->arena_cap;
}

/* n bytes from the arena while the state is being opened, else NULL. */
static void *carve(state_slot *s, size_t n) {
  if (!s->carving) return NULL;
  size_t need = arena_round(n);
  for (int i = 0; i < s->nholes; i++) {
    arena_hole *h = &s->holes[i];
    if (h->len < need) continue;
    void *q = s->arena + h->at;
    h->at += need;
    h->len -= need;
    if (h->len == 0) *h = s->holes[--s->nholes];
    UNPOISON(q, n);
    return q;
  }
  if (s->arena_cap - s->arena_top < need) { s->arena_over += need; return NULL; }
  void *q = s->arena + s->arena_top;
  s->arena_top += need;
  UNPOISON(q, n);
  return q;
}

/* Lua freed the arena block ptr of osize bytes: while carving it can be
** carved again; afterwards it stays unused (and poisoned) until the close. */
static void uncarve(state_slot *s, void *ptr, size_t osize) {
  POISON(ptr, osize);
  if (!s->carving) return;
  size_t at = (size_t)((unsigned char *)ptr - s->arena), len = arena_round(osize);
  if (at + len == s->arena_top) s->arena_top = at;
  else if (s->nholes < ARENA_HOLES) s->holes[s->nholes++] = (arena_hole){ at, len };
}

/* Grows the arena block ptr (osize bytes) to nsize: in place when it is
** the last one carved and there is room, else into a new block. */
static void *arena_grow(state_slot *s, void *ptr, size_t osize, size_t nsize) {
  size_t at = (size_t)((unsigned char *)ptr - s->arena);
  if (s->carving && at + arena_round(osize) == s->arena_top &&
      s->arena_cap - at >= arena_round(nsize)) {
    s->arena_top = at + arena_round(nsize);
    UNPOISON(ptr, nsize);
    return ptr;
  }
  void *n = carve(s, nsize);
  if (!n) n = malloc(nsize <= STATE_SMALL_MAX ? arena_round(nsize) : nsize);   /* see state_slot.small */
  if (!n) return NULL;
  memcpy(n, ptr, osize);
  uncarve(s, ptr, osize);
  return n;
}

/* A new arena for an opening, as large as the last opening needed. */
static void arena_open(state_slot *s) {
  size_t cap = s->arena_want ? s->arena_want : ARENA_FIRST;
  s->arena = malloc(cap);
  s->arena_cap = s->arena ? cap : 0;
  if (s->arena) POISON(s->arena, cap);
  s->arena_top = s->arena_over = 0;
  s->nholes = 0;
  s->carving = s->arena != NULL;
}

/* The opening is over: from here every allocation is malloc's. */
static void arena_seal(state_slot *s) {
  if (s->carving) s->arena_want = s->arena_top + s->arena_over;
  s->carving = 0;
}

static void arena_release(state_slot *s) {
  if (s->arena) UNPOISON(s->arena, s->arena_cap);
  free(s->arena);
  s->arena = NULL;
  s->arena_cap = s->arena_top = 0;
  s->carving = 0;
}

/* ---- small blocks (see state_slot.small) ---- */

/* A block for n (1..STATE_SMALL_MAX) bytes with room for its whole class. */
static void *small_get(state_slot *s, size_t n) {
  void **head = &s->small[small_class(n)];
  void *q = *head;
  if (q) {
    UNPOISON(q, sizeof(void *));
    *head = *(void **)q;
    s->small_kept -= arena_round(n);
    UNPOISON(q, n);
    return q;
  }
  q = carve(s, n);   /* rounds up to the class itself */
  return q ? q : malloc(arena_round(n));
}

/* Takes back a block that held n (1..STATE_SMALL_MAX) bytes. */
static void small_put(state_slot *s, void *ptr, size_t n) {
  size_t size = arena_round(n);
  if (!s->carving && s->small_kept + size <= STATE_SMALL_KEEP) {
    void **head = &s->small[small_class(n)];
    UNPOISON(ptr, sizeof(void *));   /* a shrink in place may have poisoned it */
    *(void **)ptr = *head;
    *head = ptr;
    s->small_kept += size;
    POISON(ptr, size);
  } else if (in_arena(s, ptr)) uncarve(s, ptr, n);
  else free(ptr);
}

/* Gives back the kept blocks that are not in the arena (which goes whole). */
static void small_release(state_slot *s) {
  for (size_t c = 0; c < STATE_SMALL_MAX / STATE_SMALL_STEP; c++) {
    void *q = s->small[c];
    while (q) {
      UNPOISON(q, sizeof(void *));
      void *next = *(void **)q;
      if (!in_arena(s, q)) { UNPOISON(q, (c + 1) * STATE_SMALL_STEP); free(q); }
      q = next;
    }
    s->small[c] = NULL;
  }
  s->small_kept = 0;
}

/* Closes L, whose objects may live in s's arena, and then the arena. */
static void close_state(state_slot *s, lua_State *L) {
  small_release(s);
  s->small_kept = STATE_SMALL_KEEP;   /* what lua_close frees is not kept */
  lua_close(L);
  s->small_kept = 0;
  arena_release(s);
}

/* Frees a block of osize bytes, wherever it came from. */
static void block_free(state_slot *s, void *ptr, size_t osize) {
  if (osize <= STATE_SMALL_MAX) small_put(s, ptr, osize);
  else if (in_arena(s, ptr)) uncarve(s, ptr, osize);
  else free(ptr);
}

/* Resizes ptr (osize bytes; NULL for a new block) to nsize > 0 bytes. */
static void *block_resize(state_slot *s, void *ptr, size_t osize, size_t nsize) {
  if (!ptr) {
    if (nsize <= STATE_SMALL_MAX) return small_get(s, nsize);
    void *q = carve(s, nsize);
    return q ? q : malloc(nsize);
  }
  int small = osize <= STATE_SMALL_MAX;
  if ((small && nsize <= arena_round(osize)) || (!small && in_arena(s, ptr) && nsize <= osize)) {
    if (nsize < osize) POISON((unsigned char *)ptr + nsize, osize - nsize);   /* in place */
    else UNPOISON(ptr, nsize);
    return ptr;
  }
  if (s->carving && in_arena(s, ptr)) return arena_grow(s, ptr, osize, nsize);
  if (!small && !in_arena(s, ptr) && nsize > STATE_SMALL_MAX) return realloc(ptr, nsize);
  void *q = block_resize(s, NULL, 0, nsize);
  if (!q) return NULL;
  memcpy(q, ptr, osize < nsize ? osize : nsize);
  block_free(s, ptr, osize);
  return q;
}

static void *state_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  state_slot *s = ud;
  proc *p = s->owner;
  size_t old = ptr ? osize : 0;
  if (nsize == 0) {
    if (ptr) block_free(s, ptr, osize);
    s->used -= old;
    publish(s);
    return NULL;
  }
  if (s->limit && p && nsize > old) {
    size_t want = s->used + (nsize - old);
    int doomed = atomic_load_explicit(&p->doomed, memory_order_relaxed);
    if (want > s->limit + (doomed ? DOOM_SLACK : 0)) {
      if (!doomed) {
        size_t len;
        const unsigned char *r = kern_reason(KR_MEMORY, &len);
        proc_doom(p, r, len);   /* signals our own thread: the hook is armed */
      }
      return NULL;
    }
  }
  void *q = block_resize(s, ptr, old, nsize);
  if (!q) return NULL;
  s->used = s->used - old + nsize;
  publish(s);
  return q;
}

static void no_warnings(void *ud, const char *msg, int tocont) {
  (void)ud; (void)msg; (void)tocont;
}

static void wrap_coroutines(lua_State *L);
static void wrap_handlers(lua_State *L);

/* Puts stdlib/ first on package.path unless it is already there. */
void state_add_stdlib_path(lua_State *L) {
  const char *dir = kern_stdlib_dir();
  lua_getglobal(L, "package");
  if (!lua_istable(L, -1)) { lua_pop(L, 1); return; }
  lua_getfield(L, -1, "path");
  const char *path = lua_tostring(L, -1);
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  luaL_addstring(&b, dir);
  luaL_addstring(&b, "/?.lua;");
  luaL_pushresult(&b);
  if (!path || !strstr(path, lua_tostring(L, -1))) {
    lua_pushfstring(L, "%s%s/?/init.lua;%s", lua_tostring(L, -1), dir, path ? path : "");
    lua_setfield(L, -4, "path");
  }
  lua_pop(L, 3);
}

/* What every state has before the host's hook: the same in every state. */
static int open_base(lua_State *L) {
  lua_pushboolean(L, 1);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &kernel_key);
  luaL_openlibs(L);
  wrap_coroutines(L);
  wrap_handlers(L);
  luaL_requiref(L, "erlangen", luaopen_erlangen, 1);
  lua_pop(L, 1);
  state_add_stdlib_path(L);
  return 0;
}

static int open_host(lua_State *L) {
  kern_config c = kern_config_get();
  if (c.open_libs) c.open_libs(L, c.open_libs_ud);
  return 0;
}

void state_open(lua_State *L) {
  open_base(L);
  open_host(L);
}

/* ---- coroutines ----
** A hook belongs to one Lua thread, so the signal handler must arm the
** coroutine that is running, not the process's main state: resume keeps
** S_current pointing at the running coroutine. After every switch the doom
** flag is checked again, so a signal that armed the thread just left is not
** lost. */

/* 1 while p's doom is to be unwound: a spawned process's until it ends;
** an attached one's until it has exited, as its doom is raised once (the
** thread then goes on, as a fresh process at its next erlangen call). The
** owner may read status without the lock (process.h). */
static int is_doomed(const proc *p) {
  if (!p || !atomic_load_explicit(&p->doomed, memory_order_acquire)) return 0;
  return !p->attached || p->status == PROC_ALIVE;
}

/* Makes `to` the signal's target and returns the previous one. The fence
** keeps the compiler from moving the doom check that follows above the
** store (the handler runs on this thread): a doom either sees `to` as its
** target or is seen by that check. */
static lua_State *set_current(lua_State *to) {
  lua_State *prev = S_current;
  S_current = to;
  atomic_signal_fence(memory_order_seq_cst);
  return prev;
}

static int co_resume(lua_State *L) {
  lua_State *co = lua_tothread(L, 1);
  luaL_argexpected(L, co, 1, "coroutine");
  proc *p = proc_self();
  int n = lua_gettop(L);
  lua_pushvalue(L, lua_upvalueindex(1));   /* the original coroutine.resume */
  lua_insert(L, 1);
  lua_State *prev = set_current(co);
  if (is_doomed(p)) state_arm_hook(co);
  int st = lua_pcall(L, n, LUA_MULTRET, 0);
  set_current(prev);
  if (p && (is_doomed(p) || atomic_load(&p->interrupt))) state_arm_hook(L);
  if (st != LUA_OK) return lua_error(L);
  return lua_gettop(L);
}

/* coroutine.wrap over the resume above, keeping 5.4's behaviour: errors are
** re-raised (strings with the position of the call), and a coroutine that
** died of an error is reset so its to-be-closed variables run.
** Upvalues: 1 the coroutine, 2 co_resume. */
static int co_wrap_call(lua_State *L) {
  lua_State *co = lua_tothread(L, lua_upvalueindex(1));
  int n = lua_gettop(L);
  lua_pushvalue(L, lua_upvalueindex(2));
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_rotate(L, 1, 2);
  lua_call(L, n + 1, LUA_MULTRET);
  if (lua_toboolean(L, 1)) return lua_gettop(L) - 1;
  int st = lua_status(co);
  if (st != LUA_OK && st != LUA_YIELD) {
    lua_resetthread(co);
  }
  if (lua_type(L, 2) == LUA_TSTRING) {
    luaL_where(L, 1);
    lua_insert(L, 2);
    lua_concat(L, 2);
  }
  lua_settop(L, 2);
  return lua_error(L);
}

/* Upvalue 1: co_resume. */
static int co_wrap(lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  lua_State *co = lua_newthread(L);
  lua_pushvalue(L, 1);
  lua_xmove(L, co, 1);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_pushcclosure(L, co_wrap_call, 2);
  return 1;
}

static void wrap_coroutines(lua_State *L) {
  lua_getglobal(L, "coroutine");
  if (lua_istable(L, -1)) {
    lua_getfield(L, -1, "resume");
    lua_pushcclosure(L, co_resume, 1);
    lua_pushvalue(L, -1);
    lua_setfield(L, -3, "resume");
    lua_pushcclosure(L, co_wrap, 1);
    lua_setfield(L, -2, "wrap");
  }
  lua_pop(L, 1);
}

/* ---- what Lua runs with hooks off: message handlers and finalizers ----
** Lua runs a hook with hooks off, and an error raised in a hook calls the
** message handler right there; it also runs every __gc finalizer with
** hooks off. So the doom hook cannot reach a loop in an xpcall handler nor
** in a finalizer. Process states therefore get an xpcall whose handler is
** skipped once the process is doomed (the exit cannot be caught anyway), and
** a setmetatable that runs a Lua __gc in a coroutine of its own, which
** starts with hooks on and is the signal's target while it runs. */

/* xpcall's message handler. Doomed: the exit object goes on untouched,
** even if the kill's own raise is what called us (hooks off); the doom hook
** stays armed, so the caller of xpcall is unwound at its next instruction.
** Otherwise the user's handler runs, one C level deeper than stock.
** Upvalue 1: the user's handler. */
static int xpcall_handler(lua_State *L) {
  if (is_doomed(proc_self())) return 1;
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  lua_call(L, lua_gettop(L) - 1, 1);
  return 1;
}

/* lbaselib's finishpcall: the continuation after a yield, and the end. */
static int xpcall_finish(lua_State *L, int status, lua_KContext extra) {
  if (status != LUA_OK && status != LUA_YIELD) {
    lua_pushboolean(L, 0);
    lua_pushvalue(L, -2);
    return 2;
  }
  return lua_gettop(L) - (int)extra;
}

/* xpcall(f, msgh, ...) as lbaselib's, with msgh behind xpcall_handler. */
static int st_xpcall(lua_State *L) {
  int n = lua_gettop(L);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  lua_pushvalue(L, 2);
  lua_pushcclosure(L, xpcall_handler, 1);
  lua_replace(L, 2);
  lua_pushboolean(L, 1);   /* the first result */
  lua_pushvalue(L, 1);
  lua_rotate(L, 3, 2);     /* true and f below f's arguments */
  int status = lua_pcallk(L, n - 2, LUA_MULTRET, 2, 2, xpcall_finish);
  return xpcall_finish(L, status, 2);
}

/* The coroutine's body: calls finalizer(args...) without continuation, so a
** yield in it fails ("attempt to yield across a C-call boundary"). */
static int gc_body(lua_State *co) {
  lua_call(co, lua_gettop(co) - 1, LUA_MULTRET);
  return lua_gettop(co);
}

/* A Lua __gc behind setmetatable: runs it in a coroutine, the target of
** the signal while it runs (as in co_resume), armed at once if doomed.
** The coroutine is the state's idle one if there is one (taken out of the
** registry while in use, so a nested gc_run makes its own) or a new one;
** one that ended well is kept as the idle one. Its error is raised again
** here, so Lua warns as for any __gc. A doomed coroutine's to-be-closed
** variables are not closed: the raise that killed it ran in a hook, which
** left hooks off in it. Upvalue 1: the finalizer. */
static int gc_run(lua_State *L) {
  proc *p = proc_self();
  int n = lua_gettop(L);
  luaL_checkstack(L, 2, NULL);
  lua_State *co;
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &gc_co_key) == LUA_TTHREAD) {
    co = lua_tothread(L, -1);
    lua_pushnil(L);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &gc_co_key);
  } else {
    lua_pop(L, 1);
    co = lua_newthread(L);
  }
  lua_sethook(co, NULL, 0, 0);   /* not L's: a pending interrupt is L's to raise */
  luaL_checkstack(co, n + 2, NULL);
  lua_insert(L, 1);              /* co stays referenced below */
  lua_pushcfunction(co, gc_body);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 2);
  lua_xmove(L, co, n + 1);       /* the finalizer and its arguments */
  lua_State *prev = set_current(co);
  if (is_doomed(p)) state_arm_hook(co);
  int nres = 0;
  int st = lua_resume(co, L, n + 1, &nres);
  if (st != LUA_OK && !is_doomed(p)) lua_resetthread(co);   /* closes, as a pcall would */
  set_current(prev);
  if (prev && p && (is_doomed(p) || atomic_load(&p->interrupt))) state_arm_hook(prev);
  if (st != LUA_OK) {
    lua_xmove(co, L, 1);
    return lua_error(L);
  }
  luaL_checkstack(L, nres + 1, NULL);
  lua_xmove(co, L, nres);
  if (lua_gettop(co) == 0) {     /* co ended well and holds nothing: idle again */
    lua_pushvalue(L, 1);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &gc_co_key);
  }
  return nres;
}

/* Puts gc_run in place of a Lua function in the __gc of the metatable at
** index mt; a C __gc (gc_run included) stays. */
static void wrap_gc(lua_State *L, int mt) {
  lua_pushvalue(L, lua_upvalueindex(1));   /* "__gc" */
  if (lua_rawget(L, mt) == LUA_TFUNCTION && !lua_iscfunction(L, -1)) {
    lua_pushcclosure(L, gc_run, 1);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, -2);
    lua_rawset(L, mt);
  } else lua_pop(L, 1);
}

/* setmetatable as lbaselib's, with wrap_gc once the arguments are checked.
** Upvalue 1: "__gc". */
static int st_setmetatable(lua_State *L) {
  int t = lua_type(L, 2);
  luaL_checktype(L, 1, LUA_TTABLE);
  luaL_argexpected(L, t == LUA_TNIL || t == LUA_TTABLE, 2, "nil or table");
  if (luaL_getmetafield(L, 1, "__metatable") != LUA_TNIL)
    return luaL_error(L, "cannot change a protected metatable");
  lua_settop(L, 2);
  if (t == LUA_TTABLE) wrap_gc(L, 2);
  lua_setmetatable(L, 1);
  return 1;
}

/* debug.setmetatable as ldblib's, with wrap_gc. Upvalue 1: "__gc". */
static int st_debug_setmetatable(lua_State *L) {
  int t = lua_type(L, 2);
  luaL_argexpected(L, t == LUA_TNIL || t == LUA_TTABLE, 2, "nil or table");
  lua_settop(L, 2);
  if (t == LUA_TTABLE) wrap_gc(L, 2);
  lua_setmetatable(L, 1);
  return 1;
}

static void wrap_handlers(lua_State *L) {
  lua_pushcfunction(L, st_xpcall);
  lua_setglobal(L, "xpcall");
  lua_pushliteral(L, "__gc");
  lua_pushcclosure(L, st_setmetatable, 1);
  lua_setglobal(L, "setmetatable");
  lua_getglobal(L, "debug");
  if (lua_istable(L, -1)) {
    lua_pushliteral(L, "__gc");
    lua_pushcclosure(L, st_debug_setmetatable, 1);
    lua_setfield(L, -2, "setmetatable");
  }
  lua_pop(L, 1);
}

/* Every state the kernel makes runs Lua's generational collector. A
** process's garbage is mostly young (each message received is a new
** table, dropped soon after), which a minor collection frees without
** walking the old heap: one-way throughput 2.8 -> 3.3 M msg/s with both
** sides generational. The switch runs a full cycle, so it is made while
** the state is empty. A program may go back with
** collectgarbage("incremental"). */
static void collect_generationally(lua_State *L) {
  lua_gc(L, LUA_GCGEN, 0, 0);   /* 0, 0: Lua's default multipliers */
}

/* A new state with everything state_open gives. Its fixed part is opened
** from the slot's arena, with the collector stopped: nothing it makes is
** garbage yet, so a collection would only walk it. The host's hook runs
** after, as ordinary Lua: its garbage is collected and does not size the
** next arena. */
static lua_State *state_new(state_slot *s) {
  arena_open(s);
  lua_State *L = lua_newstate(state_alloc, s);
  if (!L) { arena_release(s); return NULL; }
  lua_setwarnf(L, no_warnings, NULL);
  collect_generationally(L);
  lua_gc(L, LUA_GCSTOP);
  lua_pushcfunction(L, open_base);
  int st = lua_pcall(L, 0, 0, 0);
  arena_seal(s);
  lua_gc(L, LUA_GCRESTART);
  if (st == LUA_OK) {
    lua_pushcfunction(L, open_host);
    st = lua_pcall(L, 0, 0, 0);
  }
  if (st != LUA_OK) { close_state(s, L); return NULL; }
  return L;
}

/* ---- states of host threads (erlangen_attach) ----
** Made with the kernel's allocator, so that the process's memory shows in
** info() and its small blocks are recycled like a spawned process's; with
** the panic and warning behaviour of luaL_newstate (warnings off until
** "@on"). The slot lives as long as the state. */

typedef struct host_slot {
  state_slot s;   /* first: the allocator's ud is also the host_slot */
  int warnings;   /* "@on" was given */
  int continued;  /* the last piece of a warning had a continuation */
} host_slot;

static void host_warn(void *ud, const char *msg, int tocont) {
  host_slot *h = ud;
  if (!h->continued && !tocont && msg[0] == '@') {   /* a control message */
    if (strcmp(msg, "@on") == 0) h->warnings = 1;
    else if (strcmp(msg, "@off") == 0) h->warnings = 0;
    return;
  }
  if (h->warnings) {
    if (!h->continued) fputs("Lua warning: ", stderr);
    fputs(msg, stderr);
    if (!tocont) fputs("\n", stderr);
  }
  h->continued = tocont;
}

static int host_panic(lua_State *L) {
  const char *msg = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "error object is not a string";
  fprintf(stderr, "PANIC: unprotected error in call to Lua API (%s)\n", msg);
  return 0;
}

lua_State *state_new_host(void) {
  host_slot *h = calloc(1, sizeof *h);
  if (!h) return NULL;
  lua_State *L = lua_newstate(state_alloc, &h->s);
  if (!L) { free(h); return NULL; }
  collect_generationally(L);
  lua_atpanic(L, host_panic);
  lua_setwarnf(L, host_warn, h);
  return L;
}

/* The slot of a state made by the kernel, else NULL (stock lua's states). */
static state_slot *slot_of(lua_State *L) {
  void *ud;
  return lua_getallocf(L, &ud) == state_alloc ? ud : NULL;
}

void state_close_host(lua_State *L) {
  state_slot *s = slot_of(L);
  if (!s) { lua_close(L); return; }
  s->owner = NULL;
  close_state(s, L);
  free(s);
}

void state_bind(lua_State *L, proc *p) {
  state_slot *s = slot_of(L);
  if (!s) return;
  s->owner = p;
  publish(s);
}

/* ---- running ---- */

/* Message handler: keeps the error value, records a traceback for the report. */
static int msgh(lua_State *L) {
  proc *p = proc_self();
  if (!(p && atomic_load(&p->doomed))) {
    lua_pushvalue(L, 1);
    if (!state_exit_reason(L, p)) {
      const char *msg = luaL_tolstring(L, 1, NULL);
      luaL_traceback(L, L, msg, 1);
      lua_rawsetp(L, LUA_REGISTRYINDEX, &trace_key);
      lua_pop(L, 1);
    } else lua_pop(L, 1);
    lua_settop(L, 1);
  }
  return 1;
}

/* Pushes the function named "module.function", or an error string; returns 1 if found. */
static int resolve(lua_State *L, const char *name) {
  const char *dot = strrchr(name, '.');
  if (!dot || dot == name || !dot[1]) {
    lua_pushfstring(L, "bad function name '%s' (expected \"module.function\")", name);
    return 0;
  }
  lua_getglobal(L, "require");
  lua_pushlstring(L, name, (size_t)(dot - name));
  if (lua_pcall(L, 1, 1, 0) != LUA_OK) return 0;
  if (!lua_istable(L, -1)) {
    lua_pushfstring(L, "module '%s' did not return a table", lua_tostring(L, -1));
    return 0;
  }
  lua_getfield(L, -1, dot + 1);
  lua_remove(L, -2);
  if (lua_isfunction(L, -1)) return 1;
  lua_pop(L, 1);
  lua_pushfstring(L, "'%s' is not a function", name);
  return 0;
}

/* Leaves the entry function and its arguments on the stack; returns the
** argument count, or -1 with an error value on the stack. */
static int load_entry(lua_State *L, proc *p) {
  int n;
  if (p->paths) {   /* the spawner's, before anything is required */
    lua_getglobal(L, "package");
    if (lua_istable(L, -1)) {
      size_t a = strlen(p->paths);
      if (a) { lua_pushstring(L, p->paths); lua_setfield(L, -2, "path"); }
      if (p->paths[a + 1]) { lua_pushstring(L, p->paths + a + 1); lua_setfield(L, -2, "cpath"); }
    }
    lua_pop(L, 1);
    free(p->paths);
    p->paths = NULL;
  }
  switch (p->entry) {
  case ENTRY_FILE:
    return luaL_loadfile(L, (const char *)p->payload) == LUA_OK ? 0 : -1;
  case ENTRY_STRING:
    return luaL_loadbuffer(L, (const char *)p->payload, p->payload_len,
                           p->chunkname ? p->chunkname : "=spawn") == LUA_OK ? 0 : -1;
  case ENTRY_CODEC:
  case ENTRY_WIRE:
  default: {
    /* one message: the function (or its "module.function" name), then the arguments */
    codec_limits lim = kern_limits(p->entry != ENTRY_WIRE);
    lim.wire = p->entry == ENTRY_WIRE;
    n = codec_decode(L, p->payload, p->payload_len, &lim);
    free(p->payload);
    p->payload = NULL;
    if (n < 1) { if (n == 0) lua_pushliteral(L, "spawn: no function"); return -1; }
    if (lua_type(L, -n) == LUA_TSTRING) {
      const char *name = lua_tostring(L, -n);
      if (!resolve(L, name)) return -1;
      lua_replace(L, -n - 1);
    }
    return n - 1;
  }
  }
}

/* What state_run learns from the protected steps. */
typedef struct run_result {
  int started;            /* the entry was found and called */
  unsigned char *reason;  /* encoded exit reason (malloc'ed) */
  size_t len;
} run_result;

/* Protected: finds the entry and calls it. Args: proc, run_result. */
static int run_entry(lua_State *L) {
  proc *p = lua_touserdata(L, 1);
  run_result *r = lua_touserdata(L, 2);
  lua_settop(L, 0);
  int n = load_entry(L, p);
  if (n < 0) return lua_error(L);
  r->started = 1;
  lua_call(L, n, 0);
  return 0;
}

/* Encodes the value at the top as a reason; a value that cannot be sent is
** replaced by its tostring. May raise (a __tostring that fails, memory). */
static void encode_reason(lua_State *L, run_result *r) {
  codec_limits lim = kern_limits(1);
  codec_buf b = {0};
  if (codec_encode(L, -1, 1, "reason", &lim, &b) != 0) {
    lua_pop(L, 1);                          /* the codec's error message */
    luaL_tolstring(L, -1, NULL);
    if (codec_encode(L, -1, 1, "reason", &lim, &b) != 0) luaL_error(L, "unsendable reason");
  }
  r->reason = b.data;
  r->len = b.len;
}


/* Sends the record {"$log", level, text, fields, pid, system time} to the
** registered logger without waiting; `fields` holds n key/value pairs of
** strings (a NULL value is left out), and a pid of {0} is left out (the
** logger then shows its own). Returns 1 if it was queued; 0 (the caller
** prints to stderr) when there is no logger, its mailbox is full, or memory
** is short. May raise (memory). */
static int log_record(lua_State *L, const char *level, const char *text,
                      const char *const *fields, int n, term_id pid) {
  term_id logger;
  if (!reg_whereis(KERN_LOGGER_NAME, &logger)) return 0;
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  lua_createtable(L, 6, 0);
  lua_pushliteral(L, "$log"); lua_rawseti(L, -2, 1);
  lua_pushstring(L, level); lua_rawseti(L, -2, 2);
  lua_pushstring(L, text); lua_rawseti(L, -2, 3);
  lua_createtable(L, 0, n);
  for (int i = 0; i < n; i++)
    if (fields[2 * i + 1]) { lua_pushstring(L, fields[2 * i + 1]); lua_setfield(L, -2, fields[2 * i]); }
  lua_rawseti(L, -2, 4);
  if (pid.n) { term_push(L, TERM_PID, pid); lua_rawseti(L, -2, 5); }
  lua_pushnumber(L, (lua_Number)ts.tv_sec + ts.tv_nsec / 1e9); lua_rawseti(L, -2, 6);
  codec_limits lim = kern_limits(0);
  codec_buf b = {0};
  int ok = codec_encode(L, -1, 1, "report", &lim, &b) == 0;
  lua_pop(L, 1);   /* the table or the codec's error */
  proc *q = ok ? proc_get(logger) : NULL;
  mbox_msg *m = q ? mbox_msg_new(MBOX_MSG, b.data, b.len, (term_id){0, 0, 0}, (term_id){0, 0, 0}) : NULL;
  codec_buf_free(&b);
  int rc = m ? mbox_put(&q->mb, m, 0, NULL, NULL) : MBOX_FULL;
  if (q) proc_release(q);
  return rc == MBOX_OK;
}

/* A crash report: level "error", fields reason and traceback. */
static int report_to_logger(lua_State *L, proc *p, const char *text, const char *reason,
                            const char *trace) {
  const char *fields[] = { "reason", reason, "traceback", trace };
  return log_record(L, "error", text, fields, 2, p->pid);
}

typedef struct log_args {
  const char *level, *text;
  const char *const *fields;
  int n, queued;
} log_args;

static int log_protected(lua_State *L) {
  log_args *a = lua_touserdata(L, 1);
  a->queued = log_record(L, a->level, a->text, a->fields, a->n, (term_id){0, 0, 0});
  return 0;
}

int state_log(const char *level, const char *text, const char *const *fields, int n) {
  term_id logger;
  if (!reg_whereis(KERN_LOGGER_NAME, &logger)) return 0;   /* the common case: no state to make */
  lua_State *L = luaL_newstate();
  if (!L) return 0;
  log_args a = { level, text, fields, n, 0 };
  lua_pushcfunction(L, log_protected);
  lua_pushlightuserdata(L, &a);
  if (lua_pcall(L, 1, 0, 0) != LUA_OK) a.queued = 0;
  lua_close(L);
  return a.queued;
}

/* Protected: turns how the entry ended into a reason, reporting crashes.
** Args: proc, run_result, status, error value. */
static int conclude(lua_State *L) {
  proc *p = lua_touserdata(L, 1);
  run_result *r = lua_touserdata(L, 2);
  int status = (int)lua_tointeger(L, 3);
  lua_settop(L, 4);
  if (status == LUA_OK) return 0;              /* the caller uses "normal" */
  if (state_exit_reason(L, p)) { encode_reason(L, r); return 0; }
  const char *why = luaL_tolstring(L, 4, NULL);
  if (r->started) {
    lua_rawgetp(L, LUA_REGISTRYINDEX, &trace_key);
    const char *trace = lua_tostring(L, -1);
    if (!report_to_logger(L, p, "process crashed", why, trace))
      fprintf(stderr, "=ERROR REPORT==== process <%d.%llu> crashed\n%s\n",
              (int)p->pid.node, (unsigned long long)p->pid.n, trace ? trace : why);
  } else if (!report_to_logger(L, p, "process could not start", why, NULL)) {
    fprintf(stderr, "=ERROR REPORT==== process <%d.%llu> could not start: %s\n",
            (int)p->pid.node, (unsigned long long)p->pid.n, why);
  }
  fflush(stderr);
  lua_settop(L, 4);
  encode_reason(L, r);
  return 0;
}

static void copy_reason(enum kern_reason k, unsigned char **reason, size_t *len) {
  const unsigned char *r = kern_reason(k, len);
  *reason = malloc(*len);
  if (*reason) memcpy(*reason, r, *len);
}

void state_prepare(state_slot *s) {
  if (!s->L) {
    s->owner = NULL;
    s->limit = 0;
    s->L = state_new(s);
  }
}

void state_slot_close(state_slot *s) {
  if (s->L) close_state(s, s->L);
  s->L = NULL;
  s->owner = NULL;
}

void state_run(proc *p, state_slot *s, unsigned char **reason, size_t *len) {
  *reason = NULL;
  *len = 0;
  s->owner = p;   /* bind first: the limit and the published size apply from here */
  s->limit = p->mem_limit;
  publish(s);
  lua_State *L = s->L ? s->L : state_new(s);
  s->L = NULL;
  if (!L) { s->owner = NULL; return; }  /* the caller reports "memory" */
  p->L = L;
  *(proc **)lua_getextraspace(L) = p;
  state_set_current(L);
  if (atomic_load(&p->doomed)) state_arm_hook(L);
  /* Everything that runs Lua code runs protected: a state without a panic
  ** handler must never raise outside a pcall, or the OS process aborts. */
  run_result r = {0, NULL, 0};
  lua_pushcfunction(L, msgh);
  int base = lua_gettop(L);
  lua_pushcfunction(L, run_entry);
  lua_pushlightuserdata(L, p);
  lua_pushlightuserdata(L, &r);
  int status = lua_pcall(L, 2, 0, base);
  if (status != LUA_OK && !atomic_load(&p->doomed)) {
    lua_pushcfunction(L, conclude);
    lua_pushlightuserdata(L, p);
    lua_pushlightuserdata(L, &r);
    lua_pushinteger(L, status);
    lua_pushvalue(L, -5);                 /* the error value */
    if (lua_pcall(L, 4, 0, 0) != LUA_OK) {
      free(r.reason);
      r.reason = NULL;
      copy_reason(KR_BADREASON, &r.reason, &r.len);
    }
  }
  /* Closing runs the pending finalizers; a doom that lands in one (see
  ** gc_run) still decides the reason, as the process has not exited yet. */
  state_set_current(NULL);
  lua_sethook(L, NULL, 0, 0);
  close_state(s, L);
  p->L = NULL;
  s->owner = NULL;
  if (atomic_load(&p->doomed)) {
    free(r.reason);
    *reason = proc_doom_copy(p, len);
  } else if (status == LUA_OK) {
    copy_reason(KR_NORMAL, reason, len);
  } else {
    *reason = r.reason;
    *len = r.len;
  }
  if (!*reason) copy_reason(KR_BADREASON, reason, len);  /* out of memory on the way */
}
