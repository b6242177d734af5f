/*
** process.h — processes: the table of live processes, their threads, and
** their lifecycle from spawn to exit.
**
** A process is one OS thread running one lua_State that is created for it
** and closed when it exits (a state is never reused; parked threads are).
** A `proc` is reference counted: the table holds one reference while the
** process is alive, and anyone who looks a process up holds one until
** proc_release. Lock order: registry lock -> proc.lock (the mailbox takes no lock); never
** two proc locks at once.
*/
#ifndef erlangen_process_h
#define erlangen_process_h

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <lua.h>
#include "codec.h"
#include "kernel.h"
#include "mailbox.h"
#include "term.h"

typedef enum proc_status { PROC_ALIVE, PROC_EXITING } proc_status;

/* What the new process runs. */
typedef enum proc_entry {
  ENTRY_CODEC,    /* a message from this OS process: function (or name) and arguments */
  ENTRY_WIRE,     /* the same from another node: a "module.function" name and arguments */
  ENTRY_FILE, ENTRY_STRING
} proc_entry;

typedef struct proc_link { term_id pid; } proc_link;
typedef struct proc_mon { term_id ref; term_id pid; } proc_mon;

typedef struct proc_vec {      /* a small growable array of T */
  void *items;
  size_t n, cap;
} proc_vec;

/* The fields are grouped by who touches them, in whole cache lines (the
** struct is 64-byte aligned): a send or receive by the owner reads its
** first line and the mailbox's two; a sender reads only the mailbox's
** senders' line of the destination. In a ring of 1,000 every one of those
** lines is a cache miss, so each line less is a miss less per hop. What
** senders write (`refs` on each lookup, the mailbox's shared atomics) stays
** off the owner's lines. */
typedef struct proc {
  /* Line 0: what the owner's API calls read (cur(), send, receive). */
  _Alignas(64) _Atomic int doomed; /* atomic, set after doom_reason: the process must die */
  _Atomic int interrupt;           /* atomic: erlangen_interrupt, raise "interrupted" once */
  uint8_t attached;                /* immutable: a host thread, not a kernel thread */
  uint8_t in_receive;              /* owner only: receive's protected step is running */
  _Atomic uint8_t trace;           /* atomic: TRACE_* flags of the events traced (trace.h);
                                   ** 0, the common case, costs send and receive one branch */
  size_t mem_limit;                /* immutable; 0: unlimited */
  const void *dest_ud;             /* owner only: the block of the pid last sent to (only
                                   ** ever prefetched, never read through) */
  struct proc *dest;               /* owner only, send's cache: a destination looked up
                                   ** twice in a row, held with a reference until another
                                   ** one replaces it or this process exits */
  uint64_t dest_n;                 /* owner only: dest's pid serial (a local pid), so a
                                   ** hit does not read dest's own lines */
  /* Messages this process sent (queued) and received (taken by receive):
  ** written by the owner alone (relaxed load and store, no read-modify-
  ** write), read by info from any thread (relaxed). */
  _Atomic uint64_t sent, received;
  /* Lines 1 and 2: the owner's part, then the senders' (mailbox.h). */
  mbox mb;
  /* Read on other paths. */
  codec_buf scratch;               /* owner only: send's reused encode buffer (not for
                                   ** one scalar, which send encodes on its stack) */
  term_id pid;                     /* immutable */
  lua_State *L;                    /* owner only */
  term_id last_pid;                /* owner only, send's cache: the pid of the last lookup */
  /* Memory of the state, published by its allocator (state_slot) with a
  ** relaxed store for readers. */
  _Atomic size_t mem_pub;
  /* Spawn payload: written before the process is handed to a thread (the
  ** pool lock orders it), then consumed by that thread. */
  proc_entry entry;
  uint32_t payload_len;            /* proc_spawn refuses more */
  unsigned char *payload;
  char *chunkname;
  char *paths;                     /* NULL, or package.path "\0" package.cpath for the new state */
  term_id parent;                  /* immutable: the spawner ({0} for host threads) */
  double started;                  /* immutable: system time (s) of the spawn or attach */
  /* Under `lock` (links, monitors and exits come from other threads). */
  pthread_mutex_t lock;
  double cpu_base;                 /* lock, with `thread`: its CPU time (s) when it took this process */
  proc_vec links;                  /* lock: proc_link */
  proc_vec monitors;               /* lock: proc_mon, targets this process monitors */
  proc_vec monitored_by;           /* lock: proc_mon, watchers of this process */
  unsigned char *doom_reason;      /* lock: set once by the first fatal signal */
  uint32_t doom_len;               /* lock (a reason is below 4 GiB) */
  proc_status status;              /* lock (the owner may read it without) */
  pthread_t thread;                /* lock: the thread running the process */
  _Atomic int has_thread;          /* written under lock: `thread` may be signalled */
  uint8_t trap_exit;               /* lock */
  uint8_t node_monitors;           /* owner only: it called monitor_node (forget its
                                   ** subscriptions at exit) */
  char *label;                     /* lock: set_label's string, or NULL */
  char *name;                      /* the registry's lock */
  proc_vec aliases;                /* the registry's lock: term_id of each active alias */
  /* Written by senders, on a line of its own. */
  _Alignas(64) _Atomic int refs;   /* atomic: table + thread + lookups in progress */
  struct proc *hnext;              /* the table shard's lock */
} proc;

typedef struct proc_opts {
  int link, monitor, trap_exit;
  unsigned mailbox;                /* 0: node default */
  size_t max_memory;               /* 0: unlimited */
  const char *name;                /* NULL: none */
  const char *path, *cpath;        /* the new state's package.path and cpath; NULL: the node's default */
  /* A spawn asked for by a process of another node (no local parent):
  ** link and monitor refer to it. */
  term_id rparent;                 /* {0}: none */
  term_id rref;                    /* the remote parent's monitor ref */
  /* Called with the new pid after it is set up and before it runs (a
  ** remote spawn's reply must leave before the child's first signal). */
  void (*ready)(term_id pid, void *ud);
  void *ready_ud;
} proc_opts;

/* Module lifecycle. */
int proc_init(void);
void proc_shutdown_pool(void);     /* joins parked threads; call when no process runs */

/* Creates and starts a process. `payload` is owned by the callee in every
** case. `parent` (may be NULL) receives the link/monitor asked for in opts;
** *ref gets the monitor's ref. Returns 0, or an error string (static):
** "name already registered", "out of memory", "cannot create thread",
** "entry too large" (over 4 GiB). */
const char *proc_spawn(proc *parent, const proc_opts *o, proc_entry entry,
                       unsigned char *payload, size_t len, const char *chunkname,
                       term_id *pid, term_id *ref);

/* Makes the calling thread a process running `L` (not created by the kernel
** when `foreign`). */
proc *proc_attach(lua_State *L);

/* Ends an attached process with `reason` and drops the thread's reference. */
void proc_detach(proc *p, const unsigned char *reason, size_t len);

/* Runs the exit of an attached process that was doomed, with its doom reason. */
void proc_exit_doomed(proc *p);

/* proc_exit with one of the kernel's well-known reasons. */
void proc_exit_as(proc *p, enum kern_reason r);

/* A malloc'ed copy of p's doom reason (its length in *len), or NULL when
** p is not doomed or memory is short. */
unsigned char *proc_doom_copy(proc *p, size_t *len);

/* 1 while p has not begun to exit (reads status under p's lock). */
int proc_alive(proc *p);

/* Looks up a live local process; the caller must proc_release it. */
proc *proc_get(term_id pid);

/* For self's sends, owner only: the live or recently exited local process
** `pid`, or NULL; hand it back with proc_dest_done. A destination that self
** looks up twice in a row is kept with a reference (until another one
** replaces it or self exits) and found again without the table's lock or
** a reference count per send; one that has exited since is told by its
** closed mailbox, as a lookup just before its exit would be. */
proc *proc_dest(proc *self, term_id pid);
void proc_dest_done(proc *self, proc *p);
void proc_retain(proc *p);
void proc_release(proc *p);

/* Runs the exit of `p` with the encoded `reason`: removes it from the table
** and the registry, then delivers its exit signals and DOWN messages. */
void proc_exit(proc *p, const unsigned char *reason, size_t len);

/* Calls fn(p, ud) for every live process (holding a reference during the call). */
void proc_foreach(void (*fn)(proc *, void *), void *ud);
size_t proc_count(void);

/* The process of the calling thread, or NULL. */
proc *proc_self(void);

/* Marks `p` to die with `reason` (copied) unless already doomed, then makes
** it notice: wakes it if parked, and signals its thread if it runs Lua. */
void proc_doom(proc *p, const unsigned char *reason, size_t len);

/* Vector helpers (lock held by caller). */
int proc_vec_push(proc_vec *v, const void *item, size_t size);
void proc_vec_free(proc_vec *v);

#endif
