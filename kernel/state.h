/*
** state.h — a process's lua_State: its allocator with the memory limit, its
** libraries, the hook that makes a doomed process die, and running the
** process's entry from its spawn payload.
**
** The hook is installed from other threads only through a signal delivered
** to the process's own thread (SIGURG), whose handler calls lua_sethook on
** the thread's current state: Lua allows lua_sethook from a signal handler.
** Lua runs message handlers and __gc finalizers with hooks off, so process
** states get their own xpcall, setmetatable and debug.setmetatable, under
** which a kill reaches those too (doc/semantics.md says where it cannot).
*/
#ifndef erlangen_state_h
#define erlangen_state_h

#include <signal.h>
#include <lua.h>

struct proc;

#define STATE_SIGNAL SIGURG

/* Installs the STATE_SIGNAL handler (once per OS process). */
void state_init_signals(void);

/* Sets or clears the calling thread's current process state (for the
** signal handler). */
void state_set_current(lua_State *L);

/* Installs the doom/interrupt hook on L. Async-signal-safe. */
void state_arm_hook(lua_State *L);

/* A kernel thread's state slot: the state it will run next, prepared while
** the thread is parked so that a spawn does not wait for it, and the memory
** accounting of that state. Owned by one thread; `owner` is the process
** the state is bound to (NULL while prepared), and the allocator publishes
** its byte count to owner->mem_pub. */
#define ARENA_HOLES 16
typedef struct arena_hole { size_t at, len; } arena_hole;

#define STATE_SMALL_MAX 128          /* the largest block the slot recycles itself */
#define STATE_SMALL_STEP 16          /* its size classes; also the arena's rounding */
#define STATE_SMALL_KEEP (16u << 10)  /* bytes of such blocks it keeps at most */

typedef struct state_slot {
  lua_State *L;       /* NULL: none prepared */
  size_t used;        /* bytes allocated by L */
  size_t limit;       /* 0: unlimited */
  struct proc *owner;
  /* The arena: one block that the objects of the state's fixed part (std
  ** libs, erlangen, the stdlib path; not the host's hook) are carved from
  ** while it is opened: one malloc instead of hundreds. Freeing one of them
  ** afterwards is a no-op; the block goes when the state is closed.
  ** Invariant: every pointer of L inside [arena, arena + arena_cap) was
  ** carved, and the arena lives exactly as long as L. */
  unsigned char *arena;
  size_t arena_cap, arena_top;
  size_t arena_over;  /* bytes this opening wanted beyond the arena (went to malloc) */
  size_t arena_want;  /* bytes the last opening used: the next arena's size */
  int carving;        /* the state is being opened: new objects come from the arena */
  int nholes;         /* blocks freed while carving, filled again first */
  arena_hole holes[ARENA_HOLES];
  /* Blocks of up to STATE_SMALL_MAX bytes that L freed, by size class of
  ** STATE_SMALL_STEP bytes, kept for its next allocations of the class (a
  ** collection frees in bursts what the program allocates again right
  ** after) instead of going back to malloc. At most STATE_SMALL_KEEP bytes;
  ** freed when L is closed. Invariant: a block L holds of n <=
  ** STATE_SMALL_MAX bytes has room for n rounded up to STATE_SMALL_STEP,
  ** so any block of its class fits. */
  void *small[STATE_SMALL_MAX / STATE_SMALL_STEP];
  size_t small_kept;  /* bytes in `small` */
} state_slot;

/* A bare state for a host thread (erlangen_attach), using the kernel's
** allocator; NULL when memory is short. Close it with state_close_host. */
lua_State *state_new_host(void);
void state_close_host(lua_State *L);   /* any state; frees the slot of ours */

/* Accounts L's memory to process p from now on (NULL: to none). Does
** nothing for a state the kernel did not make (stock lua's). */
void state_bind(lua_State *L, struct proc *p);

/* Prepares s->L if there is none (quietly leaves it NULL when memory is short). */
void state_prepare(state_slot *s);

/* Closes a prepared state (thread exit). */
void state_slot_close(state_slot *s);

/* Runs process p on the calling thread in the slot's state (prepared or
** made now), then closes that state. Returns the encoded exit reason
** (malloc'ed) in *reason. */
void state_run(struct proc *p, state_slot *s, unsigned char **reason, size_t *len);

/* Opens what every process state has: std libs (coroutine.resume and wrap,
** xpcall, setmetatable and debug.setmetatable replaced, for the doom hook),
** erlangen (also as a global), stdlib on package.path, then the host's
** open_libs hook. */
void state_open(lua_State *L);

/* If the error value at the top of L is an exit object (erlangen.exit or a
** doom), pushes the reason it carries and returns 1; otherwise returns 0. */
int state_exit_reason(lua_State *L, struct proc *p);

/* Raises the exit object for `p`'s doom reason. Does not return. */
int state_raise_doom(lua_State *L, struct proc *p);

/* erlangen.exit(reason): raises an exit object carrying the value at the
** top of the stack. Does not return. */
int state_exit(lua_State *L);

/* 1 if L was opened by state_open (a process state or an attached one). */
int state_is_kernel(lua_State *L);

/* Puts stdlib/ on package.path of L unless it is there (for stock lua). */
void state_add_stdlib_path(lua_State *L);

/* The package.path and package.cpath a process state starts with, as
** "path\0cpath\0", or NULL until the first process has started. */
const char *state_default_paths(void);

/* For kernel threads, which have no lua_State: sends {"$log", level, text,
** fields, nil, system time} to the registered logger ("erlangen.log")
** without waiting, building it in a temporary state. `fields` holds n
** key/value string pairs (a NULL value is left out). Returns 1 if queued;
** 0 when there is no logger, its mailbox is full or memory is short (the
** caller then writes to stderr). */
int state_log(const char *level, const char *text, const char *const *fields, int n);

#endif
