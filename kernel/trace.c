/*
** trace.c — erlangen.trace's bookkeeping and delivery (trace.h).
*/
#include <pthread.h>
#include <stdlib.h>
#include <lauxlib.h>
#include "codec.h"
#include "kernel.h"
#include "mailbox.h"
#include "process.h"
#include "trace.h"

#define BUCKETS 256   /* a power of two */

typedef struct traced {
  struct traced *next;
  term_id pid, tracer;
} traced;

/* `lock` (a leaf: nothing is locked under it) guards the tracer of "all",
** its events, and the table of processes traced on their own. */
static struct {
  pthread_mutex_t lock;
  unsigned all_events;
  term_id all_tracer;
  traced *buckets[BUCKETS];
} T = { .lock = PTHREAD_MUTEX_INITIALIZER };

static traced **slot_of(term_id pid) { return &T.buckets[pid.n & (BUCKETS - 1)]; }

static traced **find_locked(term_id pid) {
  traced **at = slot_of(pid);
  while (*at && !term_eq((*at)->pid, pid)) at = &(*at)->next;
  return at;
}

static void remove_locked(term_id pid) {
  traced **at = find_locked(pid);
  if (*at) {
    traced *gone = *at;
    *at = gone->next;
    free(gone);
  }
}

int trace_set(term_id target, unsigned events, term_id tracer) {
  events &= TRACE_EVENTS;
  proc *p = proc_get(target);
  if (!p) return -1;
  int rc = 0;
  pthread_mutex_lock(&T.lock);
  traced **at = find_locked(target);
  if (!events) remove_locked(target);
  else if (*at) (*at)->tracer = tracer;
  else {
    traced *t = malloc(sizeof *t);
    if (t) {
      t->pid = target;
      t->tracer = tracer;
      t->next = *slot_of(target);
      *slot_of(target) = t;
    } else rc = -1;
  }
  if (rc == 0) atomic_store(&p->trace, (uint8_t)events);
  pthread_mutex_unlock(&T.lock);
  proc_release(p);
  return rc;
}

typedef struct all_walk { unsigned events; term_id tracer; } all_walk;

/* Sets the events of a process that "all" traces (or none does); one
** traced on its own keeps its own tracing, the tracer is not traced. */
static void apply_all(proc *p, void *ud) {
  const all_walk *w = ud;
  uint8_t want = w->events ? (uint8_t)(w->events | TRACE_ALL) : 0;
  if (w->events && term_eq(p->pid, w->tracer)) want = 0;
  uint8_t cur = atomic_load(&p->trace);
  while ((cur == 0 || (cur & TRACE_ALL)) && !atomic_compare_exchange_weak(&p->trace, &cur, want)) {}
}

int trace_set_all(unsigned events, term_id tracer) {
  all_walk w = { events & TRACE_EVENTS, tracer };
  pthread_mutex_lock(&T.lock);
  T.all_events = w.events;
  T.all_tracer = w.events ? tracer : (term_id){0, 0, 0};
  pthread_mutex_unlock(&T.lock);
  proc_foreach(apply_all, &w);
  return 0;
}

void trace_inherit(proc *p) {
  pthread_mutex_lock(&T.lock);
  if (T.all_events) atomic_store(&p->trace, (uint8_t)(T.all_events | TRACE_ALL));
  pthread_mutex_unlock(&T.lock);
}

/* The tracer of p, or {0} when there is none any more. */
static term_id tracer_of(proc *p) {
  term_id tracer = {0, 0, 0};
  uint8_t events = atomic_load(&p->trace);
  pthread_mutex_lock(&T.lock);
  if (events & TRACE_ALL) tracer = T.all_tracer;
  else {
    traced **at = find_locked(p->pid);
    if (*at) tracer = (*at)->tracer;
  }
  pthread_mutex_unlock(&T.lock);
  return tracer;
}

/* p's tracer ended: the tracing that used it stops. */
static void tracer_gone(proc *p, term_id tracer) {
  if (atomic_load(&p->trace) & TRACE_ALL) {
    pthread_mutex_lock(&T.lock);
    int same = term_eq(T.all_tracer, tracer);
    pthread_mutex_unlock(&T.lock);
    if (same) trace_set_all(0, tracer);
  } else trace_set(p->pid, 0, tracer);
}

void trace_deliver(proc *p, const unsigned char *msg, size_t len) {
  term_id tracer = tracer_of(p);
  proc *t = tracer.n ? proc_get(tracer) : NULL;
  if (!t) { tracer_gone(p, tracer); return; }
  mbox_msg *m = mbox_msg_new(MBOX_MSG, msg, len, (term_id){0, 0, 0}, (term_id){0, 0, 0});
  if (m) mbox_put(&t->mb, m, 0, NULL, NULL);   /* full: dropped and counted; frees m */
  proc_release(t);
}

/* In a state of its own: args p, reason bytes, length, the buffer. */
static int exit_step(lua_State *L) {
  proc *p = lua_touserdata(L, 1);
  const unsigned char *reason = lua_touserdata(L, 2);
  size_t len = (size_t)lua_tointeger(L, 3);
  codec_buf *out = lua_touserdata(L, 4);
  lua_settop(L, 0);
  lua_createtable(L, 4, 0);
  lua_pushliteral(L, "trace");
  lua_rawseti(L, 1, 1);
  term_push(L, TERM_PID, p->pid);
  lua_rawseti(L, 1, 2);
  lua_pushliteral(L, "exit");
  lua_rawseti(L, 1, 3);
  codec_limits lim = kern_limits(0);
  int n = codec_decode(L, reason, len, &lim);
  if (n != 1) {   /* a reason holding a function: this state cannot rebuild it */
    lua_settop(L, 1);
    lua_pushliteral(L, "(an exit reason that cannot be decoded here)");
  }
  lua_rawseti(L, 1, 4);
  if (codec_encode(L, 1, 1, "msg", &lim, out) != 0) return lua_error(L);
  return 0;
}

void trace_exit(proc *p, const unsigned char *reason, size_t len) {
  if (!(atomic_load(&p->trace) & TRACE_EXIT)) return;
  lua_State *L = luaL_newstate();
  if (!L) return;
  codec_buf out = {0};
  lua_pushcfunction(L, exit_step);
  lua_pushlightuserdata(L, p);
  lua_pushlightuserdata(L, (void *)reason);
  lua_pushinteger(L, (lua_Integer)len);
  lua_pushlightuserdata(L, &out);
  if (lua_pcall(L, 4, 0, 0) == LUA_OK) trace_deliver(p, out.data, out.len);
  lua_close(L);
  codec_buf_free(&out);
}

void trace_forget(proc *p) {
  if (!atomic_load(&p->trace)) return;
  pthread_mutex_lock(&T.lock);
  remove_locked(p->pid);
  pthread_mutex_unlock(&T.lock);
}
