/*
** test_node.c — the node table's monitor_node subscriptions (kernel/node.c),
** without links: the three conn functions node.c calls are stubs here.
*/
#include <stdlib.h>
#include <string.h>
#include "ctest.h"
#include "node.h"

/* node.c keeps up connections in its slots; no test here installs one. */
struct conn;
void conn_retain(struct conn *c) { (void)c; }
void conn_release(struct conn *c) { (void)c; }
uint32_t conn_peer_creation(const struct conn *c) { (void)c; return 0; }

static term_id pid_of(uint64_t n) { return (term_id){ n, 0, 0 }; }

/* How many subscriptions of `pid` node idx holds; puts them all back. */
static size_t count_of(uint32_t idx, term_id pid, size_t *all) {
  term_id *subs;
  size_t n, k = 0;
  node_take_monitors(idx, &subs, &n);
  for (size_t i = 0; i < n; i++) {
    if (term_eq(subs[i], pid)) k++;
    node_monitor(idx, subs[i], 1);
  }
  free(subs);
  if (all) *all = n;
  return k;
}

int main(void) {
  uint32_t b, c;
  CHECK(node_intern("b@host", 6, &b) == 0 && node_intern("c@host", 6, &c) == 0 && b != c,
        "two nodes get indexes", "b %u c %u", b, c);
  term_id p1 = pid_of(1), p2 = pid_of(2);
  node_monitor(b, p1, 1);
  node_monitor(b, p1, 1);   /* subscriptions stack, as in Erlang */
  node_monitor(b, p2, 1);
  node_monitor(c, p1, 1);
  size_t all;
  CHECK(count_of(b, p1, &all) == 2 && all == 3, "subscriptions stack: two of p1, one of p2",
        "%zu of %zu", count_of(b, p1, NULL), all);
  node_monitor(b, p1, 0);
  CHECK(count_of(b, p1, NULL) == 1, "monitor_node(false) removes one", "%zu left",
        count_of(b, p1, NULL));
  node_forget_monitors(p1);   /* p1 exited */
  CHECK(count_of(b, p1, &all) == 0 && all == 1 && count_of(b, p2, NULL) == 1,
        "an exited process's subscriptions go, others stay", "p1 %zu, all %zu",
        count_of(b, p1, NULL), all);
  CHECK(count_of(c, p1, &all) == 0 && all == 0, "on every node", "%zu left on c", all);
  term_id *subs;
  size_t n;
  node_take_monitors(b, &subs, &n);
  CHECK(n == 1 && term_eq(subs[0], p2), "nodedown takes what is left", "%zu", n);
  free(subs);
  return ctest_end();
}
