/*
** entry.c — magazines of small mailbox entries (see entry.h).
*/
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "entry.h"
#include "poison.h"

/* Under AddressSanitizer a cached block is poisoned but for its link, so a
** use of an entry after it was freed is still caught. */
#define CACHED(b)  POISON((char *)(b) + sizeof(block), ENTRY_SMALL - sizeof(block))
#define IN_USE(b)  UNPOISON((b), ENTRY_SMALL)

typedef struct block { struct block *next; } block;
typedef struct mag { block *head, *tail; unsigned n; } mag;

/* A thread's own magazines: only that thread touches them. */
typedef struct cache {
  mag alloc;    /* allocated from */
  mag freed;    /* freed into */
  int keyed;    /* registered for the flush at thread exit */
} cache;

/* The module's one global: the depot (under `lock`) and the key whose
** destructor flushes an exiting thread's cache. Each thread also has its
** cache, `T`. */
static struct {
  pthread_mutex_t lock;
  mag depot[ENTRY_DEPOT];   /* lock */
  unsigned n;               /* lock: magazines in the depot */
  pthread_key_t key;        /* written once under `once` */
  pthread_once_t once;
} E = { .lock = PTHREAD_MUTEX_INITIALIZER, .once = PTHREAD_ONCE_INIT };

static __thread cache T;

/* A new block, 64-byte aligned so that a small message is one cache line.
** Not aligned_alloc: glibc splits off and keeps both ends of every aligned
** chunk, and a flood into a big mailbox made each allocation slower as
** the fragments piled up (1.6 us each). Here one malloc holds the block
** at the first 64-byte boundary at least 16 bytes in, and the pointer to
** free just below it. */
static void *block_new(void) {
  unsigned char *raw = malloc(ENTRY_SMALL + 64);
  if (!raw) return NULL;
  unsigned char *b = (unsigned char *)(((uintptr_t)raw + 64) & ~(uintptr_t)63);
  memcpy(b - sizeof raw, &raw, sizeof raw);
  return b;
}

static void block_delete(block *b) {
  void *raw;
  memcpy(&raw, (unsigned char *)b - sizeof raw, sizeof raw);
  free(raw);
}

static void free_all(block *b) {
  while (b) { block *n = b->next; IN_USE(b); block_delete(b); b = n; }
}

/* Puts m in the depot, or frees its blocks when the depot is full. A short
** magazine (a flush before a sleep) joins a short one on top if both fit
** in one, so that flushes do not fill the depot with a block or two each. */
static void depot_put(mag m) {
  if (!m.head) return;
  pthread_mutex_lock(&E.lock);
  mag *top = E.n ? &E.depot[E.n - 1] : NULL;
  if (top && top->n + m.n <= ENTRY_MAG) {
    m.tail->next = top->head;
    top->head = m.head;
    top->n += m.n;
    m.head = NULL;
  } else if (E.n < ENTRY_DEPOT) {
    E.depot[E.n++] = m;
    m.head = NULL;
  }
  pthread_mutex_unlock(&E.lock);
  free_all(m.head);
}

static void at_thread_exit(void *unused) {
  (void)unused;
  entry_flush();
  T.keyed = 0;   /* a block freed by a later destructor registers again */
}
static void make_key(void) { pthread_key_create(&E.key, at_thread_exit); }

/* The first use in a thread registers the flush at its exit. */
static void join(cache *c) {
  pthread_once(&E.once, make_key);
  pthread_setspecific(E.key, c);
  c->keyed = 1;
}

void entry_flush(void) {
  cache *c = &T;
  mag a = c->alloc, f = c->freed;
  c->alloc = (mag){0};
  c->freed = (mag){0};
  depot_put(a);
  depot_put(f);
}

void *entry_alloc(void) {
  cache *c = &T;
  if (!c->keyed) join(c);
  if (!c->alloc.head) {
    if (c->freed.head) {        /* our own frees first: no lock */
      c->alloc = c->freed;
      c->freed = (mag){0};
    } else {
      pthread_mutex_lock(&E.lock);
      if (E.n) c->alloc = E.depot[--E.n];
      pthread_mutex_unlock(&E.lock);
    }
  }
  block *b = c->alloc.head;
  if (!b) return block_new();
  c->alloc.head = b->next;
  c->alloc.n--;
  /* The next block was last written by the thread that freed it, likely on
  ** another core: start moving its line here now, for writing, so that the
  ** next allocation does not wait for it. */
  if (b->next) __builtin_prefetch(b->next, 1);
  IN_USE(b);
  return b;
}

void entry_free(void *p) {
  if (!p) return;
  cache *c = &T;
  if (!c->keyed) join(c);
  block *b = p;
  b->next = c->freed.head;
  CACHED(b);
  if (!c->freed.head) c->freed.tail = b;
  c->freed.head = b;
  if (++c->freed.n >= ENTRY_MAG) {
    mag m = c->freed;
    c->freed = (mag){0};
    depot_put(m);
  }
}

size_t entry_depot_blocks(void) {
  size_t n = 0;
  pthread_mutex_lock(&E.lock);
  for (unsigned i = 0; i < E.n; i++) n += E.depot[i].n;
  pthread_mutex_unlock(&E.lock);
  return n;
}
