/* Raw-thread floor: ping-pong, ring and spawn+exit with bare pthreads.
**
** The same shapes as bench/erlangen.lua, with nothing between the threads
** but one int token and a futex (or a mutex+condvar) per thread. This is the
** cost an OS-thread actor kernel cannot go below: a process switch here is a
** thread wake-up and nothing else. Ping-pong and ring run in three hand-off
** modes (futex, spin-then-futex, condvar); bench/report.lua takes the
** fastest as the floor.
**
** Usage: floor SHAPE COUNT [REPS [RING_SIZE]]
**   SHAPE: pingpong (COUNT round trips), ring (COUNT hops), spawn (COUNT
**   pthread_create + pthread_join of a thread that returns at once)
** Prints one tab-separated line per measurement:
**   shape <TAB> median <TAB> unit <TAB> samples...
** Build: gcc -O2 -pthread -o floor floor.c
*/
#define _GNU_SOURCE
#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define FLOOR_STACK (64 * 1024)  /* small stacks, as the kernel's processes */
#define FLOOR_MAXREPS 32
#define FLOOR_STOP LONG_MIN

static double floor_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void floor_futex_wait(atomic_int *w, int val) {
  syscall(SYS_futex, w, FUTEX_WAIT_PRIVATE, val, NULL, NULL, 0);
}

static void floor_futex_wake(atomic_int *w) {
  syscall(SYS_futex, w, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
}

/* ---- one slot per thread: a one-message mailbox ---------------------- */

/* MODE_FUTEX parks at once; MODE_SPIN first polls FLOOR_SPIN times (about
** 6 µs on a CPU whose `pause` takes 30 ns), as a kernel that "spins briefly
** before parking" would; MODE_COND uses a mutex and a condition variable. */
enum { MODE_FUTEX, MODE_SPIN, MODE_COND, MODE_N };
static const char *mode_name[MODE_N] = { "futex", "spin", "cond" };
#define FLOOR_SPIN 200

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

/* `full` is SLOT_EMPTY, SLOT_FULL, or SLOT_SLEEPING (empty, and the owner is
** parked on the futex, so the next put must wake it). */
enum { SLOT_EMPTY, SLOT_FULL, SLOT_SLEEPING };

typedef struct Slot {
  atomic_int full;
  long token;          /* hops still to go; FLOOR_STOP ends the thread */
  pthread_mutex_t mu;  /* MODE_COND only */
  pthread_cond_t cv;
  char pad[64];
} Slot;

typedef struct Ring {
  int mode;
  int n;               /* threads in the ring, the caller included */
  Slot *slots;
} Ring;

static void slot_put(Ring *r, Slot *s, long token) {
  if (r->mode == MODE_COND) {
    pthread_mutex_lock(&s->mu);
    s->token = token;
    atomic_store_explicit(&s->full, SLOT_FULL, memory_order_relaxed);
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
    return;
  }
  s->token = token;
  if (atomic_exchange_explicit(&s->full, SLOT_FULL, memory_order_acq_rel) == SLOT_SLEEPING)
    floor_futex_wake(&s->full);
}

static long slot_take(Ring *r, Slot *s) {
  long t;
  if (r->mode == MODE_COND) {
    pthread_mutex_lock(&s->mu);
    while (atomic_load_explicit(&s->full, memory_order_relaxed) != SLOT_FULL)
      pthread_cond_wait(&s->cv, &s->mu);
    t = s->token;
    atomic_store_explicit(&s->full, SLOT_EMPTY, memory_order_relaxed);
    pthread_mutex_unlock(&s->mu);
    return t;
  }
  int spin = r->mode == MODE_SPIN ? FLOOR_SPIN : 0;
  for (int i = 0; i < spin; i++) {
    if (atomic_load_explicit(&s->full, memory_order_acquire) == SLOT_FULL) goto got;
    cpu_relax();
  }
  for (;;) {
    int v = atomic_load_explicit(&s->full, memory_order_acquire);
    if (v == SLOT_FULL) break;
    if (v == SLOT_EMPTY &&
        !atomic_compare_exchange_strong(&s->full, &v, SLOT_SLEEPING)) continue;
    floor_futex_wait(&s->full, SLOT_SLEEPING);
  }
got:
  t = s->token;
  atomic_store_explicit(&s->full, SLOT_EMPTY, memory_order_relaxed);
  return t;
}

typedef struct Member { Ring *r; int i; } Member;

/* A ring member: take the token, pass it on decremented. */
static void *ring_member(void *arg) {
  Member *m = arg;
  Ring *r = m->r;
  Slot *me = &r->slots[m->i], *next = &r->slots[(m->i + 1) % r->n];
  for (;;) {
    long t = slot_take(r, me);
    if (t == FLOOR_STOP) return NULL;
    slot_put(r, next, t - 1);
  }
}

/* Time `hops` hand-offs around a ring of n threads (slot 0 is the caller).
** hops is rounded up to whole laps so the token ends at the caller.
** Returns seconds per hop; thread start and stop are excluded. */
static double ring_run(int mode, int n, long hops) {
  Ring r = { mode, n, calloc(n, sizeof(Slot)) };
  Member *ms = calloc(n, sizeof(Member));
  pthread_t *th = calloc(n, sizeof(pthread_t));
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setstacksize(&attr, FLOOR_STACK);
  for (int i = 0; i < n; i++) {
    pthread_mutex_init(&r.slots[i].mu, NULL);
    pthread_cond_init(&r.slots[i].cv, NULL);
  }
  for (int i = 1; i < n; i++) {
    ms[i].r = &r; ms[i].i = i;
    if (pthread_create(&th[i], &attr, ring_member, &ms[i]) != 0) {
      perror("pthread_create"); exit(1);
    }
  }
  /* the caller is member 0: it starts the token and counts it back in */
  hops = (hops + n - 1) / n * n;
  double t0 = floor_now();
  long left = hops;
  slot_put(&r, &r.slots[1 % n], left - 1);
  for (;;) {
    long t = slot_take(&r, &r.slots[0]);
    if (t <= 0) break;
    slot_put(&r, &r.slots[1 % n], t - 1);
  }
  double dt = floor_now() - t0;
  for (int i = 1; i < n; i++) slot_put(&r, &r.slots[i], FLOOR_STOP);
  for (int i = 1; i < n; i++) pthread_join(th[i], NULL);
  pthread_attr_destroy(&attr);
  free(th); free(ms); free(r.slots);
  return dt / hops;
}

static void *spawn_child(void *arg) { return arg; }

static double spawn_run(long count) {
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setstacksize(&attr, FLOOR_STACK);
  double t0 = floor_now();
  for (long i = 0; i < count; i++) {
    pthread_t t;
    if (pthread_create(&t, &attr, spawn_child, NULL) != 0) {
      perror("pthread_create"); exit(1);
    }
    pthread_join(t, NULL);
  }
  double dt = floor_now() - t0;
  pthread_attr_destroy(&attr);
  return dt;
}

/* ---- reporting --------------------------------------------------------- */

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static void report(const char *shape, const char *unit, double *v, int n) {
  double s[FLOOR_MAXREPS];
  memcpy(s, v, n * sizeof(double));
  qsort(s, n, sizeof(double), cmp_double);
  double med = n % 2 ? s[n / 2] : (s[n / 2 - 1] + s[n / 2]) / 2;
  printf("%s\t%.4g\t%s\t", shape, med, unit);
  for (int i = 0; i < n; i++) printf("%s%.4g", i ? "," : "", v[i]);
  printf("\n");
  fflush(stdout);
}

int main(int argc, char **argv) {
  const char *shape = argc > 1 ? argv[1] : "";
  long count = argc > 2 ? atol(argv[2]) : 0;
  int reps = argc > 3 ? atoi(argv[3]) : 5;
  int size = argc > 4 ? atoi(argv[4]) : 1000;
  if (count < 1 || reps < 1 || reps > FLOOR_MAXREPS || size < 2) shape = "";
  double v[FLOOR_MAXREPS];
  char name[64];

  if (strcmp(shape, "pingpong") == 0 || strcmp(shape, "ring") == 0) {
    int pp = shape[0] == 'p';
    for (int mode = 0; mode < MODE_N; mode++) {
      /* a ring of two is ping-pong; one round trip is two hops */
      for (int k = 0; k < reps; k++)
        v[k] = pp ? ring_run(mode, 2, 2 * count) * 2 * 1e6 : ring_run(mode, size, count) * 1e6;
      snprintf(name, sizeof name, "%s_%s", shape, mode_name[mode]);
      report(name, pp ? "us/rt" : "us/hop", v, reps);
    }
  } else if (strcmp(shape, "spawn") == 0) {
    for (int k = 0; k < reps; k++) v[k] = spawn_run(count) / count * 1e6;
    report("spawn", "us/spawn", v, reps);
  } else {
    fprintf(stderr, "usage: floor pingpong|ring|spawn COUNT [REPS [RING_SIZE]]\n");
    return 2;
  }
  return 0;
}
