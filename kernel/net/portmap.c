/*
** portmap.c — the port mapper's client side: the names and ports of its
** protocol, the calls a node makes to the daemon (lookup, names, register,
** ensure) and the registration keeper (see portmap.h; the daemon is
** portmapd.c).
*/
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
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

#define PING_SECONDS    0.5     /* how long pmap_ensure's first probe waits */
#define RETRY_MS        20      /* pause between probes while a daemon starts */
#define REPLY_MAX       PMAP_LINE_MAX  /* longest reply line a client accepts */

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

/* }================= */


/* {================= names and ports */

int pmap_valid_name_n(const char *s, size_t n) {
  size_t i;
  if (n == 0 || n > PMAP_NAME_MAX) return 0;
  for (i = 0; i < n; i++)
    if (!name_char((unsigned char)s[i])) return 0;
  return 1;
}

int pmap_valid_name(const char *name) {
  return name != NULL && pmap_valid_name_n(name, strnlen(name, PMAP_NAME_MAX + 1));
}

int pmap_parse_port_n(const char *s, size_t n, int *port) {
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

int pmap_parse_port(const char *s, int *port) {
  if (s == NULL) return -1;
  return pmap_parse_port_n(s, strnlen(s, 6), port);
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

/* The replies on one connection, read before a deadline. Invariant:
** off <= len <= REPLY_MAX; buf[off..len) are bytes received and not yet
** handed out (a listing's lines come several to a read). */
typedef struct reply_reader {
  int fd;
  int64_t deadline;
  size_t off, len;
  size_t linelen;           /* of the line reader_line returned last */
  char buf[REPLY_MAX + 1];
} reply_reader;

static void reader_init(reply_reader *rd, int fd, int64_t deadline) {
  rd->fd = fd;
  rd->deadline = deadline;
  rd->off = rd->len = rd->linelen = 0;
}

/* The next reply line, without its '\n' and NUL-terminated in rd->buf
** (valid until the next call), its length in rd->linelen; NULL with the
** reason in err when none comes in time, the peer closes first, or
** REPLY_MAX bytes come without a '\n'. A line may hold a NUL: a parser
** that must not stop early goes by linelen. */
static const char *reader_line(reply_reader *rd, char *err, size_t errlen) {
  for (;;) {
    char *start = rd->buf + rd->off, *nl = memchr(start, '\n', rd->len - rd->off);
    struct pollfd p = { rd->fd, POLLIN, 0 };
    ssize_t got;
    int r;
    if (nl != NULL) {
      *nl = '\0';
      rd->linelen = (size_t)(nl - start);
      rd->off += rd->linelen + 1;
      return start;
    }
    memmove(rd->buf, start, rd->len - rd->off);
    rd->len -= rd->off;
    rd->off = 0;
    if (rd->len == REPLY_MAX) {
      errbuf_set(err, errlen, "the answer is too long");
      return NULL;
    }
    do r = poll(&p, 1, ms_left(rd->deadline)); while (r < 0 && errno == EINTR);
    if (r == 0) {
      errbuf_set(err, errlen, "no answer in time");
      return NULL;
    }
    got = recv(rd->fd, rd->buf + rd->len, REPLY_MAX - rd->len, MSG_DONTWAIT);
    if (got == 0) {
      errbuf_set(err, errlen, "the connection was closed without an answer");
      return NULL;
    }
    if (got < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) continue;
      errbuf_set(err, errlen, "%s", strerror(errno));
      return NULL;
    }
    rd->len += (size_t)got;
  }
}

/* Sends `line` on fd, then reads the first reply line through rd (see
** reader_line; *reply points into rd). */
static int exchange(int fd, const char *line, int64_t deadline, reply_reader *rd,
                    const char **reply, char *err, size_t errlen) {
  size_t len = strlen(line), off = 0;
  reader_init(rd, fd, deadline);
  while (off < len) {
    struct pollfd p = { fd, POLLOUT, 0 };
    ssize_t sent = send(fd, line + off, len - off, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (sent > 0) { off += (size_t)sent; continue; }
    if (sent < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
      int e = errno;
      rd->deadline = now_ms();  /* only what is queued already, e.g. "ERR busy" and a close */
      if ((*reply = reader_line(rd, NULL, 0)) != NULL) return 0;
      errbuf_set(err, errlen, "%s", strerror(e));
      return -1;
    }
    if (poll(&p, 1, ms_left(deadline)) == 0) {
      errbuf_set(err, errlen, "no answer in time");
      return -1;
    }
  }
  *reply = reader_line(rd, err, errlen);
  return *reply != NULL ? 0 : -1;
}

/* 1 if `reply` is the daemon turning the connection away ("ERR busy",
** "ERR full"), with the message for the daemon at host:port in err. */
static int turned_away(const char *reply, const char *host, int port, char *err, size_t errlen) {
  const char *fmt = strchr(host, ':') ? "[%.100s]:%d" : "%.100s:%d";
  char where[128];
  snprintf(where, sizeof where, fmt, host, port);
  if (strcmp(reply, "ERR busy") == 0) {
    errbuf_set(err, errlen, "the port mapper on %s is busy (ERR busy): it is out of descriptors "
               "or memory for now; try again", where);
    return 1;
  }
  if (strcmp(reply, "ERR full") == 0) {
    errbuf_set(err, errlen, "the port mapper on %s is full (ERR full): it serves at most %d "
               "connections from other hosts at once", where, PMAP_MAX_REMOTE);
    return 1;
  }
  return 0;
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

/* 0 if an erlangen port mapper answers PING on the loopback `port`; 2 if
** one answers that it is busy or full; 1 if something else holds the
** port; -1 if nothing answers. */
static int ping(int port, double seconds, char *err, size_t errlen) {
  char expect[32];
  const char *reply;
  reply_reader rd;
  int64_t deadline = deadline_after(seconds);
  int fd, r;
  if (connect_local(port, deadline, &fd, err, errlen) != 0) return -1;
  r = exchange(fd, "PING\n", deadline, &rd, &reply, err, errlen);
  close(fd);
  if (r != 0) return -1;
  snprintf(expect, sizeof expect, "PONG %d", PMAP_PROTOCOL);
  if (turned_away(reply, "127.0.0.1", port, err, errlen)) return 2;
  if (strcmp(reply, expect) != 0) {
    errbuf_set(err, errlen, "port %d is held by something that is not an erlangen port mapper "
           "(it answered '%.40s')", port, reply);
    return 1;
  }
  return 0;
}

/* Sends `line` to the daemon on `host` (NULL: 127.0.0.1) at port mport,
** trying each address it resolves to in turn before `deadline`, until one
** answers. *fd is then that connection (the caller closes it) and *reply
** its first reply line, in rd. Fails with "no port mapper answers on ..."
** and the last address's reason, or when the host does not resolve. */
static int ask_host(const char *host, int mport, const char *line, int64_t deadline, int *fd,
                    reply_reader *rd, const char **reply, char *err, size_t errlen) {
  struct addrinfo hints, *res = NULL, *ai;
  const char *h = (host == NULL) ? "127.0.0.1" : host;
  char service[8], why[160];
  int r;
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
  snprintf(why, sizeof why, "no address");
  for (ai = res; ai != NULL; ai = ai->ai_next) {
    if (now_ms() >= deadline) {
      snprintf(why, sizeof why, "no answer in time");
      break;
    }
    if (connect_by(ai->ai_addr, ai->ai_addrlen, deadline, fd, why, sizeof why) != 0) continue;
    if (exchange(*fd, line, deadline, rd, reply, why, sizeof why) == 0) {
      freeaddrinfo(res);
      return 0;
    }
    close(*fd);
  }
  freeaddrinfo(res);
  errbuf_set(err, errlen, "no port mapper answers on %.100s port %d: %s", h, mport, why);
  return -1;
}

int pmap_lookup(const char *host, const char *name, int *port, double timeout_seconds,
                char *err, size_t errlen) {
  char line[PMAP_NAME_MAX + 16];
  const char *h = (host == NULL) ? "127.0.0.1" : host, *reply;
  reply_reader rd;
  int mport, fd, p;
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
  snprintf(line, sizeof line, "LOOKUP %s\n", name);
  if (ask_host(host, mport, line, deadline_after(timeout_seconds), &fd, &rd, &reply, err, errlen) != 0)
    return -1;
  close(fd);  /* reply stays in rd */
  if (strcmp(reply, "NONE") == 0) {
    errbuf_set(err, errlen, "no node '%s' on %.100s", name, h);
    return -1;
  }
  if (strncmp(reply, "PORT ", 5) == 0 && pmap_parse_port(reply + 5, &p) == 0 && p != 0) {
    *port = p;
    return 0;
  }
  if (turned_away(reply, h, mport, err, errlen)) return -1;
  errbuf_set(err, errlen, "the port mapper on %.100s gave a bad answer: '%.40s'", h, reply);
  return -1;
}

/* {------ the listing */

/* The count of a "NAMES <n>" header (n bytes at s): 0 with *count set, -1
** if it is not a count (digits, no leading zero), 1 if it is over `max`.
** At most 9 digits are summed, so the sum cannot overflow. */
static int parse_count(const char *s, size_t n, size_t max, size_t *count) {
  size_t v = 0, i;
  if (n == 0 || (n > 1 && s[0] == '0')) return -1;
  for (i = 0; i < n; i++)
    if (s[i] < '0' || s[i] > '9') return -1;
  if (n > 9) return 1;
  for (i = 0; i < n; i++) v = v * 10 + (size_t)(s[i] - '0');
  if (v > max) return 1;
  *count = v;
  return 0;
}

/* One "<name> <port>" line (n bytes at s) into *e: 0, or -1 if malformed. */
static int parse_entry(const char *s, size_t n, pmap_name *e) {
  const char *sp = memchr(s, ' ', n);
  size_t nlen;
  int port;
  if (sp == NULL) return -1;
  nlen = (size_t)(sp - s);
  if (!pmap_valid_name_n(s, nlen) || pmap_parse_port_n(sp + 1, n - nlen - 1, &port) != 0 || port == 0)
    return -1;
  memcpy(e->name, s, nlen);
  e->name[nlen] = '\0';
  e->port = port;
  return 0;
}

static int by_name(const void *a, const void *b) {
  return strcmp(((const pmap_name *)a)->name, ((const pmap_name *)b)->name);
}

/* Reads the entries after a "NAMES <count>" header from rd into a new
** array. It grows as entries arrive (doubling, from 64), so a count that
** no entries follow costs no memory. */
static int read_listing(reply_reader *rd, const char *h, size_t count, pmap_name **out,
                        char *err, size_t errlen) {
  pmap_name *v = NULL;
  size_t cap = 0, i;
  char why[160];
  for (i = 0; i < count; i++) {
    const char *s = reader_line(rd, why, sizeof why);
    if (s == NULL) {
      errbuf_set(err, errlen, "the port mapper on %.100s ended its listing after %zu of %zu "
                 "names: %s", h, i, count, why);
      free(v);
      return -1;
    }
    if (i == cap) {
      size_t want = cap ? (cap * 2 < count ? cap * 2 : count) : (count < 64 ? count : 64);
      pmap_name *w = realloc(v, want * sizeof *v);
      if (w == NULL) {
        errbuf_set(err, errlen, "out of memory for %zu port mapper names", want);
        free(v);
        return -1;
      }
      v = w;
      cap = want;
    }
    if (parse_entry(s, rd->linelen, &v[i]) != 0) {
      errbuf_set(err, errlen, "the port mapper on %.100s gave a bad answer in its listing: "
                 "'%.40s'", h, s);
      free(v);
      return -1;
    }
  }
  if (count > 1) qsort(v, count, sizeof *v, by_name);
  for (i = 1; i < count; i++)
    if (strcmp(v[i - 1].name, v[i].name) == 0) {
      errbuf_set(err, errlen, "the port mapper on %.100s gave a bad answer: it lists '%s' twice",
                 h, v[i].name);
      free(v);
      return -1;
    }
  *out = v;
  return 0;
}

/* The listing that starts with `reply`, rd's last line, from the daemon
** on h:mport: *out and *n on success, else a message in err. */
static int names_reply(reply_reader *rd, const char *reply, const char *h, int mport,
                       pmap_name **out, size_t *n, char *err, size_t errlen) {
  pmap_name *v = NULL;
  size_t count = 0, len = rd->linelen;
  int r;
  if (len > 6 && memcmp(reply, "NAMES ", 6) == 0 &&
      (r = parse_count(reply + 6, len - 6, PMAP_NAMES_MAX, &count)) >= 0) {
    if (r == 1) {
      errbuf_set(err, errlen, "the port mapper on %.100s lists %.20s names, more than the %d "
                 "pmap_names takes", h, reply + 6, PMAP_NAMES_MAX);
      return -1;
    }
    if (read_listing(rd, h, count, &v, err, errlen) != 0) return -1;
    *out = v;
    *n = count;
    return 0;
  }
  if (turned_away(reply, h, mport, err, errlen)) return -1;
  if (strcmp(reply, "ERR loopback only") == 0)
    errbuf_set(err, errlen, "the port mapper on %.100s lists its names only to its own host "
               "(ERR loopback only)", h);
  else
    errbuf_set(err, errlen, "the port mapper on %.100s gave a bad answer: '%.40s'", h, reply);
  return -1;
}

int pmap_names(const char *host, double timeout_seconds, pmap_name **out, size_t *n,
               char *err, size_t errlen) {
  const char *h = (host == NULL) ? "127.0.0.1" : host, *reply;
  reply_reader rd;
  int mport, fd, r;
  if (!(timeout_seconds > 0)) {
    errbuf_set(err, errlen, "port mapper names: the timeout must be positive");
    return -1;
  }
  if (pmap_default_port(&mport, err, errlen) != 0) return -1;
  if (ask_host(host, mport, "NAMES\n", deadline_after(timeout_seconds), &fd, &rd, &reply,
               err, errlen) != 0)
    return -1;
  r = names_reply(&rd, reply, h, mport, out, n, err, errlen);
  close(fd);
  return r;
}

/* }------ */

/* The name and port of a registration, checked: 0, or -1 with a message. */
static int check_registration(const char *name, int port, char *err, size_t errlen) {
  if (!pmap_valid_name(name)) {
    errbuf_set(err, errlen, "'%.80s' is not a valid node name ([A-Za-z0-9_.-], 1 to %d characters)",
               name ? name : "(null)", PMAP_NAME_MAX);
    return -1;
  }
  if (port < 1 || port > 65535) {
    errbuf_set(err, errlen, "port %d is not in 1..65535", port);
    return -1;
  }
  return 0;
}

int pmap_register(const char *name, int port, int *fd, char *err, size_t errlen) {
  char line[PMAP_NAME_MAX + 32], why[160];
  const char *reply;
  reply_reader rd;
  int64_t deadline = deadline_after(PMAP_CLIENT_SECONDS);
  int mport, s;
  if (check_registration(name, port, err, errlen) != 0) return -1;
  if (pmap_default_port(&mport, err, errlen) != 0) return -1;
  if (connect_local(mport, deadline, &s, why, sizeof why) != 0) {
    errbuf_set(err, errlen, "no port mapper answers on port %d: %s", mport, why);
    return -1;
  }
  snprintf(line, sizeof line, "REGISTER %s %d\n", name, port);
  if (exchange(s, line, deadline, &rd, &reply, why, sizeof why) != 0) {
    close(s);
    errbuf_set(err, errlen, "registering '%s' with the port mapper: %s", name, why);
    return -1;
  }
  if (strcmp(reply, "OK") == 0) {
    *fd = s;
    return 0;
  }
  close(s);
  if (turned_away(reply, "127.0.0.1", mport, err, errlen)) return -1;
  if (strcmp(reply, "ERR taken") == 0)
    errbuf_set(err, errlen, "the name '%s' is already registered with the port mapper", name);
  else
    errbuf_set(err, errlen, "the port mapper refused '%s': %.40s", name, reply);
  return -1;
}

/* }================= */


/* {================= the registration keeper */

/* A keeper's states. Invariant: fd >= 0 exactly in CONNECTING, SENDING,
** READING and REGISTERED. */
enum { KEEP_STOPPED, KEEP_WAIT, KEEP_CONNECTING, KEEP_SENDING, KEEP_READING, KEEP_REGISTERED };

int64_t pmap_now_ms(void) {
  return now_ms();
}

/* The attempt failed (or the registration was lost): the next one comes
** after the back-off, which doubles up to PMAP_KEEPER_MAX_MS. */
static int64_t keep_retry(pmap_keeper *k, int64_t now, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int64_t keep_retry(pmap_keeper *k, int64_t now, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(k->err, sizeof k->err, fmt, ap);
  va_end(ap);
  if (k->fd >= 0) close(k->fd);
  k->fd = -1;
  k->state = KEEP_WAIT;
  k->next = now + k->backoff;
  k->backoff = k->backoff * 2 > PMAP_KEEPER_MAX_MS ? PMAP_KEEPER_MAX_MS : k->backoff * 2;
  return k->next;
}

/* Starts a non-blocking connect to the loopback daemon. */
static void keep_connect(pmap_keeper *k, int64_t now) {
  struct sockaddr_in a;
  int s = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  k->attempts++;
  k->attempt_end = now + (int64_t)(PMAP_CLIENT_SECONDS * 1000);
  k->sent = k->inlen = 0;
  if (s < 0) {
    keep_retry(k, now, "cannot make a socket: %s", strerror(errno));
    return;
  }
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons((uint16_t)k->mport);
  k->fd = s;
  if (connect(s, (struct sockaddr *)&a, sizeof a) == 0) k->state = KEEP_SENDING;
  else if (errno == EINPROGRESS || errno == EINTR) k->state = KEEP_CONNECTING;
  else keep_retry(k, now, "no port mapper answers on port %d: %s", k->mport, strerror(errno));
}

/* Reads the daemon's answer to REGISTER: 1 when it is complete (the state
** then moved on), 0 when more must come. */
static int keep_answer(pmap_keeper *k, int64_t now) {
  char why[sizeof k->err];
  ssize_t n = recv(k->fd, k->in + k->inlen, sizeof k->in - 1 - k->inlen, MSG_DONTWAIT);
  char *nl;
  if (n == 0) {
    keep_retry(k, now, "the port mapper closed the connection without an answer");
    return 1;
  }
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return 0;
    keep_retry(k, now, "registering with the port mapper: %s", strerror(errno));
    return 1;
  }
  k->inlen += (size_t)n;
  nl = memchr(k->in, '\n', k->inlen);
  if (nl == NULL) {
    if (k->inlen < sizeof k->in - 1) return 0;
    keep_retry(k, now, "port %d is held by something that is not an erlangen port mapper "
               "(its answer is too long)", k->mport);
    return 1;
  }
  *nl = '\0';
  if (strcmp(k->in, "OK") == 0) {
    k->state = KEEP_REGISTERED;
    k->registrations++;
    k->backoff = PMAP_KEEPER_MIN_MS;
    k->err[0] = '\0';
    return 1;
  }
  if (turned_away(k->in, "127.0.0.1", k->mport, why, sizeof why))
    keep_retry(k, now, "%s", why);
  else if (strcmp(k->in, "ERR taken") == 0)
    keep_retry(k, now, "the name '%s' is already registered with the port mapper", k->name);
  else
    keep_retry(k, now, "the port mapper refused '%s': %.40s", k->name, k->in);
  return 1;
}

int pmap_keeper_start(pmap_keeper *k, const char *name, int port, int fd,
                      char *err, size_t errlen) {
  int mport;
  memset(k, 0, sizeof *k);
  k->fd = -1;
  k->state = KEEP_STOPPED;
  if (check_registration(name, port, err, errlen) != 0) return -1;
  if (pmap_default_port(&mport, err, errlen) != 0) return -1;
  snprintf(k->name, sizeof k->name, "%s", name);
  snprintf(k->line, sizeof k->line, "REGISTER %s %d\n", name, port);
  k->port = port;
  k->mport = mport;
  k->backoff = PMAP_KEEPER_MIN_MS;
  k->fd = fd;
  k->state = fd >= 0 ? KEEP_REGISTERED : KEEP_WAIT;
  k->registrations = fd >= 0;
  k->next = fd >= 0 ? PMAP_KEEPER_NEVER : 0;
  return 0;
}

int pmap_keeper_fd(const pmap_keeper *k) {
  return k->fd;
}

int pmap_keeper_events(const pmap_keeper *k) {
  if (k->state == KEEP_CONNECTING || k->state == KEEP_SENDING) return POLLOUT;
  return k->fd >= 0 ? POLLIN : 0;
}

int pmap_keeper_registered(const pmap_keeper *k) {
  return k->state == KEEP_REGISTERED;
}

unsigned pmap_keeper_attempts(const pmap_keeper *k) {
  return k->attempts;
}

unsigned pmap_keeper_registrations(const pmap_keeper *k) {
  return k->registrations;
}

const char *pmap_keeper_error(const pmap_keeper *k) {
  return k->err;
}

int64_t pmap_keeper_step(pmap_keeper *k, int64_t now) {
  for (;;) {  /* each pass moves the state on or returns: at most 5 passes */
    switch (k->state) {
    case KEEP_STOPPED:
      return PMAP_KEEPER_NEVER;
    case KEEP_WAIT:
      if (now < k->next) return k->next;
      keep_connect(k, now);
      if (k->state == KEEP_WAIT) return k->next;
      break;
    case KEEP_CONNECTING: {
      struct pollfd p = { k->fd, POLLOUT, 0 };
      int e = 0;
      socklen_t elen = sizeof e;
      if (poll(&p, 1, 0) == 0) {  /* a zero timeout: asks, never waits */
        if (now < k->attempt_end) return k->attempt_end;
        return keep_retry(k, now, "no port mapper answers on port %d in time", k->mport);
      }
      if (getsockopt(k->fd, SOL_SOCKET, SO_ERROR, &e, &elen) != 0) e = errno;
      if (e != 0)
        return keep_retry(k, now, "no port mapper answers on port %d: %s", k->mport, strerror(e));
      k->state = KEEP_SENDING;
      break;
    }
    case KEEP_SENDING: {
      size_t len = strlen(k->line);
      ssize_t n = send(k->fd, k->line + k->sent, len - k->sent, MSG_DONTWAIT | MSG_NOSIGNAL);
      if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
        int e = errno;
        k->state = KEEP_READING;  /* the daemon may have answered "ERR busy" and closed */
        if (keep_answer(k, now)) break;
        return keep_retry(k, now, "registering with the port mapper: %s", strerror(e));
      }
      if (n > 0) k->sent += (size_t)n;
      if (k->sent == len) {
        k->state = KEEP_READING;
        break;
      }
      if (now < k->attempt_end) return k->attempt_end;
      return keep_retry(k, now, "the port mapper took no request in time");
    }
    case KEEP_READING:
      if (keep_answer(k, now)) break;
      if (now < k->attempt_end) return k->attempt_end;
      return keep_retry(k, now, "the port mapper gave no answer in time");
    case KEEP_REGISTERED: {
      char sink[64];
      ssize_t n = recv(k->fd, sink, sizeof sink, MSG_DONTWAIT);
      if (n > 0 || (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)))
        return PMAP_KEEPER_NEVER;  /* the daemon sends nothing unasked: ignored */
      k->backoff = PMAP_KEEPER_MIN_MS;
      return keep_retry(k, now, "the port mapper went away; '%s' is registered again when "
                        "one answers", k->name);
    }
    default:
      return PMAP_KEEPER_NEVER;
    }
  }
}

void pmap_keeper_stop(pmap_keeper *k) {
  if (k->fd >= 0) close(k->fd);
  k->fd = -1;
  k->state = KEEP_STOPPED;
  k->next = PMAP_KEEPER_NEVER;
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
  if (r == 0 || r == 2) return 0;  /* busy or full, but running */
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
    if (r == 0 || r == 2) return 0;
    if (r == 1 || now_ms() >= deadline) break;
    sleep_ms(RETRY_MS);
  }
  errbuf_set(err, errlen, "the port mapper did not start on port %d within %g s: %s", port,
         PMAP_START_SECONDS, why);
  return -1;
}

/* }================= */
