/*
** node.c — this node's identity and the table of known nodes.
*/
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "crypto.h"
#include "conn.h"
#include "mailbox.h"
#include "node.h"

#define SHARDS       64u             /* name hash shards, each with its own lock */
#define CHUNK_BITS   10u
#define CHUNK        (1u << CHUNK_BITS)
#define SLOT_BITS    24u             /* term_id.node: generation (8 bits) | slot (24 bits) */
#define SLOT_MASK    ((1u << SLOT_BITS) - 1)
#define CHUNKS       ((SLOT_MASK + 1) / CHUNK)
#define SWEEP_MIN    1024u           /* entries before the first sweep */
#define SWEEP_GAP    0.1             /* seconds between the starts of two sweeps (NODE_GRACE) */

typedef struct node_entry {
  struct node_entry *next;    /* shard lock: the next entry of its bucket */
  uint32_t id;                /* immutable: generation | slot, as in term_id.node */
  uint32_t hash;              /* immutable */
  _Atomic uint32_t refs;      /* node_ref / node_unref */
  _Atomic uint64_t zero_at;   /* the sweep count when refs last became 0 */
  _Atomic uint64_t marked;    /* the sweep that last found a process holding it */
  struct conn *conn;          /* shard lock: the up connection, retained */
  int connecting;             /* shard lock: an outgoing attempt is in progress */
  int downing;                /* shard lock: a lost link's signals are being fired (node_clear_conn
                              ** to node_down_done); no new link is installed meanwhile, so the
                              ** walk never takes a link or monitor made over the next one */
  int port;                   /* shard lock: port hint, 0 if none */
  term_id *subs;              /* shard lock: monitor_node subscribers, one per subscription */
  size_t nsubs, capsubs;
  char name[];                /* immutable */
} node_entry;

typedef struct shard {
  pthread_mutex_t lock;       /* a leaf: nothing else is locked while it is held */
  pthread_cond_t changed;     /* lock: a connection attempt of one of its nodes ended */
  node_entry **buckets;       /* lock: by hash / SHARDS, a power of two of them */
  size_t nbuckets, count;     /* lock */
} shard;

/* The module's one global.
** - `self`, `creation`: written once by node_start, before `started` is
**   set (release).
** - `chunks`: slot -> entry; a chunk is allocated once (under `alloc`) and
**   never freed or moved; slots are read with an acquire load and no lock,
**   and written under `alloc` and the entry's shard lock.
** - `alloc` guards `free_slots`, `next_slot`, `gens`, `limbo`, `live` and
**   the sweep itself (one at a time); it comes before the shard locks and
**   is taken with no kernel lock held. */
static struct {
  shard shards[SHARDS];
  node_entry **_Atomic chunks[CHUNKS];
  pthread_mutex_t alloc;
  uint32_t *free_slots;       /* alloc */
  size_t nfree, capfree;
  uint32_t next_slot;         /* alloc: never-used slots start here (0 is this node) */
  uint8_t *gens;              /* alloc: each slot's next generation, grown with next_slot */
  size_t capgens;
  node_entry *limbo;          /* alloc: removed by the last sweep, freed by the next one */
  size_t live;                /* alloc: entries in the table */
  size_t sweep_at;            /* alloc: a new entry beyond this many starts a sweep */
  double last_sweep;          /* alloc */
  _Atomic uint64_t sweeps;    /* sweeps started */
  node_walk walk;             /* alloc: how a sweep finds the nodes processes hold */
  char self[NODE_NAME_MAX + 1];
  uint32_t creation;
  _Atomic int started;
} N = { .alloc = PTHREAD_MUTEX_INITIALIZER, .next_slot = 1, .sweep_at = SWEEP_MIN,
        .self = NODE_NONAME };

static pthread_once_t shards_once = PTHREAD_ONCE_INIT;

static void init_shards(void) {
  for (unsigned i = 0; i < SHARDS; i++) {
    pthread_mutex_init(&N.shards[i].lock, NULL);
    pthread_cond_init(&N.shards[i].changed, NULL);
  }
}

static shard *shard_of(const node_entry *e) { return &N.shards[e->hash % SHARDS]; }

static node_entry **bucket_of(shard *sh, uint32_t hash) {
  return &sh->buckets[(hash / SHARDS) & (sh->nbuckets - 1)];
}

/* Doubles the shard's buckets when it holds more entries than buckets
** (its lock held); on a failed allocation it stays as it is. */
static void grow_locked(shard *sh) {
  if (sh->count < sh->nbuckets) return;
  size_t n = sh->nbuckets ? sh->nbuckets * 2 : 16;
  node_entry **b = calloc(n, sizeof *b);
  if (!b) return;
  for (size_t i = 0; i < sh->nbuckets; i++)
    for (node_entry *e = sh->buckets[i], *next; e; e = next) {
      next = e->next;
      node_entry **to = &b[(e->hash / SHARDS) & (n - 1)];
      e->next = *to;
      *to = e;
    }
  free(sh->buckets);
  sh->buckets = b;
  sh->nbuckets = n;
}

int node_valid_name(const char *name, size_t len) {
  if (len < 3 || len > NODE_NAME_MAX) return 0;
  int at = 0;
  for (size_t i = 0; i < len; i++) {
    unsigned char c = (unsigned char)name[i];
    if (c <= 0x20 || c >= 0x7f) return 0;
    if (c == '@') {
      if (at || i == 0 || i == len - 1) return 0;
      at = 1;
    }
  }
  return at;
}

int node_start(const char *name) {
  size_t len = strlen(name);
  if (!node_valid_name(name, len)) return -1;
  if (sodium_init() < 0) return -1;
  pthread_mutex_lock(&N.alloc);
  memcpy(N.self, name, len + 1);
  do N.creation = randombytes_random(); while (N.creation == 0);
  atomic_store_explicit(&N.started, 1, memory_order_release);
  pthread_mutex_unlock(&N.alloc);
  return 0;
}

int node_started(void) { return atomic_load_explicit(&N.started, memory_order_acquire); }
const char *node_self(void) { return N.self; }
uint32_t node_creation(void) { return N.creation; }

/* ---- entries by index ---- */

static uint32_t hash_of(const char *name, size_t len) {   /* FNV-1a */
  uint32_t h = 2166136261u;
  for (size_t i = 0; i < len; i++) h = (h ^ (unsigned char)name[i]) * 16777619u;
  return h;
}

/* The entry of idx, or NULL (no such node, or an index that outlived its
** entry: its generation does not match). */
static node_entry *entry_at(uint32_t idx) {
  uint32_t slot = idx & SLOT_MASK;
  if (slot == 0) return NULL;
  node_entry **chunk = atomic_load_explicit(&N.chunks[slot >> CHUNK_BITS], memory_order_acquire);
  if (!chunk) return NULL;
  node_entry *e = __atomic_load_n(&chunk[slot & (CHUNK - 1)], __ATOMIC_ACQUIRE);
  return e && e->id == idx ? e : NULL;
}

/* Stores e (or NULL) at slot (N.alloc held). Returns -1 when the chunk
** cannot be allocated. */
static int set_slot_locked(uint32_t slot, node_entry *e) {
  node_entry **chunk = atomic_load_explicit(&N.chunks[slot >> CHUNK_BITS], memory_order_relaxed);
  if (!chunk) {
    if (!e) return 0;
    chunk = calloc(CHUNK, sizeof *chunk);
    if (!chunk) return -1;
    atomic_store_explicit(&N.chunks[slot >> CHUNK_BITS], chunk, memory_order_release);
  }
  __atomic_store_n(&chunk[slot & (CHUNK - 1)], e, __ATOMIC_RELEASE);
  return 0;
}

/* A slot for a new entry and its id (N.alloc held); 0 when none is left. */
static uint32_t take_slot_locked(void) {
  uint32_t slot;
  if (N.nfree) slot = N.free_slots[--N.nfree];
  else {
    if (N.next_slot > SLOT_MASK) return 0;
    if (N.next_slot >= N.capgens) {
      size_t cap = N.capgens ? N.capgens * 2 : CHUNK;
      uint8_t *g = realloc(N.gens, cap);
      if (!g) return 0;
      memset(g + N.capgens, 0, cap - N.capgens);
      N.gens = g;
      N.capgens = cap;
    }
    slot = N.next_slot++;
  }
  return ((uint32_t)N.gens[slot] << SLOT_BITS) | slot;
}

/* Gives a slot back with its generation advanced (N.alloc held). */
static void give_slot_locked(uint32_t id) {
  uint32_t slot = id & SLOT_MASK;
  N.gens[slot]++;
  if (N.nfree == N.capfree) {
    size_t cap = N.capfree ? N.capfree * 2 : CHUNK;
    uint32_t *f = realloc(N.free_slots, cap * sizeof *f);
    if (!f) return;   /* out of memory: the slot is not used again */
    N.free_slots = f;
    N.capfree = cap;
  }
  N.free_slots[N.nfree++] = slot;
}

/* ---- references and the sweep ---- */

void node_ref(uint32_t idx) {
  node_entry *e = entry_at(idx);
  if (e) atomic_fetch_add_explicit(&e->refs, 1, memory_order_relaxed);
}

void node_unref(uint32_t idx) {
  node_entry *e = entry_at(idx);
  if (!e) return;
  /* Before the decrement: a sweep that reads refs 0 (acquire) also reads
  ** this zero_at, not an older one. */
  atomic_store_explicit(&e->zero_at, atomic_load(&N.sweeps), memory_order_relaxed);
  atomic_fetch_sub_explicit(&e->refs, 1, memory_order_acq_rel);
}

void node_set_walk(node_walk walk) {
  pthread_mutex_lock(&N.alloc);
  N.walk = walk;
  pthread_mutex_unlock(&N.alloc);
}

static void mark_one(uint32_t idx, void *ud) {
  node_entry *e = entry_at(idx);
  if (e) atomic_store_explicit(&e->marked, *(const uint64_t *)ud, memory_order_relaxed);
}

/* Whether e may go (its shard lock held): no reference since before the
** sweep before `s` started (so for at least SWEEP_GAP), no process found
** holding it by sweep `s`, nothing in its slots. */
static int unused_locked(node_entry *e, uint64_t s) {
  return atomic_load_explicit(&e->refs, memory_order_acquire) == 0 &&
         atomic_load_explicit(&e->zero_at, memory_order_acquire) + 1 < s &&
         atomic_load_explicit(&e->marked, memory_order_relaxed) != s &&
         !e->conn && !e->connecting && e->nsubs == 0;
}

/* Removes the entries nothing refers to (N.alloc held). Removed entries
** wait in limbo until the next sweep, so a name or an index read just
** before the removal stays good for at least SWEEP_GAP. */
static void sweep_locked(void) {
  uint64_t s = atomic_fetch_add(&N.sweeps, 1) + 1;
  N.last_sweep = mbox_now();
  if (N.walk) N.walk(mark_one, &s);
  node_entry *old = N.limbo;
  N.limbo = NULL;
  for (uint32_t slot = 1; slot < N.next_slot; slot++) {
    node_entry **chunk = atomic_load_explicit(&N.chunks[slot >> CHUNK_BITS], memory_order_relaxed);
    node_entry *e = chunk ? chunk[slot & (CHUNK - 1)] : NULL;
    if (!e) continue;
    shard *sh = shard_of(e);
    pthread_mutex_lock(&sh->lock);
    int gone = unused_locked(e, s);
    if (gone) {
      node_entry **pp = bucket_of(sh, e->hash);
      while (*pp != e) pp = &(*pp)->next;
      *pp = e->next;
      sh->count--;
      set_slot_locked(slot, NULL);
    }
    pthread_mutex_unlock(&sh->lock);
    if (gone) {
      e->next = N.limbo;
      N.limbo = e;
      N.live--;
    }
  }
  while (old) {
    node_entry *next = old->next;
    give_slot_locked(old->id);
    free(old->subs);
    free(old);
    old = next;
  }
  N.sweep_at = N.live * 2 > SWEEP_MIN ? N.live * 2 : SWEEP_MIN;
}

size_t node_count(void) {
  pthread_mutex_lock(&N.alloc);
  size_t n = N.live;
  pthread_mutex_unlock(&N.alloc);
  return n;
}

void node_sweep(void) {
  pthread_mutex_lock(&N.alloc);
  sweep_locked();
  pthread_mutex_unlock(&N.alloc);
}

/* ---- names ---- */

static node_entry *find_locked(shard *sh, const char *name, size_t len, uint32_t h) {
  if (!sh->nbuckets) return NULL;
  for (node_entry *e = *bucket_of(sh, h); e; e = e->next)
    if (e->hash == h && strlen(e->name) == len && memcmp(e->name, name, len) == 0) return e;
  return NULL;
}

int node_intern(const char *name, size_t len, uint32_t *idx) {
  if (!node_valid_name(name, len)) return -1;
  pthread_once(&shards_once, init_shards);
  uint32_t h = hash_of(name, len);
  shard *sh = &N.shards[h % SHARDS];
  pthread_mutex_lock(&sh->lock);
  node_entry *e = find_locked(sh, name, len, h);
  if (e) {
    *idx = e->id;
    /* A found entry gets the same grace as a new one: a sweep must come
    ** and go before it can be removed. */
    atomic_store_explicit(&e->zero_at, atomic_load(&N.sweeps), memory_order_relaxed);
  }
  pthread_mutex_unlock(&sh->lock);
  if (e) return 0;
  /* New: made under N.alloc, which also decides when to sweep. */
  pthread_mutex_lock(&N.alloc);
  if (N.live >= N.sweep_at && mbox_now() - N.last_sweep >= SWEEP_GAP) sweep_locked();
  int rc = -1;
  node_entry *fresh = malloc(sizeof *fresh + len + 1);
  uint32_t id = fresh ? take_slot_locked() : 0;
  if (id) {
    memset(fresh, 0, sizeof *fresh);
    fresh->id = id;
    fresh->hash = h;
    atomic_init(&fresh->zero_at, atomic_load(&N.sweeps));
    memcpy(fresh->name, name, len);
    fresh->name[len] = '\0';
    pthread_mutex_lock(&sh->lock);
    e = find_locked(sh, name, len, h);   /* another thread may have made it meanwhile */
    if (e) *idx = e->id, rc = 0;
    else if ((grow_locked(sh), sh->nbuckets) && set_slot_locked(id & SLOT_MASK, fresh) == 0) {
      node_entry **b = bucket_of(sh, h);
      fresh->next = *b;
      *b = fresh;
      sh->count++;
      *idx = id;
      N.live++;
      fresh = NULL;
      rc = 0;
    }
    pthread_mutex_unlock(&sh->lock);
    if (fresh) give_slot_locked(id);
  }
  free(fresh);
  pthread_mutex_unlock(&N.alloc);
  return rc;
}

long node_find(const char *name) {
  pthread_once(&shards_once, init_shards);
  size_t len = strlen(name);
  uint32_t h = hash_of(name, len);
  shard *sh = &N.shards[h % SHARDS];
  pthread_mutex_lock(&sh->lock);
  node_entry *e = find_locked(sh, name, len, h);
  long idx = e ? (long)e->id : -1;
  pthread_mutex_unlock(&sh->lock);
  return idx;
}

const char *node_name(uint32_t idx) {
  if (idx == 0) return N.self;
  node_entry *e = entry_at(idx);
  return e ? e->name : NULL;
}

/* ---- the codec's view ---- */

static int wire_name(term_id id, const char **name, size_t *len, uint32_t *creation) {
  if (id.node == 0) {
    if (!node_started()) return -1;
    *name = N.self;
    *creation = N.creation;
  } else {
    *name = node_name(id.node);
    if (!*name) return -1;
    *creation = id.creation;
  }
  *len = strlen(*name);
  return 0;
}

static int wire_resolve(const char *name, size_t len, uint32_t creation, uint64_t serial,
                        term_id *id) {
  if (node_started() && creation == N.creation && strlen(N.self) == len &&
      memcmp(N.self, name, len) == 0) {
    *id = (term_id){serial, 0, 0};
    return 0;
  }
  uint32_t idx;
  if (node_intern(name, len, &idx) != 0) return -1;
  *id = (term_id){serial, idx, creation};
  return 0;
}

const codec_nodes node_codec = { wire_name, wire_resolve };

/* ---- connection slots ---- */

struct conn *node_conn(uint32_t idx) {
  node_entry *e = entry_at(idx);
  if (!e) return NULL;
  shard *sh = shard_of(e);
  pthread_mutex_lock(&sh->lock);
  struct conn *c = e->conn;
  if (c) conn_retain(c);
  pthread_mutex_unlock(&sh->lock);
  return c;
}

int node_connect_claim(uint32_t idx, double deadline) {
  node_entry *e = entry_at(idx);
  if (!e) return -1;
  shard *sh = shard_of(e);
  int rc;
  pthread_mutex_lock(&sh->lock);
  if (e->conn) rc = 0;
  else if (!e->connecting) { e->connecting = 1; rc = 1; }
  else {
    struct timespec ts = mbox_realtime_in(deadline - mbox_now());
    while (e->connecting && !e->conn)
      if (pthread_cond_timedwait(&sh->changed, &sh->lock, &ts) != 0) break;
    rc = e->conn ? 0 : -1;
  }
  pthread_mutex_unlock(&sh->lock);
  return rc;
}

void node_connect_done(uint32_t idx) {
  node_entry *e = entry_at(idx);
  if (!e) return;
  shard *sh = shard_of(e);
  pthread_mutex_lock(&sh->lock);
  e->connecting = 0;
  pthread_cond_broadcast(&sh->changed);
  pthread_mutex_unlock(&sh->lock);
}

void node_set_port(uint32_t idx, int port) {
  node_entry *e = entry_at(idx);
  if (!e) return;
  shard *sh = shard_of(e);
  pthread_mutex_lock(&sh->lock);
  e->port = port;
  pthread_mutex_unlock(&sh->lock);
}

int node_port(uint32_t idx) {
  node_entry *e = entry_at(idx);
  if (!e) return 0;
  shard *sh = shard_of(e);
  pthread_mutex_lock(&sh->lock);
  int port = e->port;
  pthread_mutex_unlock(&sh->lock);
  return port;
}

int node_install_conn(uint32_t idx, struct conn *c) {
  node_entry *e = entry_at(idx);
  if (!e) return -1;
  shard *sh = shard_of(e);
  pthread_mutex_lock(&sh->lock);
  while (e->downing) pthread_cond_wait(&sh->changed, &sh->lock);
  int empty = e->conn == NULL;
  if (empty) {
    conn_retain(c);
    e->conn = c;
    pthread_cond_broadcast(&sh->changed);
  }
  pthread_mutex_unlock(&sh->lock);
  return empty ? 0 : -1;
}

int node_accept_conn(uint32_t idx, struct conn *c, uint32_t creation, int peer_smaller,
                     struct conn **old) {
  *old = NULL;
  node_entry *e = entry_at(idx);
  if (!e) return NODE_REFUSED;
  shard *sh = shard_of(e);
  pthread_mutex_lock(&sh->lock);
  while (e->downing) pthread_cond_wait(&sh->changed, &sh->lock);
  int rc = e->conn ? (conn_peer_creation(e->conn) != creation ? NODE_ACCEPTED : NODE_ASK)
                   : (!e->connecting || peer_smaller ? NODE_ACCEPTED : NODE_REFUSED);
  if (rc == NODE_ACCEPTED) {
    *old = e->conn;
    conn_retain(c);
    e->conn = c;
    pthread_cond_broadcast(&sh->changed);
  }
  pthread_mutex_unlock(&sh->lock);
  return rc;
}

struct conn *node_replace_conn(uint32_t idx, struct conn *c) {
  node_entry *e = entry_at(idx);
  if (!e) return NULL;
  shard *sh = shard_of(e);
  conn_retain(c);
  pthread_mutex_lock(&sh->lock);
  while (e->downing) pthread_cond_wait(&sh->changed, &sh->lock);
  struct conn *old = e->conn;
  e->conn = c;
  pthread_cond_broadcast(&sh->changed);
  pthread_mutex_unlock(&sh->lock);
  return old;
}

int node_clear_conn(uint32_t idx, struct conn *c) {
  node_entry *e = entry_at(idx);
  if (!e) return 0;
  shard *sh = shard_of(e);
  pthread_mutex_lock(&sh->lock);
  int cur = e->conn == c;
  if (cur) { e->conn = NULL; e->downing = 1; }
  pthread_mutex_unlock(&sh->lock);
  if (cur) conn_release(c);
  return cur;
}

void node_down_done(uint32_t idx) {
  node_entry *e = entry_at(idx);
  if (!e) return;
  shard *sh = shard_of(e);
  pthread_mutex_lock(&sh->lock);
  e->downing = 0;
  pthread_cond_broadcast(&sh->changed);
  pthread_mutex_unlock(&sh->lock);
}

/* Calls fn for every entry, each under its shard lock (a leaf: fn must
** take no lock and call nothing that does). */
static void each_entry(void (*fn)(node_entry *e, void *ud), void *ud) {
  pthread_mutex_lock(&N.alloc);
  uint32_t end = N.next_slot;
  pthread_mutex_unlock(&N.alloc);
  for (uint32_t slot = 1; slot < end; slot++) {
    node_entry **chunk = atomic_load_explicit(&N.chunks[slot >> CHUNK_BITS], memory_order_acquire);
    node_entry *e = chunk ? __atomic_load_n(&chunk[slot & (CHUNK - 1)], __ATOMIC_ACQUIRE) : NULL;
    if (!e) continue;
    shard *sh = shard_of(e);
    pthread_mutex_lock(&sh->lock);
    if (__atomic_load_n(&chunk[slot & (CHUNK - 1)], __ATOMIC_RELAXED) == e) fn(e, ud);
    pthread_mutex_unlock(&sh->lock);
  }
}

typedef struct up_list { uint32_t *ids; size_t n, cap; int failed; } up_list;

static void collect_up(node_entry *e, void *ud) {
  up_list *u = ud;
  if (!e->conn || u->failed) return;
  if (u->n == u->cap) {
    size_t cap = u->cap ? u->cap * 2 : 64;
    uint32_t *ids = realloc(u->ids, cap * sizeof *ids);
    if (!ids) { u->failed = 1; return; }
    u->ids = ids;
    u->cap = cap;
  }
  u->ids[u->n++] = e->id;
}

void node_each_up(void (*fn)(const char *name, void *ud), void *ud) {
  up_list u = { NULL, 0, 0, 0 };
  each_entry(collect_up, &u);
  for (size_t i = 0; i < u.n; i++) {
    const char *name = node_name(u.ids[i]);   /* an up link keeps its entry */
    if (name) fn(name, ud);
  }
  free(u.ids);
}

/* ---- monitor_node ---- */

int node_monitor(uint32_t idx, term_id pid, int on) {
  node_entry *e = entry_at(idx);
  if (!e) return on ? -1 : 0;
  shard *sh = shard_of(e);
  int rc = 0;
  pthread_mutex_lock(&sh->lock);
  if (on) {
    if (e->nsubs == e->capsubs) {
      size_t cap = e->capsubs ? e->capsubs * 2 : 4;
      term_id *s = realloc(e->subs, cap * sizeof *s);
      if (!s) rc = -1;
      else { e->subs = s; e->capsubs = cap; }
    }
    if (rc == 0) e->subs[e->nsubs++] = pid;
  } else {
    for (size_t i = 0; i < e->nsubs; i++)
      if (term_eq(e->subs[i], pid)) { e->subs[i] = e->subs[--e->nsubs]; break; }
  }
  pthread_mutex_unlock(&sh->lock);
  return rc;
}

static void forget_in(node_entry *e, void *ud) {
  term_id pid = *(const term_id *)ud;
  for (size_t j = 0; j < e->nsubs;)
    if (term_eq(e->subs[j], pid)) e->subs[j] = e->subs[--e->nsubs];
    else j++;
}

void node_forget_monitors(term_id pid) { each_entry(forget_in, &pid); }

void node_take_monitors(uint32_t idx, term_id **out, size_t *n) {
  *out = NULL;
  *n = 0;
  node_entry *e = entry_at(idx);
  if (!e) return;
  shard *sh = shard_of(e);
  pthread_mutex_lock(&sh->lock);
  *out = e->subs;
  *n = e->nsubs;
  e->subs = NULL;
  e->nsubs = e->capsubs = 0;
  pthread_mutex_unlock(&sh->lock);
}
