/*
** portmap.c — the port mapper: a daemon mapping node names to ports (like
** epmd), and the client calls a node makes to it (see portmap.h).
*/
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "erlangen_config.h"
#include "errbuf.h"
#include "portmap.h"

#define LISTEN_BACKLOG  128
#define PING_SECONDS    0.5     /* how long pmap_ensure's first probe waits */
#define RETRY_MS        20      /* pause between probes while a daemon starts */
#define ACCEPT_PAUSE_MS 100     /* accept pauses this long when out of descriptors */
#define REPLY_MAX       PMAP_LINE_MAX  /* longest reply line a client accepts */
/* A reply: the NAMES listing is the longest ("NAMES n\n" + one line a name). */
#define OUT_MAX  (16 + PMAP_MAX_CLIENTS * (PMAP_NAME_MAX + 8))

/* One connection of the daemon. A free slot has fd -1. */
typedef struct pmap_client {
  int fd;
  int loopback;        /* the peer is loopback: it may register and list */
  int closing;         /* close once `out` is sent */
  int reg_port;        /* the registered port; 0: nothing registered */
  int64_t deadline;    /* monotonic ms after which it is closed; 0: none */
  size_t inlen, outlen, outoff;
  char name[PMAP_NAME_MAX + 1];
  char in[PMAP_LINE_MAX];
  char *out;           /* OUT_MAX bytes, the slot's own part of the daemon's buffer */
} pmap_client;

/* The daemon's state; only pmap_serve (one per process) uses it. */
static struct {
  volatile sig_atomic_t stop;   /* set by SIGTERM/SIGINT */
  pmap_client *clients;         /* PMAP_MAX_CLIENTS slots */
  char *outbuf;                 /* PMAP_MAX_CLIENTS * OUT_MAX bytes */
  int nremote;                  /* open connections from non-loopback peers */
  int64_t accept_pause;         /* out of descriptors: accept again after this */
} S;


/* {================= helpers */

static int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t deadline_after(double seconds) {
  return now_ms() + (int64_t)(seconds * 1000.0);
}

/* Milliseconds left until `deadline`, for poll (0 when past). */
static int ms_left(int64_t deadline) {
  int64_t left = deadline - now_ms();
  if (left < 0) return 0;
  return left > INT_MAX ? INT_MAX : (int)left;
}

static void sleep_ms(int ms) {
  struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {}
}

static int name_char(int c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
         c == '_' || c == '.' || c == '-';
}

/* 1 if the n bytes at s are a valid name. */
static int valid_name_n(const char *s, size_t n) {
  size_t i;
  if (n == 0 || n > PMAP_NAME_MAX) return 0;
  for (i = 0; i < n; i++)
    if (!name_char((unsigned char)s[i])) return 0;
  return 1;
}

/* Parses n bytes as a port 0..65535 (decimal, no leading zeros). */
static int parse_port_n(const char *s, size_t n, int *port) {
  int v = 0;
  size_t i;
  if (n == 0 || n > 5 || (n > 1 && s[0] == '0')) return -1;
  for (i = 0; i < n; i++) {
    if (s[i] < '0' || s[i] > '9') return -1;
    v = v * 10 + (s[i] - '0');
  }
  if (v > 65535) return -1;
  *port = v;
  return 0;
}

/* }================= */


/* {================= names, ports, addresses */

int pmap_valid_name(const char *name) {
  return name != NULL && valid_name_n(name, strnlen(name, PMAP_NAME_MAX + 1));
}

int pmap_parse_port(const char *s, int *port) {
  if (s == NULL) return -1;
  return parse_port_n(s, strnlen(s, 6), port);
}

int pmap_default_port(int *port, char *err, size_t errlen) {
  const char *s = getenv(PMAP_PORT_ENV);
  int p;
  if (s == NULL || s[0] == '\0') {
    *port = PMAP_DEFAULT_PORT;
    return 0;
  }
  if (pmap_parse_port(s, &p) != 0 || p == 0) {
    errbuf_set(err, errlen, "%s is '%.32s': it must be a port number 1..65535", PMAP_PORT_ENV, s);
    return -1;
  }
  *port = p;
  return 0;
}

int pmap_is_loopback(const struct sockaddr *sa, socklen_t len) {
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


/* {================= the daemon */

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

int pmap_listen(int port, int *fd, int *bound_port, char *err, size_t errlen) {
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

static void on_stop_signal(int sig) {
  (void)sig;
  S.stop = 1;
}

static void client_close(pmap_client *c) {
  close(c->fd);
  if (!c->loopback) S.nremote--;
  c->fd = -1;
  c->reg_port = 0;
  c->name[0] = '\0';
  c->inlen = c->outlen = c->outoff = 0;
  c->closing = 0;
  c->deadline = 0;
}

/* Queues a reply line (with its '\n'). The caller checks it fits. */
static void reply(pmap_client *c, const char *fmt, ...) {
  va_list ap;
  int n;
  va_start(ap, fmt);
  n = vsnprintf(c->out + c->outlen, OUT_MAX - c->outlen, fmt, ap);
  va_end(ap);
  if (n > 0) c->outlen += (size_t)n;
}

/* An error reply after which the connection is closed. */
static void refuse(pmap_client *c, const char *what) {
  reply(c, "ERR %s\n", what);
  c->closing = 1;
}

static pmap_client *find_name(const char *name, size_t n) {
  int i;
  for (i = 0; i < PMAP_MAX_CLIENTS; i++) {
    pmap_client *c = &S.clients[i];
    if (c->fd >= 0 && c->reg_port != 0 && strlen(c->name) == n && memcmp(c->name, name, n) == 0)
      return c;
  }
  return NULL;
}

static void do_names(pmap_client *c) {
  int i, count = 0;
  for (i = 0; i < PMAP_MAX_CLIENTS; i++)
    if (S.clients[i].fd >= 0 && S.clients[i].reg_port != 0) count++;
  reply(c, "NAMES %d\n", count);
  for (i = 0; i < PMAP_MAX_CLIENTS; i++) {
    pmap_client *r = &S.clients[i];
    if (r->fd >= 0 && r->reg_port != 0) reply(c, "%s %d\n", r->name, r->reg_port);
  }
}

/* Handles one request line (len bytes, without its '\n'; untrusted). */
static void handle_line(pmap_client *c, const char *line, size_t len) {
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
    pmap_client *r;
    if (!valid_name_n(name, n)) { refuse(c, "bad name"); return; }
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
    if (!valid_name_n(name, n)) { refuse(c, "bad name"); return; }
    if (parse_port_n(sp2 + 1, len - (size_t)(sp2 + 1 - line), &port) != 0 || port == 0) {
      refuse(c, "bad port");
      return;
    }
    if (c->reg_port != 0) { refuse(c, "already registered"); return; }
    if (find_name(name, n) != NULL) { reply(c, "ERR taken\n"); return; }
    memcpy(c->name, name, n);
    c->name[n] = '\0';
    c->reg_port = port;
    reply(c, "OK\n");
    return;
  }
  refuse(c, "bad request");
}

/* Handles the complete lines in the input buffer while no reply is pending. */
static void process_input(pmap_client *c) {
  while (!c->closing && c->outlen == 0) {
    char *nl = memchr(c->in, '\n', c->inlen);
    size_t used;
    if (nl == NULL) {
      if (c->inlen == PMAP_LINE_MAX) refuse(c, "line too long");
      return;
    }
    used = (size_t)(nl - c->in) + 1;
    handle_line(c, c->in, used - 1);
    memmove(c->in, c->in + used, c->inlen - used);
    c->inlen -= used;
    c->deadline = 0;  /* progress: the stall clock restarts */
  }
}

/* Sets the stall deadline: none for a registered connection with nothing
** pending; otherwise it runs from the last progress. */
static void arm(pmap_client *c, int64_t now) {
  if (c->reg_port != 0 && c->inlen == 0 && c->outlen == 0 && !c->closing)
    c->deadline = 0;
  else if (c->deadline == 0)
    c->deadline = now + PMAP_STALL_SECONDS * 1000;
}

static void on_readable(pmap_client *c) {
  ssize_t n = recv(c->fd, c->in + c->inlen, PMAP_LINE_MAX - c->inlen, MSG_DONTWAIT);
  if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
    client_close(c);  /* a registration ends with its connection */
    return;
  }
  if (n > 0) {
    c->inlen += (size_t)n;
    process_input(c);
  }
}

static void on_writable(pmap_client *c) {
  ssize_t n = send(c->fd, c->out + c->outoff, c->outlen - c->outoff, MSG_DONTWAIT | MSG_NOSIGNAL);
  if (n < 0) {
    if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) client_close(c);
    return;
  }
  c->outoff += (size_t)n;
  c->deadline = 0;  /* progress */
  if (c->outoff < c->outlen) return;
  c->outoff = c->outlen = 0;
  if (c->closing) {
    client_close(c);
    return;
  }
  process_input(c);
}

static void on_accept(int lfd) {
  for (;;) {
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    int fd = accept4(lfd, (struct sockaddr *)&ss, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
    int loopback, i;
    pmap_client *c = NULL;
    if (fd < 0) {
      if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM)
        S.accept_pause = now_ms() + ACCEPT_PAUSE_MS;  /* else poll would spin */
      return;
    }
    loopback = pmap_is_loopback((struct sockaddr *)&ss, len);
    if (loopback || S.nremote < PMAP_MAX_REMOTE)
      for (i = 0; i < PMAP_MAX_CLIENTS && c == NULL; i++)
        if (S.clients[i].fd < 0) c = &S.clients[i];
    if (c == NULL) {
      static const char busy[] = "ERR busy\n";
      ssize_t r = send(fd, busy, sizeof busy - 1, MSG_DONTWAIT | MSG_NOSIGNAL);
      (void)r;
      close(fd);
      continue;
    }
    c->fd = fd;
    c->loopback = loopback;
    if (!loopback) S.nremote++;
    c->deadline = 0;
    arm(c, now_ms());
  }
}

static void serve_free(void) {
  int i;
  if (S.clients != NULL)
    for (i = 0; i < PMAP_MAX_CLIENTS; i++)
      if (S.clients[i].fd >= 0) client_close(&S.clients[i]);
  free(S.clients);
  free(S.outbuf);
  S.clients = NULL;
  S.outbuf = NULL;
  S.nremote = 0;
}

int pmap_serve(int listen_fd, char *err, size_t errlen) {
  struct pollfd pfd[1 + PMAP_MAX_CLIENTS];
  int slot[1 + PMAP_MAX_CLIENTS];
  struct sigaction sa, old_int, old_term;
  sigset_t block, old_mask, wait_mask;
  int i;
  S.clients = calloc(PMAP_MAX_CLIENTS, sizeof *S.clients);
  S.outbuf = malloc((size_t)PMAP_MAX_CLIENTS * OUT_MAX);  /* touched only as used */
  if (S.clients == NULL || S.outbuf == NULL) {
    serve_free();
    close(listen_fd);
    errbuf_set(err, errlen, "port mapper: out of memory");
    return -1;
  }
  for (i = 0; i < PMAP_MAX_CLIENTS; i++) {
    S.clients[i].fd = -1;
    S.clients[i].out = S.outbuf + (size_t)i * OUT_MAX;
  }
  S.nremote = 0;
  S.accept_pause = 0;
  S.stop = 0;
  /* SIGINT/SIGTERM are blocked except inside ppoll, so none is missed. */
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
    int64_t now = now_ms(), next = 0;
    int n = 0, timeout, r;
    struct timespec ts, *tsp = NULL;
    pfd[n].fd = listen_fd;
    pfd[n].events = now >= S.accept_pause ? POLLIN : 0;
    slot[n++] = -1;
    if (now < S.accept_pause) next = S.accept_pause;
    for (i = 0; i < PMAP_MAX_CLIENTS; i++) {
      pmap_client *c = &S.clients[i];
      if (c->fd < 0) continue;
      if (c->deadline != 0 && c->deadline <= now) {
        client_close(c);  /* stalled */
        continue;
      }
      if (c->deadline != 0 && (next == 0 || c->deadline < next)) next = c->deadline;
      pfd[n].fd = c->fd;
      pfd[n].events = c->outlen > c->outoff ? POLLOUT : (c->closing ? 0 : POLLIN);
      slot[n++] = i;
    }
    if (next != 0) {
      timeout = ms_left(next);
      ts.tv_sec = timeout / 1000;
      ts.tv_nsec = (long)(timeout % 1000) * 1000000L;
      tsp = &ts;
    }
    r = ppoll(pfd, (nfds_t)n, tsp, &wait_mask);
    if (r < 0) {
      if (errno == EINTR) continue;
      errbuf_set(err, errlen, "port mapper: poll: %s", strerror(errno));
      break;
    }
    now = now_ms();
    for (i = 1; i < n; i++) {
      pmap_client *c = &S.clients[slot[i]];
      short ev = pfd[i].revents;
      if (ev == 0 || c->fd != pfd[i].fd) continue;
      if (ev & POLLNVAL) { client_close(c); continue; }
      if (ev & POLLOUT) on_writable(c);
      else if (ev & POLLIN) on_readable(c);
      else if (ev & (POLLERR | POLLHUP)) { client_close(c); continue; }
      if (c->fd >= 0) arm(c, now);
    }
    if (pfd[0].revents & POLLIN) on_accept(listen_fd);
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


/* {================= clients */

/* Connects to `sa` before `deadline`. *fd gets a non-blocking socket. */
static int connect_by(const struct sockaddr *sa, socklen_t len, int64_t deadline, int *fd,
                      char *err, size_t errlen) {
  int s = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  int e = 0;
  if (s < 0) {
    errbuf_set(err, errlen, "cannot make a socket: %s", strerror(errno));
    return -1;
  }
  if (connect(s, sa, len) != 0) {
    e = errno;
    if (e == EINPROGRESS || e == EINTR) {
      struct pollfd p = { s, POLLOUT, 0 };
      socklen_t elen = sizeof e;
      int r;
      do r = poll(&p, 1, ms_left(deadline)); while (r < 0 && errno == EINTR);
      if (r == 0) e = ETIMEDOUT;
      else if (r < 0 || getsockopt(s, SOL_SOCKET, SO_ERROR, &e, &elen) != 0) e = errno;
    }
  }
  if (e != 0) {
    errbuf_set(err, errlen, "%s", strerror(e));
    close(s);
    return -1;
  }
  *fd = s;
  return 0;
}

/* Sends `line`, then reads one reply line (without its '\n') into reply. */
static int exchange(int fd, const char *line, int64_t deadline, char *reply, size_t cap,
                    char *err, size_t errlen) {
  size_t len = strlen(line), off = 0, got = 0;
  while (off < len) {
    struct pollfd p = { fd, POLLOUT, 0 };
    ssize_t n = send(fd, line + off, len - off, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n > 0) { off += (size_t)n; continue; }
    if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
      errbuf_set(err, errlen, "%s", strerror(errno));
      return -1;
    }
    if (poll(&p, 1, ms_left(deadline)) == 0) {
      errbuf_set(err, errlen, "no answer in time");
      return -1;
    }
  }
  for (;;) {  /* the reply is one line; nothing is read past its '\n' unless sent */
    struct pollfd p = { fd, POLLIN, 0 };
    char *nl;
    ssize_t n;
    int r;
    do r = poll(&p, 1, ms_left(deadline)); while (r < 0 && errno == EINTR);
    if (r == 0) {
      errbuf_set(err, errlen, "no answer in time");
      return -1;
    }
    n = recv(fd, reply + got, cap - 1 - got, MSG_DONTWAIT);
    if (n == 0) {
      errbuf_set(err, errlen, "the connection was closed without an answer");
      return -1;
    }
    if (n < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) continue;
      errbuf_set(err, errlen, "%s", strerror(errno));
      return -1;
    }
    got += (size_t)n;
    nl = memchr(reply, '\n', got);
    if (nl != NULL) {
      *nl = '\0';
      return 0;
    }
    if (got == cap - 1) {
      errbuf_set(err, errlen, "the answer is too long");
      return -1;
    }
  }
}

/* Connects to the loopback daemon at `port`. */
static int connect_local(int port, int64_t deadline, int *fd, char *err, size_t errlen) {
  struct sockaddr_in a;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons((uint16_t)port);
  return connect_by((struct sockaddr *)&a, sizeof a, deadline, fd, err, errlen);
}

/* 0 if an erlangen port mapper answers PING on the loopback `port`; 1 if
** something else holds the port; -1 if nothing answers. */
static int ping(int port, double seconds, char *err, size_t errlen) {
  char reply[REPLY_MAX], expect[32];
  int64_t deadline = deadline_after(seconds);
  int fd, r;
  if (connect_local(port, deadline, &fd, err, errlen) != 0) return -1;
  r = exchange(fd, "PING\n", deadline, reply, sizeof reply, err, errlen);
  close(fd);
  if (r != 0) return -1;
  snprintf(expect, sizeof expect, "PONG %d", PMAP_PROTOCOL);
  if (strcmp(reply, expect) != 0) {
    errbuf_set(err, errlen, "port %d is held by something that is not an erlangen port mapper "
           "(it answered '%.40s')", port, reply);
    return 1;
  }
  return 0;
}

int pmap_lookup(const char *host, const char *name, int *port, double timeout_seconds,
                char *err, size_t errlen) {
  struct addrinfo hints, *res = NULL, *ai;
  char service[8], line[PMAP_NAME_MAX + 16], reply[REPLY_MAX], why[160];
  const char *h = (host == NULL) ? "127.0.0.1" : host;
  int64_t deadline;
  int mport, r, p;
  if (!pmap_valid_name(name)) {
    errbuf_set(err, errlen, "'%.80s' is not a valid node name ([A-Za-z0-9_.-], 1 to %d characters)",
           name ? name : "(null)", PMAP_NAME_MAX);
    return -1;
  }
  if (!(timeout_seconds > 0)) {
    errbuf_set(err, errlen, "port mapper lookup: the timeout must be positive");
    return -1;
  }
  if (pmap_default_port(&mport, err, errlen) != 0) return -1;
  deadline = deadline_after(timeout_seconds);
  snprintf(service, sizeof service, "%d", mport);
  memset(&hints, 0, sizeof hints);
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  r = getaddrinfo(h, service, &hints, &res);
  if (r != 0) {
    errbuf_set(err, errlen, "cannot resolve host '%.100s': %s", h, gai_strerror(r));
    return -1;
  }
  snprintf(line, sizeof line, "LOOKUP %s\n", name);
  snprintf(why, sizeof why, "no address");
  for (ai = res; ai != NULL; ai = ai->ai_next) {
    int fd;
    if (now_ms() >= deadline) {
      snprintf(why, sizeof why, "no answer in time");
      break;
    }
    if (connect_by(ai->ai_addr, ai->ai_addrlen, deadline, &fd, why, sizeof why) != 0) continue;
    r = exchange(fd, line, deadline, reply, sizeof reply, why, sizeof why);
    close(fd);
    if (r != 0) continue;
    freeaddrinfo(res);
    if (strcmp(reply, "NONE") == 0) {
      errbuf_set(err, errlen, "no node '%s' on %.100s", name, h);
      return -1;
    }
    if (strncmp(reply, "PORT ", 5) == 0 && pmap_parse_port(reply + 5, &p) == 0 && p != 0) {
      *port = p;
      return 0;
    }
    errbuf_set(err, errlen, "the port mapper on %.100s gave a bad answer: '%.40s'", h, reply);
    return -1;
  }
  freeaddrinfo(res);
  errbuf_set(err, errlen, "no port mapper answers on %.100s port %d: %s", h, mport, why);
  return -1;
}

int pmap_register(const char *name, int port, int *fd, char *err, size_t errlen) {
  char line[PMAP_NAME_MAX + 32], reply[REPLY_MAX], why[160];
  int64_t deadline = deadline_after(PMAP_CLIENT_SECONDS);
  int mport, s;
  if (!pmap_valid_name(name)) {
    errbuf_set(err, errlen, "'%.80s' is not a valid node name ([A-Za-z0-9_.-], 1 to %d characters)",
           name ? name : "(null)", PMAP_NAME_MAX);
    return -1;
  }
  if (port < 1 || port > 65535) {
    errbuf_set(err, errlen, "port %d is not in 1..65535", port);
    return -1;
  }
  if (pmap_default_port(&mport, err, errlen) != 0) return -1;
  if (connect_local(mport, deadline, &s, why, sizeof why) != 0) {
    errbuf_set(err, errlen, "no port mapper answers on port %d: %s", mport, why);
    return -1;
  }
  snprintf(line, sizeof line, "REGISTER %s %d\n", name, port);
  if (exchange(s, line, deadline, reply, sizeof reply, why, sizeof why) != 0) {
    close(s);
    errbuf_set(err, errlen, "registering '%s' with the port mapper: %s", name, why);
    return -1;
  }
  if (strcmp(reply, "OK") == 0) {
    *fd = s;
    return 0;
  }
  close(s);
  if (strcmp(reply, "ERR taken") == 0)
    errbuf_set(err, errlen, "the name '%s' is already registered with the port mapper", name);
  else
    errbuf_set(err, errlen, "the port mapper refused '%s': %.40s", name, reply);
  return -1;
}

/* }================= */


/* {================= starting the daemon */

static int is_executable(const char *path) {
  return access(path, X_OK) == 0;
}

/* 1 if path lies under dir (both resolved). */
static int under(const char *path, const char *dir) {
  size_t n = strlen(dir);
  return strncmp(path, dir, n) == 0 && (path[n] == '/' || (n > 0 && dir[n - 1] == '/'));
}

/* The erlangen executable to start the daemon with (see portmap.h). */
static int find_executable(char *out, size_t cap, char *err, size_t errlen) {
  char self[PATH_MAX], root[PATH_MAX], lib[PATH_MAX];
  Dl_info info;
  ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
  const char *base;
  int self_ok = n > 0;
  if (self_ok) {
    self[n] = '\0';
    base = strrchr(self, '/');
    base = base ? base + 1 : self;
    if (strcmp(base, "erlangen") == 0 && (size_t)n < cap) {
      memcpy(out, self, (size_t)n + 1);
      return 0;
    }
  }
  if (realpath(ERLANGEN_BUILD_ROOT, root) != NULL) {
    int from_build = self_ok && under(self, root);
    if (!from_build && dladdr((void *)find_executable, &info) != 0 && info.dli_fname != NULL &&
        info.dli_fname[0] == '/' && realpath(info.dli_fname, lib) != NULL)
      from_build = under(lib, root);
    if (from_build) {
      if ((size_t)snprintf(out, cap, "%s/erlangen", root) >= cap) {
        errbuf_set(err, errlen, "the build tree's path is too long");
        return -1;
      }
      if (is_executable(out)) return 0;
    }
  }
  if (is_executable(ERLANGEN_BIN_INSTALL) && strlen(ERLANGEN_BIN_INSTALL) < cap) {
    strcpy(out, ERLANGEN_BIN_INSTALL);
    return 0;
  }
  errbuf_set(err, errlen, "cannot find the erlangen executable to start the port mapper "
         "(not at %s): start one with 'erlangen --port-mapper'", ERLANGEN_BIN_INSTALL);
  return -1;
}

/* A close-on-exec copy of fd numbered 3 or above (so dup2 onto 0..2 in the
** child always clears close-on-exec); closes fd. */
static int above_stdio(int fd) {
  int d;
  if (fd < 0 || fd > 2) return fd;
  d = fcntl(fd, F_DUPFD_CLOEXEC, 3);
  close(fd);
  return d;
}

/* In the forked child: async-signal-safe calls only. Never returns. */
static void exec_daemon(const char *exe, char *const argv[], int devnull, int out) {
  sigset_t none;
  pid_t pid;
  int fd;
  setsid();
  pid = fork();
  if (pid != 0) _exit(pid < 0 ? 127 : 0);  /* the daemon is not the node's child */
  if (dup2(devnull, 0) < 0 || dup2(out, 1) < 0 || dup2(devnull, 2) < 0) _exit(127);
#ifdef SYS_close_range
  if (syscall(SYS_close_range, 3u, ~0u, 0u) != 0)
#endif
  {
    long max = sysconf(_SC_OPEN_MAX);
    for (fd = 3; fd < (max > 0 && max < 65536 ? max : 65536); fd++) close(fd);
  }
  if (chdir("/") != 0) _exit(127);
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, NULL);
  execv(exe, argv);
  _exit(127);
}

int pmap_ensure(char *err, size_t errlen) {
  char exe[PATH_MAX], portstr[8], why[200], line[16];
  char *argv[6];
  int port, devnull, pipefd[2], r, got_line = 0;
  size_t got = 0;
  int64_t deadline;
  pid_t pid;
  if (pmap_default_port(&port, err, errlen) != 0) return -1;
  r = ping(port, PING_SECONDS, why, sizeof why);
  if (r == 0) return 0;
  if (r == 1) {
    errbuf_set(err, errlen, "%s", why);
    return -1;
  }
  if (find_executable(exe, sizeof exe, err, errlen) != 0) return -1;
  snprintf(portstr, sizeof portstr, "%d", port);
  argv[0] = exe;
  argv[1] = "--port-mapper";
  argv[2] = "--port";
  argv[3] = portstr;
  argv[4] = NULL;
  devnull = above_stdio(open("/dev/null", O_RDWR | O_CLOEXEC));
  if (devnull < 0) {
    errbuf_set(err, errlen, "cannot open /dev/null: %s", strerror(errno));
    return -1;
  }
  if (pipe2(pipefd, O_CLOEXEC) != 0) {
    errbuf_set(err, errlen, "cannot make a pipe: %s", strerror(errno));
    close(devnull);
    return -1;
  }
  pipefd[0] = above_stdio(pipefd[0]);
  pipefd[1] = above_stdio(pipefd[1]);
  if (pipefd[0] < 0 || pipefd[1] < 0) {
    errbuf_set(err, errlen, "cannot make a pipe: %s", strerror(errno));
    if (pipefd[0] >= 0) close(pipefd[0]);
    if (pipefd[1] >= 0) close(pipefd[1]);
    close(devnull);
    return -1;
  }
  deadline = deadline_after(PMAP_START_SECONDS);
  pid = fork();
  if (pid == 0) exec_daemon(exe, argv, devnull, pipefd[1]);
  close(devnull);
  close(pipefd[1]);
  if (pid < 0) {
    errbuf_set(err, errlen, "cannot start the port mapper: fork: %s", strerror(errno));
    close(pipefd[0]);
    return -1;
  }
  while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {}  /* the intermediate child */
  /* The daemon prints its port once it listens; EOF first means it did not
  ** start (most often: another one won the race for the port). */
  while (!got_line && got < sizeof line - 1) {
    struct pollfd p = { pipefd[0], POLLIN, 0 };
    ssize_t n;
    r = poll(&p, 1, ms_left(deadline));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    n = read(pipefd[0], line + got, sizeof line - 1 - got);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    got += (size_t)n;
    got_line = memchr(line, '\n', got) != NULL;
  }
  close(pipefd[0]);
  for (;;) {
    r = ping(port, (double)ms_left(deadline) / 1000.0 + 0.001, why, sizeof why);
    if (r == 0) return 0;
    if (r == 1 || now_ms() >= deadline) break;
    sleep_ms(RETRY_MS);
  }
  errbuf_set(err, errlen, "the port mapper did not start on port %d within %g s: %s", port,
         PMAP_START_SECONDS, why);
  return -1;
}

/* }================= */
