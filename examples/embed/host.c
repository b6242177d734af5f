/*
** host.c — a host program embedding the erlangen kernel.
**
** It starts the kernel, gives every process a `host` library with one C
** function, spawns actors from a string, from "module.function" with
** arguments and from a file, talks to them from the host's own thread
** (attached as a process), and shuts down cleanly.
*/
#include <stdio.h>
#include <stdlib.h>
#include <lauxlib.h>
#include <erlangen.h>

/* host.checksum(s): a C function the host exposes to every actor. */
static int host_checksum(lua_State *L) {
  size_t len;
  const char *s = luaL_checklstring(L, 1, &len);
  unsigned sum = 0;
  for (size_t i = 0; i < len; i++) sum = sum * 31 + (unsigned char)s[i];
  lua_pushinteger(L, sum);
  return 1;
}

static void open_host(lua_State *L, void *ud) {
  (void)ud;
  static const luaL_Reg lib[] = { {"checksum", host_checksum}, {NULL, NULL} };
  luaL_newlib(L, lib);
  lua_setglobal(L, "host");
}

static const char *actor =
  "local from, text = table.unpack(erlangen.receive(5))\n"
  "erlangen.send(from, {'sum', host.checksum(text)})\n";

int main(void) {
  erlangen_config cfg = {0};
  cfg.open_libs = open_host;
  if (erlangen_start(&cfg) != 0) { fprintf(stderr, "cannot start the kernel\n"); return 1; }

  erlangen_pid worker;
  if (erlangen_spawn_string(actor, "=actor", &worker) != 0) { fprintf(stderr, "spawn failed\n"); return 1; }

  lua_State *L = erlangen_attach();      /* this thread becomes a process */
  if (!L) { fprintf(stderr, "attach failed\n"); return 1; }
  lua_getglobal(L, "erlangen");
  lua_getfield(L, -1, "send");
  erlangen_pushpid(L, worker);
  lua_createtable(L, 2, 0);
  lua_getfield(L, -4, "self");
  lua_call(L, 0, 1);
  lua_rawseti(L, -2, 1);
  lua_pushliteral(L, "hello");
  lua_rawseti(L, -2, 2);
  lua_call(L, 2, 1);                      /* erlangen.send(worker, {self(), "hello"}) */
  printf("sent: %s\n", lua_toboolean(L, -1) ? "true" : "false");
  lua_pop(L, 1);

  lua_getfield(L, -1, "receive");
  lua_pushnumber(L, 5);
  lua_call(L, 1, 1);                      /* erlangen.receive(5) */
  lua_rawgeti(L, -1, 2);
  printf("reply: %lld (expected %d)\n", (long long)lua_tointeger(L, -1),
         (int)(((((unsigned)'h' * 31 + 'e') * 31 + 'l') * 31 + 'l') * 31 + 'o'));
  lua_pop(L, 2);      /* keep the erlangen table */

  /* Spawn by "module.function" with arguments: erlangen.send(self, "by name"). */
  lua_pushliteral(L, "erlangen.send");
  lua_getfield(L, -2, "self");
  lua_call(L, 0, 1);
  lua_pushliteral(L, "by name");
  erlangen_pid sender;
  if (erlangen_spawn(L, 2, &sender) != 0) { fprintf(stderr, "spawn: %s\n", lua_tostring(L, -1)); return 1; }
  lua_getfield(L, -1, "receive");
  lua_pushnumber(L, 5);
  lua_call(L, 1, 1);
  printf("module.function: %s\n", lua_tostring(L, -1));
  lua_pop(L, 1);

  /* Spawn from a file: it sends its own chunk name back to us. */
  char path[] = "/tmp/erlangen-embed-XXXXXX";
  int fd = mkstemp(path);
  FILE *f = fd >= 0 ? fdopen(fd, "w") : NULL;
  if (!f) { perror("mkstemp"); return 1; }
  fprintf(f, "erlangen.send(erlangen.whereis('host'), 'from a file')\n");
  fclose(f);
  lua_getfield(L, -1, "register");
  lua_pushliteral(L, "host");
  lua_getfield(L, -3, "self");
  lua_call(L, 0, 1);
  lua_call(L, 2, 0);
  erlangen_pid filer;
  if (erlangen_spawn_file(path, &filer) != 0) { fprintf(stderr, "spawn_file failed\n"); return 1; }
  lua_getfield(L, -1, "receive");
  lua_pushnumber(L, 5);
  lua_call(L, 1, 1);
  printf("file: %s\n", lua_tostring(L, -1));
  lua_pop(L, 2);
  remove(path);

  erlangen_detach(L);
  int killed = erlangen_stop(1.0);
  printf("stopped, %d killed\n", killed);
  return 0;
}
