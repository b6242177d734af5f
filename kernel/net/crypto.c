/*
** crypto.c — loads libsodium on first use (see crypto.h for why).
*/
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include "crypto.h"

#ifndef SODIUM_SONAME   /* meson passes the one for the headers it found */
#define SODIUM_SONAME "libsodium.so.23"   /* libsodium 1.0.18's ABI (Debian 12) */
#endif

sodium_table sodium_api;   /* written once in load(), under `once` */

static pthread_once_t once = PTHREAD_ONCE_INIT;
static int started = -1;  /* sodium_init's result; written in load() only, read after pthread_once */
static char why[256];      /* as `started` */

static void load(void) {
  const char *lib = getenv("ERLANGEN_LIBSODIUM");   /* another build of the same ABI */
  if (lib == NULL || *lib == '\0') lib = SODIUM_SONAME;
  void *h = dlopen(lib, RTLD_NOW | RTLD_LOCAL);
  if (h == NULL) {
    snprintf(why, sizeof why, "cannot load %s: %s", lib, dlerror());
    return;
  }
#define SODIUM_RESOLVE(f)                                                    \
  *(void **)&sodium_api.p_##f = dlsym(h, #f);                                \
  if (sodium_api.p_##f == NULL) {                                            \
    snprintf(why, sizeof why, "%s has no function %s", lib, #f);             \
    return;                                                                  \
  }
  SODIUM_FUNCTIONS(SODIUM_RESOLVE)
#undef SODIUM_RESOLVE
  /* The handle stays open for the life of the OS process. */
  started = (sodium_api.p_sodium_init)();
  if (started < 0) snprintf(why, sizeof why, "%s: sodium_init failed", lib);
}

int sodium_start(void) {
  pthread_once(&once, load);
  return started;
}

const char *sodium_why(void) {
  return why[0] ? why : "libsodium is not loaded";
}
