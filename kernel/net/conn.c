/*
** conn.c — node links on a fixed set of I/O threads: the link object and
** its sends, the I/O threads' loop (reading, writing what senders leave,
** heartbeats and liveness), the port mapper registration they keep, start
** and stop (doc/netlink.md gives the design). The handshakes that make the
** links are handshake.c's.
**
** Threads. Each I/O thread owns an epoll instance and the links handed to
** it (a link's node index picks the thread); thread 0 also owns the
** listening socket and the handshake slots of accepted sockets. A process
** that connects runs the initiator's side of the handshake itself (it may
** block, up to its deadline), then hands the link to its I/O thread.
** Only a link's I/O thread reads its socket and uses its decoder. Senders
** seal and write their own records when the socket takes them at once;
** what it does not take waits in the encoder and the I/O thread writes it
** when the socket is writable (EPOLLOUT, armed by whoever left bytes).
**
** Liveness. A link is alive while whole frames arrive: the sweep, every
** quarter of the tick, ends a link that completed no frame for a tick, one
** that has had a frame in progress for a tick (a peer that trickles, or a
** length that makes the decoder wait for bytes that never come), and one
** whose unsent bytes made no progress for a tick; it sends a heartbeat on
** a link that sent nothing for a quarter of the tick.
*/
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include "crypto.h"
#include "conn.h"
#include "conn_impl.h"
#include "dist.h"
#include "frame.h"
#include "handshake.h"
#include "mailbox.h"
#include "node.h"
#include "portmap.h"

#define IO_CHUNK        65536  /* bytes read from a socket at a time */
#define IO_READS        4      /* reads of a link per wake-up, so that one busy link does not starve others */
#define IO_EVENTS       64
#define STOP_SECONDS    1.0    /* a stopping node waits this long for its links to close in order */
#define DIRECT_GAP      50e-6  /* a send this long after the previous one writes itself */

struct conn_global conn_G = { .listen_fd = -1, .listen_tag = { TAG_LISTEN },
                              .keeper_fd = -1, .keeper_tag = { TAG_KEEPER } };

/* The I/O thread the calling thread is, or NULL. */
static _Thread_local io *io_self;

/* ---- connections ---- */

void conn_retain(conn *c) { atomic_fetch_add(&c->refs, 1); }

void conn_release(conn *c) {
  if (atomic_fetch_sub(&c->refs, 1) != 1) return;
  frame_enc_free(&c->enc);
  frame_dec_free(&c->dec);
  pthread_mutex_destroy(&c->lock);
  pthread_cond_destroy(&c->room);
  if (c->fd >= 0) close(c->fd);
  free(c->out);
  node_unref(c->node);
  free(c);
}

uint32_t conn_node(const conn *c) { return c->node; }
uint32_t conn_peer_creation(const conn *c) { return c->peer_creation; }

int conn_on_io_thread(void) { return io_self != NULL; }

static io *io_of(uint32_t node) { return &conn_G.ios[node % (uint32_t)conn_G.nio]; }

conn *conn_new(int fd, uint32_t node, uint32_t creation, frame_enc *enc, frame_dec *dec) {
  conn *c = calloc(1, sizeof *c);
  if (!c) return NULL;
  c->tag.kind = TAG_CONN;
  atomic_init(&c->refs, 1);
  c->fd = fd;
  c->node = node;
  node_ref(node);   /* records from the link name the node until the last reference goes */
  c->peer_creation = creation;
  c->io = io_of(node);
  pthread_mutex_init(&c->lock, NULL);
  pthread_cond_init(&c->room, NULL);
  c->enc = *enc;
  c->dec = *dec;
  c->last_progress = mbox_now();
  return c;
}

/* Arms EPOLLOUT so that the I/O thread writes what enc holds (c->lock held). */
static void arm_out_locked(conn *c) {
  if (c->want_out) return;
  struct epoll_event ev = { EPOLLIN | EPOLLOUT, { .ptr = &c->tag } };
  if (epoll_ctl(c->io->ep, EPOLL_CTL_MOD, c->fd, &ev) == 0) c->want_out = 1;
}

/* Writes what enc holds without waiting (c->lock held). Bytes the socket
** does not take stay for the I/O thread; after CLOSE, once everything is
** out, the write side is shut. A write that fails shuts the socket: the
** I/O thread sees it and ends the link. */
static void write_locked(conn *c) {
  const unsigned char *p;
  size_t n;
  if (c->writing) { arm_out_locked(c); return; }   /* the I/O thread's bytes go first */
  if (frame_enc_flush(&c->enc, &p, &n) != 0) { shutdown(c->fd, SHUT_RDWR); return; }
  while (n > 0) {
    ssize_t w = send(c->fd, p, n, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (w > 0) {
      frame_enc_consumed(&c->enc, (size_t)w);
      c->last_progress = mbox_now();
      if (frame_enc_flush(&c->enc, &p, &n) != 0) { shutdown(c->fd, SHUT_RDWR); return; }
      continue;
    }
    if (w < 0 && errno == EINTR) continue;
    if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK) { shutdown(c->fd, SHUT_RDWR); return; }
    break;
  }
  if (n > 0) { arm_out_locked(c); return; }
  c->last_progress = mbox_now();
  if (c->want_out) {
    struct epoll_event ev = { EPOLLIN, { .ptr = &c->tag } };
    if (epoll_ctl(c->io->ep, EPOLL_CTL_MOD, c->fd, &ev) == 0) c->want_out = 0;
  }
  if (c->waiting_room) pthread_cond_broadcast(&c->room);
  if (c->orderly) shutdown(c->fd, SHUT_WR);
}

int conn_send(conn *c, const void *a, size_t alen, const void *b, size_t blen, double deadline) {
  int rc = CONN_OK;
  pthread_mutex_lock(&c->lock);
  /* An I/O thread never waits: what it sends answers what arrived (a
  ** spawn's reply, a noproc). Past the bound its answers are dropped, so a
  ** peer that sends requests and reads nothing cannot grow the buffer. */
  if (io_self && frame_enc_pending(&c->enc) >= conn_G.cfg.out_bound) rc = CONN_FULL;
  while (rc == CONN_OK && !io_self && !c->closing && frame_enc_pending(&c->enc) >= conn_G.cfg.out_bound) {
    double left = deadline - mbox_now();
    if (left <= 0) { rc = CONN_FULL; break; }
    struct timespec ts = mbox_realtime_in(left);
    c->waiting_room++;
    pthread_cond_timedwait(&c->room, &c->lock, &ts);
    c->waiting_room--;
  }
  if (rc == CONN_OK) {
    if (c->closing || frame_enc_record(&c->enc, a, alen, b, blen) != 0) rc = CONN_CLOSED;
    else {
      /* A record on a quiet link goes out at once from here (latency);
      ** records in quick succession are left to the I/O thread, which
      ** writes them in one go (throughput). */
      double t = mbox_now();
      if (!c->want_out && t - c->last_send > DIRECT_GAP) write_locked(c);
      else arm_out_locked(c);
      c->last_send = t;
    }
  }
  pthread_mutex_unlock(&c->lock);
  return rc;
}

void conn_close(conn *c, int orderly) {
  pthread_mutex_lock(&c->lock);
  if (!c->closing) {
    c->closing = 1;
    if (orderly && frame_enc_control(&c->enc, FRAME_CLOSE, NULL, 0) == 0) {
      c->orderly = 1;
      write_locked(c);
    } else shutdown(c->fd, SHUT_RDWR);
  }
  pthread_cond_broadcast(&c->room);
  pthread_mutex_unlock(&c->lock);
}

static void wake(io *t) {
  uint64_t one = 1;
  ssize_t w = write(t->wake, &one, sizeof one);
  (void)w;   /* a full counter wakes the thread as well */
}

/* Hands c to its I/O thread: registered with its epoll (so senders may arm
** EPOLLOUT from now on) and queued for its sweep; the thread takes over
** one reference. Any thread. Returns 0, or -1 (nothing changed). */
int conn_attach(conn *c) {
  io *t = c->io;
  pthread_mutex_lock(&t->lock);
  if (t->nadds == t->capadds) {
    size_t cap = t->capadds ? t->capadds * 2 : 16;
    conn **a = realloc(t->adds, cap * sizeof *a);
    if (!a) { pthread_mutex_unlock(&t->lock); return -1; }
    t->adds = a;
    t->capadds = cap;
  }
  /* Queued before it is registered: the thread takes the queue before it
  ** handles the events of a wait, so a link's first event finds it listed. */
  conn_retain(c);
  t->adds[t->nadds++] = c;
  pthread_mutex_unlock(&t->lock);
  struct epoll_event ev = { EPOLLIN, { .ptr = &c->tag } };
  if (epoll_ctl(t->ep, EPOLL_CTL_ADD, c->fd, &ev) != 0) shutdown(c->fd, SHUT_RDWR);  /* ended by the sweep */
  wake(t);
  return 0;
}

static void take_adds(io *t, double now) {
  pthread_mutex_lock(&t->lock);
  for (size_t i = 0; i < t->nadds; i++) {
    conn *c = t->adds[i];
    if (t->nconns == t->capconns) {
      size_t cap = t->capconns ? t->capconns * 2 : 16;
      conn **a = realloc(t->conns, cap * sizeof *a);
      if (!a) { shutdown(c->fd, SHUT_RDWR); conn_release(c); continue; }   /* its peer sees it gone */
      t->conns = a;
      t->capconns = cap;
    }
    c->last_frame = now;
    c->listed = t->nconns;
    t->conns[t->nconns++] = c;
  }
  t->nadds = 0;
  pthread_mutex_unlock(&t->lock);
}

/* Ends a link (its I/O thread): out of epoll and the thread's list; if it
** is its node's current link, the node layer hears of it. */
static void end_conn(io *t, conn *c, const char *why) {
  if (c->ended) return;
  c->ended = 1;
  epoll_ctl(t->ep, EPOLL_CTL_DEL, c->fd, NULL);
  conn *last = t->conns[--t->nconns];
  t->conns[c->listed] = last;
  last->listed = c->listed;
  pthread_mutex_lock(&c->lock);
  if (c->orderly) why = "closed";   /* we closed first: the end is the peer's answer */
  pthread_mutex_unlock(&c->lock);
  /* A peer that closed in order gets our CLOSE in answer. */
  conn_close(c, strcmp(why, "closed") == 0);
  shutdown(c->fd, SHUT_RDWR);
  if (node_clear_conn(c->node, c)) {
    dist_node_down(c->node, c->peer_creation, why);
    node_down_done(c->node);
    dist_link_lost(c->node, why);
  }
  conn_release(c);   /* the thread's */
}

/* Reads what the socket holds (up to IO_READS chunks) and acts on every
** whole frame. */
static void read_conn(io *t, conn *c, unsigned char *buf) {
  for (int k = 0; k < IO_READS && !c->ended; k++) {
    ssize_t got = recv(c->fd, buf, IO_CHUNK, MSG_DONTWAIT);
    if (got < 0 && errno == EINTR) { k--; continue; }
    if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
    if (got <= 0) { end_conn(t, c, "noconnection"); return; }
    double now = mbox_now();
    size_t off = 0, used;
    frame_msg f;
    int rc;
    while ((rc = frame_dec_feed(&c->dec, buf + off, (size_t)got - off, &used, &f)) == 1) {
      off += used;
      c->last_frame = now;
      if (f.type == FRAME_DATA) {
        size_t roff = 0, rlen;
        const unsigned char *rec;
        while (frame_record_next(&f, &roff, &rec, &rlen) == 1)
          if (rlen && rec[0] != REC_ACCEPT) dist_inbound(c, rec, rlen);
      } else if (f.type == FRAME_CLOSE) {
        end_conn(t, c, "closed");
        return;
      }
    }
    if (rc < 0) { end_conn(t, c, "a bad frame"); return; }
    if (!frame_dec_partial(&c->dec)) c->partial_since = 0;
    else if (!c->partial_since) c->partial_since = now;
    if (got < IO_CHUNK) return;   /* drained: epoll (level-triggered) reports what comes next */
  }
}

/* The socket is writable (its I/O thread): takes what enc holds under the
** lock and writes it outside, so senders go on appending meanwhile. The
** encoder's bound counts what it holds; this thread holds one batch more. */
static void write_conn(conn *c) {
  for (int round = 0; round < IO_READS; round++) {
    if (c->out_off == c->out_len) {
      const unsigned char *p = NULL;
      size_t n = 0;
      pthread_mutex_lock(&c->lock);
      c->writing = 0;
      if (frame_enc_flush(&c->enc, &p, &n) != 0 || n == 0 || n > c->out_cap) {
        unsigned char *grown = n > c->out_cap ? realloc(c->out, n) : NULL;
        if (!grown) {   /* nothing left, a failed encoder, or no memory: the plain way */
          write_locked(c);
          pthread_mutex_unlock(&c->lock);
          return;
        }
        c->out = grown;
        c->out_cap = n;
      }
      memcpy(c->out, p, n);
      frame_enc_consumed(&c->enc, n);
      c->out_len = n;
      c->out_off = 0;
      c->writing = 1;
      if (c->waiting_room) pthread_cond_broadcast(&c->room);
      pthread_mutex_unlock(&c->lock);
    }
    ssize_t w = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;   /* EPOLLOUT stays armed */
    if (w <= 0) { shutdown(c->fd, SHUT_RDWR); return; }              /* the read side ends it */
    c->out_off += (size_t)w;
    pthread_mutex_lock(&c->lock);
    c->last_progress = mbox_now();
    pthread_mutex_unlock(&c->lock);
  }
}

/* Every quarter of the tick: liveness, stalled writes, heartbeats. */
static void sweep(io *t, double now) {
  double tick = conn_G.cfg.tick;
  for (size_t i = t->nconns; i-- > 0;) {
    conn *c = t->conns[i];
    const char *why = NULL;
    if (now - c->last_frame > tick) why = "tick";
    else if (c->partial_since && now - c->partial_since > tick) why = "a frame that did not end within a tick";
    pthread_mutex_lock(&c->lock);
    size_t pending = frame_enc_pending(&c->enc);
    if (!why && (pending || c->writing) && now - c->last_progress > tick) why = "writes stalled for a tick";
    if (!why && !pending && !c->closing && now - c->last_send >= tick / 4) {
      if (frame_enc_control(&c->enc, FRAME_TICK, NULL, 0) == 0) write_locked(c);
      c->last_send = now;
    }
    pthread_mutex_unlock(&c->lock);
    if (why) end_conn(t, c, why);
  }
}

/* ---- connecting (the handshake is handshake.c's) ---- */

int conn_connect(uint32_t idx, double deadline, char *err, size_t errlen) {
  if (!atomic_load(&conn_G.running)) { snprintf(err, errlen, "this node is not started (start_node)"); return -1; }
  const char *name = node_name(idx);
  if (!name) { snprintf(err, errlen, "noconnection (a pid of a node this node no longer knows)"); return -1; }
  if (idx == 0 || strcmp(name, node_self()) == 0) {
    snprintf(err, errlen, "a node cannot connect to itself");
    return -1;
  }
  int claim = node_connect_claim(idx, deadline);
  if (claim <= 0) {
    if (claim < 0) snprintf(err, errlen, "%s: noconnection", node_name(idx));
    return claim;
  }
  int refused = 0;
  int rc = hs_initiate(idx, deadline, &refused, err, errlen);
  node_connect_done(idx);
  /* Refused because the peer keeps the link it started to us: that one
  ** is being installed here right now. */
  while (rc != 0 && refused && mbox_now() < deadline) {
    conn *c = node_conn(idx);
    if (c) { conn_release(c); return 0; }
    struct timespec ts = { 0, 5000000 };
    nanosleep(&ts, NULL);
  }
  return rc;
}

/* ---- the port mapper registration (I/O thread 0) ---- */

int conn_keep_pmap(const char *name, int port, int fd, char *err, size_t errlen) {
  pmap_keeper k;
  if (pmap_keeper_start(&k, name, port, fd, err, errlen) != 0) return -1;
  io *t = &conn_G.ios[0];
  pthread_mutex_lock(&t->lock);
  conn_G.keeper_new = k;
  conn_G.keeper_handed = 1;
  pthread_mutex_unlock(&t->lock);
  wake(t);
  return 0;
}

/* Steps the keeper and keeps its descriptor in epoll: a new connection
** (even under a number just closed) is deleted and added again. */
static void keeper_sync(io *t) {
  int64_t now = pmap_now_ms();
  conn_G.keeper_due = pmap_keeper_step(&conn_G.keeper, now);
  int fd = pmap_keeper_fd(&conn_G.keeper), ev = pmap_keeper_events(&conn_G.keeper);
  unsigned attempt = pmap_keeper_attempts(&conn_G.keeper);
  struct epoll_event e = { (uint32_t)ev, { .ptr = &conn_G.keeper_tag } };
  if (conn_G.keeper_fd >= 0 && (fd != conn_G.keeper_fd || attempt != conn_G.keeper_conn)) {
    epoll_ctl(t->ep, EPOLL_CTL_DEL, conn_G.keeper_fd, NULL);   /* the keeper may have closed it already */
    conn_G.keeper_fd = -1;
  }
  if (fd >= 0 && conn_G.keeper_fd < 0) {
    if (epoll_ctl(t->ep, EPOLL_CTL_ADD, fd, &e) == 0) {
      conn_G.keeper_fd = fd;
      conn_G.keeper_conn = attempt;
      conn_G.keeper_ev = ev;
    } else conn_G.keeper_due = now + PMAP_KEEPER_MIN_MS;   /* try again */
  } else if (fd >= 0 && ev != conn_G.keeper_ev && epoll_ctl(t->ep, EPOLL_CTL_MOD, fd, &e) == 0)
    conn_G.keeper_ev = ev;
}

static void keeper_take(io *t) {
  pthread_mutex_lock(&t->lock);
  int handed = conn_G.keeper_handed;
  if (handed) { conn_G.keeper = conn_G.keeper_new; conn_G.keeper_handed = 0; }
  pthread_mutex_unlock(&t->lock);
  if (!handed) return;
  conn_G.keeper_on = 1;
  conn_G.keeper_fd = -1;
  keeper_sync(t);
}

static void keeper_end(io *t) {
  if (!conn_G.keeper_on) return;
  if (conn_G.keeper_fd >= 0) epoll_ctl(t->ep, EPOLL_CTL_DEL, conn_G.keeper_fd, NULL);
  pmap_keeper_stop(&conn_G.keeper);
  conn_G.keeper_on = 0;
  conn_G.keeper_fd = -1;
}

/* ---- the I/O threads ---- */

static void *io_main(void *arg) {
  io *t = arg;
  io_self = t;
  unsigned char *buf = malloc(IO_CHUNK);
  struct epoll_event ev[IO_EVENTS];
  double period = conn_G.cfg.tick / 4;
  t->next_sweep = mbox_now() + period;
  while (buf) {
    double now = mbox_now();
    int running = atomic_load(&conn_G.running);
    if (!running && (t->nconns == 0 || now > conn_G.stop_deadline)) break;
    double next = t->next_sweep;
    if (t->index == 0) {
      double hs = hs_expire(now);
      if (hs < next) next = hs;
      if (conn_G.accept_paused && conn_G.accept_paused < next) next = conn_G.accept_paused;
      if (conn_G.keeper_on && conn_G.keeper_due != PMAP_KEEPER_NEVER) {
        double due = now + (double)(conn_G.keeper_due - pmap_now_ms()) / 1000;
        if (due < next) next = due;
      }
    }
    if (!running && next > now + 0.01) next = now + 0.01;
    double wait = next - now;
    int ms = wait <= 0 ? 0 : (int)(wait * 1000) + 1;
    int n = epoll_wait(t->ep, ev, IO_EVENTS, ms);
    take_adds(t, mbox_now());
    if (t->index == 0) keeper_take(t);
    for (int i = 0; i < n; i++) {
      io_tag *tag = ev[i].data.ptr;
      if (tag->kind == TAG_WAKE) {
        uint64_t v;
        ssize_t r = read(t->wake, &v, sizeof v);
        (void)r;
      } else if (tag->kind == TAG_LISTEN) {
        if (running) hs_accept_all(t);
      } else if (tag->kind == TAG_KEEPER) {
        if (conn_G.keeper_on) keeper_sync(t);
      } else if (tag->kind == TAG_HS) {
        hs_ready(tag, running);
      } else {
        /* Alive here: the thread's reference goes only in end_conn, and a
        ** wait reports a descriptor once. Held while it may end. */
        conn *c = (conn *)tag;
        conn_retain(c);
        if (ev[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) read_conn(t, c, buf);
        if (!c->ended && (ev[i].events & EPOLLOUT)) write_conn(c);
        conn_release(c);
      }
    }
    now = mbox_now();
    if (t->index == 0 && conn_G.accept_paused && now >= conn_G.accept_paused && running) {
      struct epoll_event lev = { EPOLLIN, { .ptr = &conn_G.listen_tag } };
      epoll_ctl(t->ep, EPOLL_CTL_ADD, conn_G.listen_fd, &lev);
      conn_G.accept_paused = 0;
    }
    if (now >= t->next_sweep) {
      sweep(t, now);
      t->next_sweep = now + period;
    }
    if (t->index == 0 && conn_G.keeper_on && conn_G.keeper_due != PMAP_KEEPER_NEVER && pmap_now_ms() >= conn_G.keeper_due)
      keeper_sync(t);
  }
  /* Stopped: what did not close in order is ended here. */
  take_adds(t, mbox_now());
  while (t->nconns > 0) end_conn(t, t->conns[t->nconns - 1], "closed");
  if (t->index == 0) {
    hs_drop_all();
    keeper_take(t);   /* one handed over just before the stop is released too */
    keeper_end(t);
  }
  free(buf);
  io_self = NULL;
  return NULL;
}

/* How many I/O threads: $ERLANGEN_IO_THREADS (1..IO_MAX_THREADS), else 1. */
static int io_count(void) {
  const char *s = getenv("ERLANGEN_IO_THREADS");
  char *end;
  long n = s && *s ? strtol(s, &end, 10) : 1;
  if (s && *s && (*end != '\0' || n < 1)) n = 1;
  return n > IO_MAX_THREADS ? IO_MAX_THREADS : (int)n;
}

static void io_free(io *t) {
  if (t->ep >= 0) close(t->ep);
  if (t->wake >= 0) close(t->wake);
  pthread_mutex_destroy(&t->lock);
  free(t->adds);
  free(t->conns);
  memset(t, 0, sizeof *t);
}

static int io_init(io *t, int index) {
  memset(t, 0, sizeof *t);
  t->index = index;
  t->wake_tag.kind = TAG_WAKE;
  pthread_mutex_init(&t->lock, NULL);
  t->ep = epoll_create1(EPOLL_CLOEXEC);
  t->wake = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  struct epoll_event ev = { EPOLLIN, { .ptr = &t->wake_tag } };
  if (t->ep < 0 || t->wake < 0 || epoll_ctl(t->ep, EPOLL_CTL_ADD, t->wake, &ev) != 0) {
    if (t->ep >= 0) close(t->ep);
    if (t->wake >= 0) close(t->wake);
    t->ep = t->wake = -1;
    return -1;
  }
  return 0;
}

int conn_start(const conn_config *cfg, const char *host, int *port, char *err, size_t errlen) {
  if (atomic_load(&conn_G.running)) { snprintf(err, errlen, "already listening"); return -1; }
  conn_G.cfg = *cfg;
  char service[16];
  snprintf(service, sizeof service, "%d", *port);
  struct addrinfo hints = {0}, *res = NULL;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE;
  int gai = getaddrinfo(host, service, &hints, &res);
  if (gai != 0) { snprintf(err, errlen, "cannot resolve '%s': %s", host ? host : "*", gai_strerror(gai)); return -1; }
  int fd = socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  int one = 1;
  if (fd >= 0) setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (fd < 0 || bind(fd, res->ai_addr, res->ai_addrlen) != 0 || listen(fd, 128) != 0) {
    snprintf(err, errlen, "cannot listen on %s:%d: %s", host ? host : "*", *port, strerror(errno));
    if (fd >= 0) close(fd);
    freeaddrinfo(res);
    return -1;
  }
  freeaddrinfo(res);
  struct sockaddr_storage sa;
  socklen_t sl = sizeof sa;
  getsockname(fd, (struct sockaddr *)&sa, &sl);
  *port = ntohs(sa.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&sa)->sin6_port
                                         : ((struct sockaddr_in *)&sa)->sin_port);
  int ok = hs_start() == 0;
  conn_G.nio = io_count();
  int made = 0;
  for (; ok && made < conn_G.nio; made++) ok = io_init(&conn_G.ios[made], made) == 0;
  struct epoll_event lev = { EPOLLIN, { .ptr = &conn_G.listen_tag } };
  if (ok) ok = epoll_ctl(conn_G.ios[0].ep, EPOLL_CTL_ADD, fd, &lev) == 0;
  if (ok) {
    conn_G.listen_fd = fd;
    conn_G.accept_paused = 0;
    atomic_store(&conn_G.running, 1);
  }
  int started = 0;
  for (; ok && started < conn_G.nio; started++)
    ok = pthread_create(&conn_G.ios[started].thread, NULL, io_main, &conn_G.ios[started]) == 0;
  if (!ok) {
    atomic_store(&conn_G.running, 0);
    conn_G.stop_deadline = 0;
    for (int i = 0; i < started; i++) { wake(&conn_G.ios[i]); pthread_join(conn_G.ios[i].thread, NULL); }
    for (int i = 0; i < made; i++) io_free(&conn_G.ios[i]);
    hs_stop();
    close(fd);
    conn_G.listen_fd = -1;
    snprintf(err, errlen, "cannot start the I/O threads");
    return -1;
  }
  return 0;
}

static void close_one(const char *name, void *ud) {
  (void)ud;
  long idx = node_find(name);
  conn *c = idx > 0 ? node_conn((uint32_t)idx) : NULL;
  if (c) { conn_close(c, 1); conn_release(c); }
}

void conn_stop(void) {
  if (!atomic_load(&conn_G.running)) return;
  conn_G.stop_deadline = mbox_now() + STOP_SECONDS;
  atomic_store(&conn_G.running, 0);   /* after the deadline: the threads read it once they see this */
  node_each_up(close_one, NULL);
  for (int i = 0; i < conn_G.nio; i++) wake(&conn_G.ios[i]);
  for (int i = 0; i < conn_G.nio; i++) pthread_join(conn_G.ios[i].thread, NULL);
  for (int i = 0; i < conn_G.nio; i++) io_free(&conn_G.ios[i]);
  close(conn_G.listen_fd);
  conn_G.listen_fd = -1;
  hs_stop();
  sodium_memzero(conn_G.cfg.key, sizeof conn_G.cfg.key);
}
