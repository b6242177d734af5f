/*
** term.h — pids and refs as Lua values.
**
** A pid or ref is a full userdata holding a term_id. Within one lua_State
** equal ids are always the same userdata (they are interned in a weak-valued
** table in the registry), so `==` and table keys work without metamethods.
** `node` 0 means this node; other values index the network layer's node
** table (remote.h). `creation` tells incarnations of a node apart.
*/
#ifndef erlangen_term_h
#define erlangen_term_h

#include <stdint.h>
#include <lua.h>

typedef struct term_id {
  uint64_t n;         /* serial; never reused while the node runs */
  uint32_t node;      /* 0 = local */
  uint32_t creation;  /* incarnation of `node` */
} term_id;

enum term_kind { TERM_NONE = 0, TERM_PID = 1, TERM_REF = 2 };

/* Pushes the interned pid or ref for `id`. */
void term_push(lua_State *L, enum term_kind kind, term_id id);

/* Returns the kind of the value at `idx` and stores its id in `*out`
** (if out is not NULL); TERM_NONE if it is neither a pid nor a ref. */
enum term_kind term_test(lua_State *L, int idx, term_id *out);

/* Like term_test but raises a luaL_argerror ("pid expected, got table")
** when the value at `arg` is not of `kind`. */
term_id term_check(lua_State *L, int arg, enum term_kind kind);

/* Equality of ids. */
static inline int term_eq(term_id a, term_id b) {
  return a.n == b.n && a.node == b.node && a.creation == b.creation;
}

/* Fresh ref from the node-wide counter (atomic; any thread). */
term_id term_new_ref(void);

/* Pids and refs of other nodes: how tostring names their node, and the
** reference each one's userdata holds on its node's entry (taken when the
** userdata is made, dropped by its __gc). Set once by remote_install,
** before any pid of another node can exist. */
typedef struct term_nodes {
  const char *(*name)(uint32_t node);
  void (*ref)(uint32_t node);
  void (*unref)(uint32_t node);
} term_nodes;
void term_set_nodes(const term_nodes *nodes);

#endif
