/*
** conn_impl.h — what conn.c (links, the I/O threads) shares with
** handshake.c (the handshakes that make links): the link object, an I/O
** thread, the module's one global. Private to kernel/net/; conn.h is the
** interface.
**
** Every field says who owns or guards it. A link's `lock` guards its
** encoder and state for senders; the fields marked "the I/O thread's"
** belong to the thread that reads the link (a handshake's, before that).
*/
#ifndef erlangen_conn_impl_h
#define erlangen_conn_impl_h

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include "conn.h"
#include "frame.h"
#include "portmap.h"

#define IO_MAX_THREADS  16
#define REC_ACCEPT      0x00   /* the responder's last handshake record: the link is up */

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

/* The module's one global (conn.c defines it; handshake.c keeps its slots
** in its own). `cfg`, `nio`, `ios` and `listen_fd` are written by
** conn_start before the threads start and only read after (listen_fd is
** closed by conn_stop once they have ended); `listen_tag`,
** `accept_paused` and the keeper's fields belong to I/O thread 0, except
** `keeper_new` and `keeper_handed`, which the thread handing the
** registration over writes under ios[0].lock. */
extern struct conn_global {
  conn_config cfg;
  int listen_fd;
  _Atomic int running;
  int nio;
  io ios[IO_MAX_THREADS];
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
} conn_G;

/* A link over fd for node `node` (which it references) with the
** handshake's split, moved into it (*enc and *dec are its own from then
** on); one reference, the caller's. NULL when memory runs out (then enc
** and dec are still the caller's). Not yet in epoll. */
conn *conn_new(int fd, uint32_t node, uint32_t creation, frame_enc *enc, frame_dec *dec);

/* Hands c to its I/O thread: registered with its epoll (so senders may arm
** EPOLLOUT from now on) and queued for its sweep; the thread takes over
** one reference. Any thread. Returns 0, or -1 (nothing changed). */
int conn_attach(conn *c);

#endif
