/*
** dist.c — distribution: records between nodes and what they do here.
*/
#include <ctype.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <lauxlib.h>
#include "codec.h"
#include "conn.h"
#include "crypto.h"
#include "dist.h"
#include "frame.h"
#include "kernel.h"
#include "keyfile.h"
#include "sig.h"
#include "node.h"
#include "portmap.h"
#include "remote.h"
#include "process.h"
#include "registry.h"
#include "state.h"

/* Record types (the first byte of a record; 0 is REC_ACCEPT, conn_impl.h). */
enum {
  R_SEND = 1,        /* to, to_creation, msg */
  R_SEND_NAME,       /* name, msg */
  R_SEND_ALIAS,      /* alias, alias_creation, msg */
  R_LINK,            /* from, to, to_creation */
  R_UNLINK,          /* from, to, to_creation */
  R_EXIT,            /* from, to, to_creation, reason: through a link */
  R_EXIT2,           /* from, to, to_creation, reason: exit/2 */
  R_MONITOR,         /* from, to, to_creation, ref */
  R_DEMONITOR,       /* from, to, to_creation, ref */
  R_DOWN,            /* from, watcher, watcher_creation, ref, ref_creation, reason */
  R_SPAWN,           /* req, from, flags, ref, payload */
  R_SPAWN_REPLY,     /* req, to, to_creation, ok, pid | error text */
  R_QUERY,           /* req, from, kind, arguments */
  R_QUERY_REPLY,     /* req, to, to_creation, ok, answer | error text */
  R_MONITOR_NAME,    /* from, ref, name */
  R_MONITOR_NAMED    /* watcher, watcher_creation, ref, pid: the name's pid, before its DOWN */
};

/* Query kinds: WHEREIS name -> pid serial (0: none); the others (dist.h)
** carry a codec message each way, answered by the binding's handler. */
enum { Q_WHEREIS = 1 };

#define SPAWN_LINK    DIST_SPAWN_LINK
#define SPAWN_MONITOR DIST_SPAWN_MONITOR
#define SPAWN_TRAP    DIST_SPAWN_TRAP_EXIT
#define ABANDONED_MAX 1024  /* abandoned spawns kept for their late replies */
#define HDR_MAX       80    /* the largest record header: a type and up to 7 varints */
#define CONNECT_MAX   5.0   /* seconds a remote operation may spend connecting */
#define CONNECT_MIN   2.0   /* ... and at least this, whatever the tick */
/* The frame body limit of every link (both ends must agree): the largest
** message the codec makes by default, plus room for a record header. */
#define DIST_MAX_BODY (CODEC_DEFAULT_MAX_SIZE + 4096u)

/* A request waiting for its reply: a remote spawn or a query. */
typedef struct pending {
  struct pending *next;
  uint64_t req;
  uint32_t node;
  int type;                /* R_SPAWN or R_QUERY */
  int kind;                /* a query's kind */
  unsigned char *answer;   /* D.lock: a codec answer (queries but WHEREIS), malloc'ed */
  size_t alen;             /* D.lock */
  term_id caller;
  int flags;
  term_id ref;
  int done, ok;            /* D.lock */
  int abandoned;           /* D.lock: the caller gave up; kept for the late reply */
  term_id pid;             /* D.lock */
  char err[160];           /* D.lock */
} pending;

/* A node being connected to in the background, or backing off after a
** failed connect. Records sent meanwhile wait here in order; every record
** for the node goes here while the entry exists and is connecting, so none
** overtakes them. All fields: D.plock. */
typedef struct pending_link {
  struct pending_link *next;
  uint32_t node;           /* a reference on the entry is held */
  int failed;              /* backing off until `until` */
  double until, backoff;
  unsigned char *buf;      /* queued records, laid out as a DATA frame's body (frame.h) */
  size_t len, cap;
  size_t records;          /* how many buf holds */
} pending_link;

#define CONNECTORS     4      /* background connects at once */
#define CONNECTOR_IDLE 1.0    /* seconds a connector thread waits for work before it ends */
#define BACKOFF_MIN    0.5    /* seconds: the first back-off after a failed connect */
#define BACKOFF_MAX    5.0

/* The module's one global: `lock` guards the pending spawns; `plock` the
** pending links, the connect queue and the connector count; `npending`
** (atomic) counts the pending links, so sends skip `plock` when none is. */
static struct {
  _Atomic int started;
  double tick;
  size_t out_bound;        /* written by dist_start before `started` */
  pthread_mutex_t plock;
  pthread_cond_t pwork;    /* plock: a connect was queued, or the node stops */
  pthread_cond_t proom;    /* plock: queued records left a pending link */
  pending_link *links;
  _Atomic int npending;
  uint32_t *queue;         /* nodes to connect to, in order */
  size_t nqueue, capqueue;
  int connectors;          /* connector threads running */
  int stopping;
  int port;                /* the listening port */
  char *path, *cpath;      /* dist_opts' copies: written by dist_start before `started`, freed by
                           ** dist_stop after the I/O threads (whose spawns read them) end */
  int pmap_fd;
  pthread_mutex_t lock;
  pthread_cond_t answered;
  pending *spawns;         /* newest first: spawns and queries waiting for replies */
  _Atomic(dist_query_fn) query_fn;   /* set once by the binding */
  /* monitor_nodes: the subscribers, and the nodes announced up to them
  ** (nodeup sent, nodedown not yet), kept whether or not anyone listens.
  ** All four: wlock. */
  pthread_mutex_t wlock;
  term_id *watchers;
  size_t nwatchers, capwatchers;
  uint32_t *up;
  size_t nup, capup;
  unsigned nabandoned;     /* entries of `spawns` with `abandoned` set */
  uint64_t next_req;
} D = { .pmap_fd = -1, .lock = PTHREAD_MUTEX_INITIALIZER, .wlock = PTHREAD_MUTEX_INITIALIZER, .answered = PTHREAD_COND_INITIALIZER,
        .plock = PTHREAD_MUTEX_INITIALIZER, .pwork = PTHREAD_COND_INITIALIZER,
        .proom = PTHREAD_COND_INITIALIZER, .next_req = 1 };

/* ---- varints ---- */

static size_t put_v(unsigned char *p, uint64_t v) {
  size_t n = 0;
  while (v >= 0x80) { p[n++] = (unsigned char)(v | 0x80); v >>= 7; }
  p[n++] = (unsigned char)v;
  return n;
}

typedef struct rd { const unsigned char *p, *end; int bad; } rd;

static uint64_t get_v(rd *r) {
  uint64_t v = 0;
  for (int shift = 0; shift < 64; shift += 7) {
    if (r->p >= r->end) break;
    unsigned char b = *r->p++;
    v |= (uint64_t)(b & 0x7f) << shift;
    if (!(b & 0x80)) return v;
  }
  r->bad = 1;
  return 0;
}

static uint32_t get_u32(rd *r) {
  uint64_t v = get_v(r);
  if (v > UINT32_MAX) r->bad = 1;
  return (uint32_t)v;
}

/* ---- reporting ---- */

void dist_report(const char *level, const char *text, const char *peer, const char *why) {
  const char *fields[] = { "node", node_self(), "peer", peer, "reason", why };
  if (state_log(level, text, fields, 3)) return;
  char up[16];
  size_t i = 0;
  for (; level[i] && i < sizeof up - 1; i++) up[i] = (char)toupper((unsigned char)level[i]);
  up[i] = '\0';
  fprintf(stderr, "=%s REPORT==== node %s: %s%s%s%s\n", up, node_self(), text,
          peer ? " (" : "", peer ? peer : "", peer ? ")" : "");
  if (why) fprintf(stderr, "    %s\n", why);
  fflush(stderr);
}

/* ---- the link to a node ---- */

static double now(void) { return mbox_now(); }

/* How long a connect on first use may take: the tick, within [CONNECT_MIN, CONNECT_MAX]. */
static double connect_wait(void) {
  return D.tick < CONNECT_MIN ? CONNECT_MIN : D.tick > CONNECT_MAX ? CONNECT_MAX : D.tick;
}

/* ---- connecting in the background ---- */

static pending_link *pending_find_locked(uint32_t idx) {
  for (pending_link *p = D.links; p; p = p->next) if (p->node == idx) return p;
  return NULL;
}

static void pending_free_locked(pending_link *p) {
  pending_link **pp = &D.links;
  while (*pp != p) pp = &(*pp)->next;
  *pp = p->next;
  atomic_fetch_sub(&D.npending, 1);
  node_unref(p->node);
  free(p->buf);
  free(p);
  pthread_cond_broadcast(&D.proom);
}

static void *connector_main(void *arg);

/* Queues a connect to idx for a connector thread (D.plock held), starting
** one when fewer than CONNECTORS run. */
static int queue_connect_locked(uint32_t idx) {
  if (D.nqueue == D.capqueue) {
    size_t cap = D.capqueue ? D.capqueue * 2 : 16;
    uint32_t *q = realloc(D.queue, cap * sizeof *q);
    if (!q) return -1;
    D.queue = q;
    D.capqueue = cap;
  }
  D.queue[D.nqueue++] = idx;
  if (D.connectors < CONNECTORS && (size_t)D.connectors < D.nqueue) {
    pthread_t t;
    pthread_attr_t at;
    pthread_attr_init(&at);
    pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&at, 256 * 1024);
    if (pthread_create(&t, &at, connector_main, NULL) == 0) D.connectors++;
    pthread_attr_destroy(&at);
  }
  pthread_cond_signal(&D.pwork);
  return D.connectors > 0 ? 0 : -1;
}

/* Starts a background connect to idx (D.plock held): a pending link that
** queues records until the connect ends. NULL when memory runs out. */
static pending_link *pending_start_locked(uint32_t idx, pending_link *p) {
  if (!p) {
    p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->node = idx;
    node_ref(idx);
    p->backoff = BACKOFF_MIN;
    p->next = D.links;
    D.links = p;
    atomic_fetch_add(&D.npending, 1);
  }
  p->failed = 0;
  if (queue_connect_locked(idx) != 0) { pending_free_locked(p); return NULL; }
  return p;
}

enum { ROUTE_CONN, ROUTE_DONE };

/* Where a record for idx goes while a connect is pending or backing off.
** Returns ROUTE_DONE with *rc set when it was queued or refused here, or
** ROUTE_CONN: send on the node's link, if there is one. With `connect`, a
** node without a link is connected to in the background. */
static int pending_route(uint32_t idx, int connect, const unsigned char *h, size_t hn,
                         const unsigned char *body, size_t blen, double deadline, int *rc) {
  pthread_mutex_lock(&D.plock);
  pending_link *p = pending_find_locked(idx);
  if (p && p->failed) {
    conn *c = node_conn(idx);
    if (c) { conn_release(c); pending_free_locked(p); p = NULL; }   /* connected since */
    else if (now() < p->until || !connect) {
      pthread_mutex_unlock(&D.plock);
      *rc = DIST_NOCONN;
      return ROUTE_DONE;
    } else p = pending_start_locked(idx, p);   /* the back-off is over: try again */
  } else if (!p && connect && atomic_load(&D.started) && !D.stopping) {
    conn *c = node_conn(idx);
    if (c) { conn_release(c); pthread_mutex_unlock(&D.plock); return ROUTE_CONN; }
    p = pending_start_locked(idx, NULL);
    if (!p) { pthread_mutex_unlock(&D.plock); *rc = DIST_NOCONN; return ROUTE_DONE; }
  }
  if (!p) { pthread_mutex_unlock(&D.plock); return ROUTE_CONN; }
  size_t need = FRAME_RECORD_HEADERBYTES + hn + blen;
  while (!p->failed && p->len + need > D.out_bound && p->len > 0) {
    double left = conn_on_io_thread() ? 0 : deadline - now();   /* an I/O thread never waits */
    if (left <= 0) { pthread_mutex_unlock(&D.plock); *rc = DIST_FULL; return ROUTE_DONE; }
    struct timespec ts = mbox_realtime_in(left);
    pthread_cond_timedwait(&D.proom, &D.plock, &ts);
    p = pending_find_locked(idx);
    if (!p) { pthread_mutex_unlock(&D.plock); return ROUTE_CONN; }   /* the connect ended */
  }
  if (p->failed) { pthread_mutex_unlock(&D.plock); *rc = DIST_NOCONN; return ROUTE_DONE; }
  if (p->len + need > p->cap) {
    size_t cap = p->cap ? p->cap : 256;
    while (cap < p->len + need) cap *= 2;
    unsigned char *b = realloc(p->buf, cap);
    if (!b) { pthread_mutex_unlock(&D.plock); *rc = DIST_NOCONN; return ROUTE_DONE; }
    p->buf = b;
    p->cap = cap;
  }
  unsigned char *at = p->buf + p->len;
  size_t n = hn + blen;
  at[0] = (unsigned char)(n >> 24); at[1] = (unsigned char)(n >> 16);
  at[2] = (unsigned char)(n >> 8); at[3] = (unsigned char)n;
  memcpy(at + 4, h, hn);
  if (blen) memcpy(at + 4 + hn, body, blen);
  p->len += need;
  p->records++;
  pthread_mutex_unlock(&D.plock);
  *rc = DIST_OK;
  return ROUTE_DONE;
}

/* A background connect to idx ended. Up: the queued records go onto the
** link, in order, before any later record (senders wait on D.plock until
** the pending link is gone). Not up: they are dropped, links and monitors
** to the node's processes get noconnection, and the node backs off. */
static void pending_end(uint32_t idx, const char *err) {
  pthread_mutex_lock(&D.plock);
  pending_link *p = pending_find_locked(idx);
  if (!p) { pthread_mutex_unlock(&D.plock); return; }
  conn *c = node_conn(idx);
  if (c) {
    frame_msg queued = { FRAME_DATA, p->buf, p->len };
    size_t off = 0, n;
    const unsigned char *rec;
    while (frame_record_next(&queued, &off, &rec, &n) == 1) conn_send(c, rec, n, NULL, 0, now() + D.tick);
    conn_release(c);
    pending_free_locked(p);
    pthread_mutex_unlock(&D.plock);
    return;
  }
  size_t dropped = p->records;
  p->len = p->records = 0;
  p->failed = 1;
  p->until = now() + p->backoff;
  p->backoff = p->backoff * 2 > BACKOFF_MAX ? BACKOFF_MAX : p->backoff * 2;
  pthread_cond_broadcast(&D.proom);
  pthread_mutex_unlock(&D.plock);
  dist_node_down(idx, 0, NULL);
  char why[300];
  snprintf(why, sizeof why, "%s; %zu queued record%s dropped", err, dropped, dropped == 1 ? "" : "s");
  dist_report("info", "cannot connect", node_name(idx), why);
}

static void *connector_main(void *arg) {
  (void)arg;
  pthread_mutex_lock(&D.plock);
  for (;;) {
    while (D.nqueue == 0 && !D.stopping) {
      struct timespec ts = mbox_realtime_in(CONNECTOR_IDLE);
      if (pthread_cond_timedwait(&D.pwork, &D.plock, &ts) != 0 && D.nqueue == 0) break;
    }
    if (D.nqueue == 0 || D.stopping) break;
    uint32_t idx = D.queue[0];
    memmove(D.queue, D.queue + 1, --D.nqueue * sizeof *D.queue);
    pthread_mutex_unlock(&D.plock);
    char err[200] = "";
    if (conn_connect(idx, now() + connect_wait(), err, sizeof err) != 0 && !err[0])
      snprintf(err, sizeof err, "noconnection");
    pending_end(idx, err);
    pthread_mutex_lock(&D.plock);
  }
  D.connectors--;
  pthread_cond_broadcast(&D.pwork);
  pthread_mutex_unlock(&D.plock);
  return NULL;
}

/* Queues a record: header h[0..hn), then body. A node with no link is
** connected to in the background (connect != 0); the record waits in order
** for the link, and a send never waits for the connect itself. */
static int put_record(uint32_t idx, int connect, uint32_t creation, const unsigned char *h, size_t hn,
                      const unsigned char *body, size_t blen, double deadline) {
  if (hn + blen + FRAME_RECORD_HEADERBYTES > DIST_MAX_BODY) return DIST_TOOBIG;
  int rc;
  conn *c = NULL;
  if (atomic_load(&D.npending) == 0) c = node_conn(idx);
  if (!c && pending_route(idx, connect, h, hn, body, blen, deadline, &rc) == ROUTE_DONE) return rc;
  if (!c) c = node_conn(idx);
  if (!c) return DIST_NOCONN;
  rc = DIST_OK;
  if (creation && conn_peer_creation(c) != creation) rc = DIST_DEAD;
  else {
    int s = conn_send(c, h, hn, body, blen, deadline);
    rc = s == CONN_OK ? DIST_OK : s == CONN_FULL ? DIST_FULL : DIST_NOCONN;
  }
  conn_release(c);
  return rc;
}

/* ---- reasons in the wire form ---- */

/* A malloc'ed wire form of a reason in this process's form. Well-known
** reasons are the same bytes; others are decoded and re-encoded in a
** scratch state (a reason that cannot cross becomes its tostring). */
static unsigned char *reason_to_wire(const unsigned char *r, size_t len, size_t *out_len) {
  for (int k = 0; k < KR_COUNT; k++)
    if (kern_reason_is(r, len, (enum kern_reason)k)) {
      unsigned char *copy = malloc(len);
      if (copy) memcpy(copy, r, len);
      *out_len = len;
      return copy;
    }
  lua_State *L = luaL_newstate();
  if (!L) return NULL;
  codec_limits local = kern_limits(0), wire = kern_limits(0);
  wire.wire = 1;
  codec_buf b = {0};
  int n = codec_decode(L, r, len, &local);
  if (n != 1) { lua_settop(L, 0); lua_pushliteral(L, "(an exit reason that cannot cross nodes)"); }
  if (codec_encode(L, -1, 1, "reason", &wire, &b) != 0) {
    lua_pop(L, 1);
    luaL_tolstring(L, -1, NULL);
    codec_encode(L, -1, 1, "reason", &wire, &b);
  }
  lua_close(L);
  *out_len = b.len;
  return b.data;
}

/* The codec bytes of {"nodedown", name}. */
/* {tag, name} or, with a reason, {tag, name, reason}, in the wire form. */
static unsigned char *node_event_msg(const char *tag, const char *name, const char *reason, size_t *len) {
  lua_State *L = luaL_newstate();
  if (!L) return NULL;
  lua_createtable(L, 3, 0);
  lua_pushstring(L, tag); lua_rawseti(L, -2, 1);
  lua_pushstring(L, name); lua_rawseti(L, -2, 2);
  if (reason) { lua_pushstring(L, reason); lua_rawseti(L, -2, 3); }
  codec_limits lim = kern_limits(0);
  codec_buf b = {0};
  codec_encode(L, -1, 1, "msg", &lim, &b);
  lua_close(L);
  *len = b.len;
  return b.data;
}

static unsigned char *nodedown_msg(const char *name, size_t *len) {
  return node_event_msg("nodedown", name, NULL, len);
}

/* ---- sends ---- */

/* SEND or SEND_ALIAS: the record names a pid or an alias of node id.node. */
static int send_to(int type, term_id id, const unsigned char *msg, size_t len, double deadline) {
  unsigned char h[HDR_MAX];
  size_t n = 0;
  h[n++] = (unsigned char)type;
  n += put_v(h + n, id.n);
  n += put_v(h + n, id.creation);
  return put_record(id.node, 1, id.creation, h, n, msg, len, deadline);
}

int dist_send(term_id to, const unsigned char *msg, size_t len, double deadline) {
  return send_to(R_SEND, to, msg, len, deadline);
}

int dist_send_name(uint32_t idx, const char *name, const unsigned char *msg, size_t len,
                   double deadline) {
  size_t nl = strlen(name);
  if (nl > DIST_NAME_MAX) return DIST_DEAD;
  unsigned char h[HDR_MAX + DIST_NAME_MAX + 1];
  size_t n = 0;
  h[n++] = R_SEND_NAME;
  n += put_v(h + n, nl);
  memcpy(h + n, name, nl);
  n += nl;
  return put_record(idx, 1, 0, h, n, msg, len, deadline);
}

int dist_send_alias(term_id alias, const unsigned char *msg, size_t len, double deadline) {
  return send_to(R_SEND_ALIAS, alias, msg, len, deadline);
}

/* ---- signals ---- */

/* A signal record from a local process to one of node to.node. */
static int put_signal(int type, term_id from, term_id to, const term_id *ref, const unsigned char *body,
                      size_t blen, int connect) {
  unsigned char h[HDR_MAX];
  size_t n = 0;
  h[n++] = (unsigned char)type;
  n += put_v(h + n, from.n);
  n += put_v(h + n, to.n);
  n += put_v(h + n, to.creation);
  if (ref) n += put_v(h + n, ref->n);
  return put_record(to.node, connect, to.creation, h, n, body, blen, INFINITY);
}

int dist_link(term_id from, term_id to) {
  int rc = put_signal(R_LINK, from, to, NULL, NULL, 0, 1);
  return rc == DIST_OK ? DIST_OK : rc == DIST_DEAD ? DIST_DEAD : DIST_NOCONN;
}

void dist_unlink(term_id from, term_id to) { put_signal(R_UNLINK, from, to, NULL, NULL, 0, 0); }

void dist_exit(term_id from, term_id to, const unsigned char *reason, size_t len, int via_link) {
  size_t wl;
  unsigned char *w = reason_to_wire(reason, len, &wl);
  if (w) put_signal(via_link ? R_EXIT : R_EXIT2, from, to, NULL, w, wl, !via_link);
  free(w);
}

int dist_monitor(term_id from, term_id to, term_id ref) {
  int rc = put_signal(R_MONITOR, from, to, &ref, NULL, 0, 1);
  return rc == DIST_OK ? DIST_OK : rc == DIST_DEAD ? DIST_DEAD : DIST_NOCONN;
}

void dist_demonitor(term_id from, term_id to, term_id ref) {
  put_signal(R_DEMONITOR, from, to, &ref, NULL, 0, 0);
}

void dist_down(term_id from, term_id watcher, term_id ref, const unsigned char *reason, size_t len) {
  size_t wl;
  unsigned char *w = reason_to_wire(reason, len, &wl);
  if (!w) return;
  unsigned char h[HDR_MAX];
  size_t n = 0;
  h[n++] = R_DOWN;
  n += put_v(h + n, from.n);
  n += put_v(h + n, watcher.n);
  n += put_v(h + n, watcher.creation);
  n += put_v(h + n, ref.n);
  n += put_v(h + n, ref.creation);
  put_record(watcher.node, 0, watcher.creation, h, n, w, wl, INFINITY);
  free(w);
}

/* ---- the network layer's side of the seam (remote.h) ---- */

static int remote_code(int rc) {
  return rc == DIST_OK ? REMOTE_OK : rc == DIST_DEAD ? REMOTE_NOPROC : REMOTE_NOCONN;
}

static int op_link(term_id from, term_id to) { return remote_code(dist_link(from, to)); }
static int op_monitor(term_id from, term_id to, term_id ref) { return remote_code(dist_monitor(from, to, ref)); }

static const remote_ops dist_remote = {
  op_link, dist_unlink, dist_exit, op_monitor, dist_demonitor, dist_down,
  node_forget_monitors, dist_stop, &node_codec, node_name, node_ref, node_unref
};

/* The sweep's walk (node.h): every process's links and monitors. */
typedef struct mark_walk { void (*mark)(uint32_t idx, void *ud); void *ud; } mark_walk;

static void mark_proc(proc *p, void *ud) {
  mark_walk *w = ud;
  sig_each_remote(p, w->mark, w->ud);
}

static void walk_processes(void (*mark)(uint32_t idx, void *ud), void *ud) {
  mark_walk w = { mark, ud };
  proc_foreach(mark_proc, &w);
}

/* ---- remote spawn ---- */

static pending *find_pending_locked(uint64_t req, term_id caller, int type) {
  pending *p = D.spawns;
  while (p && !(p->req == req && p->type == type && term_eq(p->caller, caller))) p = p->next;
  return p;
}

static void pending_remove_locked(pending *p) {
  for (pending **q = &D.spawns; *q; q = &(*q)->next)
    if (*q == p) { *q = p->next; return; }
}

/* Frees an abandoned entry (D.lock held). */
static void abandoned_free_locked(pending *p) {
  pending_remove_locked(p);
  D.nabandoned--;
  free(p->answer);
  free(p);
}

/* Keeps p for its late reply (D.lock held); past ABANDONED_MAX the oldest
** abandoned entry is forgotten (its reply, if it ever comes, is ignored). */
static void abandon_locked(pending *p) {
  p->abandoned = 1;
  if (++D.nabandoned <= ABANDONED_MAX) return;
  pending *oldest = NULL;
  for (pending *q = D.spawns; q; q = q->next)
    if (q->abandoned) oldest = q;
  abandoned_free_locked(oldest);
}

/* Undoes an abandoned spawn whose reply said the child started: the caller
** never learnt its pid, so the link and monitor it asked for must go. */
static void abandon_child(term_id caller, term_id child, int flags, term_id ref) {
  size_t len;
  const unsigned char *why = kern_reason(KR_ABANDONED, &len);
  if (flags & SPAWN_LINK) sig_exit(child, caller, why, len, SIG_VIA_LINK);
  if (flags & SPAWN_MONITOR) dist_demonitor(caller, child, ref);
}

/* A new pending request of `type` from self to node idx, listed. */
static pending *request_new(proc *self, uint32_t idx, int type, int kind, int flags, term_id ref) {
  pending *p = calloc(1, sizeof *p);
  if (!p) return NULL;
  p->node = idx;
  p->type = type;
  p->kind = kind;
  p->caller = self->pid;
  p->flags = flags;
  p->ref = ref;
  pthread_mutex_lock(&D.lock);
  p->req = D.next_req++;
  p->next = D.spawns;
  D.spawns = p;
  pthread_mutex_unlock(&D.lock);
  return p;
}

/* Waits until `deadline` for the reply to p, whose record put_record
** queued with `rc`. Returns 1 with the answer in *pid (and *ref), or 0 with
** the reason in err. p is freed, or kept as abandoned for a late reply. */
static int request_wait(proc *self, pending *p, int rc, double deadline, term_id *pid, term_id *ref,
                        unsigned char **answer, size_t *alen, char *err, size_t errlen) {
  pthread_mutex_lock(&D.lock);
  if (rc == DIST_OK) {
    while (!p->done && !atomic_load(&self->doomed)) {
      double left = deadline - now();
      if (left <= 0) break;
      if (left > 0.1) left = 0.1;   /* look at `doomed` now and then */
      struct timespec ts = mbox_realtime_in(left);
      pthread_cond_timedwait(&D.answered, &D.lock, &ts);
    }
  }
  int ok = p->done && p->ok;
  if (ok) { *pid = p->pid; if (ref) *ref = p->ref; }
  if (ok && answer) { *answer = p->answer; *alen = p->alen; p->answer = NULL; }
  else if (p->done) snprintf(err, errlen, "%s", p->err);
  else if (rc == DIST_NOCONN) snprintf(err, errlen, "noconnection");
  else if (rc == DIST_FULL) snprintf(err, errlen, "the link to %s is full", node_name(p->node));
  else snprintf(err, errlen, "timeout");
  if (!p->done && rc == DIST_OK && p->type == R_SPAWN) {   /* its reply may still come, to undo */
    abandon_locked(p);
    p = NULL;
  } else pending_remove_locked(p);   /* a query's late reply finds no entry and is ignored */
  pthread_mutex_unlock(&D.lock);
  if (p) free(p->answer);
  free(p);
  return ok;
}

int dist_spawn(proc *self, uint32_t idx, const unsigned char *payload, size_t len, int flags,
               term_id *ref, double deadline, term_id *pid, char *err, size_t errlen) {
  pending *p = request_new(self, idx, R_SPAWN, 0, flags & (SPAWN_LINK | SPAWN_MONITOR | SPAWN_TRAP),
                           term_new_ref());
  if (!p) { snprintf(err, errlen, "out of memory"); return -1; }
  unsigned char h[HDR_MAX];
  size_t n = 0;
  h[n++] = R_SPAWN;
  n += put_v(h + n, p->req);
  n += put_v(h + n, self->pid.n);
  n += put_v(h + n, (uint64_t)p->flags);
  n += put_v(h + n, p->ref.n);
  int rc = put_record(idx, 1, 0, h, n, payload, len, deadline);
  return request_wait(self, p, rc, deadline, pid, ref, NULL, NULL, err, errlen) ? 0 : -1;
}

int dist_whereis(proc *self, uint32_t idx, const char *name, double deadline, term_id *pid,
                 char *err, size_t errlen) {
  size_t nl = strlen(name);
  if (nl == 0 || nl > DIST_NAME_MAX) { snprintf(err, errlen, "bad name"); return -1; }
  pending *p = request_new(self, idx, R_QUERY, Q_WHEREIS, 0, (term_id){0, 0, 0});
  if (!p) { snprintf(err, errlen, "out of memory"); return -1; }
  unsigned char h[HDR_MAX];
  size_t n = 0;
  h[n++] = R_QUERY;
  n += put_v(h + n, p->req);
  n += put_v(h + n, self->pid.n);
  h[n++] = Q_WHEREIS;
  int rc = put_record(idx, 1, 0, h, n, (const unsigned char *)name, nl, deadline);
  term_id got = {0, 0, 0};
  if (!request_wait(self, p, rc, deadline, &got, NULL, NULL, NULL, err, errlen)) return -1;
  *pid = got;
  return got.n != 0;
}

int dist_query(proc *self, uint32_t idx, int kind, const unsigned char *args, size_t n, double deadline,
               unsigned char **answer, size_t *alen, char *err, size_t errlen) {
  pending *p = request_new(self, idx, R_QUERY, kind, 0, (term_id){0, 0, 0});
  if (!p) { snprintf(err, errlen, "out of memory"); return -1; }
  unsigned char h[HDR_MAX];
  size_t hn = 0;
  h[hn++] = R_QUERY;
  hn += put_v(h + hn, p->req);
  hn += put_v(h + hn, self->pid.n);
  h[hn++] = (unsigned char)kind;
  int rc = put_record(idx, 1, 0, h, hn, args, n, deadline);
  term_id unused;
  *answer = NULL;
  return request_wait(self, p, rc, deadline, &unused, NULL, answer, alen, err, errlen) ? 0 : -1;
}

void dist_set_query_handler(dist_query_fn fn) { atomic_store(&D.query_fn, fn); }

typedef struct spawn_ctx { conn *c; uint64_t req; term_id from; } spawn_ctx;

static void spawn_reply(conn *c, uint64_t req, term_id to, int ok, uint64_t pid, const char *err) {
  unsigned char h[HDR_MAX];
  size_t n = 0;
  h[n++] = R_SPAWN_REPLY;
  n += put_v(h + n, req);
  n += put_v(h + n, to.n);
  n += put_v(h + n, to.creation);
  h[n++] = (unsigned char)ok;
  if (ok) n += put_v(h + n, pid);
  conn_send(c, h, n, ok ? NULL : err, ok ? 0 : strlen(err), INFINITY);
}

/* proc_opts.ready: the reply leaves before the child can send a signal. */
static void spawn_ready(term_id pid, void *ud) {
  spawn_ctx *s = ud;
  spawn_reply(s->c, s->req, s->from, 1, pid.n, NULL);
}

static void handle_spawn(conn *c, rd *r) {
  uint32_t idx = conn_node(c), creation = conn_peer_creation(c);
  spawn_ctx s = { c, get_v(r), {0, idx, creation} };
  s.from.n = get_v(r);
  int flags = (int)get_v(r);
  term_id ref = { get_v(r), idx, creation };
  if (r->bad) return;
  size_t len = (size_t)(r->end - r->p);
  unsigned char *payload = malloc(len ? len : 1);
  if (!payload) { spawn_reply(c, s.req, s.from, 0, 0, "out of memory"); return; }
  memcpy(payload, r->p, len);
  proc_opts o = {0};
  o.link = (flags & SPAWN_LINK) != 0;
  o.monitor = (flags & SPAWN_MONITOR) != 0;
  o.trap_exit = (flags & SPAWN_TRAP) != 0;
  o.rparent = s.from;
  o.rref = ref;
  o.path = D.path;   /* this node's paths, not the spawner's */
  o.cpath = D.cpath;
  o.ready = spawn_ready;
  o.ready_ud = &s;
  term_id pid, unused;
  const char *err = proc_spawn(NULL, &o, ENTRY_WIRE, payload, len, NULL, &pid, &unused);
  if (err) spawn_reply(c, s.req, s.from, 0, 0, err);
}

static void handle_spawn_reply(conn *c, rd *r) {
  uint64_t req = get_v(r);
  term_id to = { get_v(r), 0, 0 };
  uint32_t to_creation = get_u32(r);
  int ok = r->p < r->end ? *r->p++ : 0;
  term_id child = { ok ? get_v(r) : 0, conn_node(c), conn_peer_creation(c) };
  if (r->bad || to_creation != node_creation()) return;
  /* The caller frees its entry once it sees `done` or gives up: copy what
  ** is needed, set up the caller's side of the link and monitor (here, in
  ** arrival order, before any signal of the child that follows on this
  ** link), and only then mark the entry done, if it is still there. */
  int flags = 0, abandoned = 0;
  term_id ref = {0, 0, 0};
  pthread_mutex_lock(&D.lock);
  pending *p = find_pending_locked(req, to, R_SPAWN);
  if (p) {
    flags = p->flags;
    ref = p->ref;
    if (p->abandoned) { abandoned = 1; abandoned_free_locked(p); }
  }
  pthread_mutex_unlock(&D.lock);
  if (abandoned) {   /* the caller gave up (timeout) before this reply */
    if (ok) abandon_child(to, child, flags, ref);
    return;
  }
  if (!p) return;    /* an abandoned entry forgotten past ABANDONED_MAX */
  int caller_side = 0;
  if (ok) {
    proc *caller = proc_get(to);
    if (caller) {
      if (flags & SPAWN_LINK) sig_link_remote(caller, child);
      if (flags & SPAWN_MONITOR) sig_monitor_remote(caller, child, ref);
      caller_side = 1;
      proc_release(caller);
    }
  }
  pthread_mutex_lock(&D.lock);
  p = find_pending_locked(req, to, R_SPAWN);
  if (p && p->abandoned) {   /* it gave up while we set up its side */
    abandoned = 1;
    abandoned_free_locked(p);
  } else if (p) {
    p->done = 1;
    p->ok = ok;
    if (ok) p->pid = child;
    else snprintf(p->err, sizeof p->err, "%.*s", (int)(r->end - r->p), (const char *)r->p);
  } else if (ok) {
    /* The entry went while we set up the caller's side: the node went down
    ** (its caller returned "noconnection") or it was trimmed. The caller
    ** never learns the pid, so undo as for an abandoned spawn. */
    abandoned = 1;
  }
  pthread_mutex_unlock(&D.lock);
  pthread_cond_broadcast(&D.answered);
  if (abandoned && ok) {
    proc *caller = caller_side ? proc_get(to) : NULL;
    if (caller) {
      sig_forget(caller, child, (flags & SPAWN_MONITOR) ? &ref : NULL);
      proc_release(caller);
    }
    abandon_child(to, child, flags, ref);
  }
}

/* ---- queries and monitors of names ---- */

static void handle_query(conn *c, rd *r) {
  uint64_t req = get_v(r);
  term_id from = { get_v(r), conn_node(c), conn_peer_creation(c) };
  int kind = r->p < r->end ? *r->p++ : 0;
  if (r->bad) return;
  unsigned char h[HDR_MAX];
  size_t n = 0;
  h[n++] = R_QUERY_REPLY;
  n += put_v(h + n, req);
  n += put_v(h + n, from.n);
  n += put_v(h + n, from.creation);
  size_t nl = (size_t)(r->end - r->p);
  if (kind == Q_WHEREIS && nl > 0 && nl <= DIST_NAME_MAX && !memchr(r->p, 0, nl)) {
    char name[DIST_NAME_MAX + 1];
    memcpy(name, r->p, nl);
    name[nl] = '\0';
    term_id pid;
    h[n++] = 1;
    n += put_v(h + n, reg_whereis(name, &pid) ? pid.n : 0);
    conn_send(c, h, n, NULL, 0, INFINITY);
    return;
  }
  dist_query_fn fn = atomic_load(&D.query_fn);
  if (kind != Q_WHEREIS && fn) {
    codec_buf out = {0};
    char err[200] = "";
    int ok = fn(kind, r->p, nl, &out, err, sizeof err) == 0;
    h[n++] = (unsigned char)ok;
    if (ok) conn_send(c, h, n, out.data, out.len, INFINITY);
    else conn_send(c, h, n, (const unsigned char *)err, strlen(err), INFINITY);
    codec_buf_free(&out);
    return;
  }
  static const char bad[] = "a query this node does not know";
  h[n++] = 0;
  conn_send(c, h, n, (const unsigned char *)bad, sizeof bad - 1, INFINITY);
}

static void handle_query_reply(conn *c, rd *r) {
  uint64_t req = get_v(r);
  term_id to = { get_v(r), 0, 0 };
  uint32_t to_creation = get_u32(r);
  int ok = r->p < r->end ? *r->p++ : 0;
  if (r->bad || to_creation != node_creation()) return;
  pthread_mutex_lock(&D.lock);
  pending *p = find_pending_locked(req, to, R_QUERY);
  if (p && p->abandoned) abandoned_free_locked(p);
  else if (p && !p->done) {
    p->done = 1;
    p->ok = ok;
    size_t blen = (size_t)(r->end - r->p);
    if (ok && p->kind == Q_WHEREIS) {
      uint64_t pid = get_v(r);
      p->ok = !r->bad;
      p->pid = (term_id){ pid, pid ? conn_node(c) : 0, pid ? conn_peer_creation(c) : 0 };
    } else if (ok) {
      p->answer = malloc(blen ? blen : 1);
      p->ok = p->answer != NULL;
      if (p->answer) memcpy(p->answer, r->p, blen);
      p->alen = blen;
    }
    if (!ok) snprintf(p->err, sizeof p->err, "%.*s", (int)blen, (const char *)r->p);
    else if (!p->ok) snprintf(p->err, sizeof p->err, "a bad answer, or out of memory");
  }
  pthread_cond_broadcast(&D.answered);
  pthread_mutex_unlock(&D.lock);
}

int dist_monitor_name(term_id from, uint32_t idx, const char *name, term_id ref) {
  size_t nl = strlen(name);
  if (nl == 0 || nl > DIST_NAME_MAX) return DIST_DEAD;
  unsigned char h[HDR_MAX];
  size_t n = 0;
  h[n++] = R_MONITOR_NAME;
  n += put_v(h + n, from.n);
  n += put_v(h + n, ref.n);
  int rc = put_record(idx, 1, 0, h, n, (const unsigned char *)name, nl, INFINITY);
  return rc == DIST_OK ? DIST_OK : DIST_NOCONN;
}

/* The name's pid goes back first, so that its DOWN (after the monitor is
** set) comes after it on the link. */
static void handle_monitor_name(conn *c, rd *r) {
  term_id from = { get_v(r), conn_node(c), conn_peer_creation(c) };
  term_id ref = { get_v(r), conn_node(c), conn_peer_creation(c) };
  size_t nl = (size_t)(r->end - r->p);
  if (r->bad) return;
  char name[DIST_NAME_MAX + 1];
  term_id pid = {0, 0, 0};
  int found = 0;
  if (nl > 0 && nl <= DIST_NAME_MAX && !memchr(r->p, 0, nl)) {
    memcpy(name, r->p, nl);
    name[nl] = '\0';
    found = reg_whereis(name, &pid);
  }
  size_t len;
  const unsigned char *noproc = kern_reason(KR_NOPROC, &len);
  if (!found) { dist_down(pid, from, ref, noproc, len); return; }
  unsigned char h[HDR_MAX];
  size_t n = 0;
  h[n++] = R_MONITOR_NAMED;
  n += put_v(h + n, from.n);
  n += put_v(h + n, from.creation);
  n += put_v(h + n, ref.n);
  n += put_v(h + n, pid.n);
  conn_send(c, h, n, NULL, 0, INFINITY);
  if (sig_monitor_remote_in(pid, from, ref) != SIG_OK) dist_down(pid, from, ref, noproc, len);
}

/* The watcher's side: its monitor learns the pid, or, taken down before
** the answer came, is taken down there too. */
static void handle_monitor_named(conn *c, rd *r) {
  term_id watcher = { get_v(r), 0, 0 };
  uint32_t creation = get_u32(r);
  term_id ref = { get_v(r), 0, 0 };
  term_id pid = { get_v(r), conn_node(c), conn_peer_creation(c) };
  if (r->bad || creation != node_creation()) return;
  proc *p = proc_get(watcher);
  int held = p && sig_monitor_resolve(p, ref, pid);
  if (p) proc_release(p);
  if (!held) dist_demonitor(watcher, pid, ref);
}

/* ---- arrivals ---- */

/* Queues a message that arrived. One rule for a full mailbox: the message
** is dropped and counted in the receiver's `dropped`; the I/O thread never
** waits, so one full mailbox delays no other process on the link. */
static void deliver(term_id to, const unsigned char *msg, size_t len, term_id alias) {
  proc *p = proc_get(to);
  if (!p) return;
  mbox_msg *m = mbox_msg_new(MBOX_MSG, msg, len, (term_id){0, 0, 0}, alias);
  if (m) {
    m->wire = 1;
    mbox_put(&p->mb, m, 0, NULL, NULL);   /* frees m when it is refused */
  }
  proc_release(p);
}

void dist_inbound(conn *c, const unsigned char *rec, size_t len) {
  rd r = { rec + 1, rec + len, 0 };
  uint32_t idx = conn_node(c), peer = conn_peer_creation(c), me = node_creation();
  switch (rec[0]) {
  case R_SEND: {
    term_id to = { get_v(&r), 0, 0 };
    uint32_t creation = get_u32(&r);
    if (!r.bad && creation == me) deliver(to, r.p, (size_t)(r.end - r.p), (term_id){0, 0, 0});
    return;
  }
  case R_SEND_NAME: {
    uint64_t nl = get_v(&r);
    if (r.bad || nl == 0 || nl > DIST_NAME_MAX || nl > (uint64_t)(r.end - r.p)) return;
    char name[DIST_NAME_MAX + 1];
    memcpy(name, r.p, nl);
    name[nl] = '\0';
    r.p += nl;
    term_id to;
    if (strlen(name) == nl && reg_whereis(name, &to)) deliver(to, r.p, (size_t)(r.end - r.p), (term_id){0, 0, 0});
    return;
  }
  case R_SEND_ALIAS: {
    term_id alias = { get_v(&r), 0, 0 }, to;
    uint32_t creation = get_u32(&r);
    if (!r.bad && creation == me && reg_alias_owner(alias, &to)) deliver(to, r.p, (size_t)(r.end - r.p), alias);
    return;
  }
  case R_SPAWN: handle_spawn(c, &r); return;
  case R_SPAWN_REPLY: handle_spawn_reply(c, &r); return;
  case R_QUERY: handle_query(c, &r); return;
  case R_QUERY_REPLY: handle_query_reply(c, &r); return;
  case R_MONITOR_NAME: handle_monitor_name(c, &r); return;
  case R_MONITOR_NAMED: handle_monitor_named(c, &r); return;
  default: break;
  }
  /* Signals: from (a pid of the peer), to (ours), to's creation. */
  term_id from = { get_v(&r), idx, peer };
  term_id to = { get_v(&r), 0, 0 };
  uint32_t creation = get_u32(&r);
  if (r.bad) return;
  int alive_here = creation == me;
  size_t nlen;
  const unsigned char *noproc = kern_reason(KR_NOPROC, &nlen);
  switch (rec[0]) {
  case R_LINK:
    if (!alive_here || sig_link_remote_in(to, from) != SIG_OK) dist_exit(to, from, noproc, nlen, 1);
    break;
  case R_UNLINK:
    if (alive_here) sig_unlink_remote_in(to, from);
    break;
  case R_EXIT:
  case R_EXIT2:
    if (alive_here) sig_exit(to, from, r.p, (size_t)(r.end - r.p),
                             (rec[0] == R_EXIT ? SIG_VIA_LINK : 0) | SIG_WIRE);
    break;
  case R_MONITOR: {
    term_id ref = { get_v(&r), idx, peer };
    if (r.bad) break;
    if (!alive_here || sig_monitor_remote_in(to, from, ref) != SIG_OK) dist_down(to, from, ref, noproc, nlen);
    break;
  }
  case R_DEMONITOR: {
    term_id ref = { get_v(&r), idx, peer };
    if (!r.bad && alive_here) sig_demonitor_remote_in(to, ref);
    break;
  }
  case R_DOWN: {
    /* here `to` is the watcher (ours) and the ref is ours too */
    term_id ref = { get_v(&r), 0, 0 };
    uint32_t ref_creation = get_u32(&r);
    (void)ref_creation;
    if (!r.bad && alive_here) sig_down(to, ref, from, r.p, (size_t)(r.end - r.p), SIG_WIRE);
    break;
  }
  default:
    break;   /* an unknown record from a newer peer: ignored */
  }
}

/* ---- links coming and going ---- */

typedef struct down_walk { uint32_t idx, creation; } down_walk;

static void down_one(proc *p, void *ud) {
  down_walk *w = ud;
  term_id *links = NULL, *mons = NULL;
  size_t nl = 0, nm = 0;
  sig_collect_node(p, w->idx, w->creation, &links, &nl, &mons, &nm);
  size_t len;
  const unsigned char *r = kern_reason(KR_NOCONNECTION, &len);
  for (size_t i = 0; i < nl; i++) sig_exit(p->pid, links[i], r, len, SIG_VIA_LINK);
  for (size_t i = 0; i < nm; i++) sig_down(p->pid, mons[2 * i], mons[2 * i + 1], r, len, 0);
  free(links);
  free(mons);
}

void dist_link_lost(uint32_t idx, const char *why) {
  if (strcmp(why, "closed") != 0) dist_report("info", "lost the link", node_name(idx), why);
}

/* ---- monitor_nodes ---- */

/* Sends {tag, name [, reason]} to every subscriber if the node's announced
** state changes (up: 1, down: 0); a node announced up gets exactly one
** nodedown. The subscribers are copied out under wlock. */
static void announce(uint32_t idx, int up, const char *reason) {
  pthread_mutex_lock(&D.wlock);
  size_t at = 0;
  while (at < D.nup && D.up[at] != idx) at++;
  int was_up = at < D.nup;
  if (was_up == up) { pthread_mutex_unlock(&D.wlock); return; }
  if (up) {
    if (D.nup == D.capup) {
      size_t cap = D.capup ? 2 * D.capup : 16;
      uint32_t *g = realloc(D.up, cap * sizeof *g);
      if (!g) { pthread_mutex_unlock(&D.wlock); return; }   /* never announced, so never downed */
      D.up = g;
      D.capup = cap;
    }
    D.up[D.nup++] = idx;
  } else D.up[at] = D.up[--D.nup];
  size_t n = D.nwatchers;
  term_id *to = n ? malloc(n * sizeof *to) : NULL;
  if (to) memcpy(to, D.watchers, n * sizeof *to);
  pthread_mutex_unlock(&D.wlock);
  if (!to) return;
  size_t len;
  unsigned char *msg = node_event_msg(up ? "nodeup" : "nodedown", node_name(idx), up ? NULL : reason, &len);
  for (size_t i = 0; msg && i < n; i++) deliver(to[i], msg, len, (term_id){0, 0, 0});
  free(msg);
  free(to);
}

void dist_node_up(uint32_t idx) { announce(idx, 1, NULL); }

static int watcher_alive(term_id pid) {
  proc *p = proc_get(pid);
  int alive = p && proc_alive(p);
  if (p) proc_release(p);
  return alive;
}

int dist_monitor_nodes(proc *self, int on) {
  pthread_mutex_lock(&D.wlock);
  size_t at = 0;
  while (!on && at < D.nwatchers && !term_eq(D.watchers[at], self->pid)) at++;
  int rc = 0;
  if (!on && at < D.nwatchers) D.watchers[at] = D.watchers[--D.nwatchers];
  else if (on) {   /* one entry per subscription, as monitor_node */
    if (D.nwatchers == D.capwatchers) {   /* drop the subscribers that ended before growing */
      size_t keep = 0;
      for (size_t i = 0; i < D.nwatchers; i++)
        if (watcher_alive(D.watchers[i])) D.watchers[keep++] = D.watchers[i];
      D.nwatchers = keep;
    }
    if (D.nwatchers == D.capwatchers) {
      size_t cap = D.capwatchers ? 2 * D.capwatchers : 8;
      term_id *g = realloc(D.watchers, cap * sizeof *g);
      if (g) { D.watchers = g; D.capwatchers = cap; }
    }
    if (D.nwatchers < D.capwatchers) D.watchers[D.nwatchers++] = self->pid;
    else rc = -1;
  }
  pthread_mutex_unlock(&D.wlock);
  return rc;
}

void dist_node_down(uint32_t idx, uint32_t creation, const char *why) {
  down_walk w = { idx, creation };
  proc_foreach(down_one, &w);
  /* Pending spawns on that node fail; abandoned ones will get no reply. */
  pthread_mutex_lock(&D.lock);
  for (pending *p = D.spawns, *next; p; p = next) {
    next = p->next;
    if (p->node != idx) continue;
    if (p->abandoned) abandoned_free_locked(p);
    else if (!p->done) {
      p->done = 1;
      p->ok = 0;
      snprintf(p->err, sizeof p->err, "noconnection");
    }
  }
  pthread_cond_broadcast(&D.answered);
  pthread_mutex_unlock(&D.lock);
  term_id *subs;
  size_t n, len;
  node_take_monitors(idx, &subs, &n);
  unsigned char *msg = n ? nodedown_msg(node_name(idx), &len) : NULL;
  for (size_t i = 0; msg && i < n; i++) deliver(subs[i], msg, len, (term_id){0, 0, 0});
  free(msg);
  free(subs);
  if (why) announce(idx, 0, why);   /* last, as monitor_node's: after every noconnection */
}

int dist_monitor_node(proc *self, uint32_t idx, int on) {
  if (!on) return node_monitor(idx, self->pid, 0);
  /* Subscribed first: a background connect that fails gives nodedown to
  ** every subscriber (dist_node_down), this one included. */
  if (node_monitor(idx, self->pid, 1) != 0) return -1;
  self->node_monitors = 1;
  conn *c = node_conn(idx);
  if (c) { conn_release(c); return 0; }
  int started = 0;
  pthread_mutex_lock(&D.plock);
  pending_link *p = pending_find_locked(idx);
  if (p && !p->failed) started = 1;
  else if (atomic_load(&D.started) && !D.stopping && (!p || now() >= p->until))
    started = pending_start_locked(idx, p) != NULL;
  pthread_mutex_unlock(&D.plock);
  if (started) return 0;
  node_monitor(idx, self->pid, 0);   /* cannot be reached now: nodedown at once */
  size_t len;
  unsigned char *msg = nodedown_msg(node_name(idx), &len);
  if (msg) deliver(self->pid, msg, len, (term_id){0, 0, 0});
  free(msg);
  return 0;
}

/* ---- starting ---- */

int dist_node_index(const char *name, uint32_t *idx, char *err, size_t errlen) {
  char base[NODE_NAME_MAX + 1];
  size_t len = strlen(name);
  const char *colon = strrchr(name, ':');
  int port = 0;
  if (colon && strchr(name, '@') && colon > strchr(name, '@')) {
    port = atoi(colon + 1);
    if (port <= 0 || port > 65535) { snprintf(err, errlen, "bad port in node name '%s'", name); return -1; }
    len = (size_t)(colon - name);
  }
  if (len > NODE_NAME_MAX || !node_valid_name(name, len)) {
    snprintf(err, errlen, "bad node name '%s' (expected name@host or name@host:port)", name);
    return -1;
  }
  memcpy(base, name, len);
  base[len] = '\0';
  if (strcmp(base, node_self()) == 0) { *idx = 0; return 0; }
  if (node_intern(base, len, idx) != 0) { snprintf(err, errlen, "too many nodes"); return -1; }
  if (port) node_set_port(*idx, port);
  return 0;
}

int dist_connect(uint32_t idx, char *err, size_t errlen) {
  if (!atomic_load(&D.started)) { snprintf(err, errlen, "this node is not started (start_node)"); return -1; }
  return conn_connect(idx, now() + connect_wait(), err, errlen);
}

int dist_started(void) { return atomic_load(&D.started); }

int dist_start(const dist_opts *o, char *err, size_t errlen) {
  if (atomic_load(&D.started)) { snprintf(err, errlen, "this node is already started as %s", node_self()); return -1; }
  char name[NODE_NAME_MAX + 1];
  if (!strchr(o->name, '@')) {
    char host[200];
    if (gethostname(host, sizeof host) != 0) snprintf(host, sizeof host, "localhost");
    host[sizeof host - 1] = '\0';
    snprintf(name, sizeof name, "%s@%s", o->name, host);
  } else snprintf(name, sizeof name, "%s", o->name);
  char short_name[NODE_NAME_MAX + 1];
  snprintf(short_name, sizeof short_name, "%.*s", (int)(strchr(name, '@') - name), name);
  if (!node_valid_name(name, strlen(name)) || !pmap_valid_name(short_name)) {
    snprintf(err, errlen, "bad node name '%s' (expected name or name@host; the name is "
             "letters, digits, '_', '.', '-', at most %d)", name, PMAP_NAME_MAX);
    return -1;
  }
  remote_install(&dist_remote);   /* once: a later start finds it in place */
  node_set_walk(walk_processes);
  conn_config cfg = {0};
  if (key_load(o->key_file, cfg.key, err, errlen) != 0) return -1;
  cfg.tick = o->tick > 0 ? o->tick : 60;
  cfg.out_bound = o->out_bound ? o->out_bound : 8u << 20;
  cfg.max_body = DIST_MAX_BODY;
  char host[NODE_NAME_MAX + 1] = "";
  int port = 0;
  if (o->listen) {
    snprintf(host, sizeof host, "%s", o->listen);
    char *colon = strrchr(host, ':');
    if (colon) { port = atoi(colon + 1); *colon = '\0'; }
  }
  if (node_start(name) != 0) {
    snprintf(err, errlen, "cannot name this node '%s'", name);
    sodium_memzero(cfg.key, sizeof cfg.key);
    return -1;
  }
  D.tick = cfg.tick;
  D.out_bound = cfg.out_bound;
  free(D.path);
  free(D.cpath);
  D.path = o->path ? strdup(o->path) : NULL;
  D.cpath = o->cpath ? strdup(o->cpath) : NULL;
  D.stopping = 0;
  int rc = conn_start(&cfg, host[0] ? host : NULL, &port, err, errlen);
  sodium_memzero(cfg.key, sizeof cfg.key);
  if (rc != 0) return -1;
  if (o->port_mapper) {
    char perr[200];
    if (pmap_ensure(perr, sizeof perr) != 0 ||
        pmap_register(short_name, port, &D.pmap_fd, perr, sizeof perr) != 0 ||
        conn_keep_pmap(short_name, port, D.pmap_fd, perr, sizeof perr) != 0) {
      conn_stop();
      if (D.pmap_fd >= 0) { close(D.pmap_fd); D.pmap_fd = -1; }
      snprintf(err, errlen, "port mapper: %s", perr);
      return -1;
    }
    D.pmap_fd = -1;   /* the keeper holds the registration now */
  }
  D.port = port;
  atomic_store(&D.started, 1);
  return 0;
}

int dist_port(void) { return D.port; }

void dist_stop(void) {
  if (!atomic_exchange(&D.started, 0)) return;
  /* Connectors use the links' configuration: they end before conn_stop
  ** (each is bounded by its connect's deadline). */
  pthread_mutex_lock(&D.plock);
  D.stopping = 1;
  D.nqueue = 0;
  pthread_cond_broadcast(&D.pwork);
  while (D.connectors > 0) pthread_cond_wait(&D.pwork, &D.plock);
  while (D.links) pending_free_locked(D.links);
  pthread_mutex_unlock(&D.plock);
  conn_stop();
  if (D.pmap_fd >= 0) { close(D.pmap_fd); D.pmap_fd = -1; }
  free(D.path);
  free(D.cpath);
  D.path = D.cpath = NULL;
}
