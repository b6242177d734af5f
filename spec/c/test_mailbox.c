/*
** test_mailbox.c — the mailbox's lock-free puts against one owner, with
** threads: per-sender order, the bound, blocking senders, signals, parking
** and close. Built in every build, so the ThreadSanitizer run
** (tools/test.sh --tsan) checks these interleavings too.
*/
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "ctest.h"
#include "mailbox.h"

#define SENDERS 4
#define PER_SENDER 20000
#define CAPACITY 64

typedef struct sender { mbox *mb; int id, n, refused; } sender;

static mbox_msg *msg_of(int id, int seq) {
  unsigned char b[8];
  memcpy(b, &id, 4);
  memcpy(b + 4, &seq, 4);
  return mbox_msg_new(MBOX_MSG, b, sizeof b, (term_id){0, 0, 0}, (term_id){0, 0, 0});
}

static void parse(const mbox_msg *m, int *id, int *seq) {
  memcpy(id, m->data, 4);
  memcpy(seq, m->data + 4, 4);
}

/* Sends n messages, each waiting up to 30 s for space. */
static void *send_all(void *ud) {
  sender *s = ud;
  for (int i = 0; i < s->n; i++)
    if (mbox_put(s->mb, msg_of(s->id, i), 30, NULL, NULL) != MBOX_OK) s->refused++;
  return NULL;
}

/* The owner: pops (parking when empty) until `want` messages came. Checks
** that each sender's sequence arrives in order and that the count never
** exceeds the capacity. */
static void receive_all(mbox *mb, int want, int *out_of_order, int *over_capacity, int *timeouts) {
  int next[SENDERS] = {0};
  for (int got = 0; got < want;) {
    uint32_t seq;
    unsigned count, cap;
    uint64_t dropped;
    int waiting;
    mbox_stats(mb, &count, &cap, &dropped, &waiting);
    if (count > cap) (*over_capacity)++;
    mbox_msg *m = mbox_pop(mb, &seq);
    if (!m) {
      if (mbox_park(mb, seq, mbox_now() + 10) != 0) { (*timeouts)++; break; }
      continue;
    }
    int id, n;
    parse(m, &id, &n);
    if (id < 0 || id >= SENDERS || n != next[id]) (*out_of_order)++;
    else next[id]++;
    mbox_msg_free(m);
    got++;
  }
}

static void test_senders_keep_order(void) {
  mbox mb;
  mbox_init(&mb, CAPACITY);
  pthread_t t[SENDERS];
  sender s[SENDERS];
  for (int i = 0; i < SENDERS; i++) {
    s[i] = (sender){ &mb, i, PER_SENDER, 0 };
    pthread_create(&t[i], NULL, send_all, &s[i]);
  }
  int bad = 0, over = 0, timeouts = 0, refused = 0;
  receive_all(&mb, SENDERS * PER_SENDER, &bad, &over, &timeouts);
  for (int i = 0; i < SENDERS; i++) {
    pthread_join(t[i], NULL);
    refused += s[i].refused;
  }
  CHECK(refused == 0, "blocking senders into a small box: none refused", "%d refused", refused);
  CHECK(timeouts == 0, "the owner is woken for every message", "%d waits timed out", timeouts);
  CHECK(bad == 0, "each of 4 senders' 20,000 messages arrive in the order sent", "%d out of order", bad);
  CHECK(over == 0, "the count never exceeds the capacity", "%d times over", over);
  /* Each wake-up of blocked senders (a bump of `space`) needs a sender that
  ** flagged the box since the last one, and a quarter of the box free; the
  ** senders here refill it at once, so it comes to about one per
  ** CAPACITY / 4 messages (277-728 in runs, 9,000-10,000 with a count of
  ** waiters instead of the flag). */
  unsigned bumps = atomic_load(&mb.space), most = SENDERS * PER_SENDER / (CAPACITY / 4) + 1;
  CHECK(bumps <= most, "blocked senders are woken at most once per quarter of the box taken",
        "%u wake-ups for %d messages (at most %u)", bumps, SENDERS * PER_SENDER, most);
  unsigned count, cap;
  uint64_t dropped;
  int waiting;
  mbox_stats(&mb, &count, &cap, &dropped, &waiting);
  CHECK(count == 0 && dropped == 0, "an emptied box counts 0 queued, 0 dropped",
        "count %u dropped %llu", count, (unsigned long long)dropped);
  mbox_destroy(&mb);
}

static void test_full_box_refuses_and_counts(void) {
  mbox mb;
  mbox_init(&mb, 3);
  int ok = 0;
  for (int i = 0; i < 5; i++) ok += mbox_put(&mb, msg_of(0, i), 0, NULL, NULL) == MBOX_OK;
  unsigned count, cap;
  uint64_t dropped;
  int waiting;
  mbox_stats(&mb, &count, &cap, &dropped, &waiting);
  CHECK(ok == 3 && count == 3 && dropped == 2, "a full box refuses without waiting and counts the drops",
        "ok %d count %u dropped %llu", ok, count, (unsigned long long)dropped);
  /* Signals do not count against the capacity; exit/2's EXITs have a bound of their own. */
  int sig = mbox_put_signal(&mb, mbox_msg_new(MBOX_DOWN, (const unsigned char *)"r", 1, (term_id){7, 0, 0}, (term_id){9, 0, 0}), 0);
  int bounded = 0;
  for (int i = 0; i < 4; i++)
    bounded += mbox_put_signal(&mb, mbox_msg_new(MBOX_EXIT, (const unsigned char *)"r", 1, (term_id){7, 0, 0}, (term_id){0, 0, 0}), 1) == MBOX_OK;
  CHECK(sig == MBOX_OK && bounded == 3, "a DOWN enters a full box; exit/2 EXITs stop at the capacity",
        "down %d, exits queued %d", sig, bounded);
  uint32_t seq;
  int order_ok = 1, kinds[8], n = 0;
  mbox_msg *m;
  while ((m = mbox_pop(&mb, &seq)) != NULL) {
    if (n < 8) kinds[n] = m->kind;
    if (m->kind == MBOX_MSG) { int id, s; parse(m, &id, &s); if (s != n) order_ok = 0; }
    n++;
    mbox_msg_free(m);
  }
  mbox_disarm(&mb);
  CHECK(n == 7 && order_ok && kinds[3] == MBOX_DOWN && kinds[4] == MBOX_EXIT,
        "entries come out in the order they were put", "%d entries", n);
  mbox_stats(&mb, &count, &cap, &dropped, &waiting);
  CHECK(count == 0, "popping gives every slot back", "count %u", count);
  mbox_destroy(&mb);
}

typedef struct closer { mbox *mb; int closed_seen, ok; } closer;

static void *send_until_closed(void *ud) {
  closer *c = ud;
  for (int i = 0; i < 1000000; i++) {
    int rc = mbox_put(c->mb, msg_of(0, i), 5, NULL, NULL);
    if (rc == MBOX_CLOSED) { c->closed_seen = 1; break; }
    if (rc == MBOX_OK) c->ok++;
  }
  return NULL;
}

/* A sender blocked on a full box, or racing with the close, ends with
** MBOX_CLOSED; what it pushed just after the close is freed by
** mbox_destroy. */
static void test_close_releases_senders(void) {
  mbox mb;
  mbox_init(&mb, 8);
  closer c[2] = { { &mb, 0, 0 }, { &mb, 0, 0 } };
  pthread_t t[2];
  for (int i = 0; i < 2; i++) pthread_create(&t[i], NULL, send_until_closed, &c[i]);
  uint32_t seq;
  for (int taken = 0; taken < 200;) {   /* take some, so both have run */
    mbox_msg *m = mbox_pop(&mb, &seq);
    if (m) { mbox_msg_free(m); taken++; }
    else mbox_park(&mb, seq, mbox_now() + 5);
  }
  mbox_close(&mb);
  for (int i = 0; i < 2; i++) pthread_join(t[i], NULL);
  CHECK(c[0].closed_seen && c[1].closed_seen, "senders, blocked or not, see the close",
        "closed seen: %d %d", c[0].closed_seen, c[1].closed_seen);
  int rc = mbox_put(&mb, msg_of(0, 0), INFINITY, NULL, NULL);
  CHECK(rc == MBOX_CLOSED, "a put after the close is refused at once", "rc %d", rc);
  mbox_destroy(&mb);
}

/* A sender whose bump belonged to an earlier waiting round must not
** swallow the wake-up of a later one. The hook stalls sender A between its
** bump of `wake` and what it does about the sleeping bit; meanwhile the
** owner takes A's message, waits again and sleeps; A then goes on, and C
** sends. With a separate `parked` flag (before this test), A took that
** flag and made a wake-up the owner slept through, C saw no flag, and the
** owner slept until its deadline with C's message queued. */
static mbox stall_mb;
static _Atomic int stall_stage;      /* 1: A is stalled after its bump; 2: A may go on */
static _Atomic int stall_owner;      /* the owner, once armed, waits for stage 1 */
static __thread int stall_me;

void mbox_test_after_arm(void) {
  if (!atomic_load(&stall_owner)) return;
  while (atomic_load(&stall_stage) != 1) usleep(100);
}

void mbox_test_after_bump(void) {
  if (!stall_me) return;
  atomic_store(&stall_stage, 1);
  while (atomic_load(&stall_stage) != 2) usleep(100);
}

static void *stalled_sender(void *ud) {
  (void)ud;
  while (!atomic_load(&stall_mb.waiting)) usleep(100);      /* the owner is armed */
  stall_me = 1;
  mbox_put(&stall_mb, msg_of(1, 0), 0, NULL, NULL);
  return NULL;
}

static void *late_sender(void *ud) {
  (void)ud;
  while (!(atomic_load(&stall_mb.wake) & 1)) usleep(100);   /* the owner sleeps */
  usleep(20000);
  atomic_store(&stall_stage, 2);                            /* A goes on */
  usleep(50000);
  mbox_put(&stall_mb, msg_of(2, 0), 0, NULL, NULL); /* C */
  return NULL;
}

static void test_stale_wake_is_not_lost(void) {
  uint32_t seq;
  mbox_init(&stall_mb, 16);
  stall_mb.spin_ns = 0;
  mbox_msg *m = mbox_pop(&stall_mb, &seq);                  /* round 1: empty */
  pthread_t a, c;
  pthread_create(&a, NULL, stalled_sender, NULL);
  atomic_store(&stall_owner, 1);
  int r1 = mbox_park(&stall_mb, seq, mbox_now() + 3);       /* armed, A bumps and stalls */
  atomic_store(&stall_owner, 0);
  m = mbox_pop(&stall_mb, &seq);
  int got_a = m != NULL;
  if (m) mbox_msg_free(m);
  m = mbox_pop(&stall_mb, &seq);                            /* round 2: empty, sleeps */
  pthread_create(&c, NULL, late_sender, NULL);
  double t0 = mbox_now();
  int r2 = m ? 0 : mbox_park(&stall_mb, seq, t0 + 20);
  double waited = mbox_now() - t0;
  if (!m) m = mbox_pop(&stall_mb, &seq);
  int got_c = m != NULL;
  if (m) mbox_msg_free(m); else mbox_disarm(&stall_mb);
  pthread_join(a, NULL);
  pthread_join(c, NULL);
  CHECK(r1 == 0 && got_a, "round 1: the owner sees the stalled sender's message", "park %d", r1);
  /* Not a timing: C's put comes 70 ms in; a lost wake-up sleeps the 20 s. */
  CHECK(r2 == 0 && got_c && waited < 10,
        "round 2: a stale sender does not swallow the wake-up of the next put",
        "park %d after %.2f s, message %s", r2, waited, got_c ? "taken" : "missing");
  mbox_destroy(&stall_mb);
}

/* mbox_next walks without taking; mbox_take unlinks from the middle. */
static void test_walk_and_take(void) {
  mbox mb;
  mbox_init(&mb, 16);
  for (int i = 0; i < 5; i++) mbox_put(&mb, msg_of(0, i), 0, NULL, NULL);
  uint32_t seq;
  mbox_msg *prev = NULL, *m;
  while ((m = mbox_next(&mb, prev, &seq)) != NULL) {
    int id, s;
    parse(m, &id, &s);
    if (s % 2 == 1) { mbox_take(&mb, prev, m); mbox_msg_free(m); }
    else prev = m;
  }
  mbox_disarm(&mb);
  mbox_put(&mb, msg_of(0, 5), 0, NULL, NULL);   /* lands after the walk's end */
  int want[] = { 0, 2, 4, 5 }, n = 0, ok = 1;
  while ((m = mbox_pop(&mb, &seq)) != NULL) {
    int id, s;
    parse(m, &id, &s);
    if (n >= 4 || s != want[n]) ok = 0;
    n++;
    mbox_msg_free(m);
  }
  mbox_disarm(&mb);
  CHECK(ok && n == 4, "taking from the middle keeps the rest in order", "%d left", n);
  mbox_destroy(&mb);
}

/* The learnt spin: a wait that times out halves it (a loop of short
** receives must not keep spinning), and a poll leaves it alone. */
static void test_spin_budget_decays(void) {
  mbox mb;
  mbox_init(&mb, 4);
  mb.spin_ns = 60000;
  uint32_t seq;
  CHECK(mbox_pop(&mb, &seq) == NULL, "an empty box gives no entry", "an entry");
  int rc = mbox_park(&mb, seq, mbox_now() + 0.0002);
  CHECK(rc == -1 && mb.spin_ns == 30000, "a wait that times out halves the spin budget",
        "rc %d, budget %u ns", rc, mb.spin_ns);
  for (int i = 0; i < 8; i++) {
    if (mbox_pop(&mb, &seq)) break;
    mbox_park(&mb, seq, mbox_now() + 0.0002);
  }
  CHECK(mb.spin_ns == 0, "a loop of timed-out waits stops spinning", "budget %u ns", mb.spin_ns);
  mb.spin_ns = 60000;
  mbox_pop(&mb, &seq);
  rc = mbox_park(&mb, seq, mbox_now() - 1);
  CHECK(rc == -1 && mb.spin_ns == 60000, "a poll times out at once and leaves the budget alone",
        "rc %d, budget %u ns", rc, mb.spin_ns);
  /* Waits that spins end at once (a receiver keeping up with a flood) keep
  ** a budget: decayed to nothing, every few of them slept. */
  mb.spin_ns = 2000;
  int ended = 0;
  for (int i = 0; i < 20; i++) {
    if (mbox_pop(&mb, &seq)) break;
    mbox_put(&mb, msg_of(0, i), 0, NULL, NULL);
    ended += mbox_park(&mb, seq, mbox_now() + 5) == 0;
    mbox_msg_free(mbox_pop(&mb, &seq));
  }
  CHECK(ended == 20 && mb.spin_ns >= 4000, "short waits that spins end keep a spin budget",
        "%d of 20 ended, budget %u ns", ended, mb.spin_ns);
  mbox_destroy(&mb);
}

/* A box whose budget went to 0 times only some of its waits (the clock
** costs a cache miss after a sleep), but still finds out when waits become
** short again: a partner that puts as soon as the owner sleeps makes the
** waits a wake-up long, well under MBOX_SPIN_MAX_NS, and the budget must
** come back within a few samples. Up to 400 waits, so a slow wake-up now
** and then (a loaded machine, a sanitizer) does not fail the check. */
typedef struct quick_partner { mbox *mb; _Atomic int stop; } quick_partner;

static void *put_when_asleep(void *ud) {
  quick_partner *q = ud;
  uint32_t served = 0;   /* the wake word of the last sleep ended (each sleep has its own) */
  for (int i = 0; !atomic_load(&q->stop);) {
    uint32_t w = atomic_load(&q->mb->wake);
    if (!(w & 1) || w == served) { sched_yield(); continue; }
    served = w;
    mbox_put(q->mb, msg_of(3, i++), 0, NULL, NULL);
  }
  return NULL;
}

static void test_spin_budget_returns(void) {
  mbox mb;
  mbox_init(&mb, 8);
  mb.spin_ns = 0;
  quick_partner q = { &mb, 0 };
  pthread_t t;
  pthread_create(&t, NULL, put_when_asleep, &q);
  int waits = 0;
  uint32_t seq;
  while (waits < 400 && mb.spin_ns == 0) {
    mbox_msg *m = mbox_pop(&mb, &seq);
    if (m) { mbox_msg_free(m); continue; }
    mbox_park(&mb, seq, INFINITY);
    waits++;
  }
  atomic_store(&q.stop, 1);
  pthread_join(t, NULL);
  CHECK(mb.spin_ns > 0, "a box whose spin budget went to 0 regains one when waits become short",
        "still 0 after %d waits", waits);
  mbox_destroy(&mb);
}

/* An entry keeps its bytes, and the pid and ref given with it, whatever
** its size: small ones come from the magazines, 64-byte aligned, larger
** ones from malloc. */
static void test_entry_layout(void) {
  static const size_t lens[] = { 0, 1, 23, 40, 41, 44, 72, 73, 80, 100, 104, 105, 127, 128, 129, 4000 };
  unsigned char bytes[4000];
  for (size_t i = 0; i < sizeof bytes; i++) bytes[i] = (unsigned char)(i * 7 + 1);
  int bad = 0, misaligned = 0;
  for (size_t i = 0; i < sizeof lens / sizeof lens[0]; i++)
    for (int tagged = 0; tagged < 2; tagged++) {
      term_id from = { tagged ? 1000 + i : 0, tagged ? 3 : 0, tagged ? 5 : 0 };
      term_id ref = { tagged ? 2000 + i : 0, 0, tagged ? 6 : 0 };
      mbox_msg *m = mbox_msg_new(tagged ? MBOX_DOWN : MBOX_MSG, bytes, lens[i], from, ref);
      if (!m) { bad++; continue; }
      if (lens[i] <= 40 && (((uintptr_t)m & 63) != 0 || offsetof(mbox_msg, data) + lens[i] > 64)) misaligned++;
      term_id f = mbox_msg_from(m), r = mbox_msg_ref(m);
      if (m->len != lens[i] || memcmp(m->data, bytes, lens[i]) != 0 || !term_eq(f, from) ||
          !term_eq(r, ref) || m->tagged != tagged)
        bad++;
      mbox_msg_free(m);
    }
  CHECK(bad == 0, "an entry keeps its bytes, pid and ref at every size", "%d entries wrong", bad);
  CHECK(misaligned == 0, "an entry of up to 40 bytes is one cache line", "%d misaligned", misaligned);
  CHECK(mbox_msg_new(MBOX_MSG, bytes, (size_t)UINT32_MAX + 1, (term_id){0, 0, 0}, (term_id){0, 0, 0}) == NULL,
        "an entry longer than 32 bits can count is refused", "it was made");
}

/* A sleep (mbox_arm) shows as waiting, but a put neither bumps `wake` nor
** ends it: a flood into a sleeping process makes no system calls. */
static void test_sleep_ignores_puts(void) {
  mbox mb;
  mbox_init(&mb, 8);
  uint32_t seq = mbox_arm(&mb);
  unsigned count, cap;
  uint64_t dropped;
  int waiting;
  mbox_stats(&mb, &count, &cap, &dropped, &waiting);
  for (int i = 0; i < 4; i++) mbox_put(&mb, msg_of(1, i), 0, NULL, NULL);
  uint32_t after = atomic_load(&mb.wake);
  int rc = mbox_park(&mb, seq, mbox_now() + 0.01);
  int still;
  mbox_stats(&mb, &count, &cap, &dropped, &still);
  CHECK(waiting && after == seq && rc == -1 && !still,
        "a sleeping owner shows as waiting, and puts neither bump its wake word nor end the sleep",
        "waiting %d, wake %u -> %u, park %d, waiting after %d", waiting, seq, after, rc, still);
  mbox_destroy(&mb);
}

/* An owner that found its box empty spins on the inbox before it arms: a
** put meanwhile ends the wait without touching `wake` or `waiting`, so a
** flood into a box whose owner keeps up costs no writes to the owner's
** lines. The owner shows as waiting all the while. */
static void test_spinning_owner_is_not_bumped(void) {
  mbox mb;
  mbox_init(&mb, 8);
  mb.spin_ns = 60000;
  uint32_t seq;
  mbox_msg *m = mbox_pop(&mb, &seq);
  unsigned count, cap;
  uint64_t dropped;
  int waiting;
  mbox_stats(&mb, &count, &cap, &dropped, &waiting);
  mbox_put(&mb, msg_of(1, 0), 0, NULL, NULL);
  uint32_t after = atomic_load(&mb.wake);
  int armed = atomic_load(&mb.waiting);
  int rc = m ? -2 : mbox_park(&mb, seq, mbox_now() + 5);
  m = mbox_pop(&mb, &seq);
  CHECK(waiting && !armed && after == seq && rc == 0 && m,
        "a put to an owner that has not armed ends its spin without a bump",
        "waiting %d, armed %d, wake %u -> %u, park %d, message %s", waiting, armed, seq, after, rc,
        m ? "taken" : "missing");
  mbox_msg_free(m);
  mbox_destroy(&mb);
}

/* An owner that goes to sleep without spinning looks at the inbox once
** more after it armed: a put that came after the box was found empty (and
** so did not bump `wake`) ends the wait at once. And a poll (a deadline
** already past) reports such a put as a wake-up, not a timeout. */
static void test_put_before_arming_is_seen(void) {
  mbox mb;
  mbox_init(&mb, 8);
  mb.spin_ns = 0;
  uint32_t seq;
  mbox_msg *m = mbox_pop(&mb, &seq);
  mbox_put(&mb, msg_of(1, 0), 0, NULL, NULL);
  double t0 = mbox_now();
  int rc = m ? -2 : mbox_park(&mb, seq, t0 + 2);
  double waited = mbox_now() - t0;
  uint32_t after = atomic_load(&mb.wake);
  mbox_msg_free(mbox_pop(&mb, &seq));
  /* Not a timing: a lost wake-up sleeps the whole 2 s. */
  CHECK(rc == 0 && waited < 1 && after == seq, "a put before the owner armed ends its sleep at once",
        "park %d after %.2f s, wake %u -> %u", rc, waited, seq, after);
  m = mbox_pop(&mb, &seq);
  mbox_put(&mb, msg_of(1, 1), 0, NULL, NULL);
  rc = m ? -2 : mbox_park(&mb, seq, mbox_now() - 1);
  m = mbox_pop(&mb, &seq);
  CHECK(rc == 0 && m, "a poll after a put reports the put, not a timeout", "park %d, message %s", rc,
        m ? "taken" : "missing");
  mbox_msg_free(m);
  mbox_destroy(&mb);
}

/* A sender that read `sent` and then stalled while the box filled, emptied
** and took another message (so the senders' copy of `taken` passed its
** `sent`) must not take the box for full: with timeout 0 that dropped the
** message while one slot of four was used. */
static mbox sent_mb;
static pthread_t sent_staller;
static _Atomic int sent_stalled, sent_release;
static int sent_rc;

void mbox_test_after_sent(void) {
  if (!pthread_equal(pthread_self(), sent_staller)) return;
  atomic_store(&sent_stalled, 1);
  while (!atomic_load(&sent_release)) usleep(100);
}

static void *stalled_put(void *ud) {
  (void)ud;
  sent_rc = mbox_put(&sent_mb, msg_of(9, 0), 0, NULL, NULL);
  return NULL;
}

static void test_stale_sent_is_not_full(void) {
  mbox_init(&sent_mb, 4);
  pthread_create(&sent_staller, NULL, stalled_put, NULL);
  while (!atomic_load(&sent_stalled)) usleep(100);
  uint32_t seq;
  for (int i = 0; i < 4; i++) mbox_put(&sent_mb, msg_of(1, i), 0, NULL, NULL);
  for (int i = 0; i < 4; i++) mbox_msg_free(mbox_pop(&sent_mb, &seq));
  int other = mbox_put(&sent_mb, msg_of(2, 0), 0, NULL, NULL);   /* refreshes the copy of `taken` */
  atomic_store(&sent_release, 1);
  pthread_join(sent_staller, NULL);
  unsigned count, cap;
  uint64_t dropped;
  int waiting;
  mbox_stats(&sent_mb, &count, &cap, &dropped, &waiting);
  CHECK(other == MBOX_OK && sent_rc == MBOX_OK && count == 2 && dropped == 0,
        "a sender with an old view of `sent` does not take a nearly empty box for full",
        "other %d, stalled sender %d, queued %u, dropped %llu", other, sent_rc, count,
        (unsigned long long)dropped);
  mbox_destroy(&sent_mb);
}

int main(void) {
  test_entry_layout();
  test_full_box_refuses_and_counts();
  test_walk_and_take();
  test_senders_keep_order();
  test_close_releases_senders();
  test_stale_wake_is_not_lost();
  test_stale_sent_is_not_full();
  test_spin_budget_decays();
  test_spin_budget_returns();
  test_sleep_ignores_puts();
  test_spinning_owner_is_not_bumped();
  test_put_before_arming_is_seen();
  return ctest_end();
}
