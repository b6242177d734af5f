/*
** frame_fuzz.c — libFuzzer target for the frame decoder (kernel/net/frame.c).
** Byte 0 chooses the mode; the rest is the input:
**   bit 0  the decoder awaits a confirmation (a responder before auth)
**   bit 1  "sealed": the rest is plaintext frames, each 2-byte big-endian
**          length || type || body, sealed here with the decoder's key so
**          the fuzzer reaches the checks behind the tag; otherwise the rest
**          is fed as raw wire bytes
**   bit 2  "round trip": the rest is records (1-byte length || bytes; a
**          length of 255 stands for a TICK) sent through the encoder; the
**          decoder must give them back exactly
**   bits 3-7  chunk size for feeding (0: all at once)
** Invariants checked (abort on violation): a delivered frame has a known
** type and a well-formed body; nothing above one confirmation is held
** before authentication; a failed decoder stays failed.
*/
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "frame.h"

#define MAX_BODY 4096u

static const unsigned char KEY[32] = "frame fuzz key: 32 bytes long!!";
static const unsigned char HASH[32] = "the handshake hash, 32 bytes...";

static noise_cipher key_at_zero(void) {
  noise_cipher c;
  memset(&c, 0, sizeof c);
  memcpy(c.k, KEY, sizeof c.k);
  c.has_key = 1;
  return c;
}

typedef struct out { unsigned char *p; size_t n, cap; } out;

static void out_add(out *o, const void *p, size_t n) {
  if (o->n + n > o->cap) {
    o->cap = (o->n + n) * 2 + 64;
    o->p = realloc(o->p, o->cap);
    if (!o->p) abort();
  }
  if (n) memcpy(o->p + o->n, p, n);
  o->n += n;
}

/* Feeds `s`; checks each frame; appends DATA records (length-prefixed) to recs. */
static int feed(frame_dec *d, const unsigned char *s, size_t n, size_t chunk, out *recs) {
  size_t pos = 0;
  int failed = 0;
  while (pos < n && !failed) {
    size_t c = chunk ? chunk : n - pos;
    if (c > n - pos) c = n - pos;
    const unsigned char *p = s + pos;
    size_t left = c, used;
    frame_msg m;
    for (;;) {
      int was_authenticated = frame_dec_authenticated(d);
      int r = frame_dec_feed(d, p, left, &used, &m);
      if (d->expect_confirm && d->cap > FRAME_CONFIRM_LEN) abort();   /* not yet authenticated */
      if (d->cap > FRAME_MIN_LEN + MAX_BODY) abort();
      if (r < 0) {
        if (frame_dec_feed(d, p, left, &used, &m) != -1 || frame_dec_eof(d) != -1) abort();
        failed = 1;
        break;
      }
      if (r == 0) { if (used != left) abort(); break; }
      if (used > left || m.len > MAX_BODY) abort();
      if (m.type == FRAME_CONFIRM && (was_authenticated || m.len != 32 || memcmp(m.body, HASH, 32)))
        abort();
      if (m.type == FRAME_DATA) {
        size_t off = 0, rl;
        const unsigned char *rec;
        int k;
        while ((k = frame_record_next(&m, &off, &rec, &rl)) == 1) {
          unsigned char h = (unsigned char)rl;
          if (recs) { out_add(recs, &h, 1); out_add(recs, rec, rl); }
        }
        if (k != 0) abort();
      } else if ((m.type == FRAME_TICK || m.type == FRAME_CLOSE) && m.len) {
        abort();
      } else if (m.type != FRAME_CONFIRM && m.type != FRAME_TICK && m.type != FRAME_CLOSE &&
                 (m.type < FRAME_CONTROL_FIRST || m.type > FRAME_CONTROL_LAST)) {
        abort();
      }
      p += used;
      left -= used;
    }
    pos += c;
  }
  return failed ? -1 : 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  if (noise_init()) abort();   /* loads libsodium (kernel/net/crypto.h) */
  int mode = data[0];
  size_t chunk = (size_t)(mode >> 3);
  const unsigned char *in = data + 1;
  size_t n = size - 1;
  noise_cipher rx = key_at_zero(), tx = key_at_zero();
  frame_dec d;
  if (frame_dec_init(&d, &rx, (mode & 1) ? HASH : NULL, MAX_BODY)) abort();

  if (mode & 4) {                      /* round trip through the encoder */
    frame_enc e;
    out want = {0}, got = {0};
    const unsigned char *wire;
    size_t wn;
    if (frame_enc_init(&e, &tx, MAX_BODY)) abort();
    if (mode & 1) {                    /* what frame_start does for an initiator */
      unsigned char pt[33] = { FRAME_CONFIRM };
      memcpy(pt + 1, HASH, 32);
      unsigned char fr[4 + 33 + 16] = { 0, 0, 0, 49 };
      if (noise_cipher_encrypt(&e.tx, fr, 4, pt, 33, fr + 4)) abort();
      if (feed(&d, fr, sizeof fr, chunk, NULL)) abort();
    }
    size_t i = 0;
    while (i < n) {
      size_t rl = in[i++];
      if (rl == 255) {                 /* 255 stands for a TICK */
        if (frame_enc_control(&e, FRAME_TICK, NULL, 0)) abort();
        continue;
      }
      if (rl > n - i) rl = n - i;
      if (frame_enc_record(&e, in + i, rl / 2, in + i + rl / 2, rl - rl / 2)) abort();
      unsigned char h = (unsigned char)rl;
      out_add(&want, &h, 1);
      out_add(&want, in + i, rl);
      i += rl;
    }
    if (frame_enc_control(&e, FRAME_CLOSE, NULL, 0) || frame_enc_flush(&e, &wire, &wn)) abort();
    if (feed(&d, wire, wn, chunk, &got) || frame_dec_eof(&d) != 0) abort();
    if (got.n != want.n || (want.n && memcmp(got.p, want.p, want.n))) abort();
    frame_enc_free(&e);
    free(want.p);
    free(got.p);
  } else if (mode & 2) {               /* sealed plaintexts */
    out wire = {0};
    size_t i = 0;
    while (i + 2 <= n) {
      size_t pl = (size_t)in[i] << 8 | in[i + 1];
      i += 2;
      if (pl > n - i) pl = n - i;
      size_t len = pl + 16;
      unsigned char hdr[4] = { 0, (unsigned char)(len >> 16), (unsigned char)(len >> 8), (unsigned char)len };
      unsigned char *ct = malloc(pl + 16);
      if (!ct || noise_cipher_encrypt(&tx, hdr, 4, in + i, pl, ct)) abort();
      out_add(&wire, hdr, 4);
      out_add(&wire, ct, pl + 16);
      free(ct);
      i += pl;
    }
    feed(&d, wire.p, wire.n, chunk, NULL);
    free(wire.p);
  } else {                             /* raw wire bytes */
    feed(&d, in, n, chunk, NULL);
  }
  frame_dec_free(&d);
  noise_cipher_wipe(&tx);
  return 0;
}
