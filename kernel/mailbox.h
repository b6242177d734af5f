/*
** mailbox.h — a process's bounded message queue and its parking word.
**
** Senders never take a lock. A put pushes its entry onto `inbox`, a
** lock-free stack (compare-and-swap on its head, newest first); the owner
** takes the whole stack with one atomic exchange, reverses it, and appends
** it to its private list `head`..`tail`, which is the front of the queue.
** Invariants:
** - Only the owner's thread touches `head`, `tail` and `spin_ns`
**   (mbox_pop/next/take/remove_down/park/close); the owner may therefore hold
**   a pointer to a queued entry across any stretch. Every other field is an
**   atomic or immutable (`capacity`).
** - Order: entries from one sender keep their order. A sender's pushes are
**   ordered by its compare-and-swaps; each exchange takes a prefix of that
**   order, newest first, and is reversed before it is appended.
** - The regular messages queued (in `inbox` or the private list) number
**   `sent - taken` (unsigned, wrapping), and never more than `capacity`:
**   a sender reserves its slot by a compare-and-swap on `sent`, which only
**   succeeds while `sent - taken` is below the capacity; `taken` (written
**   by the owner alone, when a message leaves) only grows, so a sender that
**   compares with an older `taken` errs on the side of "full". Senders
**   compare with `taken_seen`, a copy on their own line that a sender
**   refreshes from `taken` when the copy says "full": the owner's line is
**   then read about once per `capacity` messages, not once per message.
**   "Full" is concluded only from a current `sent`: with an old one,
**   `taken` may have passed it (the difference wraps) while the box emptied.
**   EXIT and DOWN entries are not counted (one per link or monitor); EXITs
**   of exit/2 have their own bound, `exits`.
** - Parking: an owner that finds the box empty first spins watching
**   `inbox` itself (`polling`; puts leave `wake` alone meanwhile, so a
**   flood into a box whose owner keeps up costs the senders no writes to a
**   line the owner reads, and the owner none to theirs). To sleep, the
**   owner sets `waiting` and looks at `inbox` once more; a sender pushes,
**   then reads `waiting` and bumps `wake` if it is set. All four are
**   seq_cst, so either the owner sees the entry or the sender sees the
**   owner waiting.
** - `wake` counts in steps of 2; bit 0 says the owner sleeps in the kernel.
**   Only the owner sets it, with a compare-and-swap from the value it armed
**   with, so a bump it has not seen makes the swap fail instead of being
**   slept through. The sender whose bump finds bit 0 set clears it and
**   makes the one FUTEX_WAKE: flag and bump are one atomic step, so a
**   sender that bumped an earlier round can never take a later round's
**   flag (with a separate flag, that lost a wake-up).
** - Space: a sender that finds the box full reads `space`, sets
**   `space_wanted`, then looks at `taken` once more before it sleeps on
**   `space`; the owner stores `taken`, then reads `space_wanted` (all
**   seq_cst), so either the sender sees the slot or the owner sees it
**   wanted. The owner wakes senders once a quarter of the box is free, and
**   it clears `space_wanted` with the exchange that decides to wake, so one
**   bump and one system call serve every sender waiting then (a count of
**   waiters, which they lower only once they run, made every message
**   taken meanwhile another FUTEX_WAKE).
** - After mbox_close (`closed`), puts are refused; an entry pushed by a
**   sender that passed the check just before is freed by mbox_destroy.
** Ownership: an entry is one allocation holding its bytes (and ids). Every mbox_put*
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

/* An entry: a 24-byte header, then the codec bytes, then (only for an
** EXIT, a DOWN, or a message sent through an alias) the pid and ref that
** come with it, at the next multiple of 8. A small message (up to 40
** bytes) thus fits in the first cache line of its 64-byte-aligned entry,
** the one line that passes from sender to receiver. */
typedef struct mbox_msg {
  struct mbox_msg *next;
  struct mbox_msg *hint; /* set by push: an older entry of the same sender, to prefetch (mailbox.c) */
  uint32_t len;          /* bytes in `data` (<= CODEC_HARD_SIZE) */
  uint8_t kind;          /* mbox_kind */
  uint8_t counted;       /* MBOX_COUNT_*: which bound the entry counts against (set before the push) */
  uint8_t wire;          /* the bytes came from another node: decode them in the wire form */
  uint8_t tagged;        /* a pid and a ref follow the bytes (see mbox_msg_from/ref) */
  unsigned char data[];  /* codec bytes (message or reason) */
} mbox_msg;

/* Two cache lines (the struct is 64-byte aligned): the owner's, then the
** senders'. A receive that finds a message touches both; a put only the
** senders' (and the owner's `taken` about once per `capacity` puts). */
typedef struct mbox {
  /* Written by the owner (and by a sender that waits for space). */
  _Atomic unsigned taken;     /* regular messages ever removed (wraps); only grows */
  _Atomic int space_wanted;   /* a sender waits on `space`: set by it, cleared by the bump that wakes it */
  _Atomic int idle;           /* the owner waits (for a message, or in a sleep); read by mbox_stats */
  _Atomic uint32_t space;     /* futex word: bumped when slots free and senders wait */
  /* The owner's thread only. */
  mbox_msg *head, *tail;      /* entries taken from `inbox`, oldest first */
  unsigned spin_ns;           /* how long to spin before parking, learnt (mailbox.c) */
  unsigned untimed;           /* waits with neither budget nor deadline: one in MBOX_SAMPLE is timed */
  int polling;                /* found empty, not armed: the spin watches `inbox` (see above) */
  /* Written by senders, on a line of their own: atomics, and one immutable field. */
  _Alignas(64) _Atomic(mbox_msg *) inbox;  /* pushed entries, newest first (see above) */
  _Atomic unsigned sent;      /* regular messages ever reserved (wraps) */
  _Atomic unsigned taken_seen;/* a past value of `taken` (see above) */
  _Atomic unsigned exits;     /* EXITs of exit/2 queued (MBOX_COUNT_EXIT) */
  _Atomic uint64_t dropped;   /* messages refused because the box was full */
  _Atomic int closed;         /* the owner exited; puts are refused */
  _Atomic int waiting;        /* the owner is about to sleep, or sleeps, on `wake`: puts bump it */
  _Atomic uint32_t wake;      /* futex word: sequence (steps of 2) | sleeping bit (see above) */
  unsigned capacity;          /* immutable */
} mbox;

enum { MBOX_COUNT_NONE = 0, MBOX_COUNT_MSG = 1, MBOX_COUNT_EXIT = 2 };
enum { MBOX_OK = 0, MBOX_FULL = 1, MBOX_CLOSED = 2, MBOX_CANCELLED = 3 };

void mbox_init(mbox *mb, unsigned capacity);
void mbox_destroy(mbox *mb);               /* frees whatever is still queued */

/* A new entry holding a copy of `data`, and `from` and `ref` unless both
** are zero; NULL when out of memory or `len` is above UINT32_MAX.
** `from`: the pid that exited (EXIT, DOWN); `ref`: the monitor's ref
** (DOWN), or the alias a message came through. */
mbox_msg *mbox_msg_new(mbox_kind kind, const unsigned char *data, size_t len,
                       term_id from, term_id ref);
void mbox_msg_free(mbox_msg *m);

/* An entry whose `from` is a pid of another node holds a reference on that
** node's entry (node.h) from mbox_msg_new to mbox_msg_free, through these.
** Set once by remote_install, before any pid of another node can exist. */
void mbox_set_node_refs(void (*ref)(uint32_t node), void (*unref)(uint32_t node));

/* Copies entry m's header and bytes into `to`, which has room for
** offsetof(mbox_msg, data) + m->len bytes: an entry that is not queued,
** owns nothing (never mbox_msg_free it) and carries no pid or ref, so
** mbox_msg_from/ref give zero for it. */
void mbox_msg_copy(mbox_msg *to, const mbox_msg *m);
term_id mbox_msg_from(const mbox_msg *m);   /* zero when not given */
term_id mbox_msg_ref(const mbox_msg *m);    /* zero when not given */

/* Queues a regular message. When the box is full and `timeout` (seconds,
** INFINITY for ever) is above 0, waits for space up to that long from the
** moment it found the box full; `cancelled(ud)` is polled while waiting so
** a sender that is being killed stops waiting.
** Returns MBOX_OK, MBOX_FULL (counted in `dropped`), MBOX_CLOSED or
** MBOX_CANCELLED. */
int mbox_put(mbox *mb, mbox_msg *m, double timeout, int (*cancelled)(void *), void *ud);

/* Queues an EXIT or DOWN. Neither counts against the capacity (a full
** mailbox still takes it). An EXIT or DOWN of a link or monitor
** (bounded = 0) is never dropped: there is one per link or monitor. An
** EXIT sent with exit/2 (bounded = 1) has a bound of its own, `capacity`
** entries, so a flood of exit/2 cannot grow memory for ever; past it such
** EXITs are dropped and counted. Returns MBOX_OK, MBOX_FULL or MBOX_CLOSED. */
int mbox_put_signal(mbox *mb, mbox_msg *m, int bounded);

/* Owner only. Returns the entry after `after` (the head when NULL). When
** there is none it prepares parking and stores the wake sequence in *seq. */
mbox_msg *mbox_next(mbox *mb, mbox_msg *after, uint32_t *seq);

/* Owner only. Unlinks and returns the head, or prepares parking (as
** mbox_next) and returns NULL. */
mbox_msg *mbox_pop(mbox *mb, uint32_t *seq);

/* Owner only. Prepares a wait that only mbox_wake ends (a sleep): the
** owner shows as waiting, but puts do not wake it (they do not even bump
** `wake`, so a flood into a sleeping process costs no system calls).
** Returns the wake sequence for mbox_park. */
uint32_t mbox_arm(mbox *mb);

/* Owner only. Undoes what mbox_next/mbox_pop/mbox_arm prepared, without parking. */
void mbox_disarm(mbox *mb);

/* Owner only. Parks until a put (unless prepared by mbox_arm), an
** mbox_wake, or `deadline`. Spins briefly first. Returns 0 on wake-up (or,
** for a deadline already past, when a put or a wake came since the box was
** found empty), -1 on timeout. */
int mbox_park(mbox *mb, uint32_t seq, double deadline);

/* Owner only. Unlinks `m`, whose predecessor is `prev` (NULL for the head). */
void mbox_take(mbox *mb, mbox_msg *prev, mbox_msg *m);

/* Owner only. Removes a queued DOWN carrying `ref`, if any. */
void mbox_remove_down(mbox *mb, term_id ref);

/* Wakes the owner if parked. Async-signal-safe (atomic add + futex). */
void mbox_wake(mbox *mb);

/* Owner only (or for a process that never ran). Refuses further puts and
** frees what is queued. */
void mbox_close(mbox *mb);

/* Snapshot for introspection. `count` is exact when the owner asks; asked
** from another thread it may be off by the messages that moved while it
** was read. */
void mbox_stats(mbox *mb, unsigned *count, unsigned *capacity, uint64_t *dropped, int *waiting);

/* Monotonic clock in seconds. */
double mbox_now(void);

/* The CLOCK_REALTIME time `seconds` (clamped at 0) from now: the deadline
** form pthread_cond_timedwait takes. */
struct timespec mbox_realtime_in(double seconds);

#endif
