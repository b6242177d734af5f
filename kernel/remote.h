/*
** remote.h — the seam between the core and the network layer.
**
** The core (processes, mailboxes, signals, registry, codec, states) sends
** everything that concerns a process of another node (`id.node != 0`)
** through one table of operations. The network layer installs its table
** once, when a node starts (remote_install); before that the core uses a
** table whose operations answer REMOTE_NOCONN and whose codec naming is
** NULL (other nodes' pids cannot be decoded). The table is never changed
** after it is installed, so a caller may keep the pointer remote_ops()
** returns. doc/netlink.md describes the layer behind it.
*/
#ifndef erlangen_remote_h
#define erlangen_remote_h

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include "codec.h"
#include "term.h"

enum { REMOTE_OK = 0, REMOTE_NOCONN = 1, REMOTE_NOPROC = 2 };

typedef struct remote_ops {
  /* A link from the local `from` to the remote `to`; REMOTE_OK, or
  ** REMOTE_NOCONN / REMOTE_NOPROC (then the caller undoes its end). */
  int (*link)(term_id from, term_id to);
  void (*unlink)(term_id from, term_id to);
  /* An exit signal to a remote pid; `reason` in this process's form. */
  void (*exit)(term_id from, term_id to, const unsigned char *reason, size_t len, int via_link);
  /* A monitor of the remote `to` by the local `from` under `ref`; as link. */
  int (*monitor)(term_id from, term_id to, term_id ref);
  void (*demonitor)(term_id from, term_id to, term_id ref);
  /* A DOWN to a remote watcher. */
  void (*down)(term_id from, term_id watcher, term_id ref, const unsigned char *reason, size_t len);
  /* The local process `pid` ended: drop what the network layer keeps for it
  ** (monitor_node subscriptions). */
  void (*forget)(term_id pid);
  /* The node stops; called after every process has ended. */
  void (*stop)(void);
  /* How the codec names other nodes (kern_limits). */
  const codec_nodes *nodes;
  /* Names a node for tostring; a reference on a node's entry, held by each
  ** Lua userdata of its pids and refs and by each mailbox entry from one of
  ** its pids (remote_install gives these to term.c and mailbox.c). */
  const char *(*node_name)(uint32_t node);
  void (*node_ref)(uint32_t node);
  void (*node_unref)(uint32_t node);
} remote_ops;

/* Installs `ops` (not copied: it must outlive the kernel). Only the first
** call has an effect; returns 0 then, -1 after. */
int remote_install(const remote_ops *ops);

/* The table in use: the installed one, or the core's own. Inline: every
** send and receive asks it for the codec's naming (kern_limits). */
extern const remote_ops *_Atomic remote_in_use;
static inline const remote_ops *remote_get(void) {
  return atomic_load_explicit(&remote_in_use, memory_order_acquire);
}

#endif
