/*
** test_pool.c — the kernel's thread pool through the public API: a spawn
** does not wait for an idle thread whose next state is slow to prepare (a
** host's open_libs hook that blocks) when another idle thread is ready.
*/
#include <errno.h>
#include <pthread.h>
#include <string.h>
#include <time.h>
#include <lauxlib.h>
#include "ctest.h"
#include "erlangen.h"

/* The hook blocks the one preparation that follows `block_next`, until
** `released` (or 20 s). All under `mu`. */
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static int block_next, blocked, released;

static struct timespec in_seconds(int s) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  ts.tv_sec += s;
  return ts;
}

static void hook(lua_State *L, void *ud) {
  (void)L; (void)ud;
  pthread_mutex_lock(&mu);
  if (block_next) {
    block_next = 0;
    blocked = 1;
    pthread_cond_broadcast(&cv);
    struct timespec until = in_seconds(20);
    while (!released && pthread_cond_timedwait(&cv, &mu, &until) != ETIMEDOUT) {}
  }
  pthread_mutex_unlock(&mu);
}

/* Runs `code` in the attached state; returns its result as a string
** (copied into buf), or the error. */
static const char *eval(lua_State *L, const char *code, char *buf, size_t n) {
  if (luaL_dostring(L, code) != LUA_OK) snprintf(buf, n, "error: %s", lua_tostring(L, -1));
  else snprintf(buf, n, "%s", luaL_tolstring(L, -1, NULL));
  lua_settop(L, 0);
  return buf;
}

static void spawn(const char *code) {
  erlangen_pid pid;
  if (erlangen_spawn_string(code, "=test_pool", &pid) != 0) printf("# spawn failed\n");
}

static void test_spawn_skips_a_stuck_preparation(void) {
  erlangen_config cfg = {0};
  cfg.open_libs = hook;
  if (erlangen_start(&cfg) != 0) { CHECK(0, "the kernel starts", "erlangen_start failed"); return; }
  lua_State *L = erlangen_attach();
  char buf[256];
  eval(L, "erlangen.register('main', erlangen.self())", buf, sizeof buf);
  /* Two processes alive at once: two threads, which park with their next
  ** states ready once both have exited. */
  spawn("erlangen.send('main', 'up'); erlangen.receive(5)");
  spawn("erlangen.send('main', 'up'); erlangen.receive(5)");
  eval(L, "local a, b = erlangen.receive(5), erlangen.receive(5) "
          "for _, p in ipairs(erlangen.processes()) do "
          "  if p ~= erlangen.self() then erlangen.send(p, 'go') end end "
          "erlangen.sleep(0.5) return a .. b", buf, sizeof buf);
  CHECK(strcmp(buf, "upup") == 0, "two processes ran", "got %s", buf);
  /* The next process's thread blocks in the hook preparing its next state. */
  pthread_mutex_lock(&mu);
  block_next = 1;
  pthread_mutex_unlock(&mu);
  spawn("erlangen.send('main', 'c')");
  eval(L, "return erlangen.receive(5)", buf, sizeof buf);
  pthread_mutex_lock(&mu);
  struct timespec until = in_seconds(5);
  while (!blocked && pthread_cond_timedwait(&cv, &mu, &until) != ETIMEDOUT) {}
  int was_blocked = blocked;
  pthread_mutex_unlock(&mu);
  CHECK(strcmp(buf, "c") == 0 && was_blocked, "a thread is stuck preparing its next state",
        "message %s, blocked %d", buf, was_blocked);
  /* A spawn now (the stuck preparation is 10 ms old) must go to the other
  ** idle thread, which is ready. */
  nanosleep(&(struct timespec){0, 10 * 1000 * 1000}, NULL);
  spawn("erlangen.send('main', 'd')");
  eval(L, "return erlangen.receive(3)", buf, sizeof buf);
  int got_d = strcmp(buf, "d") == 0;
  CHECK(got_d, "a spawn goes to a ready idle thread, not to one stuck preparing", "got %s", buf);
  pthread_mutex_lock(&mu);
  released = 1;
  pthread_cond_broadcast(&cv);
  pthread_mutex_unlock(&mu);
  if (!got_d) eval(L, "return erlangen.receive(5)", buf, sizeof buf);   /* the late 'd' */
  erlangen_detach(L);
  erlangen_stop(1);
}

int main(void) {
  test_spawn_skips_a_stuck_preparation();
  return ctest_end();
}
