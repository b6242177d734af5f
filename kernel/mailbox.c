/*
** mailbox.c — bounded FIFO of encoded messages, with futex parking.
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
#include "mailbox.h"

/* The owner spins before it parks, so a reply that comes back within a few
** microseconds costs no system call on either side. The spin adapts per
** mailbox: it doubles when a spin caught a message and halves when it did
** not, so a process that waits long (one of a ring) stops burning the core
** that its peers need; from 0 it probes now and then to notice a change. Iterations of `pause`, roughly 30 ns each. */
#define MBOX_SPIN_MAX 1000
#define MBOX_SPIN_START 100
#define MBOX_SPIN_PROBE 64   /* when the spin has decayed to 0, every 32nd park probes with this */

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
  pthread_mutex_init(&mb->lock, NULL);
  mb->head = mb->tail = NULL;
  mb->batch = NULL;
  atomic_init(&mb->count, 0);
  atomic_init(&mb->exits, 0);
  atomic_init(&mb->space_waiters, 0);
  mb->capacity = capacity;
  mb->dropped = 0;
  mb->closed = mb->waiting = 0;
  atomic_init(&mb->wake, 0);
  atomic_init(&mb->parked, 0);
  mb->spin = MBOX_SPIN_START;
  mb->probe = 0;
  atomic_init(&mb->space, 0);
}

static void free_list(mbox_msg *m) {
  while (m) { mbox_msg *n = m->next; mbox_msg_free(m); m = n; }
}

void mbox_destroy(mbox *mb) {
  free_list(mb->batch);
  mb->batch = NULL;
  free_list(mb->head);
  mb->head = mb->tail = NULL;
  pthread_mutex_destroy(&mb->lock);
}

mbox_msg *mbox_msg_new(mbox_kind kind, const unsigned char *data, size_t len) {
  mbox_msg *m = malloc(sizeof *m + len);
  if (!m) return NULL;
  m->next = NULL;
  m->kind = kind;
  m->counted = 0;
  m->from = (term_id){0, 0, 0};
  m->ref = (term_id){0, 0, 0};
  m->wire = 0;
  m->len = len;
  memcpy(m->data, data, len);
  return m;
}

void mbox_msg_free(mbox_msg *m) {
  free(m);
}

/* Appends under the lock; returns 1 if the owner must be woken with a
** system call. The owner's `parked` store and our `wake` increment are both
** seq_cst, so either it sees the new sequence or we see it parked. */
static int append_locked(mbox *mb, mbox_msg *m) {
  if (mb->tail) mb->tail->next = m; else mb->head = m;
  mb->tail = m;
  if (mb->waiting) {
    atomic_fetch_add(&mb->wake, 1);
    /* Only the first put after the owner parked makes the system call:
    ** it takes the flag, so later puts see the owner as already woken. */
    return atomic_load(&mb->parked) && atomic_exchange(&mb->parked, 0);
  }
  return 0;
}

int mbox_put(mbox *mb, mbox_msg *m, double deadline, int (*cancelled)(void *), void *ud) {
  int rc, wake = 0;
  pthread_mutex_lock(&mb->lock);
  for (;;) {
    if (mb->closed) { rc = MBOX_CLOSED; break; }
    if (atomic_load(&mb->count) < mb->capacity) {
      atomic_fetch_add(&mb->count, 1);
      m->counted = MBOX_COUNT_MSG;
      wake = append_locked(mb, m);
      m = NULL;
      rc = MBOX_OK;
      break;
    }
    if (!(deadline > mbox_now())) { mb->dropped++; rc = MBOX_FULL; break; }
    if (cancelled && cancelled(ud)) { rc = MBOX_CANCELLED; break; }
    /* Wait for the owner to free a slot; wake up now and then to notice
    ** our own cancellation. */
    uint32_t seen = atomic_load_explicit(&mb->space, memory_order_acquire);
    atomic_fetch_add(&mb->space_waiters, 1);
    pthread_mutex_unlock(&mb->lock);
    /* The owner decrements count and then reads space_waiters; we did the
    ** reverse (both seq_cst), so one of us sees the other. */
    if (atomic_load(&mb->count) >= mb->capacity) {
      double slice = mbox_now() + 0.02;
      futex_wait(&mb->space, seen, slice < deadline ? slice : deadline);
    }
    pthread_mutex_lock(&mb->lock);
    atomic_fetch_sub(&mb->space_waiters, 1);
  }
  pthread_mutex_unlock(&mb->lock);
  if (m) mbox_msg_free(m);
  if (wake) futex_wake(&mb->wake, 1);
  return rc;
}

int mbox_put_signal(mbox *mb, mbox_msg *m, int bounded) {
  int wake = 0, rc = MBOX_OK;
  pthread_mutex_lock(&mb->lock);
  if (mb->closed) rc = MBOX_CLOSED;
  else if (bounded && atomic_load(&mb->exits) >= mb->capacity) { mb->dropped++; rc = MBOX_FULL; }
  else {
    if (bounded) {
      atomic_fetch_add(&mb->exits, 1);
      m->counted = MBOX_COUNT_EXIT;
    }
    wake = append_locked(mb, m);
    m = NULL;
  }
  pthread_mutex_unlock(&mb->lock);
  if (m) mbox_msg_free(m);
  if (wake) futex_wake(&mb->wake, 1);
  return rc;
}

/* Arms parking (lock held): puts from now on bump `wake`. Returns the
** sequence to park on. */
static uint32_t arm_locked(mbox *mb) {
  mb->waiting = 1;
  return atomic_load_explicit(&mb->wake, memory_order_acquire);
}

mbox_msg *mbox_next(mbox *mb, mbox_msg *after, uint32_t *seq) {
  pthread_mutex_lock(&mb->lock);
  mbox_msg *m = after ? after->next : mb->head;
  if (!m) *seq = arm_locked(mb);
  pthread_mutex_unlock(&mb->lock);
  return m;
}

/* Owner: an entry has left the queue. Returns 1 if blocked senders must be
** woken (they are woken in batches, once a quarter of the box is free). */
static int account_removed(mbox *mb, mbox_msg *m) {
  if (m->counted == MBOX_COUNT_EXIT) atomic_fetch_sub(&mb->exits, 1);
  if (m->counted != MBOX_COUNT_MSG) return 0;
  unsigned left = atomic_fetch_sub(&mb->count, 1) - 1;
  if (atomic_load(&mb->space_waiters) && left <= mb->capacity - (mb->capacity + 3) / 4) {
    atomic_fetch_add_explicit(&mb->space, 1, memory_order_release);
    return 1;
  }
  return 0;
}

mbox_msg *mbox_pop(mbox *mb, uint32_t *seq) {
  mbox_msg *m = mb->batch;
  if (!m) {  /* take the whole shared list in one locked step */
    pthread_mutex_lock(&mb->lock);
    m = mb->head;
    if (m) mb->head = mb->tail = NULL;
    else *seq = arm_locked(mb);
    pthread_mutex_unlock(&mb->lock);
    if (!m) return NULL;
  }
  mb->batch = m->next;
  m->next = NULL;
  if (account_removed(mb, m)) futex_wake(&mb->space, INT_MAX);
  return m;
}

void mbox_unbatch(mbox *mb) {
  if (!mb->batch) return;
  mbox_msg *last = mb->batch;
  while (last->next) last = last->next;
  pthread_mutex_lock(&mb->lock);
  last->next = mb->head;
  mb->head = mb->batch;
  if (!mb->tail) mb->tail = last;
  pthread_mutex_unlock(&mb->lock);
  mb->batch = NULL;
}

uint32_t mbox_arm(mbox *mb) {
  pthread_mutex_lock(&mb->lock);
  uint32_t seq = arm_locked(mb);
  pthread_mutex_unlock(&mb->lock);
  return seq;
}

void mbox_disarm(mbox *mb) {
  pthread_mutex_lock(&mb->lock);
  mb->waiting = 0;
  pthread_mutex_unlock(&mb->lock);
}

int mbox_park(mbox *mb, uint32_t seq, double deadline) {
  int woke = 0;
  unsigned spin = mb->spin;
  if (spin == 0 && (++mb->probe & 31) == 0) spin = MBOX_SPIN_PROBE;
  if (isfinite(deadline) && mbox_now() >= deadline) spin = 0;
  for (unsigned i = 0; i < spin; i++) {
    if (atomic_load_explicit(&mb->wake, memory_order_acquire) != seq) { woke = 1; break; }
    if ((i & 63) == 63) sched_yield();  /* the peer may be waiting for this very core */
    else cpu_relax();
  }
  if (spin) {
    if (woke) mb->spin = spin * 2 > MBOX_SPIN_MAX ? MBOX_SPIN_MAX : spin * 2;
    else mb->spin /= 2;
  }
  if (!woke) atomic_store(&mb->parked, 1);
  while (!woke) {
    if (atomic_load(&mb->wake) != seq) { woke = 1; break; }
    if (isfinite(deadline) && mbox_now() >= deadline) break;
    futex_wait(&mb->wake, seq, deadline);
  }
  atomic_store_explicit(&mb->parked, 0, memory_order_relaxed);
  pthread_mutex_lock(&mb->lock);
  mb->waiting = 0;
  pthread_mutex_unlock(&mb->lock);
  return woke ? 0 : -1;
}

void mbox_take(mbox *mb, mbox_msg *prev, mbox_msg *m) {
  pthread_mutex_lock(&mb->lock);
  if (prev) prev->next = m->next; else mb->head = m->next;
  if (mb->tail == m) mb->tail = prev;
  m->next = NULL;
  pthread_mutex_unlock(&mb->lock);
  if (account_removed(mb, m)) futex_wake(&mb->space, INT_MAX);
}

void mbox_remove_down(mbox *mb, term_id ref) {
  mbox_msg *prev = NULL, *found = NULL;
  mbox_unbatch(mb);
  pthread_mutex_lock(&mb->lock);
  for (mbox_msg *m = mb->head; m; prev = m, m = m->next)
    if (m->kind == MBOX_DOWN && term_eq(m->ref, ref)) { found = m; break; }
  if (found) {
    if (prev) prev->next = found->next; else mb->head = found->next;
    if (mb->tail == found) mb->tail = prev;
  }
  pthread_mutex_unlock(&mb->lock);
  if (found) mbox_msg_free(found);
}

void mbox_wake(mbox *mb) {
  atomic_fetch_add_explicit(&mb->wake, 1, memory_order_release);
  futex_wake(&mb->wake, 1);
}

void mbox_close(mbox *mb) {
  mbox_unbatch(mb);
  pthread_mutex_lock(&mb->lock);
  mbox_msg *list = mb->head;
  mb->head = mb->tail = NULL;
  atomic_store(&mb->count, 0);
  atomic_store(&mb->exits, 0);
  mb->closed = 1;
  int senders = atomic_load(&mb->space_waiters);
  if (senders) atomic_fetch_add_explicit(&mb->space, 1, memory_order_release);
  pthread_mutex_unlock(&mb->lock);
  if (senders) futex_wake(&mb->space, INT_MAX);
  free_list(list);
}

void mbox_stats(mbox *mb, unsigned *count, unsigned *capacity, uint64_t *dropped, int *waiting) {
  pthread_mutex_lock(&mb->lock);
  *count = atomic_load(&mb->count);
  *capacity = mb->capacity;
  *dropped = mb->dropped;
  *waiting = mb->waiting;
  pthread_mutex_unlock(&mb->lock);
}
