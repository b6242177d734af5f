/*
** conn.h — links between nodes: listening, connecting with the Noise
** handshake (noise.h, handshake.h), and one authenticated, encrypted
** connection per pair of nodes, served by one of a fixed set of I/O
** threads, with a bounded outgoing buffer and heartbeats. What the records
** inside mean is dist.c's concern.
**
** A connection is reference counted (the node table, its I/O thread, and
** anyone holding it from node_conn). Its `lock` guards the outgoing encoder
** and `closing`; the decoder belongs to its I/O thread alone.
** Nothing is allocated for a peer before its confirmation frame has
** decrypted: accepted handshakes run in I/O thread 0 over fixed slots.
*/
#ifndef erlangen_conn_h
#define erlangen_conn_h

#include <stddef.h>
#include <stdint.h>

struct conn;
typedef struct conn conn;

typedef struct conn_config {
  unsigned char key[32];   /* the cluster key (wiped by conn_stop) */
  double tick;             /* seconds without a frame before a link counts as lost */
  size_t out_bound;        /* bytes a link may hold unsent before senders get "full" */
  size_t max_body;         /* largest frame body, both ways (same on every node) */
} conn_config;

enum { CONN_OK = 0, CONN_FULL = 1, CONN_CLOSED = 2 };

/* Starts listening on host:port (port 0: any) and the I/O threads.
** *port gets the bound port. The configuration is copied. Returns 0, or -1
** with a message in err. */
int conn_start(const conn_config *cfg, const char *host, int *port, char *err, size_t errlen);

/* Closes every link in order and stops listening. */
void conn_stop(void);

/* Keeps this node's port mapper registration of `name` and `port` from now
** until conn_stop, registering again whenever the daemon comes back
** (pmap_keeper, stepped by I/O thread 0). fd is the registration
** pmap_register made, which it takes over (or -1). Returns 0, or -1 with a
** message in err (then fd is the caller's still). */
int conn_keep_pmap(const char *name, int port, int fd, char *err, size_t errlen);

/* Connects to node `idx` unless a link is up, waiting at most until
** `deadline` (monotonic seconds); concurrent callers share one attempt.
** Returns 0 when a link is up, or -1 with a message in err. */
int conn_connect(uint32_t idx, double deadline, char *err, size_t errlen);

/* Queues one record (a then b, b may be NULL) for the peer, in order.
** When the outgoing buffer is over its bound, waits until `deadline` for
** room. Returns CONN_OK, CONN_FULL or CONN_CLOSED. */
int conn_send(conn *c, const void *a, size_t alen, const void *b, size_t blen, double deadline);

uint32_t conn_node(const conn *c);            /* the peer's node index */
uint32_t conn_peer_creation(const conn *c);   /* the peer's creation */

/* Ends the link: in order (a CLOSE frame) or at once. The node layer hears
** of it (dist_node_down) from the link's I/O thread. */
void conn_close(conn *c, int orderly);

/* 1 on an I/O thread, which must never wait (conn.c). */
int conn_on_io_thread(void);

void conn_retain(conn *c);
void conn_release(conn *c);

#endif
