/*
** handshake_fuzz.c — libFuzzer target for the handshake responder
** (kernel/net/noise.c, then the confirmation in kernel/net/frame.c). Byte 0 is the
** mode:
**   0 (even)  "raw": then a 2-byte big-endian length L, L bytes of msg1,
**             and the rest: the bytes that follow msg2 (the confirmation
**             and frames), fed to the responder's decoder.
**   1 (odd)   "built": an initiator with the cluster key writes msg1 with
**             the payload given by the input, so the responder gets past
**             the tag and the hello parser is fuzzed. Then: a 2-byte bit
**             index to flip in msg1 (0: none), a 1-byte payload length P,
**             P payload bytes, and the rest: records the initiator sends
**             after its confirmation, 1-byte length || bytes each.
** Ephemeral keys are fixed, so every run is reproducible.
** Invariants checked (abort on violation): a refused msg1 leaves the
** responder unchanged; before the confirmation the decoder holds at most
** FRAME_CONFIRM_LEN bytes; an untouched built handshake authenticates and
** delivers the records exactly; a flipped msg1 never authenticates.
*/
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "frame.h"
#include "noise.h"

static const unsigned char PSK[32] = "handshake fuzz cluster key 32 B";
static const unsigned char IE[32] = "initiator ephemeral, fixed: fuzz";
static const unsigned char RE[32] = "responder ephemeral, fixed: fuzz";

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

static void hs_init(noise_hs *hs, int role) {
  if (noise_hs_init(hs, role, PSK, (const unsigned char *)NOISE_PROLOGUE, NOISE_PROLOGUE_LEN) ||
      noise_hs_set_ephemeral(hs, role == NOISE_INITIATOR ? IE : RE))
    abort();
}

/* The responder's side: msg1 in; if it is accepted, msg2 out and the
** stream after it fed to the decoder. Returns 1 when the peer ends up
** authenticated, 0 when not, -1 when msg1 was refused. */
static int respond(const unsigned char *msg1, size_t m1, unsigned char *msg2, size_t *m2,
                   const unsigned char *stream, size_t sn, out *recs) {
  noise_hs R, R0;
  unsigned char pay[NOISE_MAX_PAYLOAD], hello[NOISE_HELLO_MAX];
  size_t pl, hl;
  noise_hello who;
  hs_init(&R, NOISE_RESPONDER);
  R0 = R;
  if (noise_hs_read(&R, msg1, m1, pay, sizeof pay, &pl)) {
    if (memcmp(&R, &R0, sizeof R)) abort();
    noise_hs_wipe(&R);
    return -1;
  }
  int named = noise_hello_decode(pay, pl, &who) == 0;
  if (named && (strlen(who.name) == 0 || strlen(who.name) > NOISE_NAME_MAX)) abort();
  if (noise_hello_encode("responder@fuzz", 9, hello, sizeof hello, &hl) ||
      noise_hs_write(&R, hello, hl, msg2, NOISE_MAX_MSG, m2))
    abort();
  frame_enc e;
  frame_dec d;
  if (frame_start(&R, 0, &e, &d)) abort();
  if (frame_enc_pending(&e) != 0 || frame_dec_authenticated(&d)) abort();
  size_t pos = 0, used;
  frame_msg m;
  while (pos < sn) {
    int r = frame_dec_feed(&d, stream + pos, sn - pos, &used, &m);
    if (d.expect_confirm && d.cap > FRAME_CONFIRM_LEN) abort();   /* not yet authenticated */
    if (r <= 0) break;
    if (m.type == FRAME_DATA && recs) {
      size_t off = 0, rl;
      const unsigned char *rec;
      while (frame_record_next(&m, &off, &rec, &rl) == 1) {
        unsigned char h = (unsigned char)rl;
        out_add(recs, &h, 1);
        out_add(recs, rec, rl);
      }
    }
    pos += used;
  }
  int auth = frame_dec_authenticated(&d);
  frame_enc_free(&e);
  frame_dec_free(&d);
  return auth;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  unsigned char msg2[NOISE_MAX_MSG];
  size_t m2;
  if (size < 1 || noise_init()) return 0;
  if ((data[0] & 1) == 0) {            /* raw */
    if (size < 3) return 0;
    size_t l = (size_t)data[1] << 8 | data[2];
    if (l > size - 3) l = size - 3;
    respond(data + 3, l, msg2, &m2, data + 3 + l, size - 3 - l, NULL);
    return 0;
  }
  if (size < 4) return 0;              /* built */
  size_t flip = (size_t)data[1] << 8 | data[2], p = data[3];
  if (p > size - 4) p = size - 4;
  const unsigned char *payload = data + 4, *rest = data + 4 + p;
  size_t rn = size - 4 - p;
  noise_hs I;
  unsigned char msg1[NOISE_MAX_MSG];
  size_t m1;
  hs_init(&I, NOISE_INITIATOR);
  if (noise_hs_write(&I, payload, p, msg1, sizeof msg1, &m1)) abort();
  if (flip) msg1[((flip - 1) / 8) % m1] ^= (unsigned char)(1u << ((flip - 1) % 8));
  /* The initiator's stream (its confirmation, then the records) needs the
  ** split keys, so a twin handshake runs first; with the ephemerals fixed,
  ** the twin responder's msg2 is the one respond() will write. */
  noise_hs Itwin = I, Rtwin;
  unsigned char pay[NOISE_MAX_PAYLOAD], hello[NOISE_HELLO_MAX], tmsg2[NOISE_MAX_MSG];
  size_t pl, hl, tm2;
  out stream = {0}, want = {0}, got = {0};
  hs_init(&Rtwin, NOISE_RESPONDER);
  int twin_ok = flip == 0 && noise_hs_read(&Rtwin, msg1, m1, pay, sizeof pay, &pl) == 0 &&
                noise_hello_encode("responder@fuzz", 9, hello, sizeof hello, &hl) == 0 &&
                noise_hs_write(&Rtwin, hello, hl, tmsg2, sizeof tmsg2, &tm2) == 0 &&
                noise_hs_read(&Itwin, tmsg2, tm2, pay, sizeof pay, &pl) == 0;
  if (flip == 0 && !twin_ok) abort();  /* an untouched msg1 must go through */
  if (twin_ok) {
    frame_enc e;
    frame_dec d;
    const unsigned char *w;
    size_t wn;
    if (frame_start(&Itwin, 0, &e, &d)) abort();
    for (size_t i = 0; i < rn;) {
      size_t rl = rest[i++];
      if (rl > rn - i) rl = rn - i;
      if (frame_enc_record(&e, rest + i, rl, NULL, 0)) abort();
      unsigned char h = (unsigned char)rl;
      out_add(&want, &h, 1);
      out_add(&want, rest + i, rl);
      i += rl;
    }
    if (frame_enc_flush(&e, &w, &wn)) abort();
    out_add(&stream, w, wn);
    frame_enc_free(&e);
    frame_dec_free(&d);
  } else {
    out_add(&stream, rest, rn);        /* a flipped msg1: whatever bytes follow */
  }
  int auth = respond(msg1, m1, msg2, &m2, stream.p, stream.n, &got);
  if (twin_ok && (m2 != tm2 || memcmp(msg2, tmsg2, m2))) abort();
  if (flip == 0) {
    if (auth != 1 || got.n != want.n || (want.n && memcmp(got.p, want.p, want.n))) abort();
  } else if (auth == 1) {
    abort();                           /* a tampered msg1 must never authenticate */
  }
  noise_hs_wipe(&I); noise_hs_wipe(&Itwin); noise_hs_wipe(&Rtwin);
  free(stream.p); free(want.p); free(got.p);
  return 0;
}
