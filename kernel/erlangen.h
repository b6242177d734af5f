/*
** erlangen.h — the public C API of the erlangen actor kernel.
**
** One kernel runs per OS process. Every process is an OS thread with its own
** lua_State; processes share nothing and talk only through messages copied
** by the codec. A host program starts the kernel, may add its own libraries
** to every process state, spawns processes, and may attach its own threads
** as processes so that they can send and receive.
**
** Thread safety: every function here may be called from any thread once
** erlangen_start has returned, except that erlangen_detach must be called by
** the thread that attached, and erlangen_stop must not be called by a
** process of the kernel.
*/
#ifndef erlangen_h
#define erlangen_h

#include <stddef.h>
#include <stdint.h>
#include <lua.h>

/* Lua 5.4 allows 200 nested C calls (LUAI_MAXCCALLS, fixed when liblua is
** built), and a level can take over 2 KiB of C stack (string.gsub with a
** function replacement keeps a luaL_Buffer and a MatchState per level):
** measured, 200 such levels need between 384 and 512 KiB. A smaller stack
** would let one process's recursion crash the whole node, so the minimum
** is 512 KiB and the default 1 MiB. Only touched pages cost memory. */
#define ERLANGEN_DEFAULT_STACK    (1024u * 1024u)
#define ERLANGEN_MIN_STACK        (512u * 1024u)
#define ERLANGEN_DEFAULT_MAILBOX  1024u

typedef struct erlangen_config {
  size_t stack_size;          /* C stack of each process thread; 0: ERLANGEN_DEFAULT_STACK;
                                 at least ERLANGEN_MIN_STACK */
  unsigned mailbox_capacity;  /* default mailbox capacity; 0: ERLANGEN_DEFAULT_MAILBOX */
  size_t max_message;         /* largest encoded message in bytes; 0: 64 MiB; at most 4 GiB - 1 */
  int max_depth;              /* deepest table nesting in a message; 0: 100 */
  /* Called in every new process state after the standard libraries and the
  ** `erlangen` module are open, before the process's function runs —
  ** usually ahead of time, on a parked kernel thread, before the process
  ** exists, so it must not call erlangen functions and must be safe to run
  ** concurrently. [-0, +0]; it must leave the stack as it found it. May be NULL. */
  void (*open_libs)(lua_State *L, void *ud);
  void *open_libs_ud;
} erlangen_config;

/* A local process identifier (the serial shown as <0.N>). Never reused. */
typedef uint64_t erlangen_pid;

/* Starts the kernel. `cfg` may be NULL for defaults; it is copied.
** Returns 0, or -1 if a kernel is already running or threads are short. */
int erlangen_start(const erlangen_config *cfg);

/* Stops the kernel: every process gets exit signal "shutdown"; those still
** alive after `grace` seconds are killed; then waits for their threads.
** The process registered as "erlangen.log" (the stdlib's logger) is stopped
** after all the others, so it writes their last records; it gets 2 seconds.
** Attached threads are detached for you. Returns the number killed. */
int erlangen_stop(double grace);

/* 1 if a kernel is running. */
int erlangen_running(void);

/* Spawns a process running the Lua file at `path` (loaded in the new state:
** a missing or broken file becomes the process's exit reason).
** Returns 0 and stores the pid, or -1 if the kernel is not running. */
int erlangen_spawn_file(const char *path, erlangen_pid *pid);

/* Spawns a process running the chunk `code` (named `chunkname` in errors). */
int erlangen_spawn_string(const char *code, const char *chunkname, erlangen_pid *pid);

/* Spawns like erlangen.spawn: pops a function or "module.function" string
** and the `nargs` arguments above it from L, copying them with the codec.
** [-(nargs+1), +0 or +1]: returns 0, or -1 after pushing an error message
** (an unsendable argument, for example). */
int erlangen_spawn(lua_State *L, int nargs, erlangen_pid *pid);

/* Makes the calling host thread a process with a fresh lua_State holding
** the standard libraries, `erlangen` and the open_libs hook. The thread can
** then use erlangen.send / erlangen.receive through that state.
** Returns NULL if the kernel is not running or the thread is attached. */
lua_State *erlangen_attach(void);

/* Ends the attached process with reason "normal" and closes its state.
** The only way to close a state from erlangen_attach (not lua_close: the
** state uses the kernel's allocator, whose slot is freed here). */
void erlangen_detach(lua_State *L);

/* Interrupts the process whose state is L (attached or spawned): if it is
** waiting in erlangen.receive or erlangen.sleep that call raises the error
** "interrupted"; if it runs Lua code, the next instruction raises it.
** Async-signal-safe: a SIGINT handler may call it (the REPL does). */
void erlangen_interrupt(lua_State *L);

/* Pushes the pid `pid` as a Lua value. [-0, +1] */
void erlangen_pushpid(lua_State *L, erlangen_pid pid);

/* Opens the `erlangen` module (as require does). [-0, +1] */
int luaopen_erlangen(lua_State *L);

#endif
