/*
** conn.c — node links: listen, connect, handshake, reader and writer threads.
*/
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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
#define IO_CHUNK        65536  /* bytes read from the socket at a time */
#define READ_WAIT_MS    250    /* the reader looks at the tick this often */
#define RATE_SLOTS      64     /* source addresses remembered for rate limiting */
#define RATE_FAILURES   5      /* failed handshakes allowed per address and window */
#define RATE_WINDOW     10.0   /* seconds */
#define RATE_RETRY      1.0    /* seconds between attempts of an address over the limit */
#define REC_ACCEPT      0x00   /* the responder's last handshake record: the link is up */
/* Handshake records (before the link is up): a responder that already has
** a link to the same incarnation asks the initiator whether it still has
** it; an initiator only connects with no link, so "no link" means the old
** one is half-open and is replaced, "a link" means a late duplicate. */
#define REC_ALIVE       0xf0   /* responder: do you have a link to me? */
#define REC_NOLINK      0xf1   /* initiator: no */
#define REC_HASLINK     0xf2   /* initiator: yes */
#define DIRECT_GAP      50e-6  /* a send this long after the previous one writes itself */

struct conn {
  _Atomic int refs;
  uint32_t node, peer_creation;  /* immutable; the conn holds a reference on its node's entry */
  int fd;                        /* immutable; closed when the last reference goes */
  double tick;                   /* immutable */
  size_t bound;                  /* immutable */
  pthread_mutex_t lock;
  pthread_cond_t more;           /* lock: the writer waits for records or closing */
  pthread_cond_t room;           /* lock: senders wait for the buffer to drain */
  frame_enc enc;                 /* lock */
  int closing;                   /* lock: no more records; the writer ends */
  int writing;                   /* lock: the writer holds bytes it is writing outside the lock */
  double last_send;              /* lock: when conn_send last queued a record */
  int orderly;                   /* lock: this side sent CLOSE */
  int waiting_room;              /* lock: senders waiting on `room` */
  frame_dec dec;                 /* the handshake, then the reader thread only */
};

typedef struct rate_slot { unsigned char addr[16]; int failures; double since, last_try; } rate_slot;

/* The module's one global. `cfg` is written by conn_start before the
** acceptor starts and read-only after; `lock` guards the rest. */
static struct {
  conn_config cfg;
  int listen_fd;
  _Atomic int running;
  pthread_mutex_t lock;
  rate_slot rate[RATE_SLOTS];   /* lock */
  _Atomic int writers;          /* writer threads running */
} C = { .listen_fd = -1, .lock = PTHREAD_MUTEX_INITIALIZER };

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
  pthread_cond_destroy(&c->more);
  pthread_cond_destroy(&c->room);
  if (c->fd >= 0) close(c->fd);
  node_unref(c->node);
  free(c);
}

uint32_t conn_node(const conn *c) { return c->node; }
uint32_t conn_peer_creation(const conn *c) { return c->peer_creation; }

/* Writes what is queued without waiting (c->lock held, the writer idle);
** whatever the socket does not take stays for the writer. */
static void direct_write_locked(conn *c) {
  const unsigned char *p;
  size_t n;
  if (frame_enc_flush(&c->enc, &p, &n) != 0 || n == 0) return;
  ssize_t w = send(c->fd, p, n, MSG_DONTWAIT | MSG_NOSIGNAL);
  if (w > 0) frame_enc_consumed(&c->enc, (size_t)w);
}

int conn_send(conn *c, const void *a, size_t alen, const void *b, size_t blen, double deadline) {
  int rc = CONN_OK;
  pthread_mutex_lock(&c->lock);
  while (!c->closing && frame_enc_pending(&c->enc) >= c->bound) {
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
      /* A record on a quiet link goes out at once from here, saving the
      ** writer's wake-up (latency); records that come in quick succession
      ** are left to the writer, which batches them (throughput). */
      double t = mbox_now();
      if (!c->writing && t - c->last_send > DIRECT_GAP) direct_write_locked(c);
      c->last_send = t;
      if (frame_enc_pending(&c->enc)) pthread_cond_signal(&c->more);
    }
  }
  pthread_mutex_unlock(&c->lock);
  return rc;
}

void conn_close(conn *c, int orderly) {
  pthread_mutex_lock(&c->lock);
  if (!c->closing) {
    if (orderly) c->orderly = frame_enc_control(&c->enc, FRAME_CLOSE, NULL, 0) == 0;
    if (!c->orderly) shutdown(c->fd, SHUT_RDWR);
    c->closing = 1;
  }
  pthread_cond_broadcast(&c->more);
  pthread_cond_broadcast(&c->room);
  pthread_mutex_unlock(&c->lock);
}

/* The writer: moves sealed frames to the socket in batches, sends a tick
** when the link has been idle for a quarter of the tick time. */
static void *writer_main(void *arg) {
  conn *c = arg;
  unsigned char *out = NULL;
  size_t outcap = 0;
  double idle = c->tick / 4;
  pthread_mutex_lock(&c->lock);
  for (;;) {
    if (frame_enc_pending(&c->enc) == 0 && !c->closing) {
      struct timespec ts = mbox_realtime_in(idle);
      if (pthread_cond_timedwait(&c->more, &c->lock, &ts) != 0 && frame_enc_pending(&c->enc) == 0 &&
          !c->closing)
        frame_enc_control(&c->enc, FRAME_TICK, NULL, 0);
      continue;
    }
    const unsigned char *p;
    size_t n = 0;
    int bad = frame_enc_flush(&c->enc, &p, &n) != 0;
    if (n > outcap) {
      unsigned char *grown = realloc(out, n);
      if (!grown) bad = 1;
      else { out = grown; outcap = n; }
    }
    if (!bad && n) {
      memcpy(out, p, n);
      frame_enc_consumed(&c->enc, n);
    }
    if (c->waiting_room) pthread_cond_broadcast(&c->room);
    int closing = c->closing;
    c->writing = 1;   /* senders must not write past these bytes */
    pthread_mutex_unlock(&c->lock);
    int failed = bad || (n && write_all(c->fd, out, n, mbox_now() + c->tick) != 0);
    pthread_mutex_lock(&c->lock);
    c->writing = 0;
    if (failed) {
      shutdown(c->fd, SHUT_RDWR);   /* the reader sees it and ends the link */
      c->closing = 1;
      break;
    }
    if (closing && frame_enc_pending(&c->enc) == 0) {
      shutdown(c->fd, SHUT_WR);
      break;
    }
  }
  pthread_cond_broadcast(&c->room);
  pthread_mutex_unlock(&c->lock);
  free(out);
  conn_release(c);
  atomic_fetch_sub(&C.writers, 1);
  return NULL;
}

/* The reader: decodes frames and hands records to dist; a broken link,
** a silence of one tick time, or the peer's CLOSE end it. */
static void *reader_main(void *arg) {
  conn *c = arg;
  unsigned char *buf = malloc(IO_CHUNK);
  const char *why = "noconnection";
  double last = mbox_now();
  while (buf) {
    /* A blocking recv that times out every READ_WAIT_MS (SO_RCVTIMEO, set by
    ** conn_run): one system call per arrival, and a regular look at the tick. */
    ssize_t got = recv(c->fd, buf, IO_CHUNK, 0);
    if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
      if (mbox_now() - last > c->tick) { why = "tick"; break; }
      continue;
    }
    if (got <= 0) break;
    last = mbox_now();
    size_t off = 0, used;
    frame_msg f;
    int rc = 0, closed = 0;
    while ((rc = frame_dec_feed(&c->dec, buf + off, (size_t)got - off, &used, &f)) == 1) {
      off += used;
      if (f.type == FRAME_DATA) {
        size_t roff = 0, rlen;
        const unsigned char *rec;
        while (frame_record_next(&f, &roff, &rec, &rlen) == 1)
          if (rlen && rec[0] != REC_ACCEPT) dist_inbound(c, rec, rlen);
      } else if (f.type == FRAME_CLOSE) {
        closed = 1;
        break;
      }
    }
    if (rc < 0) { why = "a bad frame"; break; }
    if (closed) { why = "closed"; break; }
  }
  free(buf);
  pthread_mutex_lock(&c->lock);
  if (c->orderly) why = "closed";   /* we closed first: the end is the peer's answer */
  pthread_mutex_unlock(&c->lock);
  /* A peer that closed in order gets our CLOSE in answer. */
  conn_close(c, strcmp(why, "closed") == 0);
  if (node_clear_conn(c->node, c)) {
    dist_node_down(c->node, c->peer_creation);
    dist_link_lost(c->node, why);
  }
  conn_release(c);
  return NULL;
}

static conn *conn_new(int fd, uint32_t node, uint32_t creation, frame_enc *enc, frame_dec *dec) {
  conn *c = calloc(1, sizeof *c);
  if (!c) return NULL;
  atomic_init(&c->refs, 1);
  c->fd = fd;
  c->node = node;
  node_ref(node);   /* records from the link name the node until the last reference goes */
  c->peer_creation = creation;
  c->tick = C.cfg.tick;
  c->bound = C.cfg.out_bound;
  pthread_mutex_init(&c->lock, NULL);
  pthread_cond_init(&c->more, NULL);
  pthread_cond_init(&c->room, NULL);
  c->enc = *enc;
  c->dec = *dec;
  return c;
}

/* Starts the two threads (each holds a reference). Returns 0 or -1. */
static int conn_run(conn *c) {
  /* From here the socket blocks for the reader (every other use passes
  ** MSG_DONTWAIT), with a receive timeout for its tick check. */
  int fl = fcntl(c->fd, F_GETFL);
  if (fl >= 0) fcntl(c->fd, F_SETFL, fl & ~O_NONBLOCK);
  struct timeval tv = { 0, READ_WAIT_MS * 1000 };
  setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  pthread_attr_t at;
  pthread_attr_init(&at);
  pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
  pthread_attr_setstacksize(&at, 256 * 1024);
  pthread_t t;
  conn_retain(c);
  conn_retain(c);
  atomic_fetch_add(&C.writers, 1);
  int ok = pthread_create(&t, &at, writer_main, c) == 0;
  if (!ok) { conn_release(c); conn_release(c); atomic_fetch_sub(&C.writers, 1); }
  else if (pthread_create(&t, &at, reader_main, c) != 0) {
    conn_release(c);
    conn_close(c, 0);  /* the writer ends and drops its reference */
    ok = 0;
  }
  pthread_attr_destroy(&at);
  return ok ? 0 : -1;
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

/* Sends one handshake record (c->lock held). */
static int send_record(conn *c, unsigned char type, double deadline) {
  const unsigned char *out;
  size_t outn;
  if (frame_enc_record(&c->enc, &type, 1, NULL, 0) != 0 || frame_enc_flush(&c->enc, &out, &outn) != 0)
    return -1;
  int rc = write_all(c->fd, out, outn, deadline);
  frame_enc_consumed(&c->enc, outn);
  return rc;
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
  if (node_install_conn(idx, c) != 0) {   /* an incoming link won meanwhile: keep it */
    conn_release(c);
    return 0;
  }
  if (conn_run(c) != 0) {
    node_clear_conn(idx, c);
    conn_release(c);
    snprintf(err, errlen, "cannot start the link's threads");
    return -1;
  }
  conn_release(c);   /* ours; the table and the threads hold theirs */
  return 0;
}

int conn_connect(uint32_t idx, double deadline, char *err, size_t errlen) {
  if (!atomic_load(&C.running)) { snprintf(err, errlen, "this node is not started (start_node)"); return -1; }
  if (idx == 0 || strcmp(node_name(idx), node_self()) == 0) {
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

/* ---- accepting ---- */

static void addr_key(const struct sockaddr_storage *sa, unsigned char key[16]) {
  memset(key, 0, 16);
  if (sa->ss_family == AF_INET) memcpy(key, &((const struct sockaddr_in *)sa)->sin_addr, 4);
  else if (sa->ss_family == AF_INET6) memcpy(key, &((const struct sockaddr_in6 *)sa)->sin6_addr, 16);
}

/* Returns the slot for addr (the oldest is recycled); C.lock held. */
static rate_slot *rate_find_locked(const unsigned char key[16]) {
  rate_slot *oldest = &C.rate[0];
  for (int i = 0; i < RATE_SLOTS; i++) {
    if (memcmp(C.rate[i].addr, key, 16) == 0) return &C.rate[i];
    if (C.rate[i].since < oldest->since) oldest = &C.rate[i];
  }
  memcpy(oldest->addr, key, 16);
  oldest->failures = 0;
  oldest->since = mbox_now();
  return oldest;
}

static int rate_limited(const unsigned char key[16]) {
  pthread_mutex_lock(&C.lock);
  rate_slot *s = rate_find_locked(key);
  double t = mbox_now();
  if (t - s->since > RATE_WINDOW) { s->failures = 0; s->since = t; }
  /* Over the limit, an address still gets one attempt a second, so a good
  ** node that shares it (loopback, NAT) is slowed, not locked out. */
  int limited = s->failures >= RATE_FAILURES && t - s->last_try < RATE_RETRY;
  if (!limited) s->last_try = t;
  pthread_mutex_unlock(&C.lock);
  return limited;
}

static void rate_fail(const unsigned char key[16], const struct sockaddr_storage *sa, const char *why) {
  pthread_mutex_lock(&C.lock);
  rate_slot *s = rate_find_locked(key);
  s->failures++;
  pthread_mutex_unlock(&C.lock);
  char host[INET6_ADDRSTRLEN] = "?";
  if (sa->ss_family == AF_INET) inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, host, sizeof host);
  else if (sa->ss_family == AF_INET6) inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, host, sizeof host);
  dist_report("warning", "node handshake failed", host, why);
}

/* Runs the responder's side on stack buffers. Returns the connection, or
** NULL with *why set (nothing allocated on the peer's behalf before the
** confirmation). */
static conn *respond(int fd, const char **why) {
  double deadline = mbox_now() + HS_SECONDS;
  noise_hs hs;
  unsigned char msg[NOISE_MAX_MSG], hello[NOISE_HELLO_MAX], payload[NOISE_MAX_PAYLOAD];
  size_t n, hn, pn;
  noise_hello peer;
  frame_enc enc;
  frame_dec dec;
  frame_msg f;
  *why = NULL;
  if (noise_hs_init(&hs, NOISE_RESPONDER, C.cfg.key, (const unsigned char *)NOISE_PROLOGUE,
                    NOISE_PROLOGUE_LEN) != 0)
    *why = "handshake setup failed";
  else if (recv_hs(fd, msg, &n, deadline) != 0) *why = "no valid first message";
  else if (noise_hs_read(&hs, msg, n, payload, sizeof payload, &pn) != 0 ||
           noise_hello_decode(payload, pn, &peer) != 0)
    *why = "wrong cluster key or a malformed message";
  else if (noise_hello_encode(node_self(), node_creation(), hello, sizeof hello, &hn) != 0 ||
           noise_hs_write(&hs, hello, hn, msg, sizeof msg, &n) != 0 ||
           send_hs(fd, msg, n, deadline) != 0)
    *why = "cannot answer";
  else if (frame_start(&hs, C.cfg.max_body, &enc, &dec) != 0) *why = "handshake split failed";
  noise_hs_wipe(&hs);
  if (*why) return NULL;
  if (first_frame(fd, &dec, &f, deadline) != 0 || f.type != FRAME_CONFIRM) {
    *why = "no confirmation (a replayed first message?)";
    frame_enc_free(&enc);
    frame_dec_free(&dec);
    return NULL;
  }
  /* Authenticated from here on: decide, and install atomically with the
  ** decision, before answering. */
  uint32_t idx;
  conn *c = NULL, *old = NULL;
  int accept = node_valid_name(peer.name, strlen(peer.name)) && strcmp(peer.name, node_self()) != 0 &&
               node_intern(peer.name, strlen(peer.name), &idx) == 0 &&
               (c = conn_new(fd, idx, peer.creation, &enc, &dec)) != NULL;
  if (!accept) { frame_enc_free(&enc); frame_dec_free(&dec); *why = "out of memory or a bad name"; return NULL; }
  /* From the moment c is in the node table, senders may find it: they wait
  ** on its lock until the decision (ACCEPT or CLOSE) is on the wire, so
  ** nothing can precede the ACCEPT record. */
  pthread_mutex_lock(&c->lock);
  /* Both sides connecting at once: the link started by the smaller name wins. */
  int rc = node_accept_conn(idx, c, peer.creation, strcmp(peer.name, node_self()) < 0, &old);
  if (rc == NODE_ASK) {
    /* A link to this incarnation is up here: ask whether the peer still has it. */
    frame_msg answer;
    rc = send_record(c, REC_ALIVE, deadline) == 0 && first_frame(fd, &c->dec, &answer, deadline) == 0 &&
         answer.type == FRAME_DATA && first_record(&answer) == REC_NOLINK ? NODE_ACCEPTED : NODE_REFUSED;
    if (rc == NODE_ACCEPTED) old = node_replace_conn(idx, c);
  }
  const char *old_why = NULL;   /* reported once c->lock is let go */
  if (old) {   /* restarted, or a half-open link: the old link's signals fire now */
    conn_close(old, 0);
    old_why = conn_peer_creation(old) != peer.creation ? "restarted" : "replaced by a new link";
    dist_node_down(idx, conn_peer_creation(old));
    conn_release(old);
  }
  if (rc != NODE_ACCEPTED) {   /* a duplicate is not a failure */
    frame_enc_control(&c->enc, FRAME_CLOSE, NULL, 0);
    const unsigned char *out;
    size_t outn;
    if (frame_enc_flush(&c->enc, &out, &outn) == 0) write_all(fd, out, outn, deadline);
    pthread_mutex_unlock(&c->lock);
    c->fd = -1;    /* the caller closes fd */
    conn_release(c);
    c = NULL;
  } else {
    send_record(c, REC_ACCEPT, deadline);   /* a failed write shows up as a lost link */
    pthread_mutex_unlock(&c->lock);
  }
  if (old_why) dist_link_lost(idx, old_why);
  return c;
}

static void *acceptor_main(void *arg) {
  (void)arg;
  while (atomic_load(&C.running)) {
    struct sockaddr_storage sa;
    socklen_t sl = sizeof sa;
    struct pollfd p = { C.listen_fd, POLLIN, 0 };
    if (poll(&p, 1, 250) <= 0) continue;
    int fd = accept4(C.listen_fd, (struct sockaddr *)&sa, &sl, SOCK_CLOEXEC);
    if (fd < 0) continue;
    unsigned char key[16];
    addr_key(&sa, key);
    if (rate_limited(key)) { close(fd); continue; }
    tune(fd);
    const char *why;
    conn *c = respond(fd, &why);
    if (!c) {
      if (why) rate_fail(key, &sa, why);
      close(fd);
      continue;
    }
    if (conn_run(c) != 0) node_clear_conn(c->node, c);
    conn_release(c);
  }
  close(C.listen_fd);
  C.listen_fd = -1;
  return NULL;
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
  int fd = socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int one = 1;
  if (fd >= 0) setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (fd < 0 || bind(fd, res->ai_addr, res->ai_addrlen) != 0 || listen(fd, 64) != 0) {
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
  C.listen_fd = fd;
  atomic_store(&C.running, 1);
  pthread_t t;
  pthread_attr_t at;
  pthread_attr_init(&at);
  pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
  int rc = pthread_create(&t, &at, acceptor_main, NULL);
  pthread_attr_destroy(&at);
  if (rc != 0) {
    atomic_store(&C.running, 0);
    close(fd);
    C.listen_fd = -1;
    snprintf(err, errlen, "cannot start the acceptor thread");
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
  if (!atomic_exchange(&C.running, 0)) return;
  node_each_up(close_one, NULL);
  /* Give the writers a moment to send what is queued and the CLOSE. */
  for (int i = 0; i < 200 && atomic_load(&C.writers) > 0; i++) {
    struct timespec ts = { 0, 5000000 };
    nanosleep(&ts, NULL);
  }
  sodium_memzero(C.cfg.key, sizeof C.cfg.key);
}
