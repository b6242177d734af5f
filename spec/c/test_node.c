/*
** test_node.c — the node table (kernel/node.c): monitor_node subscriptions,
** and entries freed when nothing refers to them, without links: the three
** conn functions node.c calls are stubs here.
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

/* The sweep's walk: one made-up process holding a pid of node `held`. */
static uint32_t held;
static void walk_held(void (*mark)(uint32_t idx, void *ud), void *ud) { if (held) mark(held, ud); }

static void sweeps(int n) { while (n-- > 0) node_sweep(); }

static void test_freeing(void) {
  node_set_walk(walk_held);
  sweeps(3);   /* the entries of the test above go: nothing refers to them now */
  CHECK(node_count() == 0, "entries nothing refers to are swept", "%zu left", node_count());
  enum { MANY = 100000 };
  static uint32_t ids[MANY];
  char name[64];
  int ok = 1;
  for (int i = 0; i < MANY && ok; i++) {
    int n = snprintf(name, sizeof name, "made-up-%d@host", i);
    ok = node_intern(name, (size_t)n, &ids[i]) == 0;
    if (ok) node_ref(ids[i]);   /* as the userdata of a decoded pid holds it */
  }
  CHECK(ok && node_count() == MANY, "100,000 made-up names each get an entry: there is no cap",
        "%zu entries", node_count());
  uint32_t again;
  CHECK(node_intern("made-up-77@host", 15, &again) == 0 && again == ids[77],
        "a known name is found again, with the same index", "%u vs %u", again, ids[77]);
  for (int i = 0; i < MANY; i++) if (i != 1) node_unref(ids[i]);
  held = ids[2];
  node_sweep();
  CHECK(node_count() == MANY, "an entry unreferenced for less than a whole sweep stays",
        "%zu entries", node_count());
  node_sweep();
  CHECK(node_count() == 2, "the next sweep frees every entry nothing refers to", "%zu entries left",
        node_count());
  CHECK(node_name(ids[1]) && strcmp(node_name(ids[1]), "made-up-1@host") == 0,
        "a reference keeps an entry", "%s", node_name(ids[1]) ? node_name(ids[1]) : "(gone)");
  CHECK(node_name(ids[2]) != NULL, "a process holding a pid of the node keeps its entry", "gone");
  CHECK(node_name(ids[3]) == NULL && node_find("made-up-3@host") == -1,
        "a freed entry's index and name name no node", "%s", node_name(ids[3]));
  uint32_t fresh;
  CHECK(node_intern("made-up-3@host", 14, &fresh) == 0 && fresh != ids[3] && node_name(ids[3]) == NULL,
        "a name seen again gets a new index; the old one stays dead", "new %u old %u", fresh, ids[3]);
  node_monitor(fresh, pid_of(9), 1);
  node_unref(ids[1]);
  held = 0;
  sweeps(2);
  CHECK(node_name(ids[1]) == NULL && node_name(ids[2]) == NULL,
        "dropping the reference and the hold frees them", "%s, %s",
        node_name(ids[1]) ? "kept" : "gone", node_name(ids[2]) ? "kept" : "gone");
  CHECK(node_name(fresh) != NULL && node_count() == 1, "a monitor_node subscriber keeps an entry",
        "%s, %zu entries", node_name(fresh) ? "kept" : "gone", node_count());
  node_forget_monitors(pid_of(9));
  sweeps(2);
  CHECK(node_count() == 0, "and its entry goes once the subscriber has gone", "%zu left", node_count());
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
  test_freeing();
  return ctest_end();
}
