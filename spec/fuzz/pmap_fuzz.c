/*
** pmap_fuzz.c — libFuzzer target for the port mapper daemon's protocol:
** the bytes after the first are one client's stream, fed to the daemon's
** connection state machine (kernel/net/portmapd.c, included whole so that
** its static parser is reached without sockets; a connection's fd is -1;
** portmap.c is linked for the name and port checks).
** Byte 0 chooses the mode:
**   bit 0     the client is on loopback (else remote: no REGISTER, no NAMES)
**   bits 1-3  input chunk size, 2^(n-1) bytes (0: as much as fits)
**   bits 4-6  how much of a reply the client reads at a time, 2^n bytes
**   bit 7     PMAPD_LISTINGS other connections hold unread NAMES replies
** Another connection always holds the name "taken" (port 4000). The clock
** moves 1 ms a step and the stall sweep runs, so deadlines fire too.
** Invariants checked (abort on violation): every reply line is one the
** protocol defines, NAMES is followed by exactly its count of entries;
** there is one reply per request line taken (plus one for a line too
** long); the connection is closed after an error that closes it and only
** then; the name hash, the name count and the timed list stay consistent.
*/
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "portmapd.c"

static void check(int ok) {
  if (!ok) abort();
}

/* {------ the reply stream */

typedef struct replies {
  char line[PMAP_LINE_MAX + 1];
  size_t len;
  size_t entries;       /* NAMES entries still to come */
  unsigned count;       /* reply lines (a listing counts once) */
  int closing_error;    /* an error after which the daemon closes */
} replies;

static int is_port(const char *s) {
  int p;
  return pmap_parse_port(s, &p) == 0 && p >= 1;
}

static void reply_line(replies *r, const char *s) {
  static const char *const closing[] = {
    "ERR bad request", "ERR bad name", "ERR bad port", "ERR loopback only",
    "ERR already registered", "ERR line too long", "ERR busy", NULL,
  };
  const char *sp;
  int i;
  check(!r->closing_error);  /* nothing comes after a closing error */
  if (r->entries > 0) {      /* "<name> <port>" */
    sp = strchr(s, ' ');
    check(sp != NULL && pmap_valid_name_n(s, (size_t)(sp - s)) && is_port(sp + 1));
    r->entries--;
    return;
  }
  r->count++;
  if (strcmp(s, "PONG 1") == 0 || strcmp(s, "NONE") == 0 || strcmp(s, "OK") == 0 ||
      strcmp(s, "ERR taken") == 0)
    return;
  if (strncmp(s, "PORT ", 5) == 0) {
    check(is_port(s + 5));
    return;
  }
  if (strncmp(s, "NAMES ", 6) == 0) {
    char *end;
    unsigned long n = strtoul(s + 6, &end, 10);
    check(*end == '\0' && end > s + 6 && n >= 1);  /* "taken" is always there */
    r->entries = n;
    return;
  }
  for (i = 0; closing[i] != NULL; i++)
    if (strcmp(s, closing[i]) == 0) {
      r->closing_error = 1;
      return;
    }
  check(0);  /* not a reply the protocol has */
}

static void reply_bytes(replies *r, const char *p, size_t n) {
  size_t i;
  for (i = 0; i < n; i++) {
    if (p[i] == '\n') {
      r->line[r->len] = '\0';
      reply_line(r, r->line);
      r->len = 0;
      continue;
    }
    check(r->len < PMAP_LINE_MAX && (unsigned char)p[i] >= 0x20 && (unsigned char)p[i] <= 0x7e);
    r->line[r->len++] = p[i];
  }
}

/* }------ */

/* {------ the daemon's state */

static void check_state(void) {
  size_t i, names = 0;
  pmapd_conn *c, *prev = NULL;
  int open = 0;
  for (i = 0; i < S.nbuckets; i++)
    for (c = S.buckets[i]; c != NULL; c = c->hnext) {
      size_t n = strlen(c->name);
      check(!c->closed && c->reg_port >= 1 && c->reg_port <= 65535 && c->loopback);
      check((c->hash & (S.nbuckets - 1)) == i && find_name(c->name, n) == c);
      names++;
    }
  check(names == S.nnames);
  for (c = S.thead; c != NULL; prev = c, c = c->tnext) {
    check(c->deadline != 0 && c->tprev == prev && !c->closed);
    if (prev) check(prev->deadline <= c->deadline);
  }
  check(S.ttail == prev);
  for (c = S.all; c != NULL; c = c->anext) {
    open++;
    check(!c->closed && c->inlen <= PMAP_LINE_MAX && c->outoff <= c->outlen);
    check(c->listing != NULL || c->outlen <= sizeof c->out);
    if (c->reg_port == 0 || c->inlen > 0 || c->outlen > 0 || c->closing) check(c->deadline != 0);
  }
  check(open == S.nconns && S.nlistings >= 0 && S.nlistings <= PMAPD_LISTINGS);
}

/* Feeds a whole request stream to c and reads the whole reply. */
static void converse(pmapd_conn *c, const char *req, int64_t now) {
  size_t n = strlen(req);
  memcpy(c->in + c->inlen, req, n);
  c->inlen += n;
  conn_process(c, now);
  while (!c->closed && c->outlen > c->outoff) conn_sent(c, c->outlen - c->outoff, now);
}

/* }------ */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  pmapd_conn *c, *taken, *holders[PMAPD_LISTINGS];
  replies r;
  unsigned mode, in_chunk, out_chunk;
  size_t off = 1, newlines = 0, i;
  int64_t now = 1;
  int too_long;
  if (size < 1) return 0;
  mode = data[0];
  in_chunk = (mode >> 1) & 7 ? 1u << (((mode >> 1) & 7) - 1) : PMAP_LINE_MAX;
  out_chunk = 1u << ((mode >> 4) & 7);
  S.seed = 12345;
  S.epfd = S.reserve = -1;
  taken = conn_new(-1, 1, now);
  check(taken != NULL);
  converse(taken, "REGISTER taken 4000\n", now);
  check(taken->reg_port == 4000);
  if (mode & 0x80)
    for (i = 0; i < PMAPD_LISTINGS; i++) {
      holders[i] = conn_new(-1, 1, now);
      check(holders[i] != NULL);
      memcpy(holders[i]->in, "NAMES\n", 6);
      holders[i]->inlen = 6;
      conn_process(holders[i], now);
      check(holders[i]->listing != NULL);  /* left unread */
    }
  c = conn_new(-1, mode & 1, now);
  check(c != NULL);
  memset(&r, 0, sizeof r);
  check_state();
  while (!c->closed) {
    now++;
    if (c->outlen > c->outoff) {  /* the client reads some of the reply */
      size_t k = c->outlen - c->outoff < out_chunk ? c->outlen - c->outoff : out_chunk;
      reply_bytes(&r, conn_pending(c), k);
      conn_sent(c, k, now);
    }
    else if (!c->closing && off < size) {  /* the daemon reads only with no reply pending */
      size_t k = PMAP_LINE_MAX - c->inlen;
      if (k > in_chunk) k = in_chunk;
      if (k > size - off) k = size - off;
      check(k > 0);  /* a full buffer without '\n' was refused */
      memcpy(c->in + c->inlen, data + off, k);
      for (i = 0; i < k; i++) newlines += data[off + i] == '\n';
      c->inlen += k;
      off += k;
      conn_process(c, now);
    }
    else break;
    while (S.thead != NULL && S.thead->deadline <= now) conn_close(S.thead);  /* the sweep */
    check_state();
  }
  /* One reply per line taken: the '\n's fed minus those still unread. */
  for (i = 0; i < c->inlen; i++) newlines -= c->in[i] == '\n';
  too_long = r.closing_error && c->inlen == PMAP_LINE_MAX && memchr(c->in, '\n', c->inlen) == NULL;
  if (c->closed && !r.closing_error) {
    check(now >= PMAPD_STALL_SECONDS * 1000);  /* only a stall closes without a word */
  }
  else {
    check(r.len == 0 && r.entries == 0);  /* no reply was cut */
    check(r.count == newlines + (unsigned)too_long);
    check(r.closing_error == c->closed);
  }
  check(taken->reg_port == 4000 || taken->closed);
  serve_free();  /* closes every connection; fds are -1 */
  return 0;
}
