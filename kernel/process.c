/*
** process.c — the process table, the thread pool, spawn and exit.
*/
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "kernel.h"
#include "entry.h"
#include "process.h"
#include "registry.h"
#include "remote.h"
#include "trace.h"
#include "sig.h"
#include "state.h"

#define SHARDS 64          /* table shards, each under its own lock */
#define POOL_MAX 256       /* parked threads kept for reuse; more exit */

/* Sanitizers make stack frames several times larger: their builds give
** every process thread proportionally more stack. */
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define STACK_SCALE 4
#else
#define STACK_SCALE 1
#endif

typedef struct shard {
  pthread_mutex_t lock;
  proc **buckets;          /* lock: chained through proc.hnext */
  size_t nbuckets, n;      /* lock */
} shard;

typedef struct worker {
  state_slot slot;         /* thread only: the state prepared for the next job */
  pthread_t thread;
  pthread_cond_t cv;
  proc *job;               /* pool lock */
  size_t stack;            /* immutable */
  struct worker *next;     /* pool lock: idle or dead list */
  double preparing;        /* pool lock: when it began preparing its idle state; 0: ready */
  double prepared_in;      /* pool lock: how long its last preparation took */
} worker;

/* A spawn waits for an idle thread that is still preparing its state (it
** is at the head of the idle list) rather than waking a parked one: a
** wake-up takes 25-30 us on the reference VM (more when it is loaded),
** about what the rest of a preparation takes (20-60 us). Not when that
** thread's last preparation took over PREPARE_SLOW (a slow open_libs
** hook), or this one has overrun the last by PREPARE_OVERRUN (a hook that
** blocks). */
#define PREPARE_SLOW 1e-3
#define PREPARE_OVERRUN 200e-6

/* The module's one global. */
static struct {
  shard shards[SHARDS];
  _Atomic uint64_t next_id;      /* pid serials; never reused */
  _Atomic size_t live;           /* processes in the table */
  _Atomic size_t running;        /* spawned processes whose state has not finished running */
  pthread_mutex_t pool_lock;
  worker *idle, *dead;           /* pool_lock */
  size_t nidle, nthreads;        /* pool_lock: parked; all worker threads alive */
  int stopping;                  /* pool_lock */
  int ready;
} P = { .pool_lock = PTHREAD_MUTEX_INITIALIZER };

/* The process run by the calling thread (kernel thread or attached host thread). */
static __thread proc *P_self;

proc *proc_self(void) { return P_self; }

int proc_init(void) {
  if (P.ready) {
    pthread_mutex_lock(&P.pool_lock);
    P.stopping = 0;
    pthread_mutex_unlock(&P.pool_lock);
    return 0;
  }
  for (int i = 0; i < SHARDS; i++) {
    pthread_mutex_init(&P.shards[i].lock, NULL);
    P.shards[i].nbuckets = 16;
    P.shards[i].buckets = calloc(16, sizeof(proc *));
    if (!P.shards[i].buckets) return -1;
  }
  atomic_init(&P.next_id, 1);
  P.ready = 1;
  return 0;
}

/* ---- vectors ---- */

int proc_vec_push(proc_vec *v, const void *item, size_t size) {
  if (v->n == v->cap) {
    size_t cap = v->cap ? v->cap * 2 : 4;
    void *items = realloc(v->items, cap * size);
    if (!items) return -1;
    v->items = items;
    v->cap = cap;
  }
  memcpy((char *)v->items + v->n * size, item, size);
  v->n++;
  return 0;
}

void proc_vec_free(proc_vec *v) {
  free(v->items);
  v->items = NULL;
  v->n = v->cap = 0;
}

/* ---- the table ---- */

static shard *shard_of(term_id pid) { return &P.shards[pid.n % SHARDS]; }
static size_t bucket_of(shard *s, term_id pid) { return (pid.n / SHARDS) & (s->nbuckets - 1); }

static void table_insert(proc *p) {
  shard *s = shard_of(p->pid);
  pthread_mutex_lock(&s->lock);
  if (s->n >= s->nbuckets) {  /* grow; on failure keep chaining */
    size_t nb = s->nbuckets * 2;
    proc **b = calloc(nb, sizeof *b);
    if (b) {
      for (size_t i = 0; i < s->nbuckets; i++)
        for (proc *q = s->buckets[i], *next; q; q = next) {
          next = q->hnext;
          size_t h = (q->pid.n / SHARDS) & (nb - 1);
          q->hnext = b[h];
          b[h] = q;
        }
      free(s->buckets);
      s->buckets = b;
      s->nbuckets = nb;
    }
  }
  size_t h = bucket_of(s, p->pid);
  p->hnext = s->buckets[h];
  s->buckets[h] = p;
  s->n++;
  pthread_mutex_unlock(&s->lock);
  atomic_fetch_add(&P.live, 1);
}

static int table_remove(proc *p) {
  shard *s = shard_of(p->pid);
  int found = 0;
  pthread_mutex_lock(&s->lock);
  for (proc **q = &s->buckets[bucket_of(s, p->pid)]; *q; q = &(*q)->hnext)
    if (*q == p) { *q = p->hnext; s->n--; found = 1; break; }
  pthread_mutex_unlock(&s->lock);
  if (found) atomic_fetch_sub(&P.live, 1);
  return found;
}

proc *proc_get(term_id pid) {
  if (pid.node != 0 || !P.ready) return NULL;
  shard *s = shard_of(pid);
  proc *found = NULL;
  pthread_mutex_lock(&s->lock);
  for (proc *q = s->buckets[bucket_of(s, pid)]; q; q = q->hnext)
    if (q->pid.n == pid.n) { found = q; proc_retain(q); break; }
  pthread_mutex_unlock(&s->lock);
  return found;
}

proc *proc_dest(proc *self, term_id pid) {
  if (self->dest && pid.node == 0 && self->dest_n == pid.n) return self->dest;
  proc *p = proc_get(pid);
  if (!p) return NULL;
  if (term_eq(self->last_pid, pid)) {   /* the second lookup in a row: keep it */
    if (self->dest) proc_release(self->dest);
    self->dest = p;                      /* the cache owns proc_get's reference */
    self->dest_n = pid.n;
  }
  self->last_pid = pid;
  return p;
}

void proc_dest_done(proc *self, proc *p) {
  if (p && p != self->dest) proc_release(p);
}

void proc_retain(proc *p) { atomic_fetch_add_explicit(&p->refs, 1, memory_order_relaxed); }

static void proc_free(proc *p) {
  mbox_destroy(&p->mb);
  pthread_mutex_destroy(&p->lock);
  proc_vec_free(&p->links);
  proc_vec_free(&p->monitors);
  proc_vec_free(&p->monitored_by);
  free(p->doom_reason);
  free(p->label);
  proc_vec_free(&p->aliases);
  codec_buf_free(&p->scratch);
  free(p->payload);
  free(p->chunkname);
  free(p->paths);
  free(p);
}

/* The last reference frees p and, since no owner can be sending any more,
** drops p's kept destination too (proc_exit does that earlier for a process
** that exits; an attached thread that never detached still holds one).
** A loop, not a recursion: that destination may in turn be the last holder
** of its own. */
void proc_release(proc *p) {
  while (p && atomic_fetch_sub_explicit(&p->refs, 1, memory_order_acq_rel) == 1) {
    proc *next = p->dest;
    proc_free(p);
    p = next;
  }
}

size_t proc_count(void) { return atomic_load(&P.live); }

void proc_foreach(void (*fn)(proc *, void *), void *ud) {
  for (int i = 0; i < SHARDS; i++) {
    shard *s = &P.shards[i];
    pthread_mutex_lock(&s->lock);
    size_t n = 0;
    proc **snap = malloc((s->n + 1) * sizeof *snap);
    if (snap)
      for (size_t b = 0; b < s->nbuckets; b++)
        for (proc *q = s->buckets[b]; q; q = q->hnext) { proc_retain(q); snap[n++] = q; }
    pthread_mutex_unlock(&s->lock);
    for (size_t k = 0; k < n; k++) { fn(snap[k], ud); proc_release(snap[k]); }
    free(snap);
  }
}

/* ---- creation ---- */

/* The lines process.h promises: the owner's line, then the mailbox's two. */
_Static_assert(offsetof(proc, mb) == 64 && _Alignof(proc) == 64, "proc: line 0 is the owner's");

static proc *proc_new(unsigned capacity) {
  proc *p = aligned_alloc(_Alignof(proc), sizeof *p);   /* whole lines (process.h) */
  if (!p) return NULL;
  memset(p, 0, sizeof *p);
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  p->started = (double)ts.tv_sec + ts.tv_nsec / 1e9;
  p->pid.n = atomic_fetch_add(&P.next_id, 1);
  atomic_init(&p->refs, 1);  /* the table's reference */
  mbox_init(&p->mb, capacity);
  pthread_mutex_init(&p->lock, NULL);
  p->status = PROC_ALIVE;
  return p;
}

void proc_doom(proc *p, const unsigned char *reason, size_t len) {
  int wake = 0;
  pthread_mutex_lock(&p->lock);
  if (!p->doom_reason && p->status == PROC_ALIVE) {
    p->doom_reason = malloc(len ? len : 1);
    if (p->doom_reason) {
      memcpy(p->doom_reason, reason, len);
      p->doom_len = (uint32_t)len;   /* codec bytes: below CODEC_HARD_SIZE */
    } else {  /* out of memory: die as killed, whose bytes are static */
      size_t klen;
      const unsigned char *k = kern_reason(KR_KILLED, &klen);
      p->doom_reason = malloc(klen);
      if (p->doom_reason) { memcpy(p->doom_reason, k, klen); p->doom_len = (uint32_t)klen; }
    }
    atomic_store_explicit(&p->doomed, 1, memory_order_release);
    wake = 1;
    /* The thread cannot leave the process while we hold the lock (it
    ** clears has_thread under it), so the signal reaches a live thread. */
    if (atomic_load(&p->has_thread)) pthread_kill(p->thread, STATE_SIGNAL);
  }
  pthread_mutex_unlock(&p->lock);
  if (wake) mbox_wake(&p->mb);
}

static void clear_thread(proc *p) {
  pthread_mutex_lock(&p->lock);
  atomic_store(&p->has_thread, 0);
  pthread_mutex_unlock(&p->lock);
}

/* The calling thread's CPU time in seconds (0 if the clock cannot be read). */
static double thread_cpu(void) {
  struct timespec ts;
  if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) != 0) return 0;
  return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static void run_process(proc *p, state_slot *slot) {
  P_self = p;
  double base = thread_cpu();   /* a pool thread's earlier processes are not this one's */
  pthread_mutex_lock(&p->lock);
  p->thread = pthread_self();
  p->cpu_base = base;
  atomic_store(&p->has_thread, 1);
  pthread_mutex_unlock(&p->lock);
  unsigned char *reason = NULL;
  size_t len = 0;
  state_run(p, slot, &reason, &len);
  clear_thread(p);
  /* No longer running Lua: from here this thread will reach the pool
  ** without blocking, which proc_shutdown_pool relies on. */
  atomic_fetch_sub(&P.running, 1);
  if (reason) proc_exit(p, reason, len);
  else proc_exit_as(p, KR_MEMORY);
  free(reason);
  P_self = NULL;
  proc_release(p);  /* the thread's reference */
}

/* Not inlined, so that its sigset_t is not part of worker_main's frame,
** which stays on the stack under every process the thread runs. */
__attribute__((noinline)) static void block_sigint(void) {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);   /* Ctrl-C belongs to the REPL's thread */
  pthread_sigmask(SIG_BLOCK, &set, NULL);
}

static void *worker_main(void *arg) {
  worker *w = arg;
  block_sigint();
  state_set_current(NULL);   /* allocate this thread's TLS before any signal can come */
  /* The first state too is opened here, at the shallowest point of the
  ** thread: luaL_openlibs is the deepest thing a process start does, and
  ** every stack page it touches stays resident while the process lives. */
  double t0 = mbox_now();
  state_prepare(&w->slot);
  w->prepared_in = mbox_now() - t0;   /* not in the idle list yet: no lock needed */
  for (;;) {
    proc *p = w->job;
    run_process(p, &w->slot);
    size_t stack = kern_config_get().stack_size;  /* not under pool_lock: lock order */
    pthread_mutex_lock(&P.pool_lock);
    w->job = NULL;
    if (P.stopping || P.nidle >= POOL_MAX || w->stack != stack) break;
    w->next = P.idle;
    P.idle = w;
    P.nidle++;
    /* Idle already while it prepares its next state: a spawn that comes
    ** meanwhile hands the job to this running thread, which takes it when
    ** the state is ready (see PREPARE_SLOW). */
    double t0 = mbox_now();
    w->preparing = t0;
    pthread_mutex_unlock(&P.pool_lock);
    if (!kern_stopping()) state_prepare(&w->slot);
    entry_flush();   /* a parked thread holds no recycled entries (the dead process's queue was freed here) */
    double t1 = mbox_now();
    pthread_mutex_lock(&P.pool_lock);
    w->preparing = 0;
    w->prepared_in = t1 - t0;
    while (!w->job && !P.stopping) pthread_cond_wait(&w->cv, &P.pool_lock);
    if (!w->job) {  /* stopping: unlink ourselves from the idle list */
      for (worker **q = &P.idle; *q; q = &(*q)->next)
        if (*q == w) { *q = w->next; P.nidle--; break; }
      break;
    }
    pthread_mutex_unlock(&P.pool_lock);
  }
  pthread_mutex_unlock(&P.pool_lock);
  state_slot_close(&w->slot);
  pthread_mutex_lock(&P.pool_lock);
  /* Still under pool_lock: become joinable garbage. */
  w->next = P.dead;
  P.dead = w;
  P.nthreads--;
  pthread_mutex_unlock(&P.pool_lock);
  return NULL;
}

/* Joins threads that have left the pool (pool_lock held). */
static void reap_locked(void) {
  while (P.dead) {
    worker *w = P.dead;
    P.dead = w->next;
    pthread_join(w->thread, NULL);  /* it is past its last lock: returns at once */
    pthread_cond_destroy(&w->cv);
    free(w);
  }
}

static int dispatch(proc *p) {
  size_t stack = kern_config_get().stack_size;
  pthread_mutex_lock(&P.pool_lock);
  reap_locked();
  worker **pick = &P.idle, *w = P.idle;
  if (w && w->preparing &&
      (w->prepared_in > PREPARE_SLOW || mbox_now() - w->preparing > w->prepared_in + PREPARE_OVERRUN))
    for (worker **q = &w->next; *q; q = &(*q)->next)
      if (!(*q)->preparing) { pick = q; break; }   /* a parked thread with its state ready */
  w = *pick;
  if (w) {
    *pick = w->next;
    P.nidle--;
    w->job = p;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&P.pool_lock);
    return 0;
  }
  w = calloc(1, sizeof *w);
  int rc = -1;
  if (w) {
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, stack * STACK_SCALE);
    pthread_cond_init(&w->cv, NULL);
    w->job = p;
    w->stack = stack;
    rc = pthread_create(&w->thread, &attr, worker_main, w);
    pthread_attr_destroy(&attr);
    if (rc == 0) P.nthreads++;
    else { pthread_cond_destroy(&w->cv); free(w); rc = -1; }
  }
  pthread_mutex_unlock(&P.pool_lock);
  return rc;
}

void proc_shutdown_pool(void) {
  pthread_mutex_lock(&P.pool_lock);
  P.stopping = 1;
  for (worker *w = P.idle; w; w = w->next) pthread_cond_signal(&w->cv);
  pthread_mutex_unlock(&P.pool_lock);
  for (int i = 0; i < 2000; i++) {  /* parked threads leave at once; bound the wait at 2 s */
    pthread_mutex_lock(&P.pool_lock);
    reap_locked();
    size_t left = P.nthreads;
    pthread_mutex_unlock(&P.pool_lock);
    if (left == 0 || atomic_load(&P.running) == left) break;
    struct timespec ts = {0, 1000000};
    nanosleep(&ts, NULL);
  }
}

/* Both return 0, or -1 when out of memory. */
static int add_link(proc *p, term_id other) {
  proc_link l = { other };
  pthread_mutex_lock(&p->lock);
  int rc = proc_vec_push(&p->links, &l, sizeof l);
  pthread_mutex_unlock(&p->lock);
  return rc;
}

static int add_mon(proc *p, proc_vec *v, term_id ref, term_id pid) {
  proc_mon m = { ref, pid };
  pthread_mutex_lock(&p->lock);
  int rc = proc_vec_push(v, &m, sizeof m);
  pthread_mutex_unlock(&p->lock);
  return rc;
}

/* Undoes a spawn that cannot go on: the caller gets an error, so no link
** or monitor may outlive it. Forgets both sides, then exits the process
** (which then signals no one). */
static const char *abort_spawn(proc *p, proc *parent, const proc_opts *o, term_id *ref,
                               const char *why) {
  if (parent && (o->link || o->monitor)) {
    sig_forget(parent, p->pid, o->monitor ? ref : NULL);
    sig_forget_watcher(p, parent->pid, o->monitor ? ref : NULL);
  }
  if (!parent && o->rparent.n) sig_forget_watcher(p, o->rparent, o->monitor ? &o->rref : NULL);
  /* Anyone else who found it meanwhile hears of its exit as usual. */
  proc_exit_as(p, KR_NOPROC);
  return why;
}

static const char *spawn_locked_in(proc *parent, const proc_opts *o, proc_entry entry,
                                   unsigned char *payload, size_t len, const char *chunkname,
                                   term_id *pid, term_id *ref);

const char *proc_spawn(proc *parent, const proc_opts *o, proc_entry entry,
                       unsigned char *payload, size_t len, const char *chunkname,
                       term_id *pid, term_id *ref) {
  if (kern_spawn_begin() != 0) { free(payload); return "the node is stopping"; }
  const char *err = spawn_locked_in(parent, o, entry, payload, len, chunkname, pid, ref);
  kern_spawn_end();
  return err;
}

/* Keeps o's package paths for the new state: "path\0cpath\0", an empty
** string for one that is not given. */
static int copy_paths(proc *p, const proc_opts *o) {
  if (!o->path && !o->cpath) return 0;
  size_t a = o->path ? strlen(o->path) : 0, b = o->cpath ? strlen(o->cpath) : 0;
  if (!(p->paths = malloc(a + b + 2))) return -1;
  memcpy(p->paths, o->path ? o->path : "", a + 1);
  memcpy(p->paths + a + 1, o->cpath ? o->cpath : "", b + 1);
  return 0;
}

/* proc_spawn between kern_spawn_begin and kern_spawn_end. */
static const char *spawn_locked_in(proc *parent, const proc_opts *o, proc_entry entry,
                                   unsigned char *payload, size_t len, const char *chunkname,
                                   term_id *pid, term_id *ref) {
  kern_config cfg = kern_config_get();
  if (len > UINT32_MAX) { free(payload); return "entry too large"; }
  proc *p = proc_new(o->mailbox ? o->mailbox : cfg.mailbox);
  if (!p || (chunkname && !(p->chunkname = strdup(chunkname))) || copy_paths(p, o) != 0) {
    free(payload);
    if (p) proc_release(p);
    return "out of memory";
  }
  p->entry = entry;
  p->payload = payload;
  p->payload_len = (uint32_t)len;
  p->mem_limit = o->max_memory;
  p->trap_exit = o->trap_exit;
  if (parent) p->parent = parent->pid;
  trace_inherit(p);
  table_insert(p);
  if (o->name) {
    int rc = reg_register(o->name, p);
    if (rc != REG_OK)  /* no link or monitor yet: abort_spawn only exits it */
      return abort_spawn(p, NULL, o, ref, rc == REG_TAKEN ? "name already registered" : "out of memory");
  }
  int nomem = 0;
  if (parent && o->link)
    nomem |= add_link(p, parent->pid) | add_link(parent, p->pid);
  if (parent && o->monitor) {
    *ref = term_new_ref();
    nomem |= add_mon(p, &p->monitored_by, *ref, parent->pid) |
             add_mon(parent, &parent->monitors, *ref, p->pid);
  }
  if (!parent && o->rparent.n) {
    if (o->link) nomem |= add_link(p, o->rparent);
    if (o->monitor) nomem |= add_mon(p, &p->monitored_by, o->rref, o->rparent);
  }
  if (nomem) return abort_spawn(p, parent, o, ref, "out of memory");
  *pid = p->pid;
  if (o->ready) o->ready(p->pid, o->ready_ud);
  proc_retain(p);  /* the thread's reference */
  atomic_fetch_add(&P.running, 1);
  if (dispatch(p) != 0) {
    atomic_fetch_sub(&P.running, 1);
    abort_spawn(p, parent, o, ref, NULL);
    proc_release(p);  /* the thread's reference */
    return "cannot create thread";
  }
  return NULL;
}

proc *proc_attach(lua_State *L) {
  proc *p = proc_new(kern_config_get().mailbox);
  if (!p) return NULL;
  p->attached = 1;
  p->L = L;
  state_set_current(NULL);   /* allocate this thread's TLS before any signal can come */
  p->thread = pthread_self();
  p->cpu_base = thread_cpu();
  atomic_store(&p->has_thread, 1);
  proc_retain(p);  /* the attached thread's reference */
  table_insert(p);
  P_self = p;
  return p;
}

void proc_detach(proc *p, const unsigned char *reason, size_t len) {
  clear_thread(p);
  proc_exit(p, reason, len);
  if (P_self == p) P_self = NULL;
  proc_release(p);
}

static void forget_monitor(term_id self, term_id target, term_id ref) {
  if (target.node != 0) { remote_get()->demonitor(self, target, ref); return; }
  proc *q = proc_get(target);
  if (!q) return;
  pthread_mutex_lock(&q->lock);
  proc_mon *m = q->monitored_by.items;
  for (size_t i = 0; i < q->monitored_by.n; i++)
    if (term_eq(m[i].ref, ref)) { m[i] = m[--q->monitored_by.n]; break; }
  pthread_mutex_unlock(&q->lock);
  proc_release(q);
}

void proc_exit(proc *p, const unsigned char *reason, size_t len) {
  /* The owner is done sending: drop its kept destination and its encode
  ** buffer now, not when the last reference to p goes (another process may
  ** keep p as its destination for a long time). */
  if (p->dest) { proc_release(p->dest); p->dest = NULL; }
  codec_buf_free(&p->scratch);
  pthread_mutex_lock(&p->lock);
  if (p->status != PROC_ALIVE) { pthread_mutex_unlock(&p->lock); return; }
  p->status = PROC_EXITING;
  pthread_mutex_unlock(&p->lock);
  trace_exit(p, reason, len);   /* before its links' signals: the tracer hears the end first */
  trace_forget(p);
  pthread_mutex_lock(&p->lock);
  proc_vec links = p->links, monitors = p->monitors, watchers = p->monitored_by;
  memset(&p->links, 0, sizeof p->links);
  memset(&p->monitors, 0, sizeof p->monitors);
  memset(&p->monitored_by, 0, sizeof p->monitored_by);
  pthread_mutex_unlock(&p->lock);

  reg_remove(p);
  int in_table = table_remove(p);
  mbox_close(&p->mb);

  proc_link *l = links.items;
  for (size_t i = 0; i < links.n; i++) sig_exit(l[i].pid, p->pid, reason, len, 1);
  proc_mon *w = watchers.items;
  for (size_t i = 0; i < watchers.n; i++) sig_down(w[i].pid, w[i].ref, p->pid, reason, len, 0);
  proc_mon *m = monitors.items;
  for (size_t i = 0; i < monitors.n; i++) forget_monitor(p->pid, m[i].pid, m[i].ref);
  if (p->node_monitors) remote_get()->forget(p->pid);   /* set by its own thread, which runs this */
  proc_vec_free(&links);
  proc_vec_free(&watchers);
  proc_vec_free(&monitors);
  if (in_table) proc_release(p);  /* the table's reference */
}

void proc_exit_doomed(proc *p) {
  size_t len;
  unsigned char *r = proc_doom_copy(p, &len);
  if (r) proc_exit(p, r, len);
  else proc_exit_as(p, KR_KILLED);
  free(r);
}

void proc_exit_as(proc *p, enum kern_reason r) {
  size_t len;
  const unsigned char *bytes = kern_reason(r, &len);
  proc_exit(p, bytes, len);
}

unsigned char *proc_doom_copy(proc *p, size_t *len) {
  pthread_mutex_lock(&p->lock);
  unsigned char *r = p->doom_reason ? malloc(p->doom_len ? p->doom_len : 1) : NULL;
  if (r) { memcpy(r, p->doom_reason, p->doom_len); *len = p->doom_len; }
  pthread_mutex_unlock(&p->lock);
  return r;
}

int proc_alive(proc *p) {
  pthread_mutex_lock(&p->lock);
  int alive = p->status == PROC_ALIVE;
  pthread_mutex_unlock(&p->lock);
  return alive;
}
