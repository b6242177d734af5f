/*
** portmapd.h — the port mapper daemon (like Erlang's epmd), run by
** `erlangen --port-mapper`: it maps node names to the TCP ports nodes
** listen on. The client calls are in portmap.h; doc/portmap.md gives the
** line protocol byte for byte.
**
** What it promises:
**   - one thread around epoll. Connections are limited only by descriptors
**     (it raises its soft RLIMIT_NOFILE to the hard limit), of which at most
**     PMAP_MAX_REMOTE from non-loopback peers, so remote peers cannot take
**     what local nodes need. Each connection costs one fixed-size record
**     (a PMAP_LINE_MAX line buffer, a short reply buffer); only a NAMES
**     listing is sized by the table, and at most PMAPD_LISTINGS are held.
**   - registers names only for loopback peers (pmapd_is_loopback). A name
**     stays registered while the connection that registered it is open, so
**     a node that dies releases its name; a live name cannot be taken.
**   - answers LOOKUP to anyone; NAMES (the listing) to loopback only.
**   - closes a connection that sends a malformed line or one longer than
**     PMAP_LINE_MAX; and one for which PMAPD_STALL_SECONDS pass without a
**     request answered in full, unless it holds a registration and has
**     nothing pending (a registered idle node keeps its connection).
**   - turns a connection away with "ERR busy" when it is out of
**     descriptors or memory, "ERR full" when a remote peer finds the
**     PMAP_MAX_REMOTE connections taken.
**   - outlives the nodes that started it, as epmd does.
**
** Conventions (as libsodium): 0 on success, -1 on failure with a message in
** err (always NUL-terminated when errlen > 0), nothing half-done. Every
** returned descriptor is close-on-exec. One pmapd_serve runs per process:
** its state is one static record owned by the thread that runs it.
*/
#ifndef erlangen_portmapd_h
#define erlangen_portmapd_h

#include <stddef.h>
#include <sys/socket.h>
#include "portmap.h"

#define PMAPD_LISTINGS      4        /* NAMES replies held at once ("ERR busy" beyond) */
#define PMAPD_STALL_SECONDS 3        /* see above */

/* 1 if the address is loopback (127.0.0.0/8, ::1, or ::ffff:127.0.0.0/104),
** else 0 (also for a family other than AF_INET/AF_INET6 or a short len). */
int pmapd_is_loopback(const struct sockaddr *sa, socklen_t len);

/* Opens the listening socket on every address (IPv6 dual-stack, or IPv4
** when the host has no IPv6) at `port` (0: any free port). *fd gets the
** socket and *bound_port the port it got. Fails (EADDRINUSE for a port
** already taken, e.g. by a running daemon) without leaving a socket open. */
int pmapd_listen(int port, int *fd, int *bound_port, char *err, size_t errlen);

/* Runs the daemon on `listen_fd` (from pmapd_listen) in the calling thread
** until SIGTERM or SIGINT arrives, then closes every connection and
** listen_fd and returns 0. It handles those two signals itself while it
** runs (and restores the previous handlers and mask when it returns);
** SIGPIPE is never raised. It raises the process's soft RLIMIT_NOFILE to
** the hard limit and keeps one descriptor in reserve, so that it can still
** answer "ERR busy" when the others are used up. Returns -1 only if it
** cannot start (listen_fd is then closed too). */
int pmapd_serve(int listen_fd, char *err, size_t errlen);

#endif
