/*
** codec.h — Lua values <-> bytes. One format, used for every message,
** spawn argument list and exit reason, locally and (later) on the wire.
** The format is specified in doc/codec.md.
**
** Ownership: codec_encode fills a codec_buf whose `data` is malloc'ed and
** belongs to the caller (free it with codec_buf_free, or hand it to a mailbox,
** which then owns it). codec_decode never keeps a pointer to its input.
**
** Safety contract of the decoder: for ANY byte string it returns either the
** decoded values or an error; it never reads outside [p, p+len), never
** allocates more than a small constant times `len`, and never recurses
** deeper than `max_depth`. Function values (Lua bytecode) are only accepted
** when `allow_functions` is set, because lua_load does not verify bytecode:
** callers set it only for buffers produced by codec_encode in this OS process.
*/
#ifndef erlangen_codec_h
#define erlangen_codec_h

#include <stddef.h>
#include <stdint.h>
#include <lua.h>
#include "term.h"

typedef struct codec_buf {
  unsigned char *data;  /* malloc'ed; NULL when empty */
  size_t len, cap;
} codec_buf;

/* How pids and refs of other nodes are named (node.c provides it). A pid
** or ref carries a node index that only means something inside this OS
** process, and only while its node's entry lives; so with `nodes` given,
** another node's pid is written as (node name, creation, serial) in every
** form, and one by index is refused on reading. Without `nodes` (a bare
** codec), indexes pass through TERM as they are. */
typedef struct codec_nodes {
  /* The wire form of id's node: its name (valid until the node stops) and
  ** creation. Returns 0, or -1 when the node has no name (then encoding fails). */
  int (*name)(term_id id, const char **name, size_t *len, uint32_t *creation);
  /* The id for a wire (name, creation, serial), interning the node name.
  ** Returns 0, or -1 when it is refused (then decoding fails). */
  int (*resolve)(const char *name, size_t len, uint32_t creation, uint64_t serial, term_id *id);
} codec_nodes;

typedef struct codec_limits {
  size_t max_size;      /* largest encoded message in bytes (<= CODEC_HARD_SIZE); 0: the default */
  int max_depth;        /* deepest nesting of tables/functions (<= CODEC_HARD_DEPTH); 0: the default */
  int allow_functions;  /* encode/decode Lua functions as bytecode */
  const codec_nodes *nodes;  /* NULL: named pids and refs of other nodes cannot be decoded */
  int wire;             /* the wire form: pids and refs are written and read
                        ** only as NTERM (named node), never by local index;
                        ** needs `nodes` */
} codec_limits;

#define CODEC_DEFAULT_MAX_SIZE  (64u << 20)
#define CODEC_DEFAULT_MAX_DEPTH 100
#define CODEC_HARD_DEPTH        1000   /* cap on max_depth; nesting uses explicit frames,
                                          ** not C recursion, so any C stack suffices */
#define CODEC_HARD_SIZE         0xffffffffu   /* cap on max_size: a mailbox entry keeps
                                                ** its length in 32 bits */

/* As `root`: the values are a function and its arguments, named "fn" and
** "args[1]", "args[2]", ... in error paths. */
#define CODEC_ROOT_SPAWN "(spawn)"

/* Encodes the `n` values at stack slots first..first+n-1 as one message, so
** shared references and cycles across them are preserved. nil is allowed
** among them. `root` names the values in error paths: "msg" for n == 1,
** "root[i]" otherwise ... see doc/codec.md.
** When out->data is NULL the buffer is allocated; otherwise out's storage
** (out->cap bytes) is reused as scratch and may be reallocated, and on
** failure it stays in `out` with len 0 (the caller still owns and frees it).
** max_size holds whatever the storage's size: only its first max_size
** bytes are used, so `out->cap` may come back smaller than it went in.
** Returns 0 on success. On failure returns -1, leaves `out` empty (len 0), and pushes
** one error string onto L naming the path, e.g. "msg.conn: cannot send userdata".
** Does not otherwise change the stack. May raise only on memory errors of L. */
int codec_encode(lua_State *L, int first, int n, const char *root,
                 const codec_limits *lim, codec_buf *out);

/* The short way of codec_encode for one boolean, number or string at idx:
** writes its bytes (the same codec_encode writes) into buf, which has room
** for cap bytes, and returns their length; returns 0 when the value is of
** another type or does not fit in cap or in lim's max_size (codec_encode
** then takes it). Touches neither the stack nor any memory but buf. */
size_t codec_encode_single(lua_State *L, int idx, const codec_limits *lim, unsigned char *buf, size_t cap);

/* Decodes a message and pushes its values. Returns the number of values
** pushed (>= 0), or -1 after pushing one error string ("codec: ...").
** On failure nothing else is left on the stack. */
int codec_decode(lua_State *L, const unsigned char *p, size_t len,
                 const codec_limits *lim);

void codec_buf_free(codec_buf *b);

#endif
