/*
** kernel.c — the node: configuration, well-known reasons, start and stop.
*/
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <lauxlib.h>
#include <lualib.h>
#include "erlangen_config.h"
#include "kernel.h"
#include "sig.h"
#include "process.h"
#include "registry.h"
#include "remote.h"
#include "state.h"

static const char *const kern_reason_text[KR_COUNT] = {
  "normal", "kill", "killed", "shutdown", "noproc", "memory", "interrupted",
  "bad exit reason", "noconnection", "abandoned"
};

/* The module's one global. `cfg` is guarded by `lock`; `running` is atomic;
** `reasons` are written before `running` is set and never after.
** `max_message` and `max_depth` mirror cfg for kern_limits, which every
** send and receive calls: written under `lock` with cfg, read without it
** (relaxed: each is one value, and a send may see the old or the new one). */
static struct {
  pthread_mutex_t lock;
  kern_config cfg;
  _Atomic size_t max_message;
  _Atomic int max_depth;
  _Atomic int running;
  _Atomic int stopping;
  _Atomic int spawning;   /* spawns between kern_spawn_begin and _end */
  struct { unsigned char *p; size_t len; } reasons[KR_COUNT];
  char stdlib[4096];   /* written by kern_start before `running` is set */
} K = { .lock = PTHREAD_MUTEX_INITIALIZER };

static int encode_reasons(void) {
  if (K.reasons[0].p) return 0;
  lua_State *L = luaL_newstate();
  if (!L) return -1;
  codec_limits lim = { .max_size = CODEC_DEFAULT_MAX_SIZE, .max_depth = CODEC_DEFAULT_MAX_DEPTH, .allow_functions = 0 };
  for (int i = 0; i < KR_COUNT; i++) {
    codec_buf b = {0};
    lua_pushstring(L, kern_reason_text[i]);
    if (codec_encode(L, -1, 1, "reason", &lim, &b) != 0) { lua_close(L); return -1; }
    K.reasons[i].p = b.data;
    K.reasons[i].len = b.len;
    lua_pop(L, 1);
  }
  lua_close(L);
  return 0;
}

const unsigned char *kern_reason(enum kern_reason r, size_t *len) {
  *len = K.reasons[r].len;
  return K.reasons[r].p;
}

int kern_reason_is(const unsigned char *p, size_t len, enum kern_reason r) {
  return len == K.reasons[r].len && memcmp(p, K.reasons[r].p, len) == 0;
}

/* Where stdlib/ lives: $ERLANGEN_STDLIB, else the source tree when this
** code runs from its build tree, else the install prefix. */
static const char *find_stdlib_dir(void) {
  const char *env = getenv("ERLANGEN_STDLIB");
  if (env && *env) return env;
  Dl_info info;
  static const char build[] = ERLANGEN_BUILD_ROOT;
  const char *where = ERLANGEN_STDLIB_INSTALL;
  char *self = NULL;
  if (dladdr((void *)find_stdlib_dir, &info) && info.dli_fname)
    self = realpath(info.dli_fname, NULL);   /* dli_fname may be relative */
  if (self && strncmp(self, build, sizeof build - 1) == 0) where = ERLANGEN_STDLIB_BUILD;
  free(self);
  return where;
}

static void set_cfg_locked(const kern_config *c) {
  K.cfg = *c;
  atomic_store_explicit(&K.max_message, c->max_message, memory_order_relaxed);
  atomic_store_explicit(&K.max_depth, c->max_depth, memory_order_relaxed);
}

int kern_start(const erlangen_config *c) {
  pthread_mutex_lock(&K.lock);
  if (atomic_load(&K.running)) { pthread_mutex_unlock(&K.lock); return -1; }
  kern_config cfg = {
    ERLANGEN_DEFAULT_STACK, ERLANGEN_DEFAULT_MAILBOX, CODEC_DEFAULT_MAX_SIZE,
    CODEC_DEFAULT_MAX_DEPTH, NULL, NULL
  };
  if (c) {
    if (c->stack_size) cfg.stack_size = c->stack_size < ERLANGEN_MIN_STACK ? ERLANGEN_MIN_STACK : c->stack_size;
    if (c->mailbox_capacity) cfg.mailbox = c->mailbox_capacity;
    if (c->max_message) cfg.max_message = c->max_message > CODEC_HARD_SIZE ? CODEC_HARD_SIZE : c->max_message;
    if (c->max_depth > 0) cfg.max_depth = c->max_depth > CODEC_HARD_DEPTH ? CODEC_HARD_DEPTH : c->max_depth;
    cfg.open_libs = c->open_libs;
    cfg.open_libs_ud = c->open_libs_ud;
  }
  set_cfg_locked(&cfg);
  snprintf(K.stdlib, sizeof K.stdlib, "%s", find_stdlib_dir());
  int rc = (encode_reasons() == 0 && proc_init() == 0 && reg_init() == 0) ? 0 : -1;
  if (rc == 0) {
    atomic_store(&K.stopping, 0);
    state_init_signals();
    atomic_store(&K.running, 1);
  }
  pthread_mutex_unlock(&K.lock);
  return rc;
}

int kern_ensure(void) {
  if (atomic_load(&K.running)) return 0;
  kern_start(NULL);
  return atomic_load(&K.running) ? 0 : -1;
}

int kern_running(void) { return atomic_load(&K.running); }
int kern_stopping(void) { return atomic_load(&K.stopping); }

/* seq_cst on both sides: either the spawner sees `stopping`, or kern_stop
** sees the spawn in flight and waits for it. */
int kern_spawn_begin(void) {
  atomic_fetch_add(&K.spawning, 1);
  if (atomic_load(&K.stopping)) { atomic_fetch_sub(&K.spawning, 1); return -1; }
  return 0;
}

void kern_spawn_end(void) { atomic_fetch_sub(&K.spawning, 1); }

kern_config kern_config_get(void) {
  pthread_mutex_lock(&K.lock);
  kern_config c = K.cfg;
  pthread_mutex_unlock(&K.lock);
  return c;
}

void kern_config_set(const kern_config *c) {
  pthread_mutex_lock(&K.lock);
  set_cfg_locked(c);
  pthread_mutex_unlock(&K.lock);
}

codec_limits kern_limits(int allow_functions) {
  codec_limits lim = { atomic_load_explicit(&K.max_message, memory_order_relaxed),
                       atomic_load_explicit(&K.max_depth, memory_order_relaxed),
                       allow_functions, remote_get()->nodes, 0 };
  return lim;
}

const char *kern_stdlib_dir(void) { return K.stdlib; }

/* ---- stopping ---- */

/* Seconds the logger gets, once every other process has ended, to write
** what it holds (at most its mailbox bound of records). */
#define LOGGER_GRACE 2.0

typedef struct stop_walk {
  proc *self;
  term_id spare;    /* left out of the walk (the logger); {0} for none */
  enum kern_reason reason;
  size_t spawned;   /* live processes not attached */
  int kill;         /* doom instead of signalling */
  int killed;
} stop_walk;

static int left_out(const stop_walk *w, const proc *p) {
  return p == w->self || p->attached || (w->spare.n && term_eq(p->pid, w->spare));
}

static void stop_visit(proc *p, void *ud) {
  stop_walk *w = ud;
  if (left_out(w, p)) return;
  w->spawned++;
  size_t len;
  const unsigned char *r = kern_reason(w->reason, &len);
  if (w->kill) {
    if (!atomic_load(&p->doomed)) w->killed++;
    proc_doom(p, r, len);
  }
  else sig_exit(p->pid, (term_id){0, 0, 0}, r, len, 0);
}

/* Attached processes: the caller's own is ended here; other host threads
** are doomed and end themselves when they next call into the kernel (their
** mailbox may be in use by them right now). */
static void detach_visit(proc *p, void *ud) {
  size_t len;
  const unsigned char *r = kern_reason(KR_SHUTDOWN, &len);
  if (!p->attached) return;
  if (p == ud) proc_exit(p, r, len); else proc_doom(p, r, len);
}

static void count_visit(proc *p, void *ud) {
  stop_walk *w = ud;
  if (!left_out(w, p)) w->spawned++;
}

static size_t spawned_alive(proc *self, term_id spare) {
  stop_walk w = { self, spare, KR_NORMAL, 0, 0, 0 };
  proc_foreach(count_visit, &w);
  return w.spawned;
}

static void nap(void) {
  struct timespec ts = {0, 2000000};
  nanosleep(&ts, NULL);
}

/* Waits up to `seconds` for the spawned processes (all but self and spare)
** to end. */
static void await_spawned(proc *self, term_id spare, double seconds) {
  double deadline = mbox_now() + seconds;
  while (spawned_alive(self, spare) > 0 && mbox_now() < deadline) nap();
}

/* "shutdown" to every spawned process but `spare`, "killed" to those still
** alive after `grace`; returns how many were killed. */
static int stop_all(proc *self, term_id spare, double grace) {
  stop_walk w = { self, spare, KR_SHUTDOWN, 0, 0, 0 };
  proc_foreach(stop_visit, &w);
  await_spawned(self, spare, grace);
  stop_walk k = { self, spare, KR_KILLED, 0, 1, 0 };
  proc_foreach(stop_visit, &k);   /* no spawn can start now: one pass sees everyone */
  await_spawned(self, spare, 2.0);  /* killed processes blocked in C may take a moment */
  return k.killed;
}

/* The logger (registered as KERN_LOGGER_NAME) is stopped after everyone
** else, so the records and crash reports of the others' last moments reach
** it before it gets "shutdown"; it writes what it holds, then ends. */
int kern_stop(double grace) {
  if (!atomic_load(&K.running)) return 0;
  proc *self = proc_self();
  atomic_store(&K.stopping, 1);   /* from here on spawns fail, so the passes below see everyone */
  while (atomic_load(&K.spawning) > 0) nap();
  term_id logger = {0, 0, 0};
  if (!reg_whereis(KERN_LOGGER_NAME, &logger) || (self && term_eq(logger, self->pid)))
    logger = (term_id){0, 0, 0};
  int killed = stop_all(self, logger, grace);
  if (logger.n) killed += stop_all(self, (term_id){0, 0, 0}, LOGGER_GRACE);
  proc_foreach(detach_visit, self);
  remote_get()->stop();           /* after the exits: their signals to other nodes leave first */
  proc_shutdown_pool();
  atomic_store(&K.running, 0);
  return killed;
}

/* ---- the public API (erlangen.h) that needs no Lua binding ---- */

int erlangen_start(const erlangen_config *cfg) { return kern_start(cfg); }
int erlangen_stop(double grace) { return kern_stop(grace); }
int erlangen_running(void) { return kern_running(); }

static int spawn_text(proc_entry e, const char *text, const char *name, erlangen_pid *pid) {
  if (!kern_running()) return -1;
  size_t len = strlen(text);
  unsigned char *payload = malloc(len + 1);
  if (!payload) return -1;
  memcpy(payload, text, len + 1);
  proc_opts o = {0};
  term_id id, ref;
  if (proc_spawn(NULL, &o, e, payload, len, name, &id, &ref)) return -1;
  if (pid) *pid = id.n;
  return 0;
}

int erlangen_spawn_file(const char *path, erlangen_pid *pid) {
  return spawn_text(ENTRY_FILE, path, path, pid);
}

int erlangen_spawn_string(const char *code, const char *chunkname, erlangen_pid *pid) {
  return spawn_text(ENTRY_STRING, code, chunkname ? chunkname : "=spawn", pid);
}

void erlangen_pushpid(lua_State *L, erlangen_pid pid) {
  term_push(L, TERM_PID, (term_id){pid, 0, 0});
}
