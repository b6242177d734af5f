/*
** remote.c — the table of remote operations in use (remote.h).
*/
#include <stdatomic.h>
#include <stddef.h>
#include "mailbox.h"
#include "remote.h"

static int no_link(term_id from, term_id to) { (void)from; (void)to; return REMOTE_NOCONN; }
static void no_unlink(term_id from, term_id to) { (void)from; (void)to; }
static void no_exit(term_id from, term_id to, const unsigned char *reason, size_t len, int via_link) {
  (void)from; (void)to; (void)reason; (void)len; (void)via_link;
}
static int no_monitor(term_id from, term_id to, term_id ref) {
  (void)from; (void)to; (void)ref;
  return REMOTE_NOCONN;
}
static void no_demonitor(term_id from, term_id to, term_id ref) { (void)from; (void)to; (void)ref; }
static void no_down(term_id from, term_id watcher, term_id ref, const unsigned char *reason, size_t len) {
  (void)from; (void)watcher; (void)ref; (void)reason; (void)len;
}
static void no_forget(term_id pid) { (void)pid; }
static void no_stop(void) {}
static const remote_ops none = {
  no_link, no_unlink, no_exit, no_monitor, no_demonitor, no_down, no_forget, no_stop, NULL, NULL,
  NULL, NULL
};

/* The module's one global: the core's own table until remote_install
** replaces it once (release); read by any thread (acquire, remote_get). */
const remote_ops *_Atomic remote_in_use = &none;

int remote_install(const remote_ops *ops) {
  const remote_ops *expected = &none;
  if (!atomic_compare_exchange_strong_explicit(&remote_in_use, &expected, ops, memory_order_release,
                                               memory_order_relaxed))
    return -1;
  static term_nodes names;   /* written once, here, before term.c can read it */
  names = (term_nodes){ ops->node_name, ops->node_ref, ops->node_unref };
  term_set_nodes(&names);
  mbox_set_node_refs(ops->node_ref, ops->node_unref);
  return 0;
}
