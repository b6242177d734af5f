/*
** node.h — this node's name and creation, and the table of nodes it knows.
**
** Index 0 is this node. Another node gets an entry the first time its name
** is seen (a pid decoded from the wire, a connect, a handshake). A pid or
** ref of another node is {serial, index, creation of that node's
** incarnation}; a pid whose creation is not the one of the node's current
** connection behaves as dead. This node's own name seen with another
** creation (a pid of an earlier incarnation) gets an entry of its own,
** which never connects.
**
** An entry is freed when nothing refers to it: no reference (node_ref: the
** Lua userdata of its pids and refs, mailbox entries that carry one, a
** link object), no process holding one of its pids in a link or monitor
** (found by the sweep's walk), no connection or attempt, no monitor_node
** subscriber. A sweep runs when a new entry would double the table since
** the last one, at most once per NODE_GRACE seconds. An index (and its
** name) held without a reference stays good for at least NODE_GRACE after
** the reference count last became zero; an index that outlived its entry
** names no node (its 8-bit generation no longer matches). There is no cap.
**
** Names are found through 64 hash shards, each under its own lock; an
** index is read without a lock. Each entry's connection slot and its
** monitor_node subscribers are guarded by its shard's lock, a leaf: nothing
** else is locked while it is held. The allocator's lock (new entries, the
** sweep) comes before the shard locks and before proc.lock, which the
** sweep's walk takes: node_intern must be called with no kernel lock held.
*/
#ifndef erlangen_node_h
#define erlangen_node_h

#include <stddef.h>
#include <stdint.h>
#include "codec.h"
#include "term.h"

#define NODE_NAME_MAX  255u    /* bytes of "name@host" */
#define NODE_GRACE     0.1     /* seconds; see above */
#define NODE_NONAME    "nonode@nohost"

struct conn;

/* Gives this node its name and a fresh random creation (dist_start calls
** it once; a failed start may call it again). Returns 0, or -1 if `name`
** is not a valid node name. */
int node_start(const char *name);

/* 1 once node_start succeeded. */
int node_started(void);

/* This node's name (NODE_NONAME before node_start) and creation. */
const char *node_self(void);
uint32_t node_creation(void);

/* 1 if `name` (len bytes) is a valid node name: "name@host", printable
** ASCII without spaces, at most NODE_NAME_MAX bytes. */
int node_valid_name(const char *name, size_t len);

/* The index of `name`, added if new. Returns 0, or -1 for an invalid name
** or when memory runs out. Never returns index 0. May sweep (see above). */
int node_intern(const char *name, size_t len, uint32_t *idx);

/* The name of index `idx` (node_self() for 0), or NULL if it names no node. */
const char *node_name(uint32_t idx);

/* The index of a known node name, or -1. Does not add it. */
long node_find(const char *name);

/* How the codec names nodes (wire pids and refs). */
extern const codec_nodes node_codec;

/* A reference keeps idx's entry; both do nothing for an index that names
** no node. Any thread, no lock. */
void node_ref(uint32_t idx);
void node_unref(uint32_t idx);

/* How a sweep finds the nodes that processes hold in links and monitors:
** the walk calls mark(idx, ud) for each. Set once, when the node starts. */
typedef void (*node_walk)(void (*mark)(uint32_t idx, void *ud), void *ud);
void node_set_walk(node_walk walk);

/* Entries in the table, and a sweep now (for tests). */
size_t node_count(void);
void node_sweep(void);

/* ---- connection slots ---- */

/* The up connection of `idx`, retained (conn_release it), or NULL. */
struct conn *node_conn(uint32_t idx);

/* Claims the right to connect to idx: returns 1 if the caller must try
** (then it must call node_connect_done), 0 if a connection is up, or
** waits up to `deadline` (monotonic seconds) for another caller's attempt
** and returns 0 if it succeeded, -1 if it failed or timed out. */
int node_connect_claim(uint32_t idx, double deadline);

/* Ends an attempt begun by node_connect_claim (c == NULL: it failed). */
void node_connect_done(uint32_t idx);

/* A port to reach idx at without the port mapper ("name@host:port" given
** to connect); 0 when none. */
void node_set_port(uint32_t idx, int port);
int node_port(uint32_t idx);

/* Installs c (retained by the table) as idx's connection if it has none.
** Returns 0, or -1 (nothing changed) when one is up. */
int node_install_conn(uint32_t idx, struct conn *c);

/* The responder's decision, made atomically with installing c as idx's
** connection (so a connect attempt that starts meanwhile sees the link):
** NODE_REFUSED when this node is connecting to idx too and the peer's name
** is not the smaller one; NODE_ASK when a link to the same incarnation
** (`creation`) is up (the initiator is asked whether it still has it);
** otherwise NODE_ACCEPTED: c is installed, and a link to an earlier
** incarnation is handed back in *old (retained) for the caller to close. */
enum { NODE_REFUSED = 0, NODE_ACCEPTED = 1, NODE_ASK = 2 };
int node_accept_conn(uint32_t idx, struct conn *c, uint32_t creation, int peer_smaller,
                     struct conn **old);

/* Installs c in place of whatever idx has; the old one (retained, or
** NULL) is handed back for the caller to close. */
struct conn *node_replace_conn(uint32_t idx, struct conn *c);

/* Removes c as idx's connection if it is the current one; 1 if it was.
** Then the caller fires the lost link's signals and calls node_down_done:
** until then, installing idx's next link waits. */
int node_clear_conn(uint32_t idx, struct conn *c);
void node_down_done(uint32_t idx);

/* Names of the nodes with an up connection: calls fn(name, ud) for each. */
void node_each_up(void (*fn)(const char *name, void *ud), void *ud);

/* ---- monitor_node ---- */

/* Adds (on) or removes one (off) subscription of pid to idx's nodedown. */
int node_monitor(uint32_t idx, term_id pid, int on);

/* Takes all subscribers of idx (one entry per subscription): *out is
** malloc'ed (free it), *n the count. */
void node_take_monitors(uint32_t idx, term_id **out, size_t *n);

/* Removes every subscription of pid, to every node: its process exited. */
void node_forget_monitors(term_id pid);

#endif
