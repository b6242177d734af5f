/*
** mailbox.c — bounded FIFO of encoded messages: lock-free puts, futex parking.
*/
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <time.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
#include "entry.h"
#include "mailbox.h"
#include "vecstate.h"

/* The owner spins before it parks, so a reply that comes back within a few
** microseconds costs no system call on either side, and no wake-up, which
** on a virtual machine can take tens of microseconds. The spin is a time
** budget learnt per mailbox from how long its waits take:
** - a wait that a spin ended sets the budget to twice its length, or lets
**   the old budget decay by a quarter if that is more, but never below
**   MBOX_SPIN_START_NS: waits that spins keep ending must not decay the
**   budget to nothing (a receiver that keeps up with a flood, its waits a
**   few hundred nanoseconds, went to sleep every tenth message, and each
**   sleep cost its sender a FUTEX_WAKE);
** - a wait that had to sleep and still ended within MBOX_SPIN_MAX_NS sets
**   the budget to one and a half times its length (including the wake-up,
**   which errs on the side of spinning), so the next such wait is caught;
** - a longer wait, or one that timed out, halves the budget, so a process
**   that waits long (one of a ring, a server between requests, a loop of
**   short receives or sleeps) soon stops burning the core that its peers
**   need. Budgets under MBOX_SPIN_MIN_NS are 0.
** A wait whose deadline has already passed (a poll) neither spins nor
** sleeps, and leaves the budget alone.
** With no budget and no deadline, the wait needs no clock, and reading it
** is not free: after a sleep the clock's page is a cache miss like the
** rest, 150-400 ns on the reference VM, twice per hop of a ring (once
** going to sleep, once waking), where a hop is 10-13 us. So such a wait
** times itself only once in MBOX_SAMPLE, which is enough to find out that
** waits became short and the budget should grow again.
** The spin yields the core every 64 rounds: on two cores the process that
** will answer may be waiting for this very one. */
#define MBOX_SPIN_MAX_NS 60000u
#define MBOX_SPIN_MIN_NS 1000u
#define MBOX_SPIN_START_NS 4000u
#define MBOX_SAMPLE 8u

/* The two lines mailbox.h promises. */
_Static_assert(offsetof(mbox, inbox) == 64 && sizeof(mbox) == 128, "mbox: an owner's line, a senders' line");

double mbox_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

struct timespec mbox_realtime_in(double seconds) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  if (!(seconds > 0)) seconds = 0;
  ts.tv_sec += (time_t)seconds;
  ts.tv_nsec += (long)((seconds - (double)(time_t)seconds) * 1e9);
  if (ts.tv_nsec >= 1000000000L) { ts.tv_sec++; ts.tv_nsec -= 1000000000L; }
  return ts;
}

static void futex_wait(_Atomic uint32_t *w, uint32_t seen, double deadline) {
  struct timespec ts, *tp = NULL;
  if (isfinite(deadline)) {
    double left = deadline - mbox_now();
    if (left <= 0) return;
    ts.tv_sec = (time_t)left;
    ts.tv_nsec = (long)((left - (double)ts.tv_sec) * 1e9);
    tp = &ts;
  }
  syscall(SYS_futex, (uint32_t *)w, FUTEX_WAIT_PRIVATE, seen, tp, NULL, 0);
}

static void futex_wake(_Atomic uint32_t *w, int n) {
  syscall(SYS_futex, (uint32_t *)w, FUTEX_WAKE_PRIVATE, n, NULL, NULL, 0);
}

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

void mbox_init(mbox *mb, unsigned capacity) {
  atomic_init(&mb->inbox, NULL);
  atomic_init(&mb->sent, 0);
  atomic_init(&mb->taken_seen, 0);
  atomic_init(&mb->taken, 0);
  atomic_init(&mb->exits, 0);
  atomic_init(&mb->dropped, 0);
  atomic_init(&mb->closed, 0);
  atomic_init(&mb->waiting, 0);
  atomic_init(&mb->space_wanted, 0);
  atomic_init(&mb->idle, 0);
  atomic_init(&mb->wake, 0);
  atomic_init(&mb->space, 0);
  mb->capacity = capacity;
  mb->head = mb->tail = NULL;
  mb->spin_ns = MBOX_SPIN_START_NS;
  mb->untimed = 0;
  mb->polling = 0;
}

static void free_list(mbox_msg *m) {
  while (m) { mbox_msg *n = m->next; mbox_msg_free(m); m = n; }
}

void mbox_destroy(mbox *mb) {
  free_list(mb->head);
  mb->head = mb->tail = NULL;
  free_list(atomic_exchange(&mb->inbox, NULL));
}

/* Where the ids of a tagged entry start: 8-aligned, after the bytes. */
static size_t ids_at(size_t len) {
  return (offsetof(mbox_msg, data) + len + 7) & ~(size_t)7;
}

static size_t entry_size(size_t len, int tagged) {
  return tagged ? ids_at(len) + 2 * sizeof(term_id) : offsetof(mbox_msg, data) + len;
}

/* Small entries come from entry.c's magazines; `len` and `tagged` never
** change, so they tell which way an entry goes back. */
static int pooled(size_t len, int tagged) {
  return len <= ENTRY_SMALL && entry_size(len, tagged) <= ENTRY_SMALL;
}

/* Fills m's header and bytes: an entry not queued, counted against nothing. */
static void fill(mbox_msg *m, mbox_kind kind, const unsigned char *data, size_t len, int tagged) {
  m->next = m->hint = NULL;
  m->len = (uint32_t)len;
  m->kind = (uint8_t)kind;
  m->counted = 0;
  m->wire = 0;
  m->tagged = (uint8_t)tagged;
  memcpy(m->data, data, len);
}

/* Set once (release) before any pid of another node exists; read with acquire. */
static void (*_Atomic node_ref)(uint32_t node);
static void (*_Atomic node_unref)(uint32_t node);

void mbox_set_node_refs(void (*ref)(uint32_t node), void (*unref)(uint32_t node)) {
  atomic_store_explicit(&node_unref, unref, memory_order_release);
  atomic_store_explicit(&node_ref, ref, memory_order_release);
}

mbox_msg *mbox_msg_new(mbox_kind kind, const unsigned char *data, size_t len,
                       term_id from, term_id ref) {
  int tagged = from.n != 0 || ref.n != 0;
  if ((uint64_t)len > UINT32_MAX || len > SIZE_MAX - 64) return NULL;
  mbox_msg *m = pooled(len, tagged) ? entry_alloc() : malloc(entry_size(len, tagged));
  if (!m) return NULL;
  fill(m, kind, data, len, tagged);
  if (tagged) {
    term_id ids[2] = { from, ref };
    memcpy((char *)m + ids_at(len), ids, sizeof ids);
    void (*take)(uint32_t) = from.node ? atomic_load_explicit(&node_ref, memory_order_acquire) : NULL;
    if (take) take(from.node);
  }
  return m;
}

void mbox_msg_copy(mbox_msg *to, const mbox_msg *m) {
  fill(to, (mbox_kind)m->kind, m->data, m->len, 0);
  to->wire = m->wire;
}

/* Id `i` of an entry (0: from, 1: ref), zero when it was given none. */
static term_id msg_id(const mbox_msg *m, int i) {
  term_id id = {0, 0, 0};
  if (m->tagged) memcpy(&id, (const char *)m + ids_at(m->len) + (size_t)i * sizeof id, sizeof id);
  return id;
}

term_id mbox_msg_from(const mbox_msg *m) { return msg_id(m, 0); }
term_id mbox_msg_ref(const mbox_msg *m) { return msg_id(m, 1); }

void mbox_msg_free(mbox_msg *m) {
  if (m && m->tagged) {   /* an EXIT, a DOWN, or a message through an alias */
    term_id from = msg_id(m, 0);
    void (*drop)(uint32_t) = from.node ? atomic_load_explicit(&node_unref, memory_order_acquire) : NULL;
    if (drop) drop(from.node);
  }
  if (m && pooled(m->len, m->tagged)) entry_free(m);
  else free(m);
}

#ifdef MBOX_TEST_HOOK
void mbox_test_after_bump(void);   /* spec/c/test_mailbox.c stalls a sender here */
void mbox_test_after_sent(void);   /* and here */
void mbox_test_after_arm(void);    /* and stalls the owner here */
#define AFTER_BUMP() mbox_test_after_bump()
#define AFTER_SENT() mbox_test_after_sent()
#define AFTER_ARM() mbox_test_after_arm()
#else
#define AFTER_BUMP() ((void)0)
#define AFTER_SENT() ((void)0)
#define AFTER_ARM() ((void)0)
#endif

/* Bumps the owner's wake sequence; the bump that finds the sleeping bit
** set clears it and makes the system call (see mailbox.h). */
static void wake_owner(mbox *mb) {
  uint32_t old = atomic_fetch_add(&mb->wake, 2);
  AFTER_BUMP();
  if (old & 1) {
    atomic_fetch_and(&mb->wake, ~1u);
    futex_wake(&mb->wake, 1);
  }
}

/* Prefetch hints. The owner reverses the inbox, newest first, one
** dependent load after another, each on a line the sender's core wrote: a
** cache miss per entry. So a sender leaves in each entry it pushes the
** address of the entry it pushed HINT_BACK pushes earlier to the same
** mailbox; the owner prefetches that while it walks, from the walk's
** (HINT_BACK + 1)th entry on, so a long batch has all but about its first
** 2 * HINT_BACK entries on their way. Not from the first: in a short batch
** the hints name entries of earlier batches, already recycled to their
** sender, and prefetching those for writing took lines from under it
** (-13 % in one-way when the receiver keeps up). A hint is only
** ever prefetched, never read through: the entry it names may be gone (a
** prefetch of any address is harmless). The module's one global: each
** thread's last HINT_BACK pushes, touched by that thread alone. */
#define HINT_BACK 8
static _Thread_local struct {
  struct { mbox *mb; mbox_msg *m; } push[HINT_BACK];
  unsigned at;             /* pushes so far; the next goes to push[at % HINT_BACK] */
} recent;

/* Pushes m onto the inbox and wakes the owner if it waits. */
static void push(mbox *mb, mbox_msg *m) {
  unsigned i = recent.at++ % HINT_BACK;
  m->hint = recent.push[i].mb == mb ? recent.push[i].m : NULL;
  recent.push[i].mb = mb;
  recent.push[i].m = m;
  mbox_msg *top = atomic_load_explicit(&mb->inbox, memory_order_relaxed);
  do m->next = top;
  while (!atomic_compare_exchange_weak(&mb->inbox, &top, m));
  if (atomic_load(&mb->waiting)) wake_owner(mb);
}

/* Reserves one of `limit` slots counted by *c; 0 when all are taken. */
static int reserve(_Atomic unsigned *c, unsigned limit) {
  unsigned n = atomic_load(c);
  do if (n >= limit) return 0;
  while (!atomic_compare_exchange_weak(c, &n, n + 1));
  return 1;
}

/* Reserves a slot for a regular message; 0 when the box is full. Reads the
** owner's `taken` only when the senders' copy says full (mailbox.h). */
static int reserve_msg(mbox *mb) {
  unsigned s = atomic_load(&mb->sent);
  AFTER_SENT();
  for (;;) {
    unsigned t = atomic_load_explicit(&mb->taken_seen, memory_order_relaxed);
    if (s - t >= mb->capacity) {
      t = atomic_load(&mb->taken);
      atomic_store_explicit(&mb->taken_seen, t, memory_order_relaxed);
      if (s - t >= mb->capacity) {
        /* Full, unless our `sent` is old: then `taken` may have passed it
        ** (the difference wrapped) while the box emptied. Only a current
        ** `sent` (taken <= sent always) makes "full" true. */
        unsigned now = atomic_load(&mb->sent);
        if (now == s) return 0;
        s = now;
        continue;
      }
    }
    if (atomic_compare_exchange_weak(&mb->sent, &s, s + 1)) return 1;
  }
}

static unsigned queued(mbox *mb) {
  unsigned t = atomic_load(&mb->taken);   /* first: `sent` is never behind it */
  return atomic_load(&mb->sent) - t;
}

int mbox_put(mbox *mb, mbox_msg *m, double timeout, int (*cancelled)(void *), void *ud) {
  double deadline = NAN;   /* read the clock only once the box is full */
  for (;;) {
    if (atomic_load(&mb->closed)) break;
    if (reserve_msg(mb)) {
      m->counted = MBOX_COUNT_MSG;
      push(mb, m);
      return MBOX_OK;
    }
    if (isnan(deadline)) deadline = timeout > 0 ? mbox_now() + timeout : -INFINITY;
    if (!(deadline > mbox_now())) {
      atomic_fetch_add_explicit(&mb->dropped, 1, memory_order_relaxed);
      mbox_msg_free(m);
      return MBOX_FULL;
    }
    if (cancelled && cancelled(ud)) { mbox_msg_free(m); return MBOX_CANCELLED; }
    /* Wait for the owner to free slots (mailbox.h, "Space"), waking now
    ** and then to notice our own cancellation. */
    uint32_t seen = atomic_load(&mb->space);
    atomic_store(&mb->space_wanted, 1);
    if (queued(mb) >= mb->capacity && !atomic_load(&mb->closed)) {
      entry_flush();
      double slice = mbox_now() + 0.02;
      futex_wait(&mb->space, seen, slice < deadline ? slice : deadline);
    }
  }
  mbox_msg_free(m);
  return MBOX_CLOSED;
}

int mbox_put_signal(mbox *mb, mbox_msg *m, int bounded) {
  int rc = MBOX_OK;
  if (atomic_load(&mb->closed)) rc = MBOX_CLOSED;
  else if (bounded && !reserve(&mb->exits, mb->capacity)) {
    atomic_fetch_add_explicit(&mb->dropped, 1, memory_order_relaxed);
    rc = MBOX_FULL;
  }
  if (rc != MBOX_OK) { mbox_msg_free(m); return rc; }
  if (bounded) m->counted = MBOX_COUNT_EXIT;
  push(mb, m);
  return MBOX_OK;
}

/* Owner: moves what senders pushed to the end of the private list, oldest
** first. Returns 1 if it took anything. */
static int drain(mbox *mb) {
  mbox_msg *m = atomic_exchange(&mb->inbox, NULL), *first = NULL, *last = m;
  if (!m) return 0;
  for (unsigned n = 0; m; n++) {      /* reverse: the inbox is newest first */
    mbox_msg *next = m->next;
    if (n >= HINT_BACK && m->hint) __builtin_prefetch(m->hint, 1);
    m->next = first;
    first = m;
    m = next;
  }
  if (mb->tail) mb->tail->next = first; else mb->head = first;
  mb->tail = last;
  return 1;
}

/* Owner, with nothing left to take: prepares parking, which spins on the
** inbox first (mailbox.h). */
static void found_empty(mbox *mb, uint32_t *seq) {
  *seq = atomic_load(&mb->wake);
  mb->polling = 1;
  atomic_store_explicit(&mb->idle, 1, memory_order_relaxed);
}

mbox_msg *mbox_next(mbox *mb, mbox_msg *after, uint32_t *seq) {
  mbox_msg *m = after ? after->next : mb->head;
  if (!m && drain(mb)) m = after ? after->next : mb->head;   /* drain appends after the tail */
  if (!m) found_empty(mb, seq);
  return m;
}

/* Owner: an entry has left the queue. Returns 1 if blocked senders must be
** woken (they are woken in batches, once a quarter of the box is free). */
static int account_removed(mbox *mb, mbox_msg *m) {
  if (m->counted == MBOX_COUNT_EXIT) atomic_fetch_sub(&mb->exits, 1);
  if (m->counted != MBOX_COUNT_MSG) return 0;
  unsigned t = atomic_load_explicit(&mb->taken, memory_order_relaxed) + 1;
  atomic_store(&mb->taken, t);   /* only the owner writes it */
  if (atomic_load(&mb->space_wanted) && atomic_load(&mb->sent) - t <= mb->capacity - (mb->capacity + 3) / 4 &&
      atomic_exchange(&mb->space_wanted, 0)) {
    atomic_fetch_add(&mb->space, 1);
    return 1;
  }
  return 0;
}

mbox_msg *mbox_pop(mbox *mb, uint32_t *seq) {
  if (!mb->head && !drain(mb)) { found_empty(mb, seq); return NULL; }
  mbox_msg *m = mb->head;
  mb->head = m->next;
  if (!mb->head) mb->tail = NULL;
  m->next = NULL;
  if (account_removed(mb, m)) futex_wake(&mb->space, INT_MAX);
  return m;
}

uint32_t mbox_arm(mbox *mb) {
  mb->polling = 0;   /* a sleep is never ended by puts */
  atomic_store_explicit(&mb->idle, 1, memory_order_relaxed);
  return atomic_load(&mb->wake);
}

void mbox_disarm(mbox *mb) {
  mb->polling = 0;
  atomic_store_explicit(&mb->idle, 0, memory_order_relaxed);
  if (atomic_load_explicit(&mb->waiting, memory_order_relaxed)) atomic_store(&mb->waiting, 0);
}

static unsigned spin_clamp(double ns) {
  if (ns > MBOX_SPIN_MAX_NS) return MBOX_SPIN_MAX_NS;
  return ns < MBOX_SPIN_MIN_NS ? 0 : (unsigned)ns;
}

/* Spins up to mb->spin_ns for `wake` to leave `seq` or, when polling, for
** an entry; 1 if either came. */
static int spin_wait(mbox *mb, uint32_t seq, double t0, double deadline) {
  double until = t0 + mb->spin_ns * 1e-9;
  if (isfinite(deadline) && deadline < until) until = deadline;
  for (unsigned i = 1; ; i++) {
    if (atomic_load_explicit(&mb->wake, memory_order_acquire) != seq) return 1;
    if (mb->polling && atomic_load_explicit(&mb->inbox, memory_order_relaxed)) return 1;
    if ((i & 15) == 0 && mbox_now() >= until) return 0;
    if ((i & 63) == 0) sched_yield();
    else cpu_relax();
  }
}

int mbox_park(mbox *mb, uint32_t seq, double deadline) {
  unsigned budget = mb->spin_ns;
  int timed = budget || isfinite(deadline) || ++mb->untimed % MBOX_SAMPLE == 0;
  double t0 = timed ? mbox_now() : 0;
  int due = isfinite(deadline) && t0 >= deadline;   /* a poll: neither spin nor sleep */
  if (due) budget = 0;
  int woke = budget && spin_wait(mb, seq, t0, deadline);
  if (woke) {
    double e = (mbox_now() - t0) * 1e9;
    double keep = 2 * e > budget * 0.75 ? 2 * e : budget * 0.75;
    mb->spin_ns = spin_clamp(keep > MBOX_SPIN_START_NS ? keep : MBOX_SPIN_START_NS);
    mbox_disarm(mb);
    return 0;
  }
  if (due) {   /* a poll: no arming, no sleep; but a put since the last look counts */
    woke = atomic_load(&mb->wake) != seq || (mb->polling && atomic_load(&mb->inbox) != NULL);
    mbox_disarm(mb);
    return woke ? 0 : -1;
  }
  if (mb->polling) {   /* arm: from here on puts bump `wake` (mailbox.h) */
    atomic_store(&mb->waiting, 1);
    AFTER_ARM();
    woke = atomic_load(&mb->inbox) != NULL;
  }
  if (!woke) entry_flush();   /* a sleeping thread holds no recycled entries (entry.h) */
  /* A wait learnt to be long (no spin budget) also gives back the AVX-512
  ** registers glibc left in use (vecstate.h): the switch away and back then
  ** saves and restores ~1 KiB less, memory that is cold again by the time
  ** the process wakes (ring of 1,000: 2-3 % a hop). Not for short waits,
  ** where the ~70 ns reset is a cost on a warm path (one-way). */
  if (!woke && !budget) vec_release();
  /* Sleep on `target`: our sequence with the sleeping bit, set here. If
  ** the bit is already set (a sender from an earlier round has not cleared
  ** it yet), sleep on that value: its clearing wakes us. */
  uint32_t target = seq;
  if (!woke && !(seq & 1)) {
    uint32_t expect = seq;
    if (atomic_compare_exchange_strong(&mb->wake, &expect, seq | 1)) target = seq | 1;
    else woke = 1;   /* a put bumped the sequence meanwhile */
  }
  while (!woke) {
    if (atomic_load(&mb->wake) != target) { woke = 1; break; }
    if (isfinite(deadline) && mbox_now() >= deadline) break;
    futex_wait(&mb->wake, target, deadline);
  }
  if (!woke && target != seq) {   /* timed out: take our bit back, unless a put just came */
    uint32_t expect = target;
    if (!atomic_compare_exchange_strong(&mb->wake, &expect, seq)) woke = 1;
  }
  mbox_disarm(mb);
  if (!timed) return 0;   /* woken (untimed waits have no deadline), budget 0 stays */
  if (woke) {
    double e = (mbox_now() - t0) * 1e9;
    mb->spin_ns = spin_clamp(e <= MBOX_SPIN_MAX_NS ? 1.5 * e : budget / 2.0);
  } else {   /* timed out: a loop of short receives or sleeps must not keep spinning */
    mb->spin_ns = spin_clamp(budget / 2.0);
  }
  return woke ? 0 : -1;
}

void mbox_take(mbox *mb, mbox_msg *prev, mbox_msg *m) {
  if (prev) prev->next = m->next; else mb->head = m->next;
  if (mb->tail == m) mb->tail = prev;
  m->next = NULL;
  if (account_removed(mb, m)) futex_wake(&mb->space, INT_MAX);
}

void mbox_remove_down(mbox *mb, term_id ref) {
  mbox_msg *prev = NULL;
  drain(mb);
  for (mbox_msg *m = mb->head; m; prev = m, m = m->next)
    if (m->kind == MBOX_DOWN && term_eq(mbox_msg_ref(m), ref)) {
      mbox_take(mb, prev, m);
      mbox_msg_free(m);
      return;
    }
}

void mbox_wake(mbox *mb) {
  wake_owner(mb);   /* unlike a put, whether or not the owner is waiting */
}

void mbox_close(mbox *mb) {
  atomic_store(&mb->closed, 1);
  drain(mb);
  free_list(mb->head);
  mb->head = mb->tail = NULL;
  atomic_store(&mb->taken, atomic_load(&mb->sent));
  atomic_store(&mb->exits, 0);
  if (atomic_exchange(&mb->space_wanted, 0)) {   /* they see `closed` and give up */
    atomic_fetch_add(&mb->space, 1);
    futex_wake(&mb->space, INT_MAX);
  }
}

void mbox_stats(mbox *mb, unsigned *count, unsigned *capacity, uint64_t *dropped, int *waiting) {
  *count = queued(mb);
  *capacity = mb->capacity;
  *dropped = atomic_load_explicit(&mb->dropped, memory_order_relaxed);
  *waiting = atomic_load_explicit(&mb->idle, memory_order_relaxed);
}
