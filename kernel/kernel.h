/*
** kernel.h — the node: its configuration, its well-known exit reasons, and
** starting and stopping it. One kernel per OS process.
**
** The configuration is read by every spawn and changed by
** erlangen.configure; it is guarded by the kernel's config lock. The
** pre-encoded reasons are immutable once kern_start has returned.
*/
#ifndef erlangen_kernel_h
#define erlangen_kernel_h

#include <stddef.h>
#include <lua.h>
#include "codec.h"
#include "erlangen.h"

typedef struct kern_config {
  size_t stack_size;
  unsigned mailbox;
  size_t max_message;
  int max_depth;
  void (*open_libs)(lua_State *L, void *ud);
  void *open_libs_ud;
} kern_config;

/* Well-known reasons, encoded once so the kernel can send them without a
** Lua state and compare them by bytes. */
enum kern_reason { KR_NORMAL, KR_KILL, KR_KILLED, KR_SHUTDOWN, KR_NOPROC,
                   KR_MEMORY, KR_INTERRUPTED, KR_BADREASON, KR_NOCONNECTION, KR_ABANDONED,
                   KR_COUNT };

int kern_start(const erlangen_config *cfg);   /* 0, or -1 if already running */
int kern_ensure(void);                        /* starts with defaults if needed; 0 or -1 */
int kern_running(void);
int kern_stopping(void);                      /* 1 while kern_stop runs: spawns are refused */
/* Brackets a spawn: begin returns -1 (refuse) once a stop has started;
** kern_stop waits for the spawns in flight before its passes. */
int kern_spawn_begin(void);
void kern_spawn_end(void);
int kern_stop(double grace);                  /* see erlangen_stop */

/* The name the stdlib's logger registers under: crash reports go to it, and
** kern_stop stops it after every other process. */
#define KERN_LOGGER_NAME "erlangen.log"

kern_config kern_config_get(void);
void kern_config_set(const kern_config *c);
codec_limits kern_limits(int allow_functions);

/* The directory holding stdlib/'s modules (found once at start). */
const char *kern_stdlib_dir(void);

const unsigned char *kern_reason(enum kern_reason r, size_t *len);
int kern_reason_is(const unsigned char *p, size_t len, enum kern_reason r);

#endif
