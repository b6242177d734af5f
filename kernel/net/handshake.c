/*
** handshake.c — making links: the initiator's side of the handshake, run
** by the thread that connects, and the responder's, run by I/O thread 0
** over fixed slots (doc/netlink.md gives the design; handshake.md the
** bytes).
**
** A process that connects runs the initiator's side itself (it may block,
** up to its deadline), then hands the link to its I/O thread.
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
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>
#include "conn_impl.h"
#include "dist.h"
#include "frame.h"
#include "handshake.h"
#include "mailbox.h"
#include "node.h"
#include "noise.h"
#include "portmap.h"

#define HS_SECONDS      5.0    /* a handshake must finish within this */
#define HS_SLOTS        64     /* unauthenticated accepted sockets at once, in all */
#define HS_PER_ADDR     8      /* ... and from one source address */
#define ACCEPT_PAUSE    0.1    /* seconds accepting pauses when descriptors run out */
#define RATE_SLOTS      64     /* source addresses remembered for reporting */
#define REPORT_GAP      1.0    /* seconds between two reports of failed handshakes from one address */
#define REPORTS_PER_GAP 10     /* ... and the most reports in all within REPORT_GAP */
/* Handshake records (before the link is up): a responder that already has
** a link to the same incarnation asks the initiator whether it still has
** it; an initiator only connects with no link, so "no link" means the old
** one is half-open and is replaced, "a link" means a late duplicate. */
#define REC_ALIVE       0xf0   /* responder: do you have a link to me? */
#define REC_NOLINK      0xf1   /* initiator: no */
#define REC_HASLINK     0xf2   /* initiator: yes */

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

typedef struct rate_slot { unsigned char addr[16]; double last_report; unsigned quiet; int used; } rate_slot;

/* The handshakes' global. `lock` guards `rate`, `reports_since` and
** `reports`; `slots` and `used` belong to I/O thread 0 (hs_start and
** hs_stop make and free the slots while it does not run). */
static struct {
  pthread_mutex_t lock;
  rate_slot rate[RATE_SLOTS];   /* lock */
  double reports_since;         /* lock */
  int reports;                  /* lock: failure reports since reports_since */
  hs_slot *slots;               /* HS_SLOTS of them */
  int used;                     /* slots with a socket */
} H = { .lock = PTHREAD_MUTEX_INITIALIZER };

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

/* ---- the initiator's side ---- */

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

int hs_initiate(uint32_t idx, double deadline, int *refused, char *err, size_t errlen) {
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
  if (noise_hs_init(&hs, NOISE_INITIATOR, conn_G.cfg.key, (const unsigned char *)NOISE_PROLOGUE,
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
  else if (frame_start(&hs, conn_G.cfg.max_body, &enc, &dec) != 0)
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
  ** (as hs_link_up does): no sender writes before the I/O thread has it,
  ** and no record is read before the nodeup. */
  pthread_mutex_lock(&c->lock);
  if (node_install_conn(idx, c) != 0) {   /* an incoming link won meanwhile: keep it */
    pthread_mutex_unlock(&c->lock);
    conn_release(c);   /* never used: this closes it */
    return 0;
  }
  dist_node_up(idx);
  int attached = conn_attach(c) == 0;
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

/* ---- accepting: admission and the responder's side ---- */

/* The key admission and reports count by: an IPv4 address (also when it
** comes mapped into IPv6), or an IPv6 address's /64, which one host
** usually holds whole, so its many addresses count as one. */
static void addr_key(const struct sockaddr_storage *sa, unsigned char key[16]) {
  memset(key, 0, 16);
  if (sa->ss_family == AF_INET) memcpy(key, &((const struct sockaddr_in *)sa)->sin_addr, 4);
  else if (sa->ss_family == AF_INET6) {
    const struct in6_addr *a = &((const struct sockaddr_in6 *)sa)->sin6_addr;
    if (IN6_IS_ADDR_V4MAPPED(a)) memcpy(key, a->s6_addr + 12, 4);
    else { key[15] = 6; memcpy(key, a->s6_addr, 8); }   /* the mark keeps it apart from IPv4 keys */
  }
}

/* Reports a failed handshake, at most once per REPORT_GAP per address
** (with the count of those not reported), so a flood costs a fixed amount. */
static void report_failure(const hs_slot *s, const char *why) {
  pthread_mutex_lock(&H.lock);
  rate_slot *r = NULL, *oldest = &H.rate[0];
  for (int i = 0; i < RATE_SLOTS && !r; i++) {
    if (H.rate[i].used && memcmp(H.rate[i].addr, s->addr, 16) == 0) r = &H.rate[i];
    else if (H.rate[i].last_report < oldest->last_report) oldest = &H.rate[i];
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
  if (t - H.reports_since >= REPORT_GAP) { H.reports_since = t; H.reports = 0; }
  if (now && H.reports >= REPORTS_PER_GAP) now = 0;
  if (now) H.reports++;
  unsigned quiet = r->quiet;
  if (now) { r->last_report = t; r->quiet = 0; } else r->quiet++;
  pthread_mutex_unlock(&H.lock);
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
  H.used--;
  if (why) report_failure(s, why);
  epoll_ctl(conn_G.ios[0].ep, EPOLL_CTL_DEL, s->fd, NULL);
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
    hs_slot *s = &H.slots[i];
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

void hs_accept_all(io *t) {
  for (int k = 0; k < HS_SLOTS; k++) {   /* bounded per wake-up; the listener stays readable */
    struct sockaddr_storage sa;
    socklen_t sl = sizeof sa;
    int fd = accept4(conn_G.listen_fd, (struct sockaddr *)&sa, &sl, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd < 0) {
      if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
        epoll_ctl(t->ep, EPOLL_CTL_DEL, conn_G.listen_fd, NULL);   /* no spinning on a full table */
        conn_G.accept_paused = mbox_now() + ACCEPT_PAUSE;
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
    H.used++;
    struct epoll_event ev = { EPOLLIN, { .ptr = &s->tag } };
    if (noise_hs_init(&s->noise, NOISE_RESPONDER, conn_G.cfg.key, (const unsigned char *)NOISE_PROLOGUE,
                      NOISE_PROLOGUE_LEN) != 0 || epoll_ctl(t->ep, EPOLL_CTL_ADD, fd, &ev) != 0) {
      close(fd);
      s->fd = -1;
      H.used--;
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
  epoll_ctl(conn_G.ios[0].ep, EPOLL_CTL_DEL, s->fd, NULL);
  s->fd = -1;
  H.used--;
  s->c = NULL;
  s->split = 0;
  return conn_attach(c);
}

/* The link c, installed for idx (c->lock held, released here), goes to its
** I/O thread and gets ACCEPT. A link it replaced has its signals fired
** first, while c->lock keeps senders off c, so that what they do over c
** comes after the old link's noconnection. */
static void hs_link_up(hs_slot *s, conn *c, conn *old, uint32_t idx, const char *old_why) {
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
  hs_link_up(s, c, old, idx, "restarted");
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
  hs_link_up(s, c, old, idx, "replaced by a new link");
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
  if (frame_start(&s->noise, conn_G.cfg.max_body, &s->enc, &s->dec) != 0) {
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
double hs_expire(double now) {
  double next = INFINITY;
  if (H.used == 0) return next;
  for (int i = 0; i < HS_SLOTS; i++) {
    hs_slot *s = &H.slots[i];
    if (s->fd < 0) continue;
    if (now >= s->deadline) hs_drop(s, "no handshake within 5 s");
    else if (s->deadline < next) next = s->deadline;
  }
  return next;
}

void hs_ready(io_tag *tag, int running) {
  hs_slot *s = (hs_slot *)tag;
  if (s->fd >= 0 && running) hs_event(s);
  else hs_drop(s, NULL);   /* a stopping node takes no new link */
}

void hs_drop_all(void) {
  for (int i = 0; i < HS_SLOTS; i++) hs_drop(&H.slots[i], NULL);
}

int hs_start(void) {
  H.slots = calloc(HS_SLOTS, sizeof *H.slots);
  if (!H.slots) return -1;
  for (int i = 0; i < HS_SLOTS; i++) H.slots[i].fd = -1;
  return 0;
}

void hs_stop(void) {
  free(H.slots);
  H.slots = NULL;
}
