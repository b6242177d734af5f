/*
** node.c — this node's identity and the table of known nodes.
*/
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "crypto.h"
#include "conn.h"
#include "mailbox.h"
#include "node.h"

typedef struct node_entry {
  char *name;                 /* immutable once set */
  struct conn *conn;          /* N.lock: the up connection, retained */
  int connecting;             /* N.lock: an outgoing attempt is in progress */
  int port;                   /* N.lock: port hint, 0 if none */
  term_id *subs;              /* N.lock: monitor_node subscribers, one per subscription */
  size_t nsubs, capsubs;
} node_entry;

/* The module's one global. `self` and `creation` are written once, before
** `started` is set (release); everything else is guarded by `lock`. */
static struct {
  pthread_mutex_t lock;
  pthread_cond_t changed;     /* a connection attempt ended */
  node_entry e[NODE_MAX];     /* e[0] is this node */
  uint32_t n;                 /* entries in use, e[0] included */
  char self[NODE_NAME_MAX + 1];
  uint32_t creation;
  _Atomic int started;
} N = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, {{0}}, 1, NODE_NONAME, 0, 0 };

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
  pthread_mutex_lock(&N.lock);
  memcpy(N.self, name, len + 1);
  do N.creation = randombytes_random(); while (N.creation == 0);
  atomic_store_explicit(&N.started, 1, memory_order_release);
  pthread_mutex_unlock(&N.lock);
  return 0;
}

int node_started(void) { return atomic_load_explicit(&N.started, memory_order_acquire); }
const char *node_self(void) { return N.self; }
uint32_t node_creation(void) { return N.creation; }

static long find_locked(const char *name, size_t len) {
  for (uint32_t i = 1; i < N.n; i++)
    if (strlen(N.e[i].name) == len && memcmp(N.e[i].name, name, len) == 0) return i;
  return -1;
}

int node_intern(const char *name, size_t len, uint32_t *idx) {
  if (!node_valid_name(name, len)) return -1;
  int rc = 0;
  pthread_mutex_lock(&N.lock);
  long i = find_locked(name, len);
  if (i < 0) {
    char *copy = N.n < NODE_MAX ? malloc(len + 1) : NULL;
    if (!copy) rc = -1;
    else {
      memcpy(copy, name, len);
      copy[len] = '\0';
      i = N.n;
      N.e[i].name = copy;
      N.n++;   /* after the name: node_name reads entries below n */
    }
  }
  if (rc == 0) *idx = (uint32_t)i;
  pthread_mutex_unlock(&N.lock);
  return rc;
}

long node_find(const char *name) {
  pthread_mutex_lock(&N.lock);
  long i = find_locked(name, strlen(name));
  pthread_mutex_unlock(&N.lock);
  return i;
}

const char *node_name(uint32_t idx) {
  if (idx == 0) return N.self;
  pthread_mutex_lock(&N.lock);
  const char *name = idx < N.n ? N.e[idx].name : NULL;
  pthread_mutex_unlock(&N.lock);
  return name;
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
  if (idx == 0 || idx >= NODE_MAX) return NULL;
  pthread_mutex_lock(&N.lock);
  struct conn *c = idx < N.n ? N.e[idx].conn : NULL;
  if (c) conn_retain(c);
  pthread_mutex_unlock(&N.lock);
  return c;
}

int node_connect_claim(uint32_t idx, double deadline) {
  int rc;
  pthread_mutex_lock(&N.lock);
  node_entry *e = &N.e[idx];
  if (e->conn) rc = 0;
  else if (!e->connecting) { e->connecting = 1; rc = 1; }
  else {
    struct timespec ts = mbox_realtime_in(deadline - mbox_now());
    while (e->connecting && !e->conn)
      if (pthread_cond_timedwait(&N.changed, &N.lock, &ts) != 0) break;
    rc = e->conn ? 0 : -1;
  }
  pthread_mutex_unlock(&N.lock);
  return rc;
}

void node_connect_done(uint32_t idx) {
  pthread_mutex_lock(&N.lock);
  N.e[idx].connecting = 0;
  pthread_cond_broadcast(&N.changed);
  pthread_mutex_unlock(&N.lock);
}

void node_set_port(uint32_t idx, int port) {
  pthread_mutex_lock(&N.lock);
  N.e[idx].port = port;
  pthread_mutex_unlock(&N.lock);
}

int node_port(uint32_t idx) {
  pthread_mutex_lock(&N.lock);
  int port = N.e[idx].port;
  pthread_mutex_unlock(&N.lock);
  return port;
}

int node_install_conn(uint32_t idx, struct conn *c) {
  pthread_mutex_lock(&N.lock);
  int empty = N.e[idx].conn == NULL;
  if (empty) {
    conn_retain(c);
    N.e[idx].conn = c;
    pthread_cond_broadcast(&N.changed);
  }
  pthread_mutex_unlock(&N.lock);
  return empty ? 0 : -1;
}

int node_accept_conn(uint32_t idx, struct conn *c, uint32_t creation, int peer_smaller,
                     struct conn **old) {
  *old = NULL;
  pthread_mutex_lock(&N.lock);
  node_entry *e = &N.e[idx];
  int rc = e->conn ? (conn_peer_creation(e->conn) != creation ? NODE_ACCEPTED : NODE_ASK)
                   : (!e->connecting || peer_smaller ? NODE_ACCEPTED : NODE_REFUSED);
  if (rc == NODE_ACCEPTED) {
    *old = e->conn;
    conn_retain(c);
    e->conn = c;
    pthread_cond_broadcast(&N.changed);
  }
  pthread_mutex_unlock(&N.lock);
  return rc;
}

struct conn *node_replace_conn(uint32_t idx, struct conn *c) {
  conn_retain(c);
  pthread_mutex_lock(&N.lock);
  struct conn *old = N.e[idx].conn;
  N.e[idx].conn = c;
  pthread_cond_broadcast(&N.changed);
  pthread_mutex_unlock(&N.lock);
  return old;
}

int node_clear_conn(uint32_t idx, struct conn *c) {
  pthread_mutex_lock(&N.lock);
  int cur = N.e[idx].conn == c;
  if (cur) N.e[idx].conn = NULL;
  pthread_mutex_unlock(&N.lock);
  if (cur) conn_release(c);
  return cur;
}

void node_each_up(void (*fn)(const char *name, void *ud), void *ud) {
  const char *up[NODE_MAX];
  size_t n = 0;
  pthread_mutex_lock(&N.lock);
  for (uint32_t i = 1; i < N.n; i++)
    if (N.e[i].conn) up[n++] = N.e[i].name;
  pthread_mutex_unlock(&N.lock);
  for (size_t i = 0; i < n; i++) fn(up[i], ud);
}

/* ---- monitor_node ---- */

int node_monitor(uint32_t idx, term_id pid, int on) {
  int rc = 0;
  pthread_mutex_lock(&N.lock);
  node_entry *e = &N.e[idx];
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
  pthread_mutex_unlock(&N.lock);
  return rc;
}

void node_forget_monitors(term_id pid) {
  pthread_mutex_lock(&N.lock);
  for (uint32_t i = 1; i < N.n; i++) {
    node_entry *e = &N.e[i];
    for (size_t j = 0; j < e->nsubs;)
      if (term_eq(e->subs[j], pid)) e->subs[j] = e->subs[--e->nsubs];
      else j++;
  }
  pthread_mutex_unlock(&N.lock);
}

void node_take_monitors(uint32_t idx, term_id **out, size_t *n) {
  pthread_mutex_lock(&N.lock);
  node_entry *e = &N.e[idx];
  *out = e->subs;
  *n = e->nsubs;
  e->subs = NULL;
  e->nsubs = e->capsubs = 0;
  pthread_mutex_unlock(&N.lock);
}
