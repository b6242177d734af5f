/*
** dist.h — distribution: what crosses a node link and what it does on
** arrival. Messages, registered-name and alias sends, links, monitors,
** exit signals and remote spawn, each as one record in the link's frames
** (doc/distribution.md gives the record layouts), and what a lost link
** means for the processes that used it ("noconnection").
**
** Per pair of processes, records keep their order: one link per pair of
** nodes, one writer per link, and records are queued in call order.
** A pid of another node whose creation is not the one of that node's
** current link is dead: sends to it are dropped, links and monitors get
** "noproc".
*/
#ifndef erlangen_dist_h
#define erlangen_dist_h

#include <stddef.h>
#include <stdint.h>
#include "term.h"

struct conn;
struct proc;

typedef struct dist_opts {
  const char *name;        /* "name@host" (or "name": @ and the host name are added) */
  const char *listen;      /* "host:port", "host" or NULL (all interfaces, any port) */
  const char *key_file;    /* NULL: $ERLANGEN_KEY_FILE or ~/.erlangen/cluster.key */
  double tick;             /* seconds of silence before a link is lost (0: 60) */
  size_t out_bound;        /* bytes a link may buffer (0: 8 MiB) */
  int port_mapper;         /* register with the port mapper (starting it if needed) */
  const char *path, *cpath; /* package paths of the processes other nodes spawn here (NULL: a
                            ** new state's own); copied */
} dist_opts;

/* Starts distribution: loads the key, listens, names this node. Returns 0,
** or -1 with a message in err (nothing is left started). */
int dist_start(const dist_opts *o, char *err, size_t errlen);
int dist_started(void);
int dist_port(void);      /* the port this node listens on */
void dist_stop(void);

/* The index of the node named `name` ("name@host" or "name@host:port"),
** interning it. Returns 0, or -1 with a message. */
int dist_node_index(const char *name, uint32_t *idx, char *err, size_t errlen);

/* Connects to node idx now (bounded by the tick time). 0 or -1 with err. */
int dist_connect(uint32_t idx, char *err, size_t errlen);

enum { DIST_OK = 0, DIST_FULL = 1, DIST_NOCONN = 2, DIST_DEAD = 3, DIST_TOOBIG = 4 };

/* Sends wire-encoded `msg` to a pid, a registered name (`name`) or an
** alias (`alias`) of node idx, waiting for room until `deadline`. The
** bytes are copied. A node with no link is connected to in the background
** and the record waits on the pending link; nothing waits for the connect.
** Returns DIST_OK, DIST_FULL, DIST_NOCONN (the node backs off after a
** failed connect), DIST_DEAD (a pid of another incarnation) or DIST_TOOBIG
** (over the link's frame limit). */
int dist_send(term_id to, const unsigned char *msg, size_t len, double deadline);
int dist_send_name(uint32_t idx, const char *name, const unsigned char *msg, size_t len,
                   double deadline);
int dist_send_alias(term_id alias, const unsigned char *msg, size_t len, double deadline);

/* Signals to a process of another node. `reason` is in this process's
** form (it is converted for the wire). link and monitor return DIST_OK or
** DIST_NOCONN; the others are dropped without a link. */
int dist_link(term_id from, term_id to);
void dist_unlink(term_id from, term_id to);
void dist_exit(term_id from, term_id to, const unsigned char *reason, size_t len, int via_link);
int dist_monitor(term_id from, term_id to, term_id ref);
void dist_demonitor(term_id from, term_id to, term_id ref);
void dist_down(term_id from, term_id watcher, term_id ref, const unsigned char *reason, size_t len);

/* Spawns `payload` (a wire message: "module.function" and its arguments)
** on node idx for `self`, with the DIST_SPAWN_* flags (monitor ref in
** *ref), waiting until `deadline`. Returns 0 with *pid, or -1 with a
** message in err. When the caller gives up before the reply, a reply that
** comes later undoes what it asked for, as OTP's spawn_request_abandon
** does: a link becomes exit signal "abandoned" to the new process (through
** the link), a monitor is taken down. */
enum { DIST_SPAWN_LINK = 1, DIST_SPAWN_MONITOR = 2, DIST_SPAWN_TRAP_EXIT = 4 };
int dist_spawn(struct proc *self, uint32_t idx, const unsigned char *payload, size_t len,
               int flags, term_id *ref, double deadline, term_id *pid, char *err, size_t errlen);

/* Asks node idx for the pid registered as `name` (at most DIST_NAME_MAX
** bytes), waiting until `deadline`. Returns 1 with *pid, 0 if the name is
** not registered there, or -1 with the reason in err ("noconnection",
** "timeout"). */
#define DIST_NAME_MAX 255
int dist_whereis(struct proc *self, uint32_t idx, const char *name, double deadline, term_id *pid,
                 char *err, size_t errlen);

/* Queries answered by the binding (info and processes of another node):
** args and the answer are codec messages in the wire form. */
enum { DIST_Q_INFO = 2, DIST_Q_PROCESSES = 3, DIST_Q_SNAPSHOT = 4 };

/* Asks node idx a query of `kind`, waiting until `deadline`. Returns 0 with
** the answer in *answer (malloc'ed, *alen bytes), or -1 with the reason in
** err ("noconnection", "timeout", or the other node's error). */
int dist_query(struct proc *self, uint32_t idx, int kind, const unsigned char *args, size_t n,
               double deadline, unsigned char **answer, size_t *alen, char *err, size_t errlen);

/* Answers a query of `kind` from another node: fills *out, or returns -1
** with a message in err. Runs on an I/O thread: no waits, and work that
** grows only with the node's processes (a snapshot). */
struct codec_buf;
typedef int (*dist_query_fn)(int kind, const unsigned char *args, size_t n, struct codec_buf *out,
                             char *err, size_t errlen);
void dist_set_query_handler(dist_query_fn fn);

/* Asks node idx to monitor the process registered as `name` for `from`,
** whose monitor `ref` targets {0, idx, 0} until the node answers with the
** pid (sig_monitor_resolve). The DOWN says "noproc" if no process has the
** name. Returns DIST_OK or DIST_NOCONN. */
int dist_monitor_name(term_id from, uint32_t idx, const char *name, term_id ref);

/* monitor_node: subscribes (on) or unsubscribes self to idx's nodedown. A
** node that cannot be reached gives {"nodedown", name} at once. */
int dist_monitor_node(struct proc *self, uint32_t idx, int on);

/* monitor_nodes: subscribes self (on) to {"nodeup", name} and {"nodedown",
** name, reason} for every node, once more per call, or removes one
** subscription. Returns 0, or -1 when out of memory. */
int dist_monitor_nodes(struct proc *self, int on);

/* From the link layer (conn.c, handshake.c): a record arrived, a link
** came up, a link was lost. dist_node_up tells the monitor_nodes
** subscribers that a link was installed, before any record of it is read.
** dist_node_down fires the lost link's signals, then monitor_node's
** nodedown, then monitor_nodes' with `why` (NULL: a connect that never
** came up); dist_link_lost logs the loss (dist_report) unless `why` is
** "closed". A caller that holds a link's lock logs after it lets go: the
** report makes a Lua state. dist_node_up and dist_node_down deliver
** locally only. */
void dist_inbound(struct conn *c, const unsigned char *rec, size_t len);
void dist_node_up(uint32_t idx);
void dist_node_down(uint32_t idx, uint32_t creation, const char *why);
void dist_link_lost(uint32_t idx, const char *why);

/* Logs a distribution event through the registered logger ("erlangen.log")
** at `level` ("info", "warning") with fields node, peer and reason; without
** a logger, on stderr: "=LEVEL REPORT==== node NAME: text (peer)" and `why`
** on the next line. */
void dist_report(const char *level, const char *text, const char *peer, const char *why);

#endif
