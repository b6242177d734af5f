/*
** test_entry.c — the magazines of small mailbox entries (kernel/entry.c):
** blocks made in one thread and freed in another keep their bytes, what a
** thread holds goes back when it flushes or exits, and the depot stays
** within its bound. Built in every build, so the ThreadSanitizer run checks
** the hand-offs too.
*/
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "ctest.h"
#include "entry.h"

#define ITEMS 200000
#define RING 256

/* A bounded queue of blocks between a producer and a consumer thread. */
typedef struct queue {
  pthread_mutex_t lock;
  pthread_cond_t cv;
  void *items[RING];
  unsigned head, tail;       /* lock */
} queue;

static queue Q = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, {0}, 0, 0 };

static void q_put(void *p) {
  pthread_mutex_lock(&Q.lock);
  while (Q.tail - Q.head == RING) pthread_cond_wait(&Q.cv, &Q.lock);
  Q.items[Q.tail++ % RING] = p;
  pthread_cond_broadcast(&Q.cv);
  pthread_mutex_unlock(&Q.lock);
}

static void *q_take(void) {
  pthread_mutex_lock(&Q.lock);
  while (Q.tail == Q.head) pthread_cond_wait(&Q.cv, &Q.lock);
  void *p = Q.items[Q.head++ % RING];
  pthread_cond_broadcast(&Q.cv);
  pthread_mutex_unlock(&Q.lock);
  return p;
}

/* Fills a block with a pattern of its sequence number. */
static void stamp(unsigned char *b, uint32_t seq) {
  for (size_t i = 0; i < ENTRY_SMALL; i++) b[i] = (unsigned char)(seq * 31u + i);
}

static int stamped(const unsigned char *b, uint32_t seq) {
  for (size_t i = 0; i < ENTRY_SMALL; i++)
    if (b[i] != (unsigned char)(seq * 31u + i)) return 0;
  return 1;
}

static void *producer(void *ud) {
  int *failed = ud;
  for (uint32_t i = 0; i < ITEMS; i++) {
    unsigned char *b = entry_alloc();
    if (!b) { (*failed)++; continue; }
    stamp(b, i);
    q_put(b);
  }
  q_put(NULL);
  return NULL;
}

/* One thread makes blocks, another checks and frees them: the blocks go
** round through the depot many times. */
static void test_cross_thread(void) {
  int failed = 0, bad = 0, got = 0;
  pthread_t t;
  pthread_create(&t, NULL, producer, &failed);
  for (uint32_t i = 0;; i++) {
    unsigned char *b = q_take();
    if (!b) break;
    if (!stamped(b, i)) bad++;
    got++;
    entry_free(b);
  }
  pthread_join(t, NULL);
  CHECK(failed == 0 && got == ITEMS, "entry: every block made in one thread reaches the other",
        "%d of %d, %d allocations failed", got, ITEMS, failed);
  CHECK(bad == 0, "entry: a block keeps its bytes from one thread to the other", "%d corrupted", bad);
  entry_flush();
  size_t held = entry_depot_blocks();
  CHECK(held <= (size_t)ENTRY_DEPOT * ENTRY_MAG, "entry: the depot stays within its bound",
        "%zu blocks", held);
}

static void *free_and_exit(void *ud) {
  void **blocks = ud;
  for (int i = 0; i < 10; i++) entry_free(blocks[i]);
  return NULL;   /* no flush: the thread's exit gives them back */
}

static void test_thread_exit_gives_back(void) {
  void *blocks[10];
  for (int i = 0; i < 10; i++) blocks[i] = entry_alloc();
  entry_flush();
  size_t before = entry_depot_blocks();
  pthread_t t;
  pthread_create(&t, NULL, free_and_exit, blocks);
  pthread_join(t, NULL);
  size_t after = entry_depot_blocks();
  CHECK(after == before + 10 || after == (size_t)ENTRY_DEPOT * ENTRY_MAG,
        "entry: a thread that exits gives its blocks to the depot", "%zu before, %zu after", before, after);
}

static void test_flush_empties_the_thread(void) {
  void *blocks[ENTRY_MAG / 2];
  for (int i = 0; i < ENTRY_MAG / 2; i++) blocks[i] = entry_alloc();
  for (int i = 0; i < ENTRY_MAG / 2; i++) entry_free(blocks[i]);
  size_t before = entry_depot_blocks();
  entry_flush();
  size_t after = entry_depot_blocks();
  /* the thread held at least the half magazine it just freed */
  CHECK(after >= before + ENTRY_MAG / 2 || after == (size_t)ENTRY_DEPOT * ENTRY_MAG,
        "entry: a flush moves what the thread holds to the depot", "%zu before, %zu after", before, after);
  void *p = entry_alloc();   /* comes back from the depot */
  CHECK(p != NULL, "entry: a block comes back after a flush", "NULL");
  entry_free(p);
  entry_flush();
}

int main(void) {
  test_thread_exit_gives_back();
  test_flush_empties_the_thread();
  test_cross_thread();
  return ctest_end();
}
