/*
** portmapd.c — the port mapper daemon: the listening socket, the epoll
** loop, the table of registrations and the PING/LOOKUP/REGISTER/NAMES
** handling (see portmapd.h; the protocol is in doc/portmap.md).
*/
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "errbuf.h"
#include "portmapd.h"

#define LISTEN_BACKLOG  128
#define ACCEPT_PAUSE_MS 100     /* accept pauses this long when out of descriptors */
#define SMALL_REPLY     32      /* longest reply but NAMES: "ERR already registered\n" */

/* Milliseconds left until `deadline` (pmap_now_ms), for epoll (0 when past). */
static int ms_left(int64_t deadline) {
  int64_t left = deadline - pmap_now_ms();
  if (left < 0) return 0;
  return left > INT_MAX ? INT_MAX : (int)left;
}

/* {================= who may register */

int pmapd_is_loopback(const struct sockaddr *sa, socklen_t len) {
  if (sa == NULL) return 0;
  if (sa->sa_family == AF_INET && len >= (socklen_t)sizeof(struct sockaddr_in)) {
    const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
    return (ntohl(in->sin_addr.s_addr) >> 24) == 127;
  }
  if (sa->sa_family == AF_INET6 && len >= (socklen_t)sizeof(struct sockaddr_in6)) {
    const struct in6_addr *a = &((const struct sockaddr_in6 *)sa)->sin6_addr;
    if (IN6_IS_ADDR_LOOPBACK(a)) return 1;
    return IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr[12] == 127;
  }
  return 0;
}

/* }================= */


/* {================= the listening socket */

static int try_listen(int family, int port, int *fd, char *err, size_t errlen) {
  int one = 1, zero = 0;
  int s = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  int e;
  if (s < 0) {
    e = errno;
    errbuf_set(err, errlen, "port mapper: cannot make a socket: %s", strerror(e));
    return e;
  }
  setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (family == AF_INET6) {
    struct sockaddr_in6 a;
    setsockopt(s, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
    memset(&a, 0, sizeof a);
    a.sin6_family = AF_INET6;
    a.sin6_addr = in6addr_any;
    a.sin6_port = htons((uint16_t)port);
    e = bind(s, (struct sockaddr *)&a, sizeof a) == 0 ? 0 : errno;
  }
  else {
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_ANY);
    a.sin_port = htons((uint16_t)port);
    e = bind(s, (struct sockaddr *)&a, sizeof a) == 0 ? 0 : errno;
  }
  if (e == 0 && listen(s, LISTEN_BACKLOG) != 0) e = errno;
  if (e != 0) {
    close(s);
    if (e == EADDRINUSE)
      errbuf_set(err, errlen, "port mapper: port %d is already in use", port);
    else
      errbuf_set(err, errlen, "port mapper: cannot listen on port %d: %s", port, strerror(e));
    return e;
  }
  *fd = s;
  return 0;
}

int pmapd_listen(int port, int *fd, int *bound_port, char *err, size_t errlen) {
  struct sockaddr_storage ss;
  socklen_t len = sizeof ss;
  int s, e;
  if (port < 0 || port > 65535) {
    errbuf_set(err, errlen, "port mapper: port %d is not in 0..65535", port);
    return -1;
  }
  e = try_listen(AF_INET6, port, &s, err, errlen);
  if (e == EAFNOSUPPORT || e == EADDRNOTAVAIL)  /* no IPv6 on this host */
    e = try_listen(AF_INET, port, &s, err, errlen);
  if (e != 0) {
    errno = e;
    return -1;
  }
  if (getsockname(s, (struct sockaddr *)&ss, &len) != 0) {
    errbuf_set(err, errlen, "port mapper: getsockname: %s", strerror(errno));
    close(s);
    return -1;
  }
  *bound_port = ss.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&ss)->sin6_port)
                                         : ntohs(((struct sockaddr_in *)&ss)->sin_port);
  *fd = s;
  return 0;
}

/* }================= */


/* {================= the daemon */

/* The daemon's connections. Invariants (pmapd_serve's thread only, so no
** lock): a connection is on the `all` list from accept to close; it is on
** the timed list exactly when deadline != 0, and that list is sorted by
** deadline because every deadline is `now + PMAPD_STALL_SECONDS` with a
** clock that never goes back; it is in the name hash exactly when
** reg_port != 0. A closed connection (fd -1) waits on the graveyard until
** the events of the current epoll batch, which may still name it, are done. */
typedef struct pmapd_conn {
  int fd;                 /* -1 once closed (and in the fuzz target, which has no sockets) */
  unsigned char closed;   /* on the graveyard */
  unsigned char loopback; /* the peer is loopback: it may register and list */
  unsigned char closing;  /* close once the reply is sent */
  unsigned events;        /* the epoll interest set now */
  int reg_port;           /* the registered port; 0: nothing registered */
  uint32_t hash;          /* of name, while registered */
  int64_t deadline;       /* monotonic ms at which it is closed; 0: none */
  struct pmapd_conn *tprev, *tnext;  /* timed list */
  struct pmapd_conn *aprev, *anext;  /* all connections; anext links the graveyard */
  struct pmapd_conn *hnext;          /* name hash chain */
  char *listing;          /* a NAMES reply being sent (PMAPD_LISTINGS at most), else NULL */
  size_t inlen, outlen, outoff;     /* outlen/outoff count `listing` when it is set */
  char name[PMAP_NAME_MAX + 1];
  char in[PMAP_LINE_MAX];
  char out[SMALL_REPLY];  /* every reply but NAMES fits */
} pmapd_conn;

/* The daemon's state; only pmapd_serve (one per process) uses it. */
static struct {
  volatile sig_atomic_t stop;   /* set by SIGTERM/SIGINT */
  int epfd;                     /* -1 outside pmapd_serve */
  int reserve;                  /* a spare descriptor, given up to answer "ERR busy" */
  pmapd_conn *all, *grave;       /* open connections; closed, not yet freed */
  pmapd_conn *thead, *ttail;     /* connections with a deadline, earliest first */
  pmapd_conn **buckets;          /* the name hash: nbuckets (a power of 2) chains */
  size_t nbuckets, nnames;      /* nnames: registered names */
  uint32_t seed;                /* of the name hash */
  int nconns, nremote;          /* open connections; of which non-loopback */
  int nlistings;                /* connections sending a NAMES listing */
  int64_t accept_pause;         /* out of descriptors: accept again after this */
  unsigned listen_events;       /* the listener's epoll interest: EPOLLIN, or 0 while paused */
} S = { .epfd = -1, .reserve = -1 };

static void on_stop_signal(int sig) {
  (void)sig;
  S.stop = 1;
}

/* {------ the name hash */

static uint32_t name_hash(const char *s, size_t n) {
  uint32_t h = 2166136261u ^ S.seed;  /* FNV-1a, seeded: names come from peers */
  size_t i;
  for (i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 16777619u;
  return h;
}

/* Doubles the bucket array when names outnumber buckets; on failure the
** table stays as it is (longer chains, still correct). */
static void hash_grow(void) {
  size_t n = S.nbuckets ? S.nbuckets * 2 : 64, i;
  pmapd_conn **b;
  if (S.nnames < S.nbuckets) return;
  b = calloc(n, sizeof *b);
  if (b == NULL) return;
  for (i = 0; i < S.nbuckets; i++)
    while (S.buckets[i] != NULL) {
      pmapd_conn *c = S.buckets[i];
      S.buckets[i] = c->hnext;
      c->hnext = b[c->hash & (n - 1)];
      b[c->hash & (n - 1)] = c;
    }
  free(S.buckets);
  S.buckets = b;
  S.nbuckets = n;
}

static pmapd_conn *find_name(const char *name, size_t n) {
  pmapd_conn *c;
  uint32_t h = name_hash(name, n);
  if (S.nbuckets == 0) return NULL;
  for (c = S.buckets[h & (S.nbuckets - 1)]; c != NULL; c = c->hnext)
    if (c->hash == h && strlen(c->name) == n && memcmp(c->name, name, n) == 0) return c;
  return NULL;
}

/* Registers c (not registered; the name is free). Fails only out of memory. */
static int hash_add(pmapd_conn *c, const char *name, size_t n, int port) {
  hash_grow();
  if (S.nbuckets == 0) return -1;
  memcpy(c->name, name, n);
  c->name[n] = '\0';
  c->hash = name_hash(name, n);
  c->reg_port = port;
  c->hnext = S.buckets[c->hash & (S.nbuckets - 1)];
  S.buckets[c->hash & (S.nbuckets - 1)] = c;
  S.nnames++;
  return 0;
}

static void hash_remove(pmapd_conn *c) {
  pmapd_conn **pp;
  if (c->reg_port == 0) return;
  for (pp = &S.buckets[c->hash & (S.nbuckets - 1)]; *pp != NULL; pp = &(*pp)->hnext)
    if (*pp == c) {
      *pp = c->hnext;
      break;
    }
  c->hnext = NULL;
  c->reg_port = 0;
  c->name[0] = '\0';
  S.nnames--;
}

/* }------ */

/* {------ deadlines */

static void timed_unlink(pmapd_conn *c) {
  if (c->deadline == 0) return;
  if (c->tprev) c->tprev->tnext = c->tnext; else S.thead = c->tnext;
  if (c->tnext) c->tnext->tprev = c->tprev; else S.ttail = c->tprev;
  c->tprev = c->tnext = NULL;
  c->deadline = 0;
}

/* The stall rule. `progress` is an accept, a request line taken, or a reply
** sent in full: each restarts the clock. Partial lines and partial writes
** do not, so trickling bytes buys no time. A registered connection with
** nothing pending has no deadline. */
static void conn_arm(pmapd_conn *c, int64_t now, int progress) {
  if (c->reg_port != 0 && c->inlen == 0 && c->outlen == 0 && !c->closing) {
    timed_unlink(c);
    return;
  }
  if (c->deadline != 0 && !progress) return;
  timed_unlink(c);
  c->deadline = now + PMAPD_STALL_SECONDS * 1000;
  c->tprev = S.ttail;
  if (S.ttail) S.ttail->tnext = c; else S.thead = c;
  S.ttail = c;
}

/* }------ */

/* {------ connections */

static pmapd_conn *conn_new(int fd, int loopback, int64_t now) {
  pmapd_conn *c = calloc(1, sizeof *c);
  if (c == NULL) return NULL;
  c->fd = fd;
  c->loopback = (unsigned char)loopback;
  c->anext = S.all;
  if (S.all) S.all->aprev = c;
  S.all = c;
  S.nconns++;
  if (!loopback) S.nremote++;
  conn_arm(c, now, 1);
  return c;
}

/* Ends a connection: its name is free at once; the record is freed by
** conn_reap, after the epoll batch that may still name it. */
static void conn_close(pmapd_conn *c) {
  if (c->closed) return;
  c->closed = 1;
  hash_remove(c);
  timed_unlink(c);
  if (c->listing) {
    free(c->listing);
    c->listing = NULL;
    S.nlistings--;
  }
  if (c->fd >= 0) close(c->fd);  /* also leaves the epoll set */
  c->fd = -1;
  if (c->aprev) c->aprev->anext = c->anext; else S.all = c->anext;
  if (c->anext) c->anext->aprev = c->aprev;
  c->aprev = NULL;
  S.nconns--;
  if (!c->loopback) S.nremote--;
  c->anext = S.grave;
  S.grave = c;
}

static void conn_reap(void) {
  while (S.grave != NULL) {
    pmapd_conn *c = S.grave;
    S.grave = c->anext;
    free(c);
  }
}

/* Queues a short reply line (with its '\n'); SMALL_REPLY holds the longest. */
static void reply(pmapd_conn *c, const char *fmt, ...) {
  va_list ap;
  int n;
  va_start(ap, fmt);
  n = vsnprintf(c->out + c->outlen, sizeof c->out - c->outlen, fmt, ap);
  va_end(ap);
  if (n > 0 && (size_t)n < sizeof c->out - c->outlen) c->outlen += (size_t)n;
}

/* An error reply after which the connection is closed. */
static void refuse(pmapd_conn *c, const char *what) {
  reply(c, "ERR %s\n", what);
  c->closing = 1;
}

/* The NAMES reply: a snapshot in its own buffer, since a listing is
** longer than the fixed reply buffer. At most PMAPD_LISTINGS at once, so
** the memory listings hold stays PMAPD_LISTINGS times the table's size. */
static void do_names(pmapd_conn *c) {
  size_t cap = 24 + S.nnames * (PMAP_NAME_MAX + 8), len, i;
  char *buf;
  if (S.nlistings >= PMAPD_LISTINGS || (buf = malloc(cap)) == NULL) {
    refuse(c, "busy");
    return;
  }
  len = (size_t)snprintf(buf, cap, "NAMES %zu\n", S.nnames);
  for (i = 0; i < S.nbuckets; i++) {
    pmapd_conn *r;
    for (r = S.buckets[i]; r != NULL; r = r->hnext)
      len += (size_t)snprintf(buf + len, cap - len, "%s %d\n", r->name, r->reg_port);
  }
  c->listing = buf;
  c->outlen = len;
  c->outoff = 0;
  S.nlistings++;
}

/* Handles one request line (len bytes, without its '\n'; untrusted). */
static void handle_line(pmapd_conn *c, const char *line, size_t len) {
  const char *sp1, *sp2;
  size_t i;
  int port;
  for (i = 0; i < len; i++)
    if ((unsigned char)line[i] < 0x20 || (unsigned char)line[i] > 0x7e) {
      refuse(c, "bad request");
      return;
    }
  sp1 = memchr(line, ' ', len);
  if (sp1 == NULL) {
    if (len == 4 && memcmp(line, "PING", 4) == 0) reply(c, "PONG %d\n", PMAP_PROTOCOL);
    else if (len == 5 && memcmp(line, "NAMES", 5) == 0) {
      if (!c->loopback) refuse(c, "loopback only");
      else do_names(c);
    }
    else refuse(c, "bad request");
    return;
  }
  if ((size_t)(sp1 - line) == 6 && memcmp(line, "LOOKUP", 6) == 0) {
    const char *name = sp1 + 1;
    size_t n = len - (size_t)(name - line);
    pmapd_conn *r;
    if (!pmap_valid_name_n(name, n)) { refuse(c, "bad name"); return; }
    r = find_name(name, n);
    if (r != NULL) reply(c, "PORT %d\n", r->reg_port);
    else reply(c, "NONE\n");
    return;
  }
  if ((size_t)(sp1 - line) == 8 && memcmp(line, "REGISTER", 8) == 0) {
    const char *name = sp1 + 1;
    size_t n;
    sp2 = memchr(name, ' ', len - (size_t)(name - line));
    if (sp2 == NULL) { refuse(c, "bad request"); return; }
    n = (size_t)(sp2 - name);
    if (!c->loopback) { refuse(c, "loopback only"); return; }
    if (!pmap_valid_name_n(name, n)) { refuse(c, "bad name"); return; }
    if (pmap_parse_port_n(sp2 + 1, len - (size_t)(sp2 + 1 - line), &port) != 0 || port == 0) {
      refuse(c, "bad port");
      return;
    }
    if (c->reg_port != 0) { refuse(c, "already registered"); return; }
    if (find_name(name, n) != NULL) { reply(c, "ERR taken\n"); return; }
    if (hash_add(c, name, n, port) != 0) { refuse(c, "busy"); return; }
    reply(c, "OK\n");
    return;
  }
  refuse(c, "bad request");
}

/* Handles the complete lines in the input buffer while no reply is pending
** (a reply is answered before the next request is read). */
static void conn_process(pmapd_conn *c, int64_t now) {
  while (!c->closing && c->outlen == 0) {
    char *nl = memchr(c->in, '\n', c->inlen);
    size_t used;
    if (nl == NULL) {
      if (c->inlen == PMAP_LINE_MAX) refuse(c, "line too long");
      break;
    }
    used = (size_t)(nl - c->in) + 1;
    handle_line(c, c->in, used - 1);
    memmove(c->in, c->in + used, c->inlen - used);
    c->inlen -= used;
    conn_arm(c, now, 1);
  }
  conn_arm(c, now, 0);
}

/* The peer took n more bytes of the reply. */
static void conn_sent(pmapd_conn *c, size_t n, int64_t now) {
  c->outoff += n;
  if (c->outoff < c->outlen) return;
  c->outoff = c->outlen = 0;
  if (c->listing) {
    free(c->listing);
    c->listing = NULL;
    S.nlistings--;
  }
  if (c->closing) {
    conn_close(c);
    return;
  }
  conn_arm(c, now, 1);
  conn_process(c, now);
}

/* The bytes of the reply not yet sent. */
static const char *conn_pending(const pmapd_conn *c) {
  return (c->listing ? c->listing : c->out) + c->outoff;
}

/* }------ */

/* {------ sockets and the loop */

/* Keeps the epoll interest equal to what the connection waits for. */
static void conn_watch(pmapd_conn *c) {
  unsigned want = c->outlen > c->outoff ? EPOLLOUT : (c->closing ? 0u : EPOLLIN);
  struct epoll_event ev;
  if (c->closed || want == c->events) return;
  ev.events = want;
  ev.data.ptr = c;
  if (epoll_ctl(S.epfd, EPOLL_CTL_MOD, c->fd, &ev) == 0) c->events = want;
  else conn_close(c);
}

static void on_readable(pmapd_conn *c, int64_t now) {
  ssize_t n = recv(c->fd, c->in + c->inlen, PMAP_LINE_MAX - c->inlen, MSG_DONTWAIT);
  if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
    conn_close(c);  /* a registration ends with its connection */
    return;
  }
  if (n > 0) {
    c->inlen += (size_t)n;
    conn_process(c, now);
  }
}

static void on_writable(pmapd_conn *c, int64_t now) {
  ssize_t n = send(c->fd, conn_pending(c), c->outlen - c->outoff, MSG_DONTWAIT | MSG_NOSIGNAL);
  if (n < 0) {
    if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) conn_close(c);
    return;
  }
  conn_sent(c, (size_t)n, now);
}

/* Answers a connection the daemon turns away, and closes it. What the peer
** already sent is read first, so that the close does not reset the
** connection before the answer is read. */
static void turn_away(int fd, const char *line) {
  char sink[PMAP_LINE_MAX];
  ssize_t r = send(fd, line, strlen(line), MSG_DONTWAIT | MSG_NOSIGNAL);
  (void)r;
  shutdown(fd, SHUT_WR);
  r = recv(fd, sink, sizeof sink, MSG_DONTWAIT);
  close(fd);
}

#define ACCEPT_BATCH 64  /* accepts per wake-up, so a flood cannot hold the loop */

static void on_accept(int lfd, int64_t now) {
  int i;
  for (i = 0; i < ACCEPT_BATCH; i++) {
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    struct epoll_event ev;
    int fd = accept4(lfd, (struct sockaddr *)&ss, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
    int loopback;
    pmapd_conn *c;
    if (fd < 0) {
      int e = errno;
      if (e == EAGAIN || e == EWOULDBLOCK) return;
      if (e == EINTR || e == ECONNABORTED || e == EPROTO) continue;
      if ((e == EMFILE || e == ENFILE) && S.reserve >= 0) {
        close(S.reserve);  /* room for one: take the peer only to say why not */
        fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd >= 0) turn_away(fd, "ERR busy\n");
        S.reserve = open("/dev/null", O_RDONLY | O_CLOEXEC);
        if (fd >= 0 && S.reserve >= 0) continue;
      }
      S.accept_pause = now + ACCEPT_PAUSE_MS;  /* out of descriptors or memory: else epoll spins */
      return;
    }
    loopback = pmapd_is_loopback((struct sockaddr *)&ss, len);
    if (!loopback && S.nremote >= PMAP_MAX_REMOTE) {
      turn_away(fd, "ERR full\n");
      continue;
    }
    c = conn_new(fd, loopback, now);
    if (c == NULL) {
      turn_away(fd, "ERR busy\n");
      continue;
    }
    ev.events = EPOLLIN;
    ev.data.ptr = c;
    if (epoll_ctl(S.epfd, EPOLL_CTL_ADD, fd, &ev) != 0) {
      conn_close(c);  /* out of kernel memory: as busy, without the answer */
      continue;
    }
    c->events = EPOLLIN;
  }
}

/* Takes the listening socket out of the interest set while accepting is
** paused, back in after. */
static void watch_listener(int lfd, int64_t now) {
  unsigned want = now >= S.accept_pause ? EPOLLIN : 0u;
  struct epoll_event ev;
  if (want == S.listen_events) return;
  ev.events = want;
  ev.data.ptr = NULL;
  if (epoll_ctl(S.epfd, EPOLL_CTL_MOD, lfd, &ev) == 0) S.listen_events = want;
}

static void serve_free(void) {
  while (S.all != NULL) conn_close(S.all);
  conn_reap();
  free(S.buckets);
  S.buckets = NULL;
  S.nbuckets = S.nnames = 0;
  S.nconns = S.nremote = S.nlistings = 0;
  S.thead = S.ttail = NULL;
  if (S.epfd >= 0) close(S.epfd);
  if (S.reserve >= 0) close(S.reserve);
  S.epfd = S.reserve = -1;
}

/* As many descriptors as the hard limit allows: connections are limited
** by descriptors only. */
static void raise_fd_limit(void) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
}

#define MAX_EVENTS 256

int pmapd_serve(int listen_fd, char *err, size_t errlen) {
  struct epoll_event evs[MAX_EVENTS], lev;
  struct sigaction sa, old_int, old_term;
  sigset_t block, old_mask, wait_mask;
  int i;
  raise_fd_limit();
  S.all = S.grave = S.thead = S.ttail = NULL;
  S.nconns = S.nremote = S.nlistings = 0;
  S.accept_pause = 0;
  S.listen_events = EPOLLIN;
  S.stop = 0;
  S.seed = (uint32_t)pmap_now_ms() * 2654435761u ^ (uint32_t)getpid();
  S.epfd = epoll_create1(EPOLL_CLOEXEC);
  S.reserve = open("/dev/null", O_RDONLY | O_CLOEXEC);
  lev.events = EPOLLIN;
  lev.data.ptr = NULL;  /* the listener; connections carry their record */
  if (S.epfd < 0 || epoll_ctl(S.epfd, EPOLL_CTL_ADD, listen_fd, &lev) != 0) {
    errbuf_set(err, errlen, "port mapper: epoll: %s", strerror(errno));
    serve_free();
    close(listen_fd);
    return -1;
  }
  /* SIGINT/SIGTERM are blocked except inside epoll_pwait, so none is missed. */
  sigemptyset(&block);
  sigaddset(&block, SIGINT);
  sigaddset(&block, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &block, &old_mask);
  wait_mask = old_mask;
  sigdelset(&wait_mask, SIGINT);
  sigdelset(&wait_mask, SIGTERM);
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, &old_int);
  sigaction(SIGTERM, &sa, &old_term);

  while (!S.stop) {
    int64_t now = pmap_now_ms(), next = 0;
    int n, timeout = -1;
    while (S.thead != NULL && S.thead->deadline <= now) conn_close(S.thead);  /* stalled */
    conn_reap();
    watch_listener(listen_fd, now);
    if (S.thead != NULL) next = S.thead->deadline;
    if (now < S.accept_pause && (next == 0 || S.accept_pause < next)) next = S.accept_pause;
    if (next != 0) timeout = ms_left(next);
    n = epoll_pwait(S.epfd, evs, MAX_EVENTS, timeout, &wait_mask);
    if (n < 0) {
      if (errno == EINTR) continue;
      errbuf_set(err, errlen, "port mapper: epoll: %s", strerror(errno));
      break;
    }
    now = pmap_now_ms();
    for (i = 0; i < n; i++) {
      pmapd_conn *c = evs[i].data.ptr;
      uint32_t ev = evs[i].events;
      if (c == NULL) {
        if (now >= S.accept_pause) on_accept(listen_fd, now);
        continue;
      }
      if (c->closed) continue;  /* closed earlier in this batch */
      if (ev & EPOLLOUT) on_writable(c, now);
      else if (ev & EPOLLIN) on_readable(c, now);
      else if (ev & (EPOLLERR | EPOLLHUP)) conn_close(c);
      if (!c->closed) conn_watch(c);
    }
  }

  serve_free();
  close(listen_fd);
  /* Unblock before restoring, so that a second stop signal still pending
  ** (timeout(1) signals the child and then its whole group) reaches our
  ** handler instead of the old disposition. */
  pthread_sigmask(SIG_SETMASK, &old_mask, NULL);
  sigaction(SIGINT, &old_int, NULL);
  sigaction(SIGTERM, &old_term, NULL);
  return S.stop ? 0 : -1;
}

/* }================= */
