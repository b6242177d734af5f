/*
** codec.c — Lua values <-> bytes in the message format of doc/codec.md.
**
** Three parts: the format constants, the encoder (with the map of loaded
** modules it consults), and the decoder. The encoder owns C memory (the
** output buffer, the set of emitted objects, deep frames), so outside
** lua_pcall it calls only Lua functions that neither allocate nor run
** code (the one exception: term_test interns its metatable names the
** first time a state looks them up). The decoder owns no C memory: every
** temporary lives on the Lua stack, so a memory error raised by Lua in
** the middle of a decode leaks nothing.
*/
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <lauxlib.h>
#include "codec.h"
#include "term.h"

/* ======================================================================
** The format
** ====================================================================== */

#define CODEC_VERSION   1     /* first byte of every message */
#define CODEC_F_SHARED  0x01  /* header flag: the message holds BACKREF or
                              ** UPJOIN items, so the decoder must record
                              ** every table and function it creates */
#define CODEC_F_ALL     CODEC_F_SHARED

enum codec_tag {
  TAG_NIL      = 0x00,
  TAG_FALSE    = 0x01,
  TAG_TRUE     = 0x02,
  TAG_INT      = 0x03,  /* zigzag varint */
  TAG_FLOAT    = 0x04,  /* 8 bytes, IEEE 754 binary64, little-endian */
  TAG_STRING   = 0x05,  /* varint length, bytes */
  TAG_TABLE    = 0x06,  /* varint narr, varint nhash, narr values, nhash key/value pairs */
  TAG_BACKREF  = 0x07,  /* varint object number */
  TAG_TERM     = 0x08,  /* kind byte, varint node, varint creation, varint serial */
  TAG_FUNCTION = 0x09,  /* varint length, lua_dump bytes, varint nup, nup upvalues */
  TAG_UPJOIN   = 0x0A,  /* (upvalue position only) varint object number, varint upvalue index */
  TAG_GLOBALS  = 0x0B,  /* the receiving state's global table */
  TAG_MODULE   = 0x0C,  /* varint length, module name */
  TAG_CFUNC    = 0x0D,  /* varint length, module name, varint length, field name */
  TAG_NTERM    = 0x0E   /* kind byte, varint length, node name, varint creation, varint serial */
};

/* Cold paths are kept out of line, away from the per-value loop. */
#if defined(__GNUC__) || defined(__clang__)
#define CODEC_NOINLINE __attribute__((noinline))
#else
#define CODEC_NOINLINE
#endif

/* A table's two counts are written as two-byte (possibly non-minimal)
** varints and patched when the table is complete; only counts >= 2^14
** need the rest of the table shifted. */
#define COUNT_WIDTH 2
#define COUNT_FITS  ((size_t)1 << (7 * COUNT_WIDTH))

static int varint_len(uint64_t v) {
  int n = 1;
  while (v >= 0x80) { v >>= 7; n++; }
  return n;
}

static int varint_put(unsigned char *b, uint64_t v) {
  int n = 0;
  while (v >= 0x80) { b[n++] = (unsigned char)(v | 0x80); v >>= 7; }
  b[n++] = (unsigned char)v;
  return n;
}

static uint64_t zigzag(lua_Integer i) {
  uint64_t u = (uint64_t)i;
  return i < 0 ? ~(u << 1) : u << 1;
}

static lua_Integer unzigzag(uint64_t u) {
  return (lua_Integer)((u >> 1) ^ (0 - (u & 1)));
}

/* The message size limit lim sets (the default for 0, never above the hard cap). */
static size_t codec_max_size(const codec_limits *lim) {
  size_t max_size = lim && lim->max_size ? lim->max_size : CODEC_DEFAULT_MAX_SIZE;
  return max_size > CODEC_HARD_SIZE ? CODEC_HARD_SIZE : max_size;
}

static void codec_limits_of(const codec_limits *lim, size_t *max_size, int *max_depth,
                            int *allow_functions) {
  *max_size = codec_max_size(lim);
  *max_depth = lim && lim->max_depth > 0 ? lim->max_depth : CODEC_DEFAULT_MAX_DEPTH;
  if (*max_depth > CODEC_HARD_DEPTH) *max_depth = CODEC_HARD_DEPTH;
  *allow_functions = lim ? lim->allow_functions : 0;
}

/* ======================================================================
** The module map
**
** A table that is a value of package.loaded travels as its name, and a C
** function that is a field of such a table as (module, field). Finding
** those names means walking package.loaded and every module in it (a few
** hundred entries), far too slow for every send. So each lua_State caches,
** in its registry under &codec_cache_key, a table
**   [1] T: module table -> name (the global table -> true)
**   [2] S: name -> value, a snapshot of package.loaded when T was built
**   [3] the number of entries in that snapshot
**   [4] F: C function -> name of a module holding it, built when first needed
**
** When it is consulted. Only messages holding a function use the map. An
** encode starts in data mode, copying tables without looking them up;
** the first function it meets (Lua or C) switches it to module mode, and
** if a table was already copied the encode restarts from the beginning in
** module mode. So data-only messages (the hot path) pay nothing, and a
** state that never sends a function never builds the map. The only module
** a data-only message copies is one holding no function at all, which is
** then sent as the plain data it is (copying any other module would meet
** its functions and restart).
**
** Invalidation. Entering module mode re-syncs: it walks package.loaded
** only (tens of entries) and compares it with S, rebuilding T and dropping
** F on any difference. Hits are re-checked anyway (for T:
** package.loaded[name] must still be the table; for F: the field is found
** by walking that one module), so a stale entry is never used. F can miss
** a C function added to a module after F was built: a miss rebuilds F once
** per encode before the function is refused.
** ====================================================================== */

static const char codec_cache_key = 'm';  /* its address keys the registry */

/* Preference when one value is found under several names: the global
** table, then the standard libraries, then shorter names, then bytewise. */
static int mod_rank(const char *name) {
  static const char *const std[] = { "_G", "string", "table", "math", "utf8", "coroutine",
                                     "os", "io", "debug", "package", NULL };
  for (int i = 0; std[i]; i++)
    if (strcmp(name, std[i]) == 0) return i;
  return 100;
}

static int mod_better(const char *a, size_t la, const char *b, size_t lb) {
  int ra = mod_rank(a), rb = mod_rank(b);
  if (ra != rb) return ra < rb;
  if (la != lb) return la < lb;
  return memcmp(a, b, la) < 0;
}

/* Pushes the cache table, creating it if absent. Raises on memory errors. */
static void modmap_cache(lua_State *L) {
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &codec_cache_key) != LUA_TTABLE) {
    lua_pop(L, 1);
    lua_createtable(L, 4, 0);
    lua_pushvalue(L, -1);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &codec_cache_key);
  }
}

/* Pushes package.loaded as require sees it, or an empty table. */
static void modmap_loaded(lua_State *L) {
  if (lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE) != LUA_TTABLE) {
    lua_pop(L, 1);
    lua_newtable(L);
  }
}

/* Protected: [-0, +1] brings T and S up to date with package.loaded and
** pushes whether they changed. */
static int modmap_sync(lua_State *L) {
  modmap_cache(L);                                   /* 1: cache */
  modmap_loaded(L);                                  /* 2: loaded */
  int changed = 1;
  if (lua_rawgeti(L, 1, 2) == LUA_TTABLE) {          /* 3: S */
    lua_Integer n = 0;
    changed = 0;
    lua_pushnil(L);
    while (lua_next(L, 2)) {
      n++;
      lua_pushvalue(L, -2);
      lua_rawget(L, 3);
      int same = lua_rawequal(L, -1, -2);
      lua_pop(L, 2);
      if (!same) { lua_pop(L, 1); changed = 1; break; }
    }
    lua_rawgeti(L, 1, 3);
    if (!changed && (!lua_isinteger(L, -1) || lua_tointeger(L, -1) != n)) changed = 1;
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  if (changed) {
    lua_newtable(L);                                 /* 3: T */
    lua_newtable(L);                                 /* 4: S */
    lua_Integer n = 0;
    lua_pushnil(L);
    while (lua_next(L, 2)) {
      n++;
      lua_pushvalue(L, -2); lua_pushvalue(L, -2); lua_rawset(L, 4);
      size_t lk, lc;
      if (lua_type(L, -2) == LUA_TSTRING && lua_type(L, -1) == LUA_TTABLE) {
        const char *k = lua_tolstring(L, -2, &lk);
        lua_pushvalue(L, -1);
        int t = lua_rawget(L, 3);
        const char *cur = t == LUA_TSTRING ? lua_tolstring(L, -1, &lc) : NULL;
        lua_pop(L, 1);
        if (t == LUA_TNIL || (cur && mod_better(k, lk, cur, lc))) {
          lua_pushvalue(L, -1); lua_pushvalue(L, -3); lua_rawset(L, 3);
        }
      }
      lua_pop(L, 1);
    }
    lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_GLOBALS);
    lua_pushboolean(L, 1);
    lua_rawset(L, 3);
    lua_pushvalue(L, 3); lua_rawseti(L, 1, 1);
    lua_pushvalue(L, 4); lua_rawseti(L, 1, 2);
    lua_pushinteger(L, n); lua_rawseti(L, 1, 3);
    lua_pushnil(L); lua_rawseti(L, 1, 4);
  }
  lua_pushboolean(L, changed);
  return 1;
}

/* Protected: [-0, +1] rebuilds F (C function -> name of a loaded module
** holding it as a field) and pushes it. The field is not stored: on a hit
** the encoder finds it by walking that one module, which also re-checks
** the hit. Storing only existing strings keeps F small (one entry per C
** function) and lets the encoder emit names without creating strings. */
static int modmap_cfuncs(lua_State *L) {
  modmap_cache(L);                                   /* 1: cache */
  modmap_loaded(L);                                  /* 2: loaded */
  lua_newtable(L);                                   /* 3: F */
  lua_pushnil(L);
  while (lua_next(L, 2)) {                           /* 4: name, 5: module */
    size_t lm, lc;
    const char *m = lua_type(L, 4) == LUA_TSTRING ? lua_tolstring(L, 4, &lm) : NULL;
    if (m && lua_type(L, 5) == LUA_TTABLE) {
      lua_pushnil(L);
      while (lua_next(L, 5)) {                       /* 6: field, 7: value */
        if (lua_type(L, 6) == LUA_TSTRING && lua_iscfunction(L, 7)) {
          lua_pushvalue(L, 7);
          const char *cur = lua_rawget(L, 3) == LUA_TSTRING ? lua_tolstring(L, -1, &lc) : NULL;
          lua_pop(L, 1);
          if (!cur || mod_better(m, lm, cur, lc)) {
            lua_pushvalue(L, 7); lua_pushvalue(L, 4); lua_rawset(L, 3);
          }
        }
        lua_pop(L, 1);
      }
    }
    lua_pop(L, 1);
  }
  lua_pushvalue(L, 3);
  lua_rawseti(L, 1, 4);
  return 1;
}

/* ======================================================================
** The encoder
** ====================================================================== */

/* Why an encode stopped. */
enum enc_status { ENC_OK, ENC_ERR, ENC_RESTART, ENC_RAISE };

/* One emitted table or function (key: lua_topointer; obj: its object
** number; up: 0), or one upvalue cell already sent (key: lua_upvalueid;
** obj: the closure's object number; up: its upvalue index). The keys are
** addresses of live, distinct collectable objects, so they never collide. */
typedef struct enc_slot { const void *key; uint32_t obj, up; } enc_slot;

/* One open container on an explicit stack, so that nesting costs no C
** stack. Its Lua temporaries sit just above `base`: a table's lua_next
** key (base+1) and value (base+2), or a closure's upvalue (base+1). The
** frame's current position is also one step of an error path.
**
** A table is walked once with lua_next. While the keys come as 1, 2, 3...
** (lua_next yields the array part first, in order) the values form the
** array section; from the first other key on, every entry is a pair. */
enum enc_kind {
  EF_ROOT,     /* the n values: i = position being encoded (1-based), n */
  EF_ARRAY,    /* a table's array section: i = index being encoded */
  EF_KEY,      /* a table's pairs, the key being encoded */
  EF_VALUE,    /* a table's pairs, the value being encoded */
  EF_UPVALUE   /* a closure's upvalues: i = number being encoded, n = nup */
};

typedef struct enc_frame {
  int kind;
  int slot;           /* stack slot of the table or closure (ROOT: the first value) */
  int base;           /* stack top when the frame opened; restored when it closes */
  uint32_t obj;       /* UPVALUE: the closure's object number */
  lua_Integer i, n;   /* see enum enc_kind; a table keeps i = narr during its pairs */
  size_t at, nhash;   /* a table: offset of its counts, pairs written so far */
} enc_frame;

#define ENC_SMALL_SET     8    /* objects kept in a plain array before hashing */
#define ENC_FIRST_SET     64   /* first hash table size (power of 2) */
#define ENC_INLINE_FRAMES 16   /* nesting handled without malloc for frames */
#define ENC_FIRST_CAP     128  /* first allocation of the output buffer */
#define ENC_LEVEL_SLOTS   8    /* Lua stack slots one nesting level may use */

typedef struct enc {
  lua_State *L;
  unsigned char *buf;          /* malloc'ed; cap <= max_size always */
  size_t len, cap, max_size;
  enc_slot *set;               /* NULL: the first `count` entries of `small`; else a
                               ** malloc'ed hash table, linear probing, load <= 1/2 */
  size_t mask, count;
  enc_frame *fr;               /* fr[0..top]; fr[0] is the EF_ROOT frame */
  int top, frcap;
  uint32_t nobj;               /* tables and functions emitted so far */
  int max_depth, allow_functions;
  const codec_nodes *nodes;    /* with `wire`: names the node of each pid and ref */
  int wire;
  int slot_t, slot_f;          /* stack slots holding T and F (or nil) */
  unsigned modmode : 1;        /* module mode: T is synced and in its slot */
  unsigned copied : 1;         /* a table was copied before module mode */
  unsigned have_f : 1, fbuilt : 1;
  int status;
  const char *root;            /* name of the root value(s) in error paths */
  char err[256];
  enc_slot small[ENC_SMALL_SET + 1];
  enc_frame infr[ENC_INLINE_FRAMES];
} enc;

/* ---- error paths ---- */

typedef struct path_out { char *p; size_t room; } path_out;

static void path_put(path_out *o, const char *fmt, ...) {
  if (o->room <= 1) return;
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(o->p, o->room, fmt, ap);
  va_end(ap);
  if (n < 0) return;
  size_t w = (size_t)n < o->room ? (size_t)n : o->room - 1;
  o->p += w; o->room -= w;
}

/* A key that reads well after a dot: [A-Za-z_][A-Za-z0-9_]*, at most 64 bytes. */
static int path_is_name(const char *s, size_t n) {
  if (n == 0 || n > 64 || !(s[0] == '_' || ((s[0] | 32) >= 'a' && (s[0] | 32) <= 'z'))) return 0;
  for (size_t i = 1; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if (!(c == '_' || (c >= '0' && c <= '9') || ((c | 32) >= 'a' && (c | 32) <= 'z'))) return 0;
  }
  return 1;
}

/* Appends the step a frame is at. Reads keys with calls that neither
** convert nor allocate. */
static void path_step(enc *e, const enc_frame *f, path_out *o) {
  lua_State *L = e->L;
  switch (f->kind) {
  case EF_ROOT:
    if (strcmp(e->root, CODEC_ROOT_SPAWN) == 0) {  /* the function, then its arguments */
      if (f->i == 1) path_put(o, "fn");
      else path_put(o, "args[%lld]", (long long)f->i - 1);
    } else if (f->n == 1) path_put(o, "%s", e->root);
    else path_put(o, "%s[%lld]", e->root, (long long)f->i);
    break;
  case EF_ARRAY: path_put(o, "[%lld]", (long long)f->i); break;
  case EF_KEY: path_put(o, ".<key>"); break;
  case EF_UPVALUE: {
    const char *name = lua_getupvalue(L, f->slot, (int)f->i);
    if (name) lua_pop(L, 1);          /* the name belongs to the prototype, which stays alive */
    if (name && path_is_name(name, strlen(name))) path_put(o, ".<upvalue %s>", name);
    else path_put(o, ".<upvalue %lld>", (long long)f->i);
    break;
  }
  case EF_VALUE: {
    int k = f->base + 1;
    switch (lua_type(L, k)) {
    case LUA_TSTRING: {
      size_t n;
      const char *s = lua_tolstring(L, k, &n);
      if (path_is_name(s, n)) { path_put(o, ".%s", s); break; }
      path_put(o, "[\"");
      for (size_t j = 0; j < n && j < 40; j++) {
        unsigned char c = (unsigned char)s[j];
        if (c == '"' || c == '\\') path_put(o, "\\%c", c);
        else if (c < 32 || c > 126) path_put(o, "\\%d", c);
        else path_put(o, "%c", c);
      }
      path_put(o, n > 40 ? "...\"]" : "\"]");
      break;
    }
    case LUA_TNUMBER:
      if (lua_isinteger(L, k)) path_put(o, "[%lld]", (long long)lua_tointeger(L, k));
      else path_put(o, "[%.17g]", (double)lua_tonumber(L, k));
      break;
    case LUA_TBOOLEAN: path_put(o, lua_toboolean(L, k) ? "[true]" : "[false]"); break;
    default: path_put(o, "[<%s>]", lua_typename(L, lua_type(L, k))); break;
    }
    break;
  }
  }
}

/* Stops the encode with "PATH: message", the path being that of the value
** the frames are at (or no prefix when !with_path). */
CODEC_NOINLINE static int enc_fail(enc *e, int with_path, const char *fmt, ...) {
  path_out o = { e->err, sizeof e->err - 64 };   /* 64 bytes kept for the message */
  if (with_path) {
    for (int k = 0; k <= e->top; k++) path_step(e, &e->fr[k], &o);
    if (o.room <= 1) memcpy(o.p - 3, "...", 3);
    o.room += 64;
    path_put(&o, ": ");
  } else o.room += 64;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(o.p, o.room, fmt, ap);
  va_end(ap);
  e->status = ENC_ERR;
  return -1;
}

/* ---- output buffer ---- */

CODEC_NOINLINE static unsigned char *enc_grow(enc *e, size_t n) {
  if (e->len > e->max_size || n > e->max_size - e->len) {
    enc_fail(e, 0, "message larger than %zu bytes", e->max_size);
    return NULL;
  }
  size_t need = e->len + n, cap = e->cap ? e->cap : ENC_FIRST_CAP;
  while (cap < need) cap = cap > SIZE_MAX / 2 ? SIZE_MAX : cap * 2;
  if (cap > e->max_size) cap = e->max_size;
  unsigned char *b = e->buf ? realloc(e->buf, cap) : malloc(cap);
  if (!b) { enc_fail(e, 0, "not enough memory"); return NULL; }
  e->buf = b; e->cap = cap;
  return b + e->len;
}

/* Room for n more bytes at buf+len, or NULL with the status set. */
static inline unsigned char *enc_need(enc *e, size_t n) {
  return e->cap - e->len >= n ? e->buf + e->len : enc_grow(e, n);
}

static inline int enc_byte(enc *e, unsigned char c) {
  unsigned char *b = enc_need(e, 1);
  if (!b) return -1;
  *b = c; e->len++;
  return 0;
}

static inline int enc_varint(enc *e, uint64_t v) {
  unsigned char *b = enc_need(e, (size_t)varint_len(v));
  if (!b) return -1;
  e->len += (size_t)varint_put(b, v);
  return 0;
}

/* tag (omitted when negative), varint length, bytes */
static int enc_lstring(enc *e, int tag, const char *s, size_t n) {
  size_t total = (size_t)(tag >= 0) + (size_t)varint_len(n) + n;
  if (total < n) return enc_fail(e, 0, "message larger than %zu bytes", e->max_size);
  unsigned char *b = enc_need(e, total);
  if (!b) return -1;
  if (tag >= 0) *b++ = (unsigned char)tag;
  b += varint_put(b, n);
  memcpy(b, s, n);
  e->len += total;
  return 0;
}

static int enc_writer(lua_State *L, const void *p, size_t n, void *ud) {
  (void)L;
  enc *e = ud;
  unsigned char *b = enc_need(e, n);
  if (!b) return 1;
  memcpy(b, p, n); e->len += n;
  return 0;
}

/* ---- the set of emitted objects ---- */

static size_t set_hash(const void *p) {
  return (size_t)(((uint64_t)(uintptr_t)p * UINT64_C(0x9E3779B97F4A7C15)) >> 24);
}

/* The slot holding key, or the empty slot where it belongs. */
static enc_slot *set_find(enc *e, const void *key) {
  if (!e->set) {
    for (size_t i = 0; i < e->count; i++)
      if (e->small[i].key == key) return &e->small[i];
    e->small[e->count].key = NULL;
    return &e->small[e->count];
  }
  size_t h = set_hash(key) & e->mask;
  for (;;) {
    enc_slot *s = &e->set[h];
    if (s->key == key || !s->key) return s;
    h = (h + 1) & e->mask;
  }
}

/* Fills the empty slot s (from set_find); s is invalid afterwards. */
static int set_add(enc *e, enc_slot *s, const void *key, uint32_t obj, uint32_t up) {
  s->key = key; s->obj = obj; s->up = up;
  e->count++;
  if (e->set ? e->count * 2 <= e->mask + 1 : e->count <= ENC_SMALL_SET) return 0;
  size_t n = e->set ? (e->mask + 1) * 2 : ENC_FIRST_SET;
  size_t oldn = e->set ? e->mask + 1 : e->count;
  enc_slot *old = e->set ? e->set : e->small, *set = calloc(n, sizeof *set);
  if (!set) return enc_fail(e, 0, "not enough memory");
  e->set = set; e->mask = n - 1;
  for (size_t i = 0; i < oldn; i++)
    if (old[i].key) *set_find(e, old[i].key) = old[i];
  if (old != e->small) free(old);
  return 0;
}

static int enc_backref(enc *e, uint32_t obj) {
  e->buf[1] |= CODEC_F_SHARED;
  if (enc_byte(e, TAG_BACKREF)) return -1;
  return enc_varint(e, obj);
}

/* ---- module map access (allow_functions only) ---- */

/* Runs a module-map builder under lua_pcall: [-0, +1] on success. */
static int enc_protected(enc *e, lua_CFunction f) {
  lua_pushcfunction(e->L, f);
  if (lua_pcall(e->L, 0, 1, 0) == LUA_OK) return 0;
  e->status = ENC_RAISE;   /* the error object stays on top */
  return -1;
}

/* Enters module mode (see "When it is consulted"): syncs T and loads it
** into its slot; asks for a restart if tables were copied without it. */
CODEC_NOINLINE static int enc_module_mode(enc *e) {
  lua_State *L = e->L;
  if (enc_protected(e, modmap_sync)) return -1;
  int changed = lua_toboolean(L, -1);
  lua_pop(L, 1);
  lua_rawgetp(L, LUA_REGISTRYINDEX, &codec_cache_key);
  lua_rawgeti(L, -1, 1);
  lua_replace(L, e->slot_t);
  lua_pop(L, 1);
  if (changed) { lua_pushnil(L); lua_replace(L, e->slot_f); e->have_f = 0; }
  e->modmode = 1;
  if (e->copied) { e->status = ENC_RESTART; return -1; }
  return 0;
}

/* Pushes package.loaded[name] (name: a string at stack slot `name`), or
** nil, and returns its type. Creates no string and calls no metamethod,
** so it cannot raise. */
static int enc_loaded(lua_State *L, int name) {
  if (lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE) != LUA_TTABLE) {
    lua_pop(L, 1);
    lua_pushnil(L);
    return LUA_TNIL;
  }
  lua_pushvalue(L, name);
  int t = lua_rawget(L, -2);
  lua_remove(L, -2);
  return t;
}

/* In module mode, for a table at t: 1 if it was sent by name (GLOBALS or
** MODULE), 0 if it is to be copied, -1 on error. */
CODEC_NOINLINE static int enc_module_table(enc *e, int t) {
  lua_State *L = e->L;
  int r = 0;
  lua_pushvalue(L, t);
  switch (lua_rawget(L, e->slot_t)) {
  case LUA_TBOOLEAN:
    lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_GLOBALS);
    if (lua_rawequal(L, -1, t)) r = enc_byte(e, TAG_GLOBALS) ? -1 : 1;
    lua_pop(L, 1);
    break;
  case LUA_TSTRING: {
    int name = lua_gettop(L);
    enc_loaded(L, name);
    int same = lua_rawequal(L, -1, t);   /* else package.loaded changed during this encode */
    lua_pop(L, 1);
    if (same) {
      size_t n;
      const char *s = lua_tolstring(L, name, &n);
      r = enc_lstring(e, TAG_MODULE, s, n) ? -1 : 1;
    }
    break;
  }
  default: break;
  }
  lua_pop(L, 1);
  return r;
}

/* Loads F into its slot, building it if absent or if `rebuild`. */
static int enc_have_f(enc *e, int rebuild) {
  lua_State *L = e->L;
  if (!rebuild) {
    lua_rawgetp(L, LUA_REGISTRYINDEX, &codec_cache_key);
    if (lua_rawgeti(L, -1, 4) == LUA_TTABLE) {
      lua_replace(L, e->slot_f);
      lua_pop(L, 1);
      e->have_f = 1;
      return 0;
    }
    lua_pop(L, 2);
  }
  if (enc_protected(e, modmap_cfuncs)) return -1;
  lua_replace(L, e->slot_f);
  e->have_f = 1; e->fbuilt = 1;
  return 0;
}

/* A C function: sent as (module, field) if a loaded module holds it. */
CODEC_NOINLINE static int enc_cfunction(enc *e, int f) {
  lua_State *L = e->L;
  int top = lua_gettop(L);
  if (!e->modmode && enc_module_mode(e)) return -1;
  for (int attempt = 0; attempt < 2; attempt++) {
    if (attempt == 1 && e->fbuilt) break;           /* F is fresh: a true miss */
    if ((attempt == 1 || !e->have_f) && enc_have_f(e, attempt == 1)) return -1;
    lua_pushvalue(L, f);
    if (lua_rawget(L, e->slot_f) == LUA_TSTRING && enc_loaded(L, top + 1) == LUA_TTABLE) {
      lua_pushnil(L);                                /* top+1: name, +2: module, +3: field */
      while (lua_next(L, top + 2)) {
        if (lua_type(L, -2) == LUA_TSTRING && lua_rawequal(L, -1, f)) {
          size_t lm, lf;
          const char *m = lua_tolstring(L, top + 1, &lm), *fld = lua_tolstring(L, -2, &lf);
          int r = enc_byte(e, TAG_CFUNC) || enc_lstring(e, -1, m, lm) || enc_lstring(e, -1, fld, lf);
          lua_settop(L, top);
          return r ? -1 : 0;
        }
        lua_pop(L, 1);
      }
    }
    lua_settop(L, top);
  }
  return enc_fail(e, 1, "cannot send C function");
}

/* ---- containers ---- */

/* Pushes a frame for the container at `slot`; the caller fills it in. */
static enc_frame *enc_open(enc *e, int kind, int slot) {
  if (e->top + 1 == e->frcap) {
    int cap = e->frcap * 2;
    enc_frame *fr = e->fr == e->infr ? malloc((size_t)cap * sizeof *fr)
                                     : realloc(e->fr, (size_t)cap * sizeof *fr);
    if (!fr) { enc_fail(e, 1, "not enough memory"); return NULL; }
    if (e->fr == e->infr) memcpy(fr, e->infr, sizeof e->infr);
    e->fr = fr; e->frcap = cap;
  }
  enc_frame *f = &e->fr[++e->top];
  f->kind = kind; f->slot = slot; f->base = lua_gettop(e->L);
  f->i = 0; f->n = 0; f->obj = 0; f->at = 0; f->nhash = 0;
  return f;
}

/* Common checks before a table or function opens a frame. */
static int enc_may_open(enc *e) {
  if (e->top >= e->max_depth) return enc_fail(e, 1, "nesting deeper than %d", e->max_depth);
  if (!lua_checkstack(e->L, ENC_LEVEL_SLOTS)) return enc_fail(e, 1, "Lua stack overflow");
  if (e->nobj == UINT32_MAX) return enc_fail(e, 1, "too many tables and functions");
  return 0;
}

/* TABLE narr nhash, then narr values, then nhash key/value pairs. The
** counts are patched when the frame closes (enc_close_table). */
CODEC_NOINLINE static int enc_open_table(enc *e, int t) {
  const void *p = lua_topointer(e->L, t);
  enc_slot *s = set_find(e, p);
  if (s->key) return enc_backref(e, s->obj);
  if (e->modmode) {
    int r = enc_module_table(e, t);
    if (r) return r < 0 ? -1 : 0;
  } else e->copied = 1;
  if (enc_may_open(e) || set_add(e, s, p, e->nobj++, 0)) return -1;
  unsigned char *b = enc_need(e, 1 + 2 * COUNT_WIDTH);
  if (!b) return -1;
  *b = TAG_TABLE;
  size_t at = e->len + 1;
  e->len = at + 2 * COUNT_WIDTH;
  enc_frame *f = enc_open(e, EF_ARRAY, t);
  if (!f) return -1;
  f->at = at;
  lua_pushnil(e->L);                  /* the first lua_next key, at base+1 */
  return 0;
}

static void count_put(unsigned char *b, size_t n) {
  b[0] = (unsigned char)(n | 0x80);
  b[1] = (unsigned char)(n >> 7);
}

static int enc_close_table(enc *e, enc_frame *f) {
  size_t at = f->at, narr = (size_t)f->i, nhash = f->nhash;
  if (narr < COUNT_FITS && nhash < COUNT_FITS) {
    count_put(e->buf + at, narr);
    count_put(e->buf + at + COUNT_WIDTH, nhash);
    return 0;
  }
  size_t body = at + 2 * COUNT_WIDTH, w = (size_t)(varint_len(narr) + varint_len(nhash));
  size_t extra = w - 2 * COUNT_WIDTH;
  if (!enc_need(e, extra)) return -1;
  memmove(e->buf + body + extra, e->buf + body, e->len - body);
  varint_put(e->buf + at + varint_put(e->buf + at, narr), nhash);
  e->len += extra;
  return 0;
}

/* Pushes the next entry of a table frame (the key must be at base+1) and
** returns the slot to encode: the value for an array element, the key for
** a pair; 0 when the table is done (lua_next popped the key). */
static int enc_next_entry(enc *e, enc_frame *f) {
  lua_State *L = e->L;
  if (!lua_next(L, f->slot)) return 0;
  if (f->kind == EF_ARRAY && lua_isinteger(L, -2) && lua_tointeger(L, -2) == f->i + 1) {
    f->i++;
    return f->base + 2;
  }
  f->kind = EF_KEY;
  return f->base + 1;
}

/* FUNCTION: lua_dump bytes with debug info, then the upvalues (in the frame). */
CODEC_NOINLINE static int enc_open_function(enc *e, int fn) {
  lua_State *L = e->L;
  const void *p = lua_topointer(L, fn);
  enc_slot *s = set_find(e, p);
  if (s->key) return enc_backref(e, s->obj);
  if ((!e->modmode && enc_module_mode(e)) || enc_may_open(e)) return -1;
  uint32_t obj = e->nobj++;
  if (set_add(e, s, p, obj, 0) || enc_byte(e, TAG_FUNCTION)) return -1;
  size_t at = e->len;                 /* dump first, then open a gap for its length */
  lua_pushvalue(L, fn);
  int st = lua_dump(L, enc_writer, e, 0);
  lua_pop(L, 1);
  if (st) return -1;
  size_t n = e->len - at, w = (size_t)varint_len(n);
  if (!enc_need(e, w)) return -1;
  memmove(e->buf + at + w, e->buf + at, n);
  varint_put(e->buf + at, n);
  e->len += w;
  int nup = 0;
  while (lua_getupvalue(L, fn, nup + 1)) { lua_pop(L, 1); nup++; }
  if (enc_varint(e, (uint64_t)nup)) return -1;
  enc_frame *f = enc_open(e, EF_UPVALUE, fn);
  if (!f) return -1;
  f->n = nup; f->obj = obj;
  return 0;
}

/* Pushes the next upvalue to encode as a value and returns its slot; 0
** when done; -1 on error. On the way it writes the upvalues that need no
** value: a cell another closure here already carries (UPJOIN), and an
** upvalue named _ENV, which always becomes the receiver's global table
** (GLOBALS) whatever table it holds, so that functions defined under a
** private environment (busted's, a sandbox's) run against real globals. */
static int enc_next_upvalue(enc *e, enc_frame *f) {
  lua_State *L = e->L;
  while (f->i < f->n) {
    int i = (int)++f->i;
    const void *id = lua_upvalueid(L, f->slot, i);
    enc_slot *u = set_find(e, id);
    if (u->key) {
      e->buf[1] |= CODEC_F_SHARED;
      if (enc_byte(e, TAG_UPJOIN) || enc_varint(e, u->obj) || enc_varint(e, u->up)) return -1;
      continue;
    }
    if (set_add(e, u, id, f->obj, (uint32_t)i)) return -1;
    const char *name = lua_getupvalue(L, f->slot, i);
    if (name && strcmp(name, "_ENV") == 0) {
      lua_pop(L, 1);
      if (enc_byte(e, TAG_GLOBALS)) return -1;
      continue;
    }
    return f->base + 1;
  }
  return 0;
}

/* ---- values ---- */

/* A pid or ref in the wire form: its node by name. */
CODEC_NOINLINE static int enc_nterm(enc *e, enum term_kind k, term_id id) {
  const char *name;
  size_t nlen;
  uint32_t creation;
  if (!e->nodes || e->nodes->name(id, &name, &nlen, &creation) != 0)
    return enc_fail(e, 1, "cannot send a pid or ref of an unnamed node");
  unsigned char *b = enc_need(e, 2 + (size_t)varint_len(nlen) + nlen +
                                 (size_t)(varint_len(creation) + varint_len(id.n)));
  if (!b) return -1;
  b[0] = TAG_NTERM; b[1] = (unsigned char)k;
  size_t n = 2;
  n += (size_t)varint_put(b + n, nlen);
  memcpy(b + n, name, nlen);
  n += nlen;
  n += (size_t)varint_put(b + n, creation);
  n += (size_t)varint_put(b + n, id.n);
  e->len += n;
  return 0;
}

/* A full userdata: a pid or ref, or refused. Another node's is written by
** name whenever the node table is given, in the local form too, so that no
** bytes hold a node table index (an entry may be freed while bytes wait in
** a mailbox or a string). */
CODEC_NOINLINE static int enc_userdata(enc *e, int idx) {
  term_id id;
  enum term_kind k = term_test(e->L, idx, &id);
  if (k == TERM_NONE) return enc_fail(e, 1, "cannot send userdata");
  if (e->wire || (id.node != 0 && e->nodes)) return enc_nterm(e, k, id);
  unsigned char *b = enc_need(e, 2 + (size_t)(varint_len(id.node) + varint_len(id.creation) +
                                               varint_len(id.n)));
  if (!b) return -1;
  b[0] = TAG_TERM; b[1] = (unsigned char)k;
  size_t n = 2;
  n += (size_t)varint_put(b + n, id.node);
  n += (size_t)varint_put(b + n, id.creation);
  n += (size_t)varint_put(b + n, id.n);
  e->len += n;
  return 0;
}

/* Encodes the nil, boolean, number, string or userdata at idx, whose
** type (lua_type) is `type`. */
static int enc_scalar(enc *e, int idx, int type) {
  lua_State *L = e->L;
  switch (type) {
  case LUA_TNIL: return enc_byte(e, TAG_NIL);
  case LUA_TBOOLEAN: return enc_byte(e, lua_toboolean(L, idx) ? TAG_TRUE : TAG_FALSE);
  case LUA_TNUMBER:
    if (lua_isinteger(L, idx)) {
      uint64_t u = zigzag(lua_tointeger(L, idx));
      unsigned char *b = enc_need(e, 1 + (size_t)varint_len(u));
      if (!b) return -1;
      *b = TAG_INT;
      e->len += 1 + (size_t)varint_put(b + 1, u);
    } else {
      double x = (double)lua_tonumber(L, idx);
      uint64_t u;
      unsigned char *b = enc_need(e, 9);
      if (!b) return -1;
      memcpy(&u, &x, sizeof u);
      *b = TAG_FLOAT;
      for (int i = 0; i < 8; i++) b[1 + i] = (unsigned char)(u >> (8 * i));
      e->len += 9;
    }
    return 0;
  case LUA_TSTRING: {
    size_t n;
    const char *s = lua_tolstring(L, idx, &n);
    return enc_lstring(e, TAG_STRING, s, n);
  }
  default: return enc_userdata(e, idx);   /* LUA_TUSERDATA */
  }
}

/* Writes the value at idx, or opens a frame for it (table, Lua function). */
static int enc_value(enc *e, int idx) {
  lua_State *L = e->L;
  int type = lua_type(L, idx);
  switch (type) {
  case LUA_TNIL: case LUA_TBOOLEAN: case LUA_TNUMBER: case LUA_TSTRING: case LUA_TUSERDATA:
    return enc_scalar(e, idx, type);
  case LUA_TTABLE: return enc_open_table(e, idx);
  case LUA_TFUNCTION:
    if (!e->allow_functions) return enc_fail(e, 1, "cannot send function");
    return lua_iscfunction(L, idx) ? enc_cfunction(e, idx) : enc_open_function(e, idx);
  case LUA_TLIGHTUSERDATA: return enc_fail(e, 1, "cannot send light userdata");
  case LUA_TTHREAD: return enc_fail(e, 1, "cannot send thread");
  default: return enc_fail(e, 1, "cannot send %s", lua_typename(L, lua_type(L, idx)));
  }
}

/* Encodes the n values at first.. with an explicit stack of frames: each
** turn asks the top frame for its next value (closing it when it has none)
** and writes that value or opens a frame for it. */
static int enc_run(enc *e, int first, int n) {
  lua_State *L = e->L;
  enc_frame *f = &e->fr[0];
  e->top = 0;
  f->kind = EF_ROOT; f->slot = first; f->base = lua_gettop(L); f->i = 0; f->n = n;
  for (;;) {
    int idx = 0;
    f = &e->fr[e->top];
    switch (f->kind) {
    case EF_ROOT:
      if (f->i == f->n) return 0;
      idx = f->slot + (int)f->i++;
      break;
    case EF_ARRAY:
      lua_settop(L, f->base + 1);
      idx = enc_next_entry(e, f);
      break;
    case EF_KEY:
      f->kind = EF_VALUE;
      idx = f->base + 2;
      break;
    case EF_VALUE:
      lua_settop(L, f->base + 1);
      f->nhash++;
      idx = enc_next_entry(e, f);
      break;
    case EF_UPVALUE:
      lua_settop(L, f->base);
      idx = enc_next_upvalue(e, f);
      break;
    }
    if (idx < 0) return -1;
    if (idx == 0) {                   /* the container is complete */
      if (f->kind != EF_UPVALUE && enc_close_table(e, f)) return -1;
      lua_settop(L, f->base);
      e->top--;
      continue;
    }
    if (enc_value(e, idx)) return -1;
  }
}

/* 1 if the value at idx, of lua_type `type`, goes in a flat table: a pid
** or ref only of this node (another's may fail to be named, and the error
** names the path, which only enc_run's frames can tell). */
static int is_flat(enc *e, int idx, int type) {
  if (type == LUA_TBOOLEAN || type == LUA_TNUMBER || type == LUA_TSTRING) return 1;
  term_id id;
  return type == LUA_TUSERDATA && !e->wire && term_test(e->L, idx, &id) != TERM_NONE && id.node == 0;
}

/* The commonest message, one table of booleans, numbers, strings and local
** pids and refs, in one pass: no frames, no object set, no per-value
** dispatch of enc_run. The bytes are those enc_run writes. Returns 1 when
** done, 0 when the table holds anything else (the caller starts over the
** general way), -1 on an error (the size limit, which names no path).
** The wire form is left to enc_run: naming a pid's node may fail, and that
** error names the path, which only enc_run's frames can tell. */
static int enc_flat(enc *e, int t) {
  lua_State *L = e->L;
  unsigned char *b = enc_need(e, 1 + 2 * COUNT_WIDTH);
  if (!b) return -1;
  *b = TAG_TABLE;
  enc_frame f = { .kind = EF_ARRAY, .slot = t, .base = lua_gettop(L), .at = e->len + 1 };
  e->len = f.at + 2 * COUNT_WIDTH;
  lua_pushnil(L);                     /* the first lua_next key, at base+1 */
  int key = f.base + 1, value = f.base + 2, idx;
  while ((idx = enc_next_entry(e, &f)) != 0) {   /* the same array/pairs split as enc_run */
    int vt = lua_type(L, value), kt = idx == key ? lua_type(L, key) : LUA_TNUMBER;
    if (!is_flat(e, value, vt) || (idx == key && !is_flat(e, key, kt))) { lua_settop(L, f.base); return 0; }
    if (idx == key) f.nhash++;
    if ((idx == key && enc_scalar(e, key, kt)) || enc_scalar(e, value, vt)) { lua_settop(L, f.base); return -1; }
    lua_settop(L, key);
  }
  e->nobj = 1;
  return enc_close_table(e, &f) ? -1 : 1;
}

static void enc_reset(enc *e) {
  free(e->set);
  e->set = NULL; e->mask = 0; e->count = 0;
  e->nobj = 0; e->len = 0; e->copied = 0; e->status = ENC_OK; e->top = 0;
}

/* One boolean, number or string (codec.h): the bytes the general encoder
** would write, without its set-up; 0 sends the value the general way,
** which reports what is wrong. */
size_t codec_encode_single(lua_State *L, int idx, const codec_limits *lim, unsigned char *b, size_t cap) {
  size_t max_size = codec_max_size(lim);
  if (cap > max_size) cap = max_size;
  if (cap < 14) return 0;   /* the header and the longest value below: a 10-byte varint */
  b[0] = CODEC_VERSION; b[1] = 0; b[2] = 1;   /* one value, no flags */
  switch (lua_type(L, idx)) {
  case LUA_TBOOLEAN:
    b[3] = lua_toboolean(L, idx) ? TAG_TRUE : TAG_FALSE;
    return 4;
  case LUA_TNUMBER:
    if (lua_isinteger(L, idx)) {
      b[3] = TAG_INT;
      return 4 + (size_t)varint_put(b + 4, zigzag(lua_tointeger(L, idx)));
    } else {
      double x = (double)lua_tonumber(L, idx);
      uint64_t u;
      memcpy(&u, &x, sizeof u);
      b[3] = TAG_FLOAT;
      for (int i = 0; i < 8; i++) b[4 + i] = (unsigned char)(u >> (8 * i));
      return 12;
    }
  case LUA_TSTRING: {
    size_t len;
    const char *s = lua_tolstring(L, idx, &len);
    if (len > cap || cap - len < 4 + (size_t)varint_len(len)) return 0;
    b[3] = TAG_STRING;
    size_t at = 4 + (size_t)varint_put(b + 4, len);
    memcpy(b + at, s, len);
    return at + len;
  }
  default: return 0;
  }
}

int codec_encode(lua_State *L, int first, int n, const char *root,
                 const codec_limits *lim, codec_buf *out) {
  if (n == 1 && out->data) {
    size_t len = codec_encode_single(L, first, lim, out->data, out->cap);
    if (len) { out->len = len; return 0; }
  }
  int base = lua_gettop(L);
  enc e;
  first = lua_absindex(L, first);
  e.L = L;
  unsigned char *const given = out->data;   /* reused scratch storage, or NULL */
  e.set = NULL;
  e.fr = e.infr; e.frcap = ENC_INLINE_FRAMES;
  codec_limits_of(lim, &e.max_size, &e.max_depth, &e.allow_functions);
  /* Storage larger than max_size is used only up to it, so that the size
  ** check (made when the buffer must grow) holds for it too. */
  e.buf = out->data; e.cap = out->data ? (out->cap < e.max_size ? out->cap : e.max_size) : 0;
  e.nodes = lim ? lim->nodes : NULL;
  e.wire = lim && lim->wire;
  e.modmode = e.copied = e.have_f = e.fbuilt = 0;
  e.slot_t = e.slot_f = 0;
  e.root = root ? root : "msg";
  out->data = NULL; out->len = out->cap = 0;
  if (n < 0) n = 0;
  if (!lua_checkstack(L, 2 + ENC_LEVEL_SLOTS)) {
    lua_pushliteral(L, "Lua stack overflow");
    return -1;
  }
  int tried_flat = 0;
  for (;;) {
    enc_reset(&e);
    unsigned char *b = enc_need(&e, 2 + (size_t)varint_len((uint64_t)n));
    if (b) {
      b[0] = CODEC_VERSION; b[1] = 0;
      e.len = 2 + (size_t)varint_put(b + 2, (uint64_t)n);
      size_t head = e.len;
      int flat = 0;                   /* (a flat table never restarts: try it once) */
      if (!tried_flat++ && n == 1 && lua_type(L, first) == LUA_TTABLE) flat = enc_flat(&e, first);
      if (flat == 0) {
        e.len = head;
        if (e.allow_functions && !e.slot_t) {   /* slots for T and F, nil until needed */
          lua_pushnil(L); e.slot_t = base + 1;
          lua_pushnil(L); e.slot_f = base + 2;
        }
        enc_run(&e, first, n);
      }
    }
    if (e.status != ENC_RESTART) break;
    lua_settop(L, base + 2);          /* now in module mode from the start: no second restart */
  }
  free(e.set);
  if (e.fr != e.infr) free(e.fr);
  if (e.status == ENC_OK) {
    lua_settop(L, base);
    out->data = e.buf; out->len = e.len; out->cap = e.cap;
    return 0;
  }
  if (given) { out->data = e.buf; out->cap = e.cap; }  /* the caller's storage stays theirs */
  else free(e.buf);
  if (e.status == ENC_RAISE) {        /* a memory error inside the module map: re-raise */
    lua_copy(L, -1, base + 1);
    lua_settop(L, base + 1);
    lua_error(L);
  }
  lua_settop(L, base);
  lua_pushstring(L, e.err);
  return -1;
}

void codec_buf_free(codec_buf *b) {
  free(b->data);
  b->data = NULL;
  b->len = b->cap = 0;
}

/* ======================================================================
** The decoder
**
** Budget: every value announced by a count (the header's, a table's, a
** function's upvalues) needs at least one byte, so `lim` is `end` minus the
** announced values not yet started, and every read is checked against
** `lim`. Announcing more values than there are bytes left is an error.
** Hence string and bytecode lengths and table size hints are all bounded
** by bytes really present, and all table preallocations together come to
** at most one slot per input byte.
**
** Nesting uses an explicit stack of frames (inline for shallow messages,
** else a userdata in a reserved stack slot), so it costs no C stack.
** ====================================================================== */

#define DEC_LEVEL_SLOTS   8          /* Lua stack slots one nesting level may use */
#define DEC_HINT_CAP      (1 << 24)  /* lua_createtable hints never exceed this */
#define DEC_INLINE_FRAMES 8          /* deeper nesting moves the frames to a userdata; kept small
                                     ** because the first decode runs on a fresh process stack
                                     ** (doc/performance.md, RSS per idle process) */
#define DEC_MIN_CONTAINER 3          /* bytes in the smallest table (tag, narr, nhash) */

/* One open container. The table or closure is at `slot`, and its items
** are consumed from the top of the stack as they complete. */
enum dec_kind {
  DF_ROOT,     /* i = values started, n = values in the message */
  DF_ARRAY,    /* i = index being decoded, n = narr; nhash pairs follow */
  DF_KEY,      /* i = pairs done, n = nhash; the next item is a key */
  DF_VALUE,    /* the key is on the stack; the next item is its value */
  DF_UPVALUE   /* i = upvalue being decoded, n = nup */
};

typedef struct dec_frame {
  int kind, slot;
  uint64_t i, n, nhash;
} dec_frame;

typedef struct dec {
  lua_State *L;
  const unsigned char *start, *p, *end, *lim;
  int max_depth, allow_functions;
  const codec_nodes *nodes;     /* resolves NTERM; NULL: refused */
  int wire;                     /* TERM (local index) refused */
  int refs;                     /* stack slot of the object table; 0 without CODEC_F_SHARED */
  int frslot;                   /* stack slot reserved for a frames userdata; 0 if never needed */
  dec_frame *fr;                /* fr[0..top]; fr[0] is the DF_ROOT frame */
  int top, frcap;
  lua_Integer nobj;             /* tables and functions created so far */
  char err[200];
  dec_frame infr[DEC_INLINE_FRAMES];
} dec;

CODEC_NOINLINE static int dec_fail(dec *d, const char *fmt, ...) {
  int n = snprintf(d->err, sizeof d->err, "codec: ");
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(d->err + n, sizeof d->err - (size_t)n, fmt, ap);
  va_end(ap);
  return -1;
}

static int dec_truncated(dec *d) {
  return dec_fail(d, "truncated or inconsistent message at byte %zu", (size_t)(d->p - d->start));
}

/* LEB128, at most 10 bytes, must fit 64 bits; non-minimal forms accepted. */
/* Reads a varint from *p, before end: 0 and *p past it, -1 when the bytes
** end first, -2 when it does not fit in 64 bits (*p past the bad byte). */
static int varint_get(const unsigned char **p, const unsigned char *end, uint64_t *out) {
  uint64_t v = 0;
  for (int shift = 0; shift < 64; shift += 7) {
    if (*p >= end) return -1;
    unsigned c = *(*p)++;
    if (shift == 63 && c > 1) break;
    v |= (uint64_t)(c & 0x7f) << shift;
    if (!(c & 0x80)) { *out = v; return 0; }
  }
  return -2;
}

CODEC_NOINLINE static int dec_varint_slow(dec *d, uint64_t *out) {
  int r = varint_get(&d->p, d->lim, out);
  if (r == -1) return dec_truncated(d);
  if (r == -2) return dec_fail(d, "varint overflow at byte %zu", (size_t)(d->p - d->start));
  return 0;
}

static inline int dec_varint(dec *d, uint64_t *out) {
  if (d->p < d->lim && *d->p < 0x80) { *out = *d->p++; return 0; }
  return dec_varint_slow(d, out);
}

/* A varint length followed by that many bytes. */
static int dec_bytes(dec *d, const char **s, size_t *n) {
  uint64_t v;
  if (dec_varint(d, &v)) return -1;
  if (v > (uint64_t)(d->lim - d->p)) return dec_truncated(d);
  *s = (const char *)d->p; *n = (size_t)v;
  d->p += v;
  return 0;
}

/* Reserves one byte for each of k values announced now. */
static int dec_announce(dec *d, uint64_t k) {
  if (k > (uint64_t)(d->lim - d->p)) return dec_truncated(d);
  d->lim -= k;
  return 0;
}

/* A printable, bounded rendering of a name from the input, for errors. */
static void dec_name(char *out, size_t size, const char *s, size_t n) {
  size_t j = 0;
  for (size_t i = 0; i < n && j + 4 < size; i++)
    out[j++] = (s[i] >= 32 && s[i] < 127) ? s[i] : '?';
  if (j + 4 >= size && n > j) { memcpy(out + j, "...", 3); j += 3; }
  out[j] = '\0';
}

/* Numbers the table or closure on top of the stack (and records it when
** the message has back-references). */
static void dec_register(dec *d) {
  d->nobj++;
  if (d->refs) {
    lua_pushvalue(d->L, -1);
    lua_rawseti(d->L, d->refs, d->nobj);
  }
}

/* Opens a frame for the container on top of the stack. */
static dec_frame *dec_open(dec *d, int kind) {
  lua_State *L = d->L;
  int slot = lua_gettop(L);
  if (d->top + 1 == d->frcap) {
    if (!d->frslot) { dec_fail(d, "nesting deeper than the message allows"); return NULL; }
    int cap = d->frcap * 2;       /* frslot is reserved whenever the bytes allow this depth */
    if (cap > d->max_depth + 1) cap = d->max_depth + 1;
    dec_frame *fr = lua_newuserdatauv(L, (size_t)cap * sizeof *fr, 0);
    memcpy(fr, d->fr, (size_t)(d->top + 1) * sizeof *fr);
    lua_replace(L, d->frslot);        /* the old userdata, if any, becomes garbage */
    d->fr = fr; d->frcap = cap;
  }
  dec_frame *f = &d->fr[++d->top];
  f->kind = kind; f->slot = slot;
  f->i = 0; f->n = 0; f->nhash = 0;
  return f;
}

static int dec_may_open(dec *d) {
  if (d->top >= d->max_depth) return dec_fail(d, "nesting deeper than %d", d->max_depth);
  if (!lua_checkstack(d->L, DEC_LEVEL_SLOTS)) return dec_fail(d, "Lua stack overflow");
  return 0;
}

CODEC_NOINLINE static int dec_open_table(dec *d) {
  uint64_t narr, nhash;
  if (dec_may_open(d) || dec_varint(d, &narr) || dec_varint(d, &nhash)) return -1;
  size_t room = (size_t)(d->lim - d->p);
  if (narr > room || nhash > room / 2) return dec_truncated(d);
  if (dec_announce(d, narr + 2 * nhash)) return -1;
  lua_createtable(d->L, (int)(narr < DEC_HINT_CAP ? narr : DEC_HINT_CAP),
                  (int)(nhash < DEC_HINT_CAP ? nhash : DEC_HINT_CAP));
  dec_register(d);
  dec_frame *f = dec_open(d, DF_ARRAY);
  if (!f) return -1;
  f->n = narr; f->nhash = nhash;
  return 1;
}

typedef struct dec_chunk { const char *p; size_t n; } dec_chunk;

static const char *dec_reader(lua_State *L, void *ud, size_t *size) {
  (void)L;
  dec_chunk *c = ud;
  *size = c->n;
  c->n = 0;
  return *size ? c->p : NULL;
}

CODEC_NOINLINE static int dec_open_function(dec *d) {
  lua_State *L = d->L;
  dec_chunk c;
  uint64_t nup;
  if (dec_may_open(d) || dec_bytes(d, &c.p, &c.n)) return -1;
  if (lua_load(L, dec_reader, &c, "=(codec)", "b") != LUA_OK) {
    const char *m = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "?";
    dec_fail(d, "bad function: %s", m);
    lua_pop(L, 1);
    return -1;
  }
  dec_register(d);
  int have = 0;
  while (lua_getupvalue(L, -1, have + 1)) { lua_pop(L, 1); have++; }
  if (dec_varint(d, &nup)) return -1;
  if (nup != (uint64_t)have)
    return dec_fail(d, "function has %d upvalues, message says %llu", have, (unsigned long long)nup);
  if (dec_announce(d, nup)) return -1;
  dec_frame *f = dec_open(d, DF_UPVALUE);
  if (!f) return -1;
  f->n = nup;
  return 1;
}

/* Skips the upvalues of f that join a cell of an earlier closure (UPJOIN);
** returns 1 if a value follows for upvalue f->i, 0 when f is complete. */
static int dec_next_upvalue(dec *d, dec_frame *f) {
  lua_State *L = d->L;
  while (f->i < f->n) {
    f->i++;
    if (!(d->p < d->end && *d->p == TAG_UPJOIN)) return 1;
    uint64_t obj, up;
    d->lim++;
    d->p++;
    if (dec_varint(d, &obj) || dec_varint(d, &up)) return -1;
    if (!d->refs || obj >= (uint64_t)d->nobj) return dec_fail(d, "bad back-reference");
    lua_rawgeti(L, d->refs, (lua_Integer)obj + 1);
    if (lua_type(L, -1) != LUA_TFUNCTION || lua_iscfunction(L, -1) || up < 1 || up > 255 ||
        !lua_getupvalue(L, -1, (int)up))
      return dec_fail(d, "bad upvalue reference");
    lua_pop(L, 1);
    lua_upvaluejoin(L, f->slot, (int)f->i, -1, (int)up);
    lua_pop(L, 1);
  }
  return 0;
}

/* Protected: require(name), through the raw global "require". */
static int dec_require(lua_State *L) {
  lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_GLOBALS);
  lua_pushliteral(L, "require");
  if (lua_rawget(L, -2) != LUA_TFUNCTION) return luaL_error(L, "require is not available");
  lua_pushvalue(L, 1);
  lua_call(L, 1, 0);
  return 0;
}

/* Pushes package.loaded[name] (raw), or nil. */
static void dec_loaded(lua_State *L, const char *s, size_t n) {
  if (lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE) != LUA_TTABLE) {
    lua_pop(L, 1);
    lua_pushnil(L);
    return;
  }
  lua_pushlstring(L, s, n);
  lua_rawget(L, -2);
  lua_remove(L, -2);
}

/* Pushes the module table package.loaded[name], requiring it if absent. */
CODEC_NOINLINE static int dec_module(dec *d, const char *s, size_t n) {
  lua_State *L = d->L;
  char shown[64];
  dec_loaded(L, s, n);
  if (!lua_toboolean(L, -1)) {
    lua_pop(L, 1);
    lua_pushcfunction(L, dec_require);
    lua_pushlstring(L, s, n);
    if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
      const char *m = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "error object is not a string";
      dec_name(shown, sizeof shown, s, n);
      dec_fail(d, "cannot load module '%s': %.*s", shown, (int)strcspn(m, "\n"), m);
      lua_pop(L, 1);
      return -1;
    }
    dec_loaded(L, s, n);
  }
  if (lua_type(L, -1) != LUA_TTABLE) {
    lua_pop(L, 1);
    dec_name(shown, sizeof shown, s, n);
    return dec_fail(d, "module '%s' is not a table", shown);
  }
  return 0;
}

/* A pid or ref: kind byte, node, creation, serial; interned by term_push. */
CODEC_NOINLINE static int dec_term(dec *d) {
  uint64_t node, creation, serial;
  if (d->p >= d->lim) return dec_truncated(d);
  int kind = *d->p++;
  if (kind != TERM_PID && kind != TERM_REF) return dec_fail(d, "bad pid or ref kind %d", kind);
  if (dec_varint(d, &node) || dec_varint(d, &creation) || dec_varint(d, &serial)) return -1;
  if (node > UINT32_MAX || creation > UINT32_MAX) return dec_fail(d, "bad pid or ref node");
  /* With a node table, another node's pid comes only by name: an index in
  ** bytes could name an entry it holds no reference on. */
  if (node != 0 && d->nodes) return dec_fail(d, "a pid or ref of another node by index is not accepted here");
  term_id id = { serial, (uint32_t)node, (uint32_t)creation };
  term_push(d->L, (enum term_kind)kind, id);
  return 0;
}

/* A pid or ref of a named node: kind, name, creation, serial. */
CODEC_NOINLINE static int dec_nterm(dec *d) {
  uint64_t creation, serial;
  const char *name;
  size_t nlen;
  if (d->p >= d->lim) return dec_truncated(d);
  int kind = *d->p++;
  if (kind != TERM_PID && kind != TERM_REF) return dec_fail(d, "bad pid or ref kind %d", kind);
  if (dec_bytes(d, &name, &nlen) || dec_varint(d, &creation) || dec_varint(d, &serial)) return -1;
  if (creation > UINT32_MAX || nlen == 0) return dec_fail(d, "bad pid or ref node");
  term_id id;
  if (!d->nodes || d->nodes->resolve(name, nlen, (uint32_t)creation, serial, &id) != 0)
    return dec_fail(d, "pid or ref of an unknown node");
  term_push(d->L, (enum term_kind)kind, id);
  return 0;
}

/* A C function named (module, field). */
CODEC_NOINLINE static int dec_cfunc(dec *d) {
  lua_State *L = d->L;
  const char *m, *f;
  size_t lm, lf;
  if (dec_bytes(d, &m, &lm) || dec_bytes(d, &f, &lf) || dec_module(d, m, lm)) return -1;
  lua_pushlstring(L, f, lf);
  if (lua_rawget(L, -2) != LUA_TFUNCTION) {
    char sm[64], sf[64];
    dec_name(sm, sizeof sm, m, lm);
    dec_name(sf, sizeof sf, f, lf);
    lua_pop(L, 2);
    return dec_fail(d, "module '%s' has no function '%s'", sm, sf);
  }
  lua_remove(L, -2);
  return 0;
}

/* The tags that carry code or name it: accepted from local buffers only. */
CODEC_NOINLINE static int dec_code(dec *d, int tag) {
  if (!d->allow_functions) {
    if (tag >= TAG_FUNCTION && tag <= TAG_CFUNC)
      return dec_fail(d, "functions and module references are not accepted here");
    return dec_fail(d, "bad tag 0x%02x at byte %zu", tag, (size_t)(d->p - 1 - d->start));
  }
  switch (tag) {
  case TAG_FUNCTION: return dec_open_function(d);
  case TAG_GLOBALS: lua_rawgeti(d->L, LUA_REGISTRYINDEX, LUA_RIDX_GLOBALS); return 0;
  case TAG_MODULE: {
    const char *s;
    size_t n;
    if (dec_bytes(d, &s, &n)) return -1;
    return dec_module(d, s, n);
  }
  case TAG_CFUNC: return dec_cfunc(d);
  default:
    return dec_fail(d, "bad tag 0x%02x at byte %zu", tag, (size_t)(d->p - 1 - d->start));
  }
}

/* Reads one item: returns 0 after pushing a complete value, 1 after
** opening a frame for a table or function, -1 on error. */
static int dec_value(dec *d) {
  lua_State *L = d->L;
  if (d->p >= d->lim) return dec_truncated(d);
  int tag = *d->p++;
  switch (tag) {
  case TAG_NIL: lua_pushnil(L); return 0;
  case TAG_FALSE: lua_pushboolean(L, 0); return 0;
  case TAG_TRUE: lua_pushboolean(L, 1); return 0;
  case TAG_INT: {
    uint64_t u;
    if (dec_varint(d, &u)) return -1;
    lua_pushinteger(L, unzigzag(u));
    return 0;
  }
  case TAG_FLOAT: {
    if (d->lim - d->p < 8) return dec_truncated(d);
    uint64_t u = 0;
    for (int i = 0; i < 8; i++) u |= (uint64_t)d->p[i] << (8 * i);
    d->p += 8;
    double x;
    memcpy(&x, &u, sizeof x);
    lua_pushnumber(L, (lua_Number)x);
    return 0;
  }
  case TAG_STRING: {
    const char *s;
    size_t n;
    if (dec_bytes(d, &s, &n)) return -1;
    lua_pushlstring(L, s, n);
    return 0;
  }
  case TAG_TABLE: return dec_open_table(d);
  case TAG_BACKREF: {
    uint64_t obj;
    if (dec_varint(d, &obj)) return -1;
    if (!d->refs || obj >= (uint64_t)d->nobj) return dec_fail(d, "bad back-reference");
    lua_rawgeti(L, d->refs, (lua_Integer)obj + 1);
    return 0;
  }
  case TAG_TERM:
    if (d->wire) return dec_fail(d, "a pid or ref by local index is not accepted here");
    return dec_term(d);
  case TAG_NTERM: return dec_nterm(d);
  default: return dec_code(d, tag);
  }
}

/* Decodes the header's n values: each turn asks the top frame for its next
** item (closing it when complete) and then lets the frame take the value. */
static int dec_run(dec *d, uint64_t n) {
  lua_State *L = d->L;
  dec_frame *f = &d->fr[0];
  d->top = 0;
  f->kind = DF_ROOT; f->slot = 0; f->i = 0; f->n = n; f->nhash = 0;
  for (;;) {
    int more = 1;
    f = &d->fr[d->top];
    switch (f->kind) {
    case DF_ROOT:
      if (f->i == f->n) return 0;
      f->i++;
      break;
    case DF_ARRAY:
      if (f->i < f->n) { f->i++; break; }
      f->kind = DF_KEY; f->i = 0; f->n = f->nhash;
      more = f->n > 0;
      break;
    case DF_KEY:
      more = f->i < f->n;
      break;
    case DF_VALUE:
      break;
    case DF_UPVALUE:
      more = dec_next_upvalue(d, f);
      if (more < 0) return -1;
      break;
    }
    if (more) {
      d->lim++;                       /* the item now spends its reserved byte */
      int r = dec_value(d);
      if (r < 0) return -1;
      if (r > 0) continue;
    } else d->top--;                  /* complete: the container is on top of the stack */
    f = &d->fr[d->top];
    switch (f->kind) {                /* the frame takes the value on top of the stack */
    case DF_ROOT: break;
    case DF_ARRAY: lua_rawseti(L, f->slot, (lua_Integer)f->i); break;
    case DF_KEY: {
      int t = lua_type(L, -1);
      if (t == LUA_TNIL || (t == LUA_TNUMBER && !lua_isinteger(L, -1) && isnan(lua_tonumber(L, -1))))
        return dec_fail(d, "table key is %s at byte %zu", t == LUA_TNIL ? "nil" : "NaN",
                        (size_t)(d->p - d->start));
      f->kind = DF_VALUE;
      break;
    }
    case DF_VALUE: lua_rawset(L, f->slot); f->i++; f->kind = DF_KEY; break;
    case DF_UPVALUE: lua_setupvalue(L, f->slot, (int)f->i); break;
    }
  }
}

/* The short way for a message of exactly one boolean, number or string
** with no header flags, the bytes of which the general decoder would take
** the same way: pushes the value and returns 1. Anything else, malformed
** bytes included, returns 0 with nothing pushed, and the general decoder
** takes it (and names what is wrong). */
static int dec_single(lua_State *L, const unsigned char *p, size_t len) {
  if (len < 4 || p[0] != CODEC_VERSION || p[1] != 0 || p[2] != 1) return 0;
  const unsigned char *q = p + 4, *end = p + len;
  uint64_t u;
  switch (p[3]) {
  case TAG_FALSE: case TAG_TRUE:
    if (q != end) return 0;
    lua_pushboolean(L, p[3] == TAG_TRUE);
    return 1;
  case TAG_INT:
    if (varint_get(&q, end, &u) != 0 || q != end) return 0;
    lua_pushinteger(L, unzigzag(u));
    return 1;
  case TAG_FLOAT: {
    if (end - q != 8) return 0;
    double x;
    u = 0;
    for (int i = 0; i < 8; i++) u |= (uint64_t)q[i] << (8 * i);
    memcpy(&x, &u, sizeof x);
    lua_pushnumber(L, (lua_Number)x);
    return 1;
  }
  case TAG_STRING:
    if (varint_get(&q, end, &u) != 0 || u != (uint64_t)(end - q)) return 0;
    lua_pushlstring(L, (const char *)q, (size_t)u);
    return 1;
  default: return 0;
  }
}

/* The general decoder. Out of line: its frame (the inline frame stack and
** the error buffer, ~600 bytes) would otherwise be set up for the short
** way too, and every call made from there would touch a stack line ~600
** bytes down, one more cold line per message in a ring of 1,000. */
static __attribute__((noinline)) int decode_general(lua_State *L, const unsigned char *p, size_t len,
                                                    const codec_limits *lim) {
  int base = lua_gettop(L);
  dec d;
  size_t max_size;
  uint64_t n = 0;
  int r = -1;
  d.L = L;
  d.start = d.p = p;
  d.end = d.lim = p + len;
  d.refs = d.frslot = 0;
  d.fr = d.infr; d.frcap = DEC_INLINE_FRAMES; d.top = 0;
  d.nobj = 0;
  codec_limits_of(lim, &max_size, &d.max_depth, &d.allow_functions);
  d.nodes = lim ? lim->nodes : NULL;
  d.wire = lim && lim->wire;
  if (len > max_size) dec_fail(&d, "message larger than %zu bytes", max_size);
  else if (len < 3) dec_truncated(&d);
  else if (p[0] != CODEC_VERSION) dec_fail(&d, "unsupported format version %d", p[0]);
  else if (p[1] & ~CODEC_F_ALL) dec_fail(&d, "unknown header flags 0x%02x", p[1]);
  else {
    d.p = p + 2;
    if (dec_varint(&d, &n) == 0 && dec_announce(&d, n) == 0) {
      if (n > (uint64_t)INT_MAX - 4 * DEC_LEVEL_SLOTS || !lua_checkstack(L, (int)n + 4 * DEC_LEVEL_SLOTS))
        dec_fail(&d, "too many values");
      else {
        if (p[1] & CODEC_F_SHARED) { lua_newtable(L); d.refs = lua_gettop(L); }
        /* frames needed <= 1 + deepest nesting the bytes allow */
        if (len / DEC_MIN_CONTAINER + 1 >= DEC_INLINE_FRAMES && d.max_depth + 1 > DEC_INLINE_FRAMES) {
          lua_pushnil(L);
          d.frslot = lua_gettop(L);
        }
        r = dec_run(&d, n);
        if (r == 0 && d.p != d.end)
          r = dec_fail(&d, "%zu trailing bytes", (size_t)(d.end - d.p));
      }
    }
  }
  if (r != 0) {
    lua_settop(L, base);
    lua_pushstring(L, d.err);
    return -1;
  }
  if (d.frslot) lua_remove(L, d.frslot);
  if (d.refs) lua_remove(L, d.refs);
  return (int)n;
}

int codec_decode(lua_State *L, const unsigned char *p, size_t len, const codec_limits *lim) {
  if (len <= codec_max_size(lim) && lua_checkstack(L, 1) && dec_single(L, p, len)) return 1;
  return decode_general(L, p, len, lim);
}
