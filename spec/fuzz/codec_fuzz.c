/*
** codec_fuzz.c — libFuzzer target for the codec decoder on untrusted bytes
** (functions refused, as for network input). Every input must decode to
** values or to an error, leaving the Lua stack balanced.
*/
#include <stdint.h>
#include <stdlib.h>
#include <lauxlib.h>
#include <lualib.h>
#include "codec.h"

static lua_State *L;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (!L) {
    L = luaL_newstate();
    luaL_openlibs(L);
  }
  codec_limits lim = { .max_size = 1u << 20, .max_depth = 100, .allow_functions = 0 };
  int top = lua_gettop(L);
  int n = codec_decode(L, data, size, &lim);
  if (n < 0) n = 1;               /* the error message */
  if (lua_gettop(L) != top + n) abort();
  lua_settop(L, top);
  if ((size & 63) == 0) lua_gc(L, LUA_GCCOLLECT);
  return 0;
}
