/*
** portmap.h — the port mapper's client side: the names and ports of its
** line protocol, and the calls a node makes to the daemon (portmapd.h,
** like Erlang's epmd) that maps node names to the TCP ports nodes listen
** on. doc/portmap.md gives the protocol byte for byte.
**
** pmap_lookup asks any host's daemon for one node's port; pmap_names asks
** for the whole listing (loopback peers only). pmap_register (blocking,
** bounded) registers once; pmap_keeper holds a registration from an event
** loop and makes it again when the daemon comes back, without ever
** blocking. pmap_ensure starts a daemon when none answers.
**
** A reply is untrusted bytes: every client call checks each line, length
** and count against the protocol and fails with "gave a bad answer"
** otherwise; a reply line longer than PMAP_LINE_MAX is refused.
**
** The port is PMAP_DEFAULT_PORT unless the environment variable
** PMAP_PORT_ENV says otherwise (for the daemon and for clients alike).
**
** Conventions (as libsodium): 0 on success, -1 on failure with a message in
** err (always NUL-terminated when errlen > 0), nothing half-done. Every
** wait is bounded: client calls by their timeout, the daemon's start by
** PMAP_START_SECONDS. Every returned descriptor is close-on-exec.
** Thread-safe except a pmap_keeper, which belongs to the one thread that
** steps it.
*/
#ifndef erlangen_portmap_h
#define erlangen_portmap_h

#include <stddef.h>
#include <stdint.h>

#define PMAP_DEFAULT_PORT   4370
#define PMAP_PORT_ENV       "ERLANGEN_PORT_MAPPER_PORT"
#define PMAP_PROTOCOL       1        /* the version PING answers with */

#define PMAP_NAME_MAX       64       /* a name is [A-Za-z0-9_.-]{1,PMAP_NAME_MAX} */
#define PMAP_LINE_MAX       128      /* longest request or reply line, its '\n' included */
#define PMAP_MAX_REMOTE     64       /* the daemon's connections at once from non-loopback
                                        peers; the "ERR full" message quotes it */
#define PMAP_NAMES_MAX      65536    /* most names pmap_names takes from one listing */
#define PMAP_CLIENT_SECONDS 2.0      /* the bound of pmap_register's waits */
#define PMAP_START_SECONDS  2.0      /* pmap_ensure waits this long for a daemon */

/* ---- names and ports ---- */

/* 1 if `name` is a valid port-mapper name (NUL-terminated), else 0. */
int pmap_valid_name(const char *name);

/* 1 if the n bytes at s (no NUL needed) are a valid name, else 0. */
int pmap_valid_name_n(const char *s, size_t n);

/* Parses a decimal port "0".."65535" (no sign, no leading zeros, nothing
** after) into *port. Fails, leaving *port unchanged, otherwise. */
int pmap_parse_port(const char *s, int *port);

/* The same for the n bytes at s (no NUL needed). */
int pmap_parse_port_n(const char *s, size_t n, int *port);

/* The port mapper's port: PMAP_PORT_ENV if set (1..65535), else
** PMAP_DEFAULT_PORT. Fails if the variable is set to anything else. */
int pmap_default_port(int *port, char *err, size_t errlen);

/* ---- the client calls of a node ---- */

/* Asks the daemon at `host` ("localhost", a name or a numeric address;
** NULL: loopback) for the port of node `name`. Every address the host
** resolves to is tried in turn; all of it takes at most timeout_seconds
** (> 0), apart from the system resolver's own bounded wait for host names.
** Fails with "no node 'name' on host" when the daemon answers that the
** name is not registered, and with the reason otherwise. */
int pmap_lookup(const char *host, const char *name, int *port, double timeout_seconds,
                char *err, size_t errlen);

/* One registration of a listing: a valid name and its port 1..65535. */
typedef struct pmap_name {
  char name[PMAP_NAME_MAX + 1];
  int port;
} pmap_name;

/* Asks the daemon at `host` (as pmap_lookup: NULL is loopback, every
** address in turn, all of it within timeout_seconds > 0) for every name
** registered there. On success *out is one array of *n entries sorted by
** name (byte order), which the caller frees with free(*out); *out is NULL
** when *n is 0. Every line of the reply is checked: a name or port that is
** not valid, a name listed twice, a line longer than PMAP_LINE_MAX, fewer
** entries than announced, or more than PMAP_NAMES_MAX announced fails
** ("... gave a bad answer ..."), and memory grows only with entries that
** came. The daemon lists only to loopback peers: another host's fails
** with "... lists its names only to its own host (ERR loopback only)".
** Busy and full daemons fail as for pmap_lookup. *out and *n are left
** alone on failure. */
int pmap_names(const char *host, double timeout_seconds, pmap_name **out, size_t *n,
               char *err, size_t errlen);

/* Registers `name` for `port` at the loopback daemon. On success *fd is
** the registration's connection: the caller owns it and must keep it open
** for as long as the name should stay registered; closing it unregisters.
** If the daemon goes away the fd becomes readable (EOF), and the name is
** lost (pmap_keeper registers it again). Fails ("... is already
** registered" when another live connection holds the name; "... is busy
** (ERR busy)" when the daemon is out of descriptors) without leaving
** anything registered or open. */
int pmap_register(const char *name, int port, int *fd, char *err, size_t errlen);

/* Makes sure a daemon answers on the loopback port (pmap_default_port).
** If none does, starts `erlangen --port-mapper --port N` detached from the
** caller (its own session, stdio on /dev/null, working directory /, no
** inherited descriptors), then waits until a daemon answers, at most
** PMAP_START_SECONDS. A daemon that answers "ERR busy" or "ERR full" runs:
** no other is started and the call succeeds. When several processes race
** to start one, exactly one daemon binds the port; the others' exit and
** everybody uses the one that runs. The executable is the calling program
** if it is named `erlangen`, the build tree's when the caller runs from the
** build tree, otherwise the installed one. Safe in a threaded process (after fork,
** only async-signal-safe calls until exec). */
int pmap_ensure(char *err, size_t errlen);

/* ---- keeping a registration from an event loop ----
**
** A pmap_keeper holds one name's registration at the loopback daemon and
** makes it again whenever it is lost (the daemon exited or restarted, or
** the first attempt failed): it connects with back-off, PMAP_KEEPER_MIN_MS
** doubling to PMAP_KEEPER_MAX_MS, reset by a registration. Nothing in it
** blocks: connect, send and receive are non-blocking (the daemon is on
** loopback), and each attempt is abandoned after PMAP_CLIENT_SECONDS.
** It does not start a daemon (pmap_ensure blocks); it waits for one.
**
** Use (one thread owns it; times are CLOCK_MONOTONIC milliseconds):
**   pmap_keeper_start(&k, name, port, fd, err, errlen);
**   loop: watch pmap_keeper_fd(&k) for pmap_keeper_events(&k) (POLLIN or
**         POLLOUT, equal to EPOLLIN/EPOLLOUT); when it is ready, or at the
**         time the last step returned, call next = pmap_keeper_step(&k, now).
**         The fd and the events may change at every step (see
**         pmap_keeper_attempts for epoll).
**   pmap_keeper_stop(&k);  (closes the connection: the name is released)
** Its fields are the owner's alone; read them only through the calls. */

#define PMAP_KEEPER_MIN_MS  100      /* first retry after a loss or failure */
#define PMAP_KEEPER_MAX_MS  5000     /* the back-off stops doubling here */
#define PMAP_KEEPER_NEVER   INT64_MAX  /* step's answer when only the fd matters */

typedef struct pmap_keeper {
  int fd;                   /* the connection to the daemon; -1 while none */
  int state;                /* PMAP_KEEPER_* in portmap.c */
  int port, mport;          /* the node's port; the daemon's port */
  int64_t next;             /* when step wants to run again (ms) */
  int64_t attempt_end;      /* the current attempt is abandoned at this time */
  int64_t backoff;          /* the pause before the next attempt (ms) */
  unsigned attempts;        /* connects tried, for logs and tests */
  unsigned registrations;   /* registrations made, the first included */
  size_t sent, inlen;       /* of `line`; of `in` */
  char name[PMAP_NAME_MAX + 1];
  char line[PMAP_NAME_MAX + 24];  /* "REGISTER name port\n" */
  char in[32];              /* the daemon's reply line */
  char err[160];            /* why the last attempt failed, or "" */
} pmap_keeper;

/* Sets up `k` for `name` and `port` (validated as pmap_register does). fd
** is a registration of that name from pmap_register that k takes over, or
** -1: the first attempt then starts at the first step. Fails, with k
** unusable and fd left to the caller, on a bad name, port or PMAP_PORT_ENV. */
int pmap_keeper_start(pmap_keeper *k, const char *name, int port, int fd,
                      char *err, size_t errlen);

/* The descriptor to watch, or -1 (then only the time matters). */
int pmap_keeper_fd(const pmap_keeper *k);

/* What to watch it for: POLLOUT while connecting or sending, else POLLIN. */
int pmap_keeper_events(const pmap_keeper *k);

/* Does what is due at `now` without blocking: finishes a connect, sends the
** request, reads the answer, notices EOF, retries after the back-off.
** Returns the time it wants to be called next even if the fd stays quiet
** (PMAP_KEEPER_NEVER while registered). */
int64_t pmap_keeper_step(pmap_keeper *k, int64_t now);

/* 1 while the name is registered, else 0. */
int pmap_keeper_registered(const pmap_keeper *k);

/* Connects tried so far. It changes exactly when the keeper opens a new
** connection: an epoll loop then deletes the old fd (ignoring errors: the
** keeper has closed it) and adds the new one, even when the number is the
** same, since a closed descriptor's number can come back at once. */
unsigned pmap_keeper_attempts(const pmap_keeper *k);

/* Registrations made so far, the adopted one included. */
unsigned pmap_keeper_registrations(const pmap_keeper *k);

/* Why the last attempt failed ("" if none did since the last success);
** valid until the next step. */
const char *pmap_keeper_error(const pmap_keeper *k);

/* Closes the connection (the name is released) and leaves k stopped; a
** stopped keeper's step does nothing. Safe to call twice. */
void pmap_keeper_stop(pmap_keeper *k);

/* CLOCK_MONOTONIC in milliseconds, the clock of the keeper's times. */
int64_t pmap_now_ms(void);

#endif
