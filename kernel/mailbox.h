/*
** mailbox.h — a process's bounded message queue and its parking word.
**
** Invariants (all under `lock` unless marked atomic):
** - `count` is the number of messages queued, in the shared list or in the
**   owner's batch; it never exceeds `capacity`. It is only incremented under
**   the lock (so the check against the capacity holds) and decremented by
**   the owner with an atomic, without the lock. EXIT and DOWN entries are never dropped and not counted
**   (there is at most one per link or monitor, so they stay bounded).
** - Entries leave the queue only through the owner (mbox_pop, mbox_take,
**   mbox_remove_down, mbox_close), so the owner may hold a pointer to a
**   queued entry across unlocked stretches; producers only append at `tail`.
** - mbox_pop moves the whole shared list into the owner's private `batch`
**   in one locked step and then pops from it without the lock; the batch is
**   older than the shared list. Operations that walk the queue first put
**   the batch back in front (mbox_unbatch), so order is never lost.
** - Entries from one producer keep their order (FIFO under the lock).
** Ownership: an entry is one allocation holding its bytes. Every mbox_put*
** takes ownership of the entry, whether it is queued or refused (then it is
** freed at once).
*/
#ifndef erlangen_mailbox_h
#define erlangen_mailbox_h

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>
#include "term.h"

typedef enum mbox_kind { MBOX_MSG, MBOX_EXIT, MBOX_DOWN } mbox_kind;

typedef struct mbox_msg {
  struct mbox_msg *next;
  mbox_kind kind;
  int counted;           /* lock: MBOX_COUNT_* — which bound the entry counts against */
  term_id from;          /* EXIT/DOWN: the pid that exited */
  term_id ref;           /* DOWN: the monitor's ref; MSG: the alias it came through ({0}: none) */
  int wire;              /* the bytes came from another node: decode them in the wire form */
  size_t len;
  unsigned char data[];  /* codec bytes (message or reason) */
} mbox_msg;

typedef struct mbox {
  pthread_mutex_t lock;
  mbox_msg *head, *tail;   /* lock */
  _Atomic unsigned count;  /* messages queued (MBOX_COUNT_MSG): see above */
  _Atomic unsigned exits;  /* EXITs of exit/2 queued (MBOX_COUNT_EXIT): as count */
  mbox_msg *batch;         /* owner only: entries taken from the shared list, oldest first */
  unsigned capacity;       /* lock */
  uint64_t dropped;        /* lock: messages refused because the box was full */
  int closed;              /* lock: the owner exited; puts are refused */
  int waiting;             /* lock: the owner is spinning or parked on `wake` */
  _Atomic int parked;      /* the owner sleeps in the kernel: a put must FUTEX_WAKE */
  _Atomic int space_waiters; /* senders parked on `space` (changed under the lock) */
  _Atomic uint32_t wake;   /* futex word: bumped when the parked owner must look again */
  _Atomic uint32_t space;  /* futex word: bumped when a slot frees and senders wait */
  unsigned spin;           /* owner only: current spin before parking (adaptive) */
  unsigned probe;          /* owner only: parks since the spin reached 0 */
} mbox;

enum { MBOX_COUNT_NONE = 0, MBOX_COUNT_MSG = 1, MBOX_COUNT_EXIT = 2 };
enum { MBOX_OK = 0, MBOX_FULL = 1, MBOX_CLOSED = 2, MBOX_CANCELLED = 3 };

void mbox_init(mbox *mb, unsigned capacity);
void mbox_destroy(mbox *mb);               /* frees whatever is still queued */

/* A new entry holding a copy of `data`; NULL when out of memory. */
mbox_msg *mbox_msg_new(mbox_kind kind, const unsigned char *data, size_t len);
void mbox_msg_free(mbox_msg *m);

/* Queues a regular message. When the box is full and `deadline` (monotonic
** seconds) is in the future, waits for space until then; `cancelled(ud)` is
** polled while waiting so a sender that is being killed stops waiting.
** Returns MBOX_OK, MBOX_FULL (counted in `dropped`), MBOX_CLOSED or
** MBOX_CANCELLED. */
int mbox_put(mbox *mb, mbox_msg *m, double deadline, int (*cancelled)(void *), void *ud);

/* Queues an EXIT or DOWN. Neither counts against the capacity (a full
** mailbox still takes it). An EXIT or DOWN of a link or monitor
** (bounded = 0) is never dropped: there is one per link or monitor. An
** EXIT sent with exit/2 (bounded = 1) has a bound of its own, `capacity`
** entries, so a flood of exit/2 cannot grow memory for ever; past it such
** EXITs are dropped and counted. Returns MBOX_OK, MBOX_FULL or MBOX_CLOSED. */
int mbox_put_signal(mbox *mb, mbox_msg *m, int bounded);

/* Owner only. Puts the batch back in front of the shared list; call it
** before walking the queue with mbox_next. */
void mbox_unbatch(mbox *mb);

/* Owner only. Returns the entry after `after` (the head when NULL; the
** batch must be empty). When there is none it arms parking and stores the
** wake sequence in *seq. */
mbox_msg *mbox_next(mbox *mb, mbox_msg *after, uint32_t *seq);

/* Owner only. Unlinks and returns the head in one locked step, or arms
** parking (as mbox_next) and returns NULL. */
mbox_msg *mbox_pop(mbox *mb, uint32_t *seq);

/* Owner only. Arms parking without looking at the queue (sleep): the owner
** shows as waiting, and puts wake it. Returns the wake sequence. */
uint32_t mbox_arm(mbox *mb);

/* Owner only. Undoes the arming of mbox_next/mbox_pop without parking. */
void mbox_disarm(mbox *mb);

/* Owner only. Parks until a put, an mbox_wake, or `deadline`. Spins briefly
** first. Returns 0 on wake-up, -1 on timeout. */
int mbox_park(mbox *mb, uint32_t seq, double deadline);

/* Owner only. Unlinks `m`, whose predecessor is `prev` (NULL for the head). */
void mbox_take(mbox *mb, mbox_msg *prev, mbox_msg *m);

/* Owner only. Removes a queued DOWN carrying `ref`, if any. */
void mbox_remove_down(mbox *mb, term_id ref);

/* Wakes the owner if parked. Async-signal-safe (atomic add + futex). */
void mbox_wake(mbox *mb);

/* Refuses further puts and frees what is queued. */
void mbox_close(mbox *mb);

/* Snapshot for introspection. */
void mbox_stats(mbox *mb, unsigned *count, unsigned *capacity, uint64_t *dropped, int *waiting);

/* Monotonic clock in seconds. */
double mbox_now(void);

/* The CLOCK_REALTIME time `seconds` (clamped at 0) from now: the deadline
** form pthread_cond_timedwait takes. */
struct timespec mbox_realtime_in(double seconds);

#endif
