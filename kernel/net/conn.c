/*
** conn.c — node links on a fixed set of I/O threads: listening, the
** handshakes, reading, writing what senders leave, heartbeats and liveness
** (doc/netlink.md gives the design; handshake.md the bytes).
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
**
** Handshakes of accepted sockets are state machines over fixed slots
** (HS_SLOTS in all, HS_PER_ADDR per source address); at a bound the oldest
** unauthenticated socket of that address (or of all) is closed for the new
** one. No step waits, so a silent or slow socket delays no other peer.
** Nothing is allocated for a peer before its confirmation frame decrypts.
*/
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
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
#include "dist.h"
#include "frame.h"
#include "mailbox.h"
#include "node.h"
#include "noise.h"
#include "portmap.h"

#define HS_SECONDS      5.0    /* a handshake must finish within this */
#define HS_SLOTS        64     /* unauthenticated accepted sockets at once, in all */
#define HS_PER_ADDR     8      /* ... and from one source address */
#define IO_CHUNK        65536  /* bytes read from a socket at a time */
#define IO_READS        4      /* reads of a link per wake-up, so that one busy link does not starve others */
#define IO_EVENTS       64
#define IO_MAX_THREADS  16
#define STOP_SECONDS    1.0    /* a stopping node waits this long for its links to close in order */
#define ACCEPT_PAUSE    0.1    /* seconds accepting pauses when descriptors run out */
#define RATE_SLOTS      64     /* source addresses remembered for reporting */
#define REPORT_GAP      1.0    /* seconds between two reports of failed handshakes from one address */
#define REPORTS_PER_GAP 10     /* ... and the most reports in all within REPORT_GAP */
#define REC_ACCEPT      0x00   /* the responder's last handshake record: the link is up */
/* Handshake records (before the link is up): a responder that already has
** a link to the same incarnation asks the initiator whether it still has
** it; an initiator only connects with no link, so "no link" means the old
** one is half-open and is replaced, "a link" means a late duplicate. */
#define REC_ALIVE       0xf0   /* responder: do you have a link to me? */
#define REC_NOLINK      0xf1   /* initiator: no */
#define REC_HASLINK     0xf2   /* initiator: yes */
#define DIRECT_GAP      50e-6  /* a send this long after the previous one writes itself */

/* What an epoll event's data points at: the first member of each. */
enum { TAG_LISTEN = 1, TAG_WAKE, TAG_CONN, TAG_HS, TAG_KEEPER };
typedef struct io_tag { int kind; } io_tag;

typedef struct io io;

struct conn {
  io_tag tag;                    /* TAG_CONN */
  _Atomic int refs;
  uint32_t node, peer_creation;  /* immutable; the conn holds a reference on its node's entry */
  int fd;                        /* immutable; closed when the last reference goes */
  io *io;                        /* immutable: the I/O thread that reads it */
  pthread_mutex_t lock;
  pthread_cond_t room;           /* lock: senders wait for the buffer to drain */
  frame_enc enc;                 /* lock */
  int closing;                   /* lock: no more records */
  int orderly;                   /* lock: this side sent CLOSE */
  int want_out;                  /* lock: EPOLLOUT is armed for bytes left in enc */
  int writing;                   /* lock: the I/O thread writes bytes it took from enc (out),
                                 ** outside the lock; no one else writes until they are out */
  int waiting_room;              /* lock: senders waiting on `room` */
  double last_send;              /* lock: when a record or a heartbeat was last queued */
  double last_progress;          /* lock: when the socket last took bytes, or enc was empty */
  /* The I/O thread's alone. */
  unsigned char *out;            /* sealed bytes taken from enc, out[out_off, out_len) unsent */
  size_t out_len, out_off, out_cap;
  frame_dec dec;                 /* (the handshake's before that) */
  double last_frame;             /* when the last whole frame arrived */
  double partial_since;          /* when the frame now in progress began; 0 if none */
  size_t listed;                 /* its index in io->conns */
  int ended;
};

typedef struct hs_slot {
  io_tag tag;                    /* TAG_HS */
  int fd;                        /* -1: free */
  int step;                      /* HS_MSG1, HS_CONFIRM, HS_ALIVE */
  double started, deadline;
  unsigned char addr[16];
  struct sockaddr_storage sa;
  unsigned char in[NOISE_LENBYTES + NOISE_MAX_MSG];
  size_t have;
  noise_hs noise;
  noise_hello peer;
  frame_enc enc;
  frame_dec dec;
  int split;                     /* enc and dec hold the handshake's split */
  conn *c;                       /* HS_ALIVE: the link, not in the node table yet */
  uint32_t idx;                  /* HS_ALIVE: its node */
} hs_slot;

enum { HS_MSG1 = 1, HS_CONFIRM, HS_ALIVE };

struct io {
  pthread_t thread;
  int index;
  int ep;                        /* immutable */
  int wake;                      /* immutable: an eventfd */
  io_tag wake_tag;
  pthread_mutex_t lock;          /* guards `adds` only; a leaf */
  conn **adds;                   /* lock: links handed to this thread, not yet in `conns` */
  size_t nadds, capadds;
  /* The thread's alone. */
  conn **conns;
  size_t nconns, capconns;
  double next_sweep;
};

typedef struct rate_slot { unsigned char addr[16]; double last_report; unsigned quiet; int used; } rate_slot;

/* The module's one global. `cfg`, `nio`, `ios` and `listen_fd` are written
** by conn_start before the threads start and only read after (listen_fd
** is closed by conn_stop once they have ended); `lock` guards `rate`;
** `hs`, `hs_used`, `listen_tag`, `accept_paused` and the keeper's fields belong to
** I/O thread 0, except `keeper_new` and `keeper_handed`, which the thread
** handing the registration over writes under ios[0].lock. */
static struct {
  conn_config cfg;
  int listen_fd;
  _Atomic int running;
  int nio;
  io ios[IO_MAX_THREADS];
  pthread_mutex_t lock;
  rate_slot rate[RATE_SLOTS];   /* lock */
  double reports_since;         /* lock */
  int reports;                  /* lock: failure reports since reports_since */
  hs_slot *hs;                  /* HS_SLOTS of them */
  int hs_used;                  /* slots with a socket */
  io_tag listen_tag;
  double accept_paused;         /* 0, or when accepting resumes */
  pmap_keeper keeper_new;       /* ios[0].lock: a registration handed over (conn_keep_pmap) */
  int keeper_handed;            /* ios[0].lock */
  pmap_keeper keeper;           /* the port mapper registration, kept (portmap.h) */
  int keeper_on, keeper_fd, keeper_ev;
  unsigned keeper_conn;
  int64_t keeper_due;           /* ms (pmap_now_ms), PMAP_KEEPER_NEVER: only the fd */
  io_tag keeper_tag;
  double stop_deadline;         /* written by conn_stop before it wakes the threads */
} C = { .listen_fd = -1, .lock = PTHREAD_MUTEX_INITIALIZER, .listen_tag = { TAG_LISTEN },
        .keeper_fd = -1, .keeper_tag = { TAG_KEEPER } };

/* The I/O thread the calling thread is, or NULL. */
static _Thread_local io *io_self;

/* ---- sockets with deadlines ---- */

static int wait_fd(int fd, short ev, double deadline) {
  for (;;) {
    double left = deadline - mbox_now();
    if (left <= 0) return -1;
    struct pollfd p = { fd, ev, 0 };
    int r = poll(&p, 1, (int)(left * 1000) + 1);
    if (r > 0) return 0;
    if (r < 0 && errno != EINTR) return -1;
  }
}

static int write_all(int fd, const unsigned char *p, size_t n, double deadline) {
  while (n > 0) {
    ssize_t w = send(fd, p, n, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (w > 0) { p += w; n -= (size_t)w; continue; }
    if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) return -1;
    if (wait_fd(fd, POLLOUT, deadline) != 0) return -1;
  }
  return 0;
}

static int read_exact(int fd, unsigned char *p, size_t n, double deadline) {
  while (n > 0) {
    ssize_t r = recv(fd, p, n, MSG_DONTWAIT);
    if (r > 0) { p += r; n -= (size_t)r; continue; }
    if (r == 0) return -1;
    if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) return -1;
    if (wait_fd(fd, POLLIN, deadline) != 0) return -1;
  }
  return 0;
}

static void tune(int fd) {
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  int fl = fcntl(fd, F_GETFL);
  if (fl >= 0) fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

static int tcp_connect(const char *host, int port, double deadline, char *err, size_t errlen) {
  char service[16];
  snprintf(service, sizeof service, "%d", port);
  struct addrinfo hints = {0}, *res = NULL;
  hints.ai_socktype = SOCK_STREAM;
  int gai = getaddrinfo(host, service, &hints, &res);
  if (gai != 0) { snprintf(err, errlen, "cannot resolve '%s': %s", host, gai_strerror(gai)); return -1; }
  int fd = -1;
  for (struct addrinfo *a = res; a && fd < 0; a = a->ai_next) {
    fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) continue;
    tune(fd);
    if (connect(fd, a->ai_addr, a->ai_addrlen) == 0) break;
    int soerr = errno;
    if (soerr == EINPROGRESS && wait_fd(fd, POLLOUT, deadline) == 0) {
      socklen_t sl = sizeof soerr;
      if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) == 0 && soerr == 0) break;
    }
    snprintf(err, errlen, "cannot connect to %s:%d: %s", host, port,
             soerr == EINPROGRESS ? "timeout" : strerror(soerr));
    close(fd);
    fd = -1;
  }
  freeaddrinfo(res);
  return fd;
}

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

static io *io_of(uint32_t node) { return &C.ios[node % (uint32_t)C.nio]; }

static conn *conn_new(int fd, uint32_t node, uint32_t creation, frame_enc *enc, frame_dec *dec) {
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
  if (io_self && frame_enc_pending(&c->enc) >= C.cfg.out_bound) rc = CONN_FULL;
  while (rc == CONN_OK && !io_self && !c->closing && frame_enc_pending(&c->enc) >= C.cfg.out_bound) {
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
static int io_attach(conn *c) {
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
  double tick = C.cfg.tick;
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

/* ---- the handshake ---- */

static int send_hs(int fd, const unsigned char *msg, size_t n, double deadline) {
  unsigned char hdr[NOISE_LENBYTES] = { (unsigned char)(n >> 8), (unsigned char)n };
  return write_all(fd, hdr, sizeof hdr, deadline) || write_all(fd, msg, n, deadline) ? -1 : 0;
}

static int recv_hs(int fd, unsigned char msg[NOISE_MAX_MSG], size_t *n, double deadline) {
  unsigned char hdr[NOISE_LENBYTES];
  if (read_exact(fd, hdr, sizeof hdr, deadline) || noise_msg_len(hdr, n)) return -1;
  return read_exact(fd, msg, *n, deadline);
}

/* Reads frames until the first one completes (the responder's decision or
** the initiator's confirmation); the decoder is bounded until then. */
static int first_frame(int fd, frame_dec *d, frame_msg *f, double deadline) {
  unsigned char b[256];
  for (;;) {
    ssize_t r = recv(fd, b, sizeof b, MSG_PEEK | MSG_DONTWAIT);
    if (r == 0) return -1;
    if (r < 0) {
      if (errno != EAGAIN && errno != EINTR) return -1;
      if (wait_fd(fd, POLLIN, deadline) != 0) return -1;
      continue;
    }
    size_t used;
    int rc = frame_dec_feed(d, b, (size_t)r, &used, f);
    if (rc < 0) return -1;
    recv(fd, b, used, MSG_DONTWAIT);   /* take only what the decoder used */
    if (rc == 1) return 0;
  }
}

/* The type of the first record of a DATA frame, or -1. */
static int first_record(const frame_msg *f) {
  size_t off = 0, len;
  const unsigned char *rec;
  return frame_record_next(f, &off, &rec, &len) == 1 && len > 0 ? rec[0] : -1;
}

/* Splits "name@host[:port]" into host and port (0 if none). */
static void host_of(const char *name, char *host, size_t cap, int *port) {
  const char *at = strchr(name, '@');
  snprintf(host, cap, "%s", at ? at + 1 : "localhost");
  *port = 0;
  char *colon = strrchr(host, ':');
  if (colon && !strchr(colon + 1, ']')) { *port = atoi(colon + 1); *colon = '\0'; }
}

static int initiate(uint32_t idx, double deadline, int *refused, char *err, size_t errlen) {
  const char *name = node_name(idx);
  if (!name) { snprintf(err, errlen, "noconnection"); return -1; }
  char host[NODE_NAME_MAX + 1], short_name[NODE_NAME_MAX + 1];
  int port;
  host_of(name, host, sizeof host, &port);
  if (!port) port = node_port(idx);
  if (!port) {
    snprintf(short_name, sizeof short_name, "%.*s", (int)(strchr(name, '@') - name), name);
    double left = deadline - mbox_now();
    if (pmap_lookup(host, short_name, &port, left > 0 ? left : 0.01, err, errlen) != 0) return -1;
  }
  int fd = tcp_connect(host, port, deadline, err, errlen);
  if (fd < 0) return -1;
  noise_hs hs;
  unsigned char msg[NOISE_MAX_MSG], hello[NOISE_HELLO_MAX], payload[NOISE_MAX_PAYLOAD];
  size_t n, hn, pn;
  noise_hello peer;
  frame_enc enc;
  frame_dec dec;
  frame_msg f;
  const char *fail = NULL;
  if (noise_hs_init(&hs, NOISE_INITIATOR, C.cfg.key, (const unsigned char *)NOISE_PROLOGUE,
                    NOISE_PROLOGUE_LEN) != 0 ||
      noise_hello_encode(node_self(), node_creation(), hello, sizeof hello, &hn) != 0 ||
      noise_hs_write(&hs, hello, hn, msg, sizeof msg, &n) != 0)
    fail = "handshake setup failed";
  else if (send_hs(fd, msg, n, deadline) != 0 || recv_hs(fd, msg, &n, deadline) != 0)
    fail = "no handshake answer";
  else if (noise_hs_read(&hs, msg, n, payload, sizeof payload, &pn) != 0 ||
           noise_hello_decode(payload, pn, &peer) != 0)
    fail = "handshake refused (a different cluster key?)";
  else if (strcmp(peer.name, name) != 0)
    fail = "the peer answered with another node name";
  else if (frame_start(&hs, C.cfg.max_body, &enc, &dec) != 0)
    fail = "handshake split failed";
  noise_hs_wipe(&hs);
  if (fail) {
    snprintf(err, errlen, "%s: %s", name, fail);
    close(fd);
    return -1;
  }
  const unsigned char *out;
  size_t outn;
  int ok = frame_enc_flush(&enc, &out, &outn) == 0 && write_all(fd, out, outn, deadline) == 0 &&
           frame_enc_consumed(&enc, outn) == 0 && first_frame(fd, &dec, &f, deadline) == 0;
  if (ok && f.type == FRAME_DATA && first_record(&f) == REC_ALIVE) {
    conn *have = node_conn(idx);
    unsigned char answer = have ? REC_HASLINK : REC_NOLINK;
    if (have) conn_release(have);
    ok = frame_enc_record(&enc, &answer, 1, NULL, 0) == 0 && frame_enc_flush(&enc, &out, &outn) == 0 &&
         write_all(fd, out, outn, deadline) == 0 && frame_enc_consumed(&enc, outn) == 0 &&
         first_frame(fd, &dec, &f, deadline) == 0;
  }
  if (!ok || f.type != FRAME_DATA || first_record(&f) != REC_ACCEPT) {
    *refused = ok && f.type == FRAME_CLOSE;
    snprintf(err, errlen, "%s: %s", name, *refused ?
             "the peer kept another link to this node" : "handshake not confirmed");
    frame_enc_free(&enc);
    frame_dec_free(&dec);
    close(fd);
    return -1;
  }
  conn *c = conn_new(fd, idx, peer.creation, &enc, &dec);
  if (!c) {
    frame_enc_free(&enc);
    frame_dec_free(&dec);
    close(fd);
    snprintf(err, errlen, "out of memory");
    return -1;
  }
  /* Installed, announced, then handed to its I/O thread, all under c->lock
  ** (as hs_accept does): no sender writes before the I/O thread has it,
  ** and no record is read before the nodeup. */
  pthread_mutex_lock(&c->lock);
  if (node_install_conn(idx, c) != 0) {   /* an incoming link won meanwhile: keep it */
    pthread_mutex_unlock(&c->lock);
    conn_release(c);   /* never used: this closes it */
    return 0;
  }
  dist_node_up(idx);
  int attached = io_attach(c) == 0;
  if (!attached && node_clear_conn(idx, c)) {
    dist_node_down(idx, peer.creation, "out of memory");
    node_down_done(idx);
  }
  pthread_mutex_unlock(&c->lock);
  if (!attached) {
    conn_release(c);
    snprintf(err, errlen, "out of memory");
    return -1;
  }
  conn_release(c);   /* ours; the table and the I/O thread hold theirs */
  return 0;
}

int conn_connect(uint32_t idx, double deadline, char *err, size_t errlen) {
  if (!atomic_load(&C.running)) { snprintf(err, errlen, "this node is not started (start_node)"); return -1; }
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
  int rc = initiate(idx, deadline, &refused, err, errlen);
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

/* ---- accepting: admission and the responder's side ---- */

static void addr_key(const struct sockaddr_storage *sa, unsigned char key[16]) {
  memset(key, 0, 16);
  if (sa->ss_family == AF_INET) memcpy(key, &((const struct sockaddr_in *)sa)->sin_addr, 4);
  else if (sa->ss_family == AF_INET6) memcpy(key, &((const struct sockaddr_in6 *)sa)->sin6_addr, 16);
}

/* Reports a failed handshake, at most once per REPORT_GAP per address
** (with the count of those not reported), so a flood costs a fixed amount. */
static void report_failure(const hs_slot *s, const char *why) {
  pthread_mutex_lock(&C.lock);
  rate_slot *r = NULL, *oldest = &C.rate[0];
  for (int i = 0; i < RATE_SLOTS && !r; i++) {
    if (C.rate[i].used && memcmp(C.rate[i].addr, s->addr, 16) == 0) r = &C.rate[i];
    else if (C.rate[i].last_report < oldest->last_report) oldest = &C.rate[i];
  }
  if (!r) {
    r = oldest;
    memcpy(r->addr, s->addr, 16);
    r->used = 1;
    r->last_report = -INFINITY;
    r->quiet = 0;
  }
  double t = mbox_now();
  int now = t - r->last_report >= REPORT_GAP;
  /* And at most REPORTS_PER_GAP in all per REPORT_GAP, whatever the addresses. */
  if (t - C.reports_since >= REPORT_GAP) { C.reports_since = t; C.reports = 0; }
  if (now && C.reports >= REPORTS_PER_GAP) now = 0;
  if (now) C.reports++;
  unsigned quiet = r->quiet;
  if (now) { r->last_report = t; r->quiet = 0; } else r->quiet++;
  pthread_mutex_unlock(&C.lock);
  if (!now) return;
  char host[INET6_ADDRSTRLEN] = "?", text[200];
  if (s->sa.ss_family == AF_INET)
    inet_ntop(AF_INET, &((const struct sockaddr_in *)&s->sa)->sin_addr, host, sizeof host);
  else if (s->sa.ss_family == AF_INET6)
    inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)&s->sa)->sin6_addr, host, sizeof host);
  if (quiet) snprintf(text, sizeof text, "%s (and %u more from this address not reported)", why, quiet);
  else snprintf(text, sizeof text, "%s", why);
  dist_report("warning", "node handshake failed", host, text);
}

/* Frees a slot: its socket closed, its key material wiped. */
static void hs_drop(hs_slot *s, const char *why) {
  if (s->fd < 0) return;
  C.hs_used--;
  if (why) report_failure(s, why);
  epoll_ctl(C.ios[0].ep, EPOLL_CTL_DEL, s->fd, NULL);
  close(s->fd);
  s->fd = -1;
  noise_hs_wipe(&s->noise);
  if (s->c) {   /* HS_ALIVE: the link never reached the node table */
    s->c->fd = -1;
    conn_release(s->c);
    s->c = NULL;
  } else if (s->split) {
    frame_enc_free(&s->enc);
    frame_dec_free(&s->dec);
  }
  s->split = 0;
}

/* Which of two slots goes first: one still waiting for msg1 (no progress)
** before one further on, then the older. */
static int evict_before(const hs_slot *a, const hs_slot *b) {
  if (!b) return 1;
  int wa = a->step == HS_MSG1, wb = b->step == HS_MSG1;
  return wa != wb ? wa : a->started < b->started;
}

/* The slot for a socket from `addr`: a free one, unless that address holds
** HS_PER_ADDR or every slot is taken; then one of that address (or of all)
** is closed to make room: the oldest that has not sent msg1, else the
** oldest. */
static hs_slot *hs_admit(const unsigned char addr[16]) {
  hs_slot *free_slot = NULL, *oldest = NULL, *oldest_here = NULL;
  int here = 0;
  for (int i = 0; i < HS_SLOTS; i++) {
    hs_slot *s = &C.hs[i];
    if (s->fd < 0) { if (!free_slot) free_slot = s; continue; }
    if (evict_before(s, oldest)) oldest = s;
    if (memcmp(s->addr, addr, 16) == 0) {
      here++;
      if (evict_before(s, oldest_here)) oldest_here = s;
    }
  }
  hs_slot *s = here >= HS_PER_ADDR ? oldest_here : free_slot ? free_slot : oldest;
  hs_drop(s, NULL);
  return s;
}

static void accept_all(io *t) {
  for (int k = 0; k < HS_SLOTS; k++) {   /* bounded per wake-up; the listener stays readable */
    struct sockaddr_storage sa;
    socklen_t sl = sizeof sa;
    int fd = accept4(C.listen_fd, (struct sockaddr *)&sa, &sl, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd < 0) {
      if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
        epoll_ctl(t->ep, EPOLL_CTL_DEL, C.listen_fd, NULL);   /* no spinning on a full table */
        C.accept_paused = mbox_now() + ACCEPT_PAUSE;
      }
      return;
    }
    tune(fd);
    unsigned char key[16];
    addr_key(&sa, key);
    hs_slot *s = hs_admit(key);
    memset(s, 0, sizeof *s);
    s->tag.kind = TAG_HS;
    s->fd = fd;
    memcpy(s->addr, key, 16);
    s->sa = sa;
    s->started = mbox_now();
    s->deadline = s->started + HS_SECONDS;
    s->step = HS_MSG1;
    C.hs_used++;
    struct epoll_event ev = { EPOLLIN, { .ptr = &s->tag } };
    if (noise_hs_init(&s->noise, NOISE_RESPONDER, C.cfg.key, (const unsigned char *)NOISE_PROLOGUE,
                      NOISE_PROLOGUE_LEN) != 0 || epoll_ctl(t->ep, EPOLL_CTL_ADD, fd, &ev) != 0) {
      close(fd);
      s->fd = -1;
      C.hs_used--;
      noise_hs_wipe(&s->noise);
    }
  }
}

/* One send that must take everything: a handshake message or a record of a
** few dozen bytes, on a socket whose buffer holds nothing yet. */
static int send_now(int fd, const unsigned char *p, size_t n) {
  ssize_t w = send(fd, p, n, MSG_DONTWAIT | MSG_NOSIGNAL);
  return w == (ssize_t)n ? 0 : -1;
}

/* Queues one record (or a CLOSE) in enc and writes everything at once. */
static int send_frame_now(int fd, frame_enc *enc, int type, unsigned char rec) {
  const unsigned char *out;
  size_t n;
  int rc = type == FRAME_DATA ? frame_enc_record(enc, &rec, 1, NULL, 0) : frame_enc_control(enc, type, NULL, 0);
  if (rc != 0 || frame_enc_flush(enc, &out, &n) != 0) return -1;
  rc = send_now(fd, out, n);
  frame_enc_consumed(enc, n);
  return rc;
}

/* Feeds what the socket holds to d, taking only the bytes d used, until a
** frame is complete. Returns 1 with the frame in *f, 0 to wait for more,
** -1 on failure (EOF, a bad frame). */
static int hs_frame(int fd, frame_dec *d, frame_msg *f) {
  unsigned char b[256];
  for (;;) {
    ssize_t r = recv(fd, b, sizeof b, MSG_PEEK | MSG_DONTWAIT);
    if (r == 0) return -1;
    if (r < 0) return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR ? 0 : -1;
    size_t used;
    int rc = frame_dec_feed(d, b, (size_t)r, &used, f);
    if (rc < 0) return -1;
    if (recv(fd, b, used, MSG_DONTWAIT) != (ssize_t)used) return -1;   /* take only what was used */
    if (rc == 1) return 1;
  }
}

/* The link is up: it leaves the slot for its I/O thread. Under c->lock
** (held by the caller) no sender can write before the ACCEPT record. */
static int hs_hand_over(hs_slot *s, conn *c) {
  epoll_ctl(C.ios[0].ep, EPOLL_CTL_DEL, s->fd, NULL);
  s->fd = -1;
  C.hs_used--;
  s->c = NULL;
  s->split = 0;
  return io_attach(c);
}

/* The link c, installed for idx (c->lock held, released here), goes to its
** I/O thread and gets ACCEPT. A link it replaced has its signals fired
** first, while c->lock keeps senders off c, so that what they do over c
** comes after the old link's noconnection. */
static void hs_accept(hs_slot *s, conn *c, conn *old, uint32_t idx, const char *old_why) {
  if (old) {
    conn_close(old, 0);
    dist_node_down(idx, conn_peer_creation(old), old_why);   /* local deliveries only: no lock of c's */
  }
  dist_node_up(idx);   /* installed; before its I/O thread reads a record */
  int gone = hs_hand_over(s, c) != 0 || send_frame_now(c->fd, &c->enc, FRAME_DATA, REC_ACCEPT) != 0;
  if (gone) shutdown(c->fd, SHUT_RDWR);   /* its I/O thread ends it: a lost link */
  c->last_send = mbox_now();
  pthread_mutex_unlock(&c->lock);
  conn_release(c);   /* the slot's; the table and the I/O thread hold theirs */
  if (old) {
    dist_link_lost(idx, old_why);   /* it makes a Lua state: outside the lock */
    conn_release(old);
  }
}

/* After the confirmation: the peer is authenticated. Decides, and installs
** the link atomically with the decision. Returns 0 when the slot is done
** (handed over or dropped), 1 when it waits for the answer to ALIVE. */
static int hs_decide(hs_slot *s) {
  uint32_t idx;
  const char *name = s->peer.name;
  conn *c = NULL, *old = NULL;
  if (!node_valid_name(name, strlen(name)) || strcmp(name, node_self()) == 0 ||
      node_intern(name, strlen(name), &idx) != 0 ||
      (c = conn_new(s->fd, idx, s->peer.creation, &s->enc, &s->dec)) == NULL) {
    hs_drop(s, "out of memory or a bad name");
    return 0;
  }
  s->split = 0;   /* enc and dec are c's now */
  s->c = c;
  s->idx = idx;
  /* From the moment c is in the node table, senders may find it: they wait
  ** on its lock until the decision is on the wire. */
  pthread_mutex_lock(&c->lock);
  /* Both sides connecting at once: the link started by the smaller name wins. */
  int rc = node_accept_conn(idx, c, s->peer.creation, strcmp(name, node_self()) < 0, &old);
  if (rc == NODE_ASK) {
    /* A link to this incarnation is up here: ask whether the peer still has it. */
    int sent = send_frame_now(s->fd, &c->enc, FRAME_DATA, REC_ALIVE);
    pthread_mutex_unlock(&c->lock);
    if (sent != 0) { hs_drop(s, "cannot ask about the old link"); return 0; }
    s->step = HS_ALIVE;
    return 1;
  }
  if (rc != NODE_ACCEPTED) {   /* a duplicate is not a failure */
    send_frame_now(s->fd, &c->enc, FRAME_CLOSE, 0);
    pthread_mutex_unlock(&c->lock);
    hs_drop(s, NULL);
    return 0;
  }
  hs_accept(s, c, old, idx, "restarted");
  return 0;
}

/* The answer to ALIVE: NOLINK replaces the half-open link, HASLINK closes
** the late duplicate. */
static void hs_alive_answer(hs_slot *s, const frame_msg *f) {
  conn *c = s->c;
  int nolink = f->type == FRAME_DATA && first_record(f) == REC_NOLINK;
  pthread_mutex_lock(&c->lock);
  if (!nolink) {
    send_frame_now(s->fd, &c->enc, FRAME_CLOSE, 0);
    pthread_mutex_unlock(&c->lock);
    hs_drop(s, NULL);
    return;
  }
  uint32_t idx = s->idx;
  conn *old = node_replace_conn(idx, c);
  hs_accept(s, c, old, idx, "replaced by a new link");
}

/* msg1 is in: answer with msg2 and split. Returns 0, or -1 (slot dropped). */
static int hs_answer(hs_slot *s, size_t n) {
  unsigned char payload[NOISE_MAX_PAYLOAD], hello[NOISE_HELLO_MAX], msg[NOISE_LENBYTES + NOISE_MAX_MSG];
  size_t pn, hn, mn;
  if (noise_hs_read(&s->noise, s->in + NOISE_LENBYTES, n, payload, sizeof payload, &pn) != 0 ||
      noise_hello_decode(payload, pn, &s->peer) != 0) {
    hs_drop(s, "wrong cluster key or a malformed message");
    return -1;
  }
  if (noise_hello_encode(node_self(), node_creation(), hello, sizeof hello, &hn) != 0 ||
      noise_hs_write(&s->noise, hello, hn, msg + NOISE_LENBYTES, NOISE_MAX_MSG, &mn) != 0) {
    hs_drop(s, "cannot answer");
    return -1;
  }
  msg[0] = (unsigned char)(mn >> 8);
  msg[1] = (unsigned char)mn;
  if (send_now(s->fd, msg, NOISE_LENBYTES + mn) != 0) { hs_drop(s, "cannot answer"); return -1; }
  if (frame_start(&s->noise, C.cfg.max_body, &s->enc, &s->dec) != 0) {
    hs_drop(s, "handshake split failed");
    return -1;
  }
  s->split = 1;
  s->step = HS_CONFIRM;
  return 0;
}

/* The socket of a slot is readable: the next step, as far as the bytes go. */
static void hs_event(hs_slot *s) {
  if (s->step == HS_MSG1) {
    size_t need = NOISE_LENBYTES, n = 0;
    for (;;) {
      if (s->have >= NOISE_LENBYTES) {
        if (noise_msg_len(s->in, &n) != 0) { hs_drop(s, "no valid first message"); return; }
        need = NOISE_LENBYTES + n;
      }
      if (s->have == need) break;
      ssize_t r = recv(s->fd, s->in + s->have, need - s->have, MSG_DONTWAIT);
      if (r < 0 && errno == EINTR) continue;
      if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
      if (r <= 0) { hs_drop(s, "no valid first message"); return; }
      s->have += (size_t)r;
    }
    if (hs_answer(s, n) != 0) return;
  }
  frame_msg f;
  if (s->step == HS_CONFIRM) {
    int rc = hs_frame(s->fd, &s->dec, &f);
    if (rc == 0) return;
    if (rc < 0 || f.type != FRAME_CONFIRM) { hs_drop(s, "no confirmation (a replayed first message?)"); return; }
    if (hs_decide(s) == 0) return;
  }
  if (s->step == HS_ALIVE) {
    int rc = hs_frame(s->fd, &s->c->dec, &f);
    if (rc == 0) return;
    if (rc < 0) { hs_drop(s, NULL); return; }
    hs_alive_answer(s, &f);
  }
}

/* Drops the slots past their deadline; returns the earliest deadline left
** (INFINITY if none). */
static double hs_expire(double now) {
  double next = INFINITY;
  if (C.hs_used == 0) return next;
  for (int i = 0; i < HS_SLOTS; i++) {
    hs_slot *s = &C.hs[i];
    if (s->fd < 0) continue;
    if (now >= s->deadline) hs_drop(s, "no handshake within 5 s");
    else if (s->deadline < next) next = s->deadline;
  }
  return next;
}

/* ---- the port mapper registration (I/O thread 0) ---- */

int conn_keep_pmap(const char *name, int port, int fd, char *err, size_t errlen) {
  pmap_keeper k;
  if (pmap_keeper_start(&k, name, port, fd, err, errlen) != 0) return -1;
  io *t = &C.ios[0];
  pthread_mutex_lock(&t->lock);
  C.keeper_new = k;
  C.keeper_handed = 1;
  pthread_mutex_unlock(&t->lock);
  wake(t);
  return 0;
}

/* Steps the keeper and keeps its descriptor in epoll: a new connection
** (even under a number just closed) is deleted and added again. */
static void keeper_sync(io *t) {
  int64_t now = pmap_now_ms();
  C.keeper_due = pmap_keeper_step(&C.keeper, now);
  int fd = pmap_keeper_fd(&C.keeper), ev = pmap_keeper_events(&C.keeper);
  unsigned attempt = pmap_keeper_attempts(&C.keeper);
  struct epoll_event e = { (uint32_t)ev, { .ptr = &C.keeper_tag } };
  if (C.keeper_fd >= 0 && (fd != C.keeper_fd || attempt != C.keeper_conn)) {
    epoll_ctl(t->ep, EPOLL_CTL_DEL, C.keeper_fd, NULL);   /* the keeper may have closed it already */
    C.keeper_fd = -1;
  }
  if (fd >= 0 && C.keeper_fd < 0) {
    if (epoll_ctl(t->ep, EPOLL_CTL_ADD, fd, &e) == 0) {
      C.keeper_fd = fd;
      C.keeper_conn = attempt;
      C.keeper_ev = ev;
    } else C.keeper_due = now + PMAP_KEEPER_MIN_MS;   /* try again */
  } else if (fd >= 0 && ev != C.keeper_ev && epoll_ctl(t->ep, EPOLL_CTL_MOD, fd, &e) == 0)
    C.keeper_ev = ev;
}

static void keeper_take(io *t) {
  pthread_mutex_lock(&t->lock);
  int handed = C.keeper_handed;
  if (handed) { C.keeper = C.keeper_new; C.keeper_handed = 0; }
  pthread_mutex_unlock(&t->lock);
  if (!handed) return;
  C.keeper_on = 1;
  C.keeper_fd = -1;
  keeper_sync(t);
}

static void keeper_end(io *t) {
  if (!C.keeper_on) return;
  if (C.keeper_fd >= 0) epoll_ctl(t->ep, EPOLL_CTL_DEL, C.keeper_fd, NULL);
  pmap_keeper_stop(&C.keeper);
  C.keeper_on = 0;
  C.keeper_fd = -1;
}

/* ---- the I/O threads ---- */

static void *io_main(void *arg) {
  io *t = arg;
  io_self = t;
  unsigned char *buf = malloc(IO_CHUNK);
  struct epoll_event ev[IO_EVENTS];
  double period = C.cfg.tick / 4;
  t->next_sweep = mbox_now() + period;
  while (buf) {
    double now = mbox_now();
    int running = atomic_load(&C.running);
    if (!running && (t->nconns == 0 || now > C.stop_deadline)) break;
    double next = t->next_sweep;
    if (t->index == 0) {
      double hs = hs_expire(now);
      if (hs < next) next = hs;
      if (C.accept_paused && C.accept_paused < next) next = C.accept_paused;
      if (C.keeper_on && C.keeper_due != PMAP_KEEPER_NEVER) {
        double due = now + (double)(C.keeper_due - pmap_now_ms()) / 1000;
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
        if (running) accept_all(t);
      } else if (tag->kind == TAG_KEEPER) {
        if (C.keeper_on) keeper_sync(t);
      } else if (tag->kind == TAG_HS) {
        hs_slot *s = (hs_slot *)tag;
        if (s->fd >= 0 && running) hs_event(s);
        else hs_drop(s, NULL);   /* a stopping node takes no new link */
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
    if (t->index == 0 && C.accept_paused && now >= C.accept_paused && running) {
      struct epoll_event lev = { EPOLLIN, { .ptr = &C.listen_tag } };
      epoll_ctl(t->ep, EPOLL_CTL_ADD, C.listen_fd, &lev);
      C.accept_paused = 0;
    }
    if (now >= t->next_sweep) {
      sweep(t, now);
      t->next_sweep = now + period;
    }
    if (t->index == 0 && C.keeper_on && C.keeper_due != PMAP_KEEPER_NEVER && pmap_now_ms() >= C.keeper_due)
      keeper_sync(t);
  }
  /* Stopped: what did not close in order is ended here. */
  take_adds(t, mbox_now());
  while (t->nconns > 0) end_conn(t, t->conns[t->nconns - 1], "closed");
  if (t->index == 0) {
    for (int i = 0; i < HS_SLOTS; i++) hs_drop(&C.hs[i], NULL);
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
  if (atomic_load(&C.running)) { snprintf(err, errlen, "already listening"); return -1; }
  C.cfg = *cfg;
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
  C.hs = calloc(HS_SLOTS, sizeof *C.hs);
  C.nio = io_count();
  int ok = C.hs != NULL;
  int made = 0;
  for (; ok && made < C.nio; made++) ok = io_init(&C.ios[made], made) == 0;
  struct epoll_event lev = { EPOLLIN, { .ptr = &C.listen_tag } };
  if (ok) ok = epoll_ctl(C.ios[0].ep, EPOLL_CTL_ADD, fd, &lev) == 0;
  if (ok) {
    for (int i = 0; i < HS_SLOTS; i++) C.hs[i].fd = -1;
    C.listen_fd = fd;
    C.accept_paused = 0;
    atomic_store(&C.running, 1);
  }
  int started = 0;
  for (; ok && started < C.nio; started++)
    ok = pthread_create(&C.ios[started].thread, NULL, io_main, &C.ios[started]) == 0;
  if (!ok) {
    atomic_store(&C.running, 0);
    C.stop_deadline = 0;
    for (int i = 0; i < started; i++) { wake(&C.ios[i]); pthread_join(C.ios[i].thread, NULL); }
    for (int i = 0; i < made; i++) io_free(&C.ios[i]);
    free(C.hs);
    C.hs = NULL;
    close(fd);
    C.listen_fd = -1;
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
  if (!atomic_load(&C.running)) return;
  C.stop_deadline = mbox_now() + STOP_SECONDS;
  atomic_store(&C.running, 0);   /* after the deadline: the threads read it once they see this */
  node_each_up(close_one, NULL);
  for (int i = 0; i < C.nio; i++) wake(&C.ios[i]);
  for (int i = 0; i < C.nio; i++) pthread_join(C.ios[i].thread, NULL);
  for (int i = 0; i < C.nio; i++) io_free(&C.ios[i]);
  close(C.listen_fd);
  C.listen_fd = -1;
  free(C.hs);
  C.hs = NULL;
  sodium_memzero(C.cfg.key, sizeof C.cfg.key);
}
