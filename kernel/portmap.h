/*
** portmap.h — the port mapper (like Erlang's epmd): a daemon that maps node
** names to the TCP ports nodes listen on, and the client calls a node makes.
** doc/portmap.md gives the line protocol byte for byte.
**
** The daemon (pmap_listen + pmap_serve, run by `erlangen --port-mapper`):
**   - one thread, poll(); at most PMAP_MAX_CLIENTS connections, of which at
**     most PMAP_MAX_REMOTE from non-loopback peers; each has a line buffer
**     of PMAP_LINE_MAX bytes. Its memory is fixed when it starts: nothing
**     is allocated on behalf of a peer.
**   - registers names only for loopback peers (pmap_is_loopback). A name
**     stays registered while the connection that registered it is open, so
**     a node that dies releases its name; a live name cannot be taken.
**   - answers LOOKUP to anyone; NAMES (the listing) to loopback only.
**   - closes a connection that sends a malformed line, a line longer than
**     PMAP_LINE_MAX, or that keeps a line (or a reply) unfinished, or that
**     is not registered and idle, for PMAP_STALL_SECONDS.
**   - outlives the nodes that started it, as epmd does.
**
** The port is PMAP_DEFAULT_PORT unless the environment variable
** PMAP_PORT_ENV says otherwise (for the daemon and for clients alike).
**
** Conventions (as libsodium): 0 on success, -1 on failure with a message in
** err (always NUL-terminated when errlen > 0), nothing half-done. Every
** wait is bounded: client calls by their timeout, the daemon's start by
** PMAP_START_SECONDS. Every returned descriptor is close-on-exec.
** Thread-safe except pmap_serve, of which one runs per process.
*/
#ifndef erlangen_portmap_h
#define erlangen_portmap_h

#include <stddef.h>
#include <sys/socket.h>

#define PMAP_DEFAULT_PORT   4370
#define PMAP_PORT_ENV       "ERLANGEN_PORT_MAPPER_PORT"
#define PMAP_PROTOCOL       1        /* the version PING answers with */

#define PMAP_NAME_MAX       64       /* a name is [A-Za-z0-9_.-]{1,PMAP_NAME_MAX} */
#define PMAP_LINE_MAX       128      /* longest request line, its '\n' included */
#define PMAP_MAX_CLIENTS    256      /* connections at once (so also names) */
#define PMAP_MAX_REMOTE     64       /* of which from non-loopback peers */
#define PMAP_STALL_SECONDS  3        /* see above */
#define PMAP_CLIENT_SECONDS 2.0      /* the bound of pmap_register's waits */
#define PMAP_START_SECONDS  2.0      /* pmap_ensure waits this long for a daemon */

/* ---- names, ports, addresses ---- */

/* 1 if `name` is a valid port-mapper name (NUL-terminated), else 0. */
int pmap_valid_name(const char *name);

/* Parses a decimal port "0".."65535" (no sign, no leading zeros, nothing
** after) into *port. Fails, leaving *port unchanged, otherwise. */
int pmap_parse_port(const char *s, int *port);

/* The port mapper's port: PMAP_PORT_ENV if set (1..65535), else
** PMAP_DEFAULT_PORT. Fails if the variable is set to anything else. */
int pmap_default_port(int *port, char *err, size_t errlen);

/* 1 if the address is loopback (127.0.0.0/8, ::1, or ::ffff:127.0.0.0/104),
** else 0 (also for a family other than AF_INET/AF_INET6 or a short len). */
int pmap_is_loopback(const struct sockaddr *sa, socklen_t len);

/* ---- the daemon ---- */

/* Opens the listening socket on every address (IPv6 dual-stack, or IPv4
** when the host has no IPv6) at `port` (0: any free port). *fd gets the
** socket and *bound_port the port it got. Fails (EADDRINUSE for a port
** already taken, e.g. by a running daemon) without leaving a socket open. */
int pmap_listen(int port, int *fd, int *bound_port, char *err, size_t errlen);

/* Runs the daemon on `listen_fd` (from pmap_listen) in the calling thread
** until SIGTERM or SIGINT arrives, then closes every connection and
** listen_fd and returns 0. It handles those two signals itself while it
** runs (and restores the previous handlers and mask when it returns);
** SIGPIPE is never raised. Returns -1 only if it cannot start (listen_fd
** is then closed too). */
int pmap_serve(int listen_fd, char *err, size_t errlen);

/* ---- the client calls of a node ---- */

/* Asks the daemon at `host` ("localhost", a name or a numeric address;
** NULL: loopback) for the port of node `name`. Every address the host
** resolves to is tried in turn; all of it takes at most timeout_seconds
** (> 0), apart from the system resolver's own bounded wait for host names.
** Fails with "no node 'name' on host" when the daemon answers that the
** name is not registered, and with the reason otherwise. */
int pmap_lookup(const char *host, const char *name, int *port, double timeout_seconds,
                char *err, size_t errlen);

/* Registers `name` for `port` at the loopback daemon. On success *fd is
** the registration's connection: the caller owns it and must keep it open
** for as long as the name should stay registered; closing it unregisters.
** If the daemon goes away the fd becomes readable (EOF), and the name is
** lost. Fails ("... is already registered" when another live connection
** holds the name) without leaving anything registered or open. */
int pmap_register(const char *name, int port, int *fd, char *err, size_t errlen);

/* Makes sure a daemon answers on the loopback port (pmap_default_port).
** If none does, starts `erlangen --port-mapper --port N` detached from the
** caller (its own session, stdio on /dev/null, working directory /, no
** inherited descriptors), then waits until a daemon answers, at most
** PMAP_START_SECONDS. When several processes race to start one, exactly
** one daemon binds the port; the others' exit and everybody uses the one
** that runs. The executable is the calling program if it is named
** `erlangen`, the build tree's when the caller runs from the build tree,
** otherwise the installed one. Safe in a threaded process (after fork,
** only async-signal-safe calls until exec). */
int pmap_ensure(char *err, size_t errlen);

#endif
