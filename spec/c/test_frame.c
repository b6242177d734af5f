/*
** test_frame.c — the encrypted frame layer: batching, arbitrary chunking,
** control frames, and every way a stream can be broken (bit flips, replay,
** reordering, truncation, oversized lengths, the nonce counter's end, bytes
** after CLOSE, frames before the confirmation).
** Links only noise.c, frame.c and libsodium.
*/
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sodium.h>
#include "ctest.h"
#include "noise.h"
#include "frame.h"

/* Both ends of a link after a real handshake (random ephemerals). */
typedef struct link {
  frame_enc ie, re;   /* initiator's and responder's encoders */
  frame_dec id, rd;   /* initiator's and responder's decoders */
} link;

static unsigned char PSK[32];

static int link_new(link *l, size_t max_body) {
  noise_hs I, R;
  unsigned char msg[NOISE_MAX_MSG], pay[NOISE_MAX_PAYLOAD];
  size_t m, pl;
  const unsigned char *pro = (const unsigned char *)NOISE_PROLOGUE;
  int rc = noise_hs_init(&I, NOISE_INITIATOR, PSK, pro, NOISE_PROLOGUE_LEN) ||
           noise_hs_init(&R, NOISE_RESPONDER, PSK, pro, NOISE_PROLOGUE_LEN) ||
           noise_hs_write(&I, NULL, 0, msg, sizeof msg, &m) ||
           noise_hs_read(&R, msg, m, pay, sizeof pay, &pl) ||
           noise_hs_write(&R, NULL, 0, msg, sizeof msg, &m) ||
           noise_hs_read(&I, msg, m, pay, sizeof pay, &pl) ||
           frame_start(&I, max_body, &l->ie, &l->id) ||
           frame_start(&R, max_body, &l->re, &l->rd);
  noise_hs_wipe(&I);
  noise_hs_wipe(&R);
  return rc ? -1 : 0;
}

static void link_free(link *l) {
  frame_enc_free(&l->ie); frame_enc_free(&l->re);
  frame_dec_free(&l->id); frame_dec_free(&l->rd);
}

/* A growable byte string. */
typedef struct bytes { unsigned char *p; size_t n, cap; } bytes;

static void bytes_add(bytes *b, const void *p, size_t n) {
  if (b->n + n > b->cap) {
    b->cap = (b->n + n) * 2 + 64;
    b->p = realloc(b->p, b->cap);
    if (!b->p) abort();
  }
  if (n) memcpy(b->p + b->n, p, n);
  b->n += n;
}

/* Takes everything the encoder holds. */
static int drain(frame_enc *e, bytes *out) {
  const unsigned char *p;
  size_t n;
  if (frame_enc_flush(e, &p, &n)) return -1;
  bytes_add(out, p, n);
  return frame_enc_consumed(e, n);
}

/* What a decoder produced from a stream. */
typedef struct result {
  int frames, failed;
  int types[64];
  bytes recs;          /* every record, each as 4-byte length || bytes */
  bytes ctrl;          /* the last control body */
} result;

static void result_free(result *r) { free(r->recs.p); free(r->ctrl.p); memset(r, 0, sizeof *r); }

/* Feeds `s` to d in chunks of `chunk` bytes (0: all at once; -1: random sizes). */
static void feed(frame_dec *d, const unsigned char *s, size_t n, int chunk, result *r) {
  size_t pos = 0;
  while (pos < n && !r->failed) {
    size_t c = chunk == 0 ? n - pos : chunk > 0 ? (size_t)chunk : 1 + randombytes_uniform(97);
    if (c > n - pos) c = n - pos;
    const unsigned char *p = s + pos;
    size_t left = c, used;
    frame_msg m;
    for (;;) {
      int rc = frame_dec_feed(d, p, left, &used, &m);
      if (rc < 0) { r->failed = 1; break; }
      if (rc == 0) break;
      if (r->frames < 64) r->types[r->frames] = m.type;
      r->frames++;
      if (m.type == FRAME_DATA) {
        size_t off = 0, rl;
        const unsigned char *rec;
        while (frame_record_next(&m, &off, &rec, &rl) == 1) {
          unsigned char h[4] = { (unsigned char)(rl >> 24), (unsigned char)(rl >> 16),
                                 (unsigned char)(rl >> 8), (unsigned char)rl };
          bytes_add(&r->recs, h, 4);
          bytes_add(&r->recs, rec, rl);
        }
      } else if (m.type >= FRAME_CONTROL_FIRST) {
        r->ctrl.n = 0;
        bytes_add(&r->ctrl, m.body, m.len);
      }
      p += used;
      left -= used;
    }
    pos += c;
  }
}

/* The frames of a stream, split at their headers. */
static int split_frames(const bytes *s, size_t *starts, int max) {
  size_t pos = 0;
  int k = 0;
  while (pos + 4 <= s->n && k < max) {
    starts[k++] = pos;
    pos += 4 + ((size_t)s->p[pos] << 24 | (size_t)s->p[pos + 1] << 16 |
                (size_t)s->p[pos + 2] << 8 | s->p[pos + 3]);
  }
  starts[k] = pos;
  return k;
}

/* Seals an arbitrary plaintext (type byte included) as one frame with a
** copy of an encoder's cipher state, for frames the encoder refuses to make. */
static void raw_frame(noise_cipher *c, const unsigned char *pt, size_t n, bytes *out) {
  unsigned char hdr[4] = { 0, 0, 0, 0 };
  size_t len = n + 16;
  hdr[0] = (unsigned char)(len >> 24); hdr[1] = (unsigned char)(len >> 16);
  hdr[2] = (unsigned char)(len >> 8); hdr[3] = (unsigned char)len;
  unsigned char *ct = malloc(len);
  if (!ct || noise_cipher_encrypt(c, hdr, 4, pt, n, ct)) abort();
  bytes_add(out, hdr, 4);
  bytes_add(out, ct, len);
  free(ct);
}

/* ---- tests ---- */

/* The records written, in the format result.recs uses. */
static void expect_add(bytes *want, const void *p, size_t n) {
  unsigned char h[4] = { (unsigned char)(n >> 24), (unsigned char)(n >> 16), (unsigned char)(n >> 8),
                         (unsigned char)n };
  bytes_add(want, h, 4);
  bytes_add(want, p, n);
}

static void test_round_trip(void) {
  link l;
  link_new(&l, 0);
  bytes want = {0}, s = {0};
  unsigned char buf[5000];
  for (int i = 0; i < 200; i++) {
    size_t n = randombytes_uniform(i % 10 == 0 ? sizeof buf : 40);
    randombytes_buf(buf, n);
    size_t split = n ? randombytes_uniform((uint32_t)n + 1) : 0;
    frame_enc_record(&l.re, buf, split, buf + split, n - split);
    expect_add(&want, buf, n);
  }
  drain(&l.re, &s);
  size_t starts[8];
  int nf = split_frames(&s, starts, 7);
  CHECK(nf == 1, "200 records in a row go out as one DATA frame", "%d frames", nf);
  int chunks[] = { 0, 1, 3, -1 };
  const char *names[] = { "in one chunk", "one byte at a time", "three bytes at a time", "in random chunks" };
  for (int c = 0; c < 4; c++) {
    link_free(&l);
    /* a fresh link per chunking, with the same records */
    link_new(&l, 0);
    s.n = 0;
    size_t off = 0;
    while (off < want.n) {
      size_t n = (size_t)want.p[off] << 24 | (size_t)want.p[off + 1] << 16 | (size_t)want.p[off + 2] << 8 | want.p[off + 3];
      frame_enc_record(&l.re, want.p + off + 4, n, NULL, 0);
      off += 4 + n;
      if (off % 7 == 0) frame_enc_control(&l.re, FRAME_TICK, NULL, 0);
    }
    drain(&l.re, &s);
    result r = {0};
    feed(&l.id, s.p, s.n, chunks[c], &r);
    char name[96];
    snprintf(name, sizeof name, "records decode in order and intact, fed %s", names[c]);
    CHECK(!r.failed && r.recs.n == want.n && memcmp(r.recs.p, want.p, want.n) == 0, name,
          "failed %d, %zu of %zu bytes", r.failed, r.recs.n, want.n);
    result_free(&r);
  }
  free(want.p); free(s.p);
  link_free(&l);
}

static void test_batching_and_limits(void) {
  link l;
  link_new(&l, FRAME_MIN_MAX_BODY);
  bytes s = {0};
  unsigned char rec[FRAME_MIN_MAX_BODY];
  memset(rec, 'r', sizeof rec);
  int ok = 1;
  for (int i = 0; i < 10; i++) ok &= frame_enc_record(&l.re, rec, 20, NULL, 0) == 0;
  size_t before = frame_enc_pending(&l.re);
  int too_big = frame_enc_record(&l.re, rec, FRAME_MIN_MAX_BODY - 3, NULL, 0);
  int split_too_big = frame_enc_record(&l.re, rec, 30, rec, FRAME_MIN_MAX_BODY - 33);
  int exact = frame_enc_record(&l.re, rec, 30, rec, FRAME_MIN_MAX_BODY - 34);
  CHECK(ok && too_big == -1 && split_too_big == -1 && exact == 0,
        "a record must fit in one frame body: 4 + record <= max_body", "%d %d %d %d", ok, too_big, split_too_big, exact);
  CHECK(before == frame_enc_pending(&l.re) - (FRAME_HEADERBYTES + FRAME_TYPEBYTES + FRAME_MIN_MAX_BODY + FRAME_TAGBYTES),
        "a refused record adds nothing", "pending %zu then %zu", before, frame_enc_pending(&l.re));
  drain(&l.re, &s);
  size_t starts[32];
  int nf = split_frames(&s, starts, 31), within = 1;
  for (int i = 0; i < nf; i++)
    if (starts[i + 1] - starts[i] - FRAME_OVERHEAD > FRAME_MIN_MAX_BODY) within = 0;
  CHECK(nf == 6 && within,
        "with max_body 64, ten 24-byte records go two to a frame and a full-size one gets a sixth frame",
        "%d frames", nf);
  result r = {0};
  feed(&l.id, s.p, s.n, -1, &r);
  CHECK(!r.failed && r.frames == 6 && r.recs.n == 10 * 24 + FRAME_MIN_MAX_BODY,
        "the decoder with the same max_body reads them all", "failed %d frames %d", r.failed, r.frames);
  result_free(&r);
  /* A decoder with a smaller max_body refuses a frame that is too long. */
  link_free(&l);
  link_new(&l, 0);
  frame_dec small;
  noise_cipher c = l.id.rx;
  frame_dec_init(&small, &c, NULL, FRAME_MIN_MAX_BODY);
  s.n = 0;
  frame_enc_record(&l.re, rec, 20, NULL, 0);
  frame_enc_record(&l.re, rec, 20, NULL, 0);
  frame_enc_record(&l.re, rec, 20, NULL, 0);   /* 72 bytes of body */
  drain(&l.re, &s);
  feed(&small, s.p, 4, 0, &r);
  CHECK(r.failed && small.cap == 0, "a length over max_body fails at the header, before any allocation",
        "failed %d cap %zu", r.failed, small.cap);
  result_free(&r);
  frame_dec_free(&small);
  noise_cipher dummy = { .has_key = 1 };
  frame_enc e;
  CHECK(frame_enc_init(&e, &dummy, FRAME_HARD_MAX_BODY + 1) == -1 &&
        frame_enc_init(&e, &dummy, FRAME_MIN_MAX_BODY - 1) == -1 &&
        frame_dec_init(&small, &dummy, NULL, FRAME_HARD_MAX_BODY + 1) == -1,
        "max_body outside [FRAME_MIN_MAX_BODY, FRAME_HARD_MAX_BODY] is refused", "accepted");
  free(s.p);
  link_free(&l);
}

static void test_big_frame(void) {
  link l;
  link_new(&l, 0);
  size_t n = FRAME_DEFAULT_MAX_BODY - FRAME_RECORD_HEADERBYTES;
  unsigned char *big = malloc(n);
  randombytes_buf(big, n);
  bytes s = {0}, want = {0};
  int a = frame_enc_record(&l.re, big, n, NULL, 0);
  frame_enc_record(&l.re, "x", 1, NULL, 0);
  drain(&l.re, &s);
  expect_add(&want, big, n);
  expect_add(&want, "x", 1);
  result r = {0};
  feed(&l.id, s.p, s.n, 0, &r);
  CHECK(a == 0 && !r.failed && r.frames == 2 && r.recs.n == want.n && memcmp(r.recs.p, want.p, want.n) == 0,
        "a record of the largest size travels alone, the next one in a new frame", "a %d failed %d frames %d", a, r.failed, r.frames);
  CHECK(l.id.cap <= FRAME_DEFAULT_MAX_BODY / 2, "the decoder gives its big buffer back after a small frame",
        "cap %zu", l.id.cap);
  result_free(&r);
  free(big); free(s.p); free(want.p);
  link_free(&l);
}

static void test_control_order(void) {
  link l;
  link_new(&l, 0);
  bytes s = {0};
  frame_enc_record(&l.re, "a", 1, NULL, 0);
  frame_enc_control(&l.re, FRAME_LINK, "pidpid", 6);
  frame_enc_record(&l.re, "b", 1, NULL, 0);
  frame_enc_control(&l.re, FRAME_TICK, NULL, 0);
  frame_enc_control(&l.re, FRAME_DOWN, NULL, 0);
  drain(&l.re, &s);
  result r = {0};
  feed(&l.id, s.p, s.n, 1, &r);
  CHECK(!r.failed && r.frames == 5 && r.types[0] == FRAME_DATA && r.types[1] == FRAME_LINK &&
        r.types[2] == FRAME_DATA && r.types[3] == FRAME_TICK && r.types[4] == FRAME_DOWN,
        "records and control frames arrive in the order they were queued", "failed %d frames %d", r.failed, r.frames);
  CHECK(r.ctrl.n == 0, "a control frame with an empty body arrives empty", "len %zu", r.ctrl.n);
  CHECK(frame_enc_control(&l.re, 0x40, NULL, 0) == -1 && frame_enc_control(&l.re, FRAME_DATA, "x", 1) == -1 &&
        frame_enc_control(&l.re, FRAME_CONFIRM, "x", 1) == -1 && frame_enc_control(&l.re, FRAME_TICK, "x", 1) == -1,
        "the encoder refuses non-control types and bodies on TICK", "accepted");
  result_free(&r);
  free(s.p);
  link_free(&l);
}

/* A stream of three frames: DATA, LINK, DATA. */
static void three_frames(link *l, bytes *s) {
  frame_enc_record(&l->re, "first record", 12, NULL, 0);
  frame_enc_control(&l->re, FRAME_LINK, "who", 3);
  frame_enc_record(&l->re, "second", 6, NULL, 0);
  drain(&l->re, s);
}

/* The three frames and CLOSE. */
static void closed_stream(link *l, bytes *s) {
  three_frames(l, s);
  frame_enc_control(&l->re, FRAME_CLOSE, NULL, 0);
  drain(&l->re, s);
}

static void test_bit_flips(void) {
  link l;
  link_new(&l, 0);
  bytes s = {0};
  closed_stream(&l, &s);
  size_t starts[8];
  split_frames(&s, starts, 7);
  int undetected = 0, wrong_prefix = 0;
  for (size_t bit = 0; bit < s.n * 8; bit++) {
    link m;
    link_new(&m, 0);
    bytes t = {0};
    closed_stream(&m, &t);
    t.p[bit / 8] ^= (unsigned char)(1u << (bit % 8));
    result r = {0};
    feed(&m.id, t.p, t.n, -1, &r);
    if (!r.failed && frame_dec_eof(&m.id) == 0) undetected++;
    /* Only frames before the flipped one may have come out. */
    int k = 0;
    while (starts[k + 1] <= bit / 8) k++;
    if (r.frames > k) wrong_prefix++;
    result_free(&r);
    free(t.p);
    link_free(&m);
  }
  CHECK(undetected == 0, "every single-bit flip of a stream ending in CLOSE fails the link or makes EOF a truncation", "%d undetected of %zu", undetected, s.n * 8);
  CHECK(wrong_prefix == 0, "after a flip only the frames before the flipped one are delivered", "%d", wrong_prefix);
  free(s.p);
  link_free(&l);
}

static void test_replay_reorder_truncate(void) {
  link l;
  bytes s = {0}, t = {0};
  size_t st[8];
  result r = {0};

  link_new(&l, 0);
  three_frames(&l, &s);
  split_frames(&s, st, 7);
  bytes_add(&t, s.p, st[1]);
  bytes_add(&t, s.p, st[1]);                /* frame 0 twice */
  feed(&l.id, t.p, t.n, 0, &r);
  CHECK(r.failed && r.frames == 1, "a replayed frame fails the link", "failed %d frames %d", r.failed, r.frames);
  result_free(&r); link_free(&l); s.n = t.n = 0;

  link_new(&l, 0);
  three_frames(&l, &s);
  split_frames(&s, st, 7);
  bytes_add(&t, s.p + st[1], st[2] - st[1]);  /* frame 1, then frame 0 */
  bytes_add(&t, s.p, st[1]);
  feed(&l.id, t.p, t.n, 0, &r);
  CHECK(r.failed && r.frames == 0, "reordered frames fail the link", "failed %d frames %d", r.failed, r.frames);
  result_free(&r); link_free(&l); s.n = t.n = 0;

  link_new(&l, 0);
  three_frames(&l, &s);
  split_frames(&s, st, 7);
  bytes_add(&t, s.p, st[1]);                  /* frame 0, then frame 2: frame 1 dropped */
  bytes_add(&t, s.p + st[2], st[3] - st[2]);
  feed(&l.id, t.p, t.n, 0, &r);
  CHECK(r.failed && r.frames == 1, "a dropped frame fails the link at the next one", "failed %d frames %d", r.failed, r.frames);
  result_free(&r); link_free(&l); s.n = t.n = 0;

  /* Truncation: the stream ends in CLOSE; cut it anywhere. */
  link_new(&l, 0);
  three_frames(&l, &s);
  frame_enc_control(&l.re, FRAME_CLOSE, NULL, 0);
  drain(&l.re, &s);
  int bad = 0;
  for (size_t cut = 0; cut <= s.n; cut++) {
    link m;
    link_new(&m, 0);
    bytes u = {0};
    three_frames(&m, &u);
    frame_enc_control(&m.re, FRAME_CLOSE, NULL, 0);
    drain(&m.re, &u);
    result q = {0};
    feed(&m.id, u.p, cut, -1, &q);
    int orderly = !q.failed && frame_dec_eof(&m.id) == 0;
    if (orderly != (cut == u.n) || q.failed) bad++;
    result_free(&q);
    free(u.p);
    link_free(&m);
  }
  CHECK(bad == 0, "EOF anywhere before the end of the CLOSE frame is a truncation; after it, an orderly close",
        "%d wrong", bad);
  link_free(&l);
  free(s.p); free(t.p);
}

static void test_close(void) {
  link l;
  link_new(&l, 0);
  bytes s = {0};
  frame_enc_record(&l.re, "last", 4, NULL, 0);
  CHECK(frame_enc_control(&l.re, FRAME_CLOSE, NULL, 0) == 0 && frame_enc_record(&l.re, "x", 1, NULL, 0) == -1 &&
        frame_enc_control(&l.re, FRAME_TICK, NULL, 0) == -1, "after CLOSE the encoder takes nothing more", "accepted");
  drain(&l.re, &s);
  result r = {0};
  CHECK(frame_dec_eof(&l.id) == -1, "EOF before anything arrived is a truncation", "orderly");
  feed(&l.id, s.p, s.n, 0, &r);
  CHECK(!r.failed && r.frames == 2 && r.types[1] == FRAME_CLOSE && frame_dec_eof(&l.id) == 0,
        "the data before CLOSE arrives, then CLOSE, then EOF is orderly", "failed %d frames %d", r.failed, r.frames);
  size_t used;
  frame_msg m;
  CHECK(frame_dec_feed(&l.id, s.p, 0, &used, &m) == 0, "feeding nothing after CLOSE is fine", "failed");
  CHECK(frame_dec_feed(&l.id, (const unsigned char *)"z", 1, &used, &m) == -1 && frame_dec_eof(&l.id) == -1,
        "a byte after CLOSE fails the link", "accepted");
  result_free(&r);
  free(s.p);
  link_free(&l);
}

static void test_nonce_end(void) {
  link l;
  link_new(&l, 0);
  bytes s = {0};
  noise_cipher_set_nonce(&l.re.tx, UINT64_MAX - 1);
  noise_cipher_set_nonce(&l.id.rx, UINT64_MAX - 1);
  frame_enc_record(&l.re, "one", 3, NULL, 0);
  int a = drain(&l.re, &s);
  int b = frame_enc_record(&l.re, "two", 3, NULL, 0);
  const unsigned char *p;
  size_t n;
  int c = frame_enc_flush(&l.re, &p, &n);
  CHECK(a == 0 && b == 0 && c == -1 && frame_enc_failed(&l.re) && frame_enc_record(&l.re, "3", 1, NULL, 0) == -1,
        "the encoder seals at nonce 2^64-2, then fails for good", "%d %d %d", a, b, c);
  result r = {0};
  feed(&l.id, s.p, s.n, 0, &r);
  CHECK(!r.failed && r.frames == 1, "the decoder reads the frame at nonce 2^64-2", "failed %d", r.failed);
  result_free(&r);
  /* A decoder whose counter is at the end refuses even a valid-looking frame. */
  link_free(&l);
  link_new(&l, 0);
  s.n = 0;
  noise_cipher_set_nonce(&l.re.tx, UINT64_MAX - 1);
  frame_enc_record(&l.re, "one", 3, NULL, 0);
  drain(&l.re, &s);
  noise_cipher_set_nonce(&l.id.rx, UINT64_MAX);
  feed(&l.id, s.p, s.n, 0, &r);
  CHECK(r.failed, "a decoder at nonce 2^64-1 fails instead of wrapping", "accepted");
  result_free(&r);
  free(s.p);
  link_free(&l);
}

static void test_confirmation(void) {
  link l;
  link_new(&l, 0);
  bytes s = {0};
  result r = {0};
  CHECK(frame_enc_pending(&l.ie) == FRAME_HEADERBYTES + FRAME_CONFIRM_LEN && frame_enc_pending(&l.re) == 0,
        "the initiator's encoder starts with the confirmation queued, the responder's empty", "%zu %zu",
        frame_enc_pending(&l.ie), frame_enc_pending(&l.re));
  CHECK(!frame_dec_authenticated(&l.rd) && frame_dec_authenticated(&l.id),
        "the responder awaits the confirmation; the initiator does not", "wrong");
  frame_enc_record(&l.ie, "hi", 2, NULL, 0);
  drain(&l.ie, &s);
  feed(&l.rd, s.p, FRAME_HEADERBYTES + FRAME_CONFIRM_LEN - 1, 1, &r);
  CHECK(!r.failed && r.frames == 0 && !frame_dec_authenticated(&l.rd) && l.rd.cap <= FRAME_CONFIRM_LEN,
        "a partial confirmation authenticates nothing, and the decoder holds at most FRAME_CONFIRM_LEN bytes",
        "cap %zu", l.rd.cap);
  feed(&l.rd, s.p + FRAME_HEADERBYTES + FRAME_CONFIRM_LEN - 1, s.n - (FRAME_HEADERBYTES + FRAME_CONFIRM_LEN - 1), 1, &r);
  CHECK(!r.failed && r.frames == 2 && r.types[0] == FRAME_CONFIRM && r.types[1] == FRAME_DATA &&
        frame_dec_authenticated(&l.rd), "the confirmation authenticates the initiator; data follows",
        "failed %d frames %d", r.failed, r.frames);
  result_free(&r);
  /* A second CONFIRM later is a protocol violation. */
  noise_cipher c = l.ie.tx;
  s.n = 0;
  unsigned char pt[1 + NOISE_HASHBYTES] = { FRAME_CONFIRM };
  raw_frame(&c, pt, sizeof pt, &s);
  feed(&l.rd, s.p, s.n, 0, &r);
  CHECK(r.failed, "a second CONFIRM fails the link", "accepted");
  result_free(&r);
  link_free(&l);

  /* Before the confirmation: anything else, or any other length, fails. */
  link_new(&l, 0);
  s.n = 0;
  c = l.ie.tx;
  noise_cipher_set_nonce(&c, 0);
  unsigned char data[1 + NOISE_HASHBYTES] = { FRAME_DATA, 0, 0, 0, NOISE_HASHBYTES - 4 };
  raw_frame(&c, data, sizeof data, &s);     /* right key, nonce and length; type DATA */
  feed(&l.rd, s.p, s.n, 0, &r);
  CHECK(r.failed && r.frames == 0 && !frame_dec_authenticated(&l.rd),
        "a DATA frame in place of the confirmation fails the link", "accepted");
  result_free(&r);
  link_free(&l);

  link_new(&l, 0);
  unsigned char hdr[4] = { 0, 0, 0, FRAME_CONFIRM_LEN + 1 };
  feed(&l.rd, hdr, 4, 0, &r);
  CHECK(r.failed && l.rd.cap == 0, "before the confirmation any other length fails at the header, nothing allocated",
        "failed %d cap %zu", r.failed, l.rd.cap);
  result_free(&r);
  link_free(&l);

  link_new(&l, 0);
  s.n = 0;
  c = l.ie.tx;
  noise_cipher_set_nonce(&c, 0);
  unsigned char wrong[1 + NOISE_HASHBYTES] = { FRAME_CONFIRM };
  randombytes_buf(wrong + 1, NOISE_HASHBYTES);
  raw_frame(&c, wrong, sizeof wrong, &s);   /* right key, wrong hash */
  feed(&l.rd, s.p, s.n, 0, &r);
  CHECK(r.failed && !frame_dec_authenticated(&l.rd), "a confirmation with the wrong hash fails", "accepted");
  result_free(&r);
  /* The initiator never accepts a CONFIRM. */
  s.n = 0;
  c = l.re.tx;
  raw_frame(&c, wrong, sizeof wrong, &s);
  feed(&l.id, s.p, s.n, 0, &r);
  CHECK(r.failed, "a CONFIRM sent to the initiator fails the link", "accepted");
  result_free(&r);
  free(s.p);
  link_free(&l);
}

/* Well-encrypted frames with bad contents: the decoder checks the plaintext. */
static void test_malformed(void) {
  struct { const char *name; unsigned char pt[16]; size_t n; int ok; } cases[] = {
    { "type 0 fails", { 0 }, 1, 0 },
    { "an unknown type (0x40) fails", { 0x40 }, 1, 0 },
    { "an unknown type (0xff) fails", { 0xff }, 1, 0 },
    { "an empty DATA frame fails", { FRAME_DATA }, 1, 0 },
    { "a DATA record longer than the frame fails", { FRAME_DATA, 0, 0, 0, 5, 'a', 'b' }, 7, 0 },
    { "a DATA frame with a partial record header fails", { FRAME_DATA, 0, 0, 0, 1, 'a', 0, 0 }, 8, 0 },
    { "a TICK with a body fails", { FRAME_TICK, 1 }, 2, 0 },
    { "a CLOSE with a body fails", { FRAME_CLOSE, 1 }, 2, 0 },
    { "a DATA frame with an empty record is read", { FRAME_DATA, 0, 0, 0, 0 }, 5, 1 },
    { "an unnamed control type (0x3f) passes through", { 0x3f, 'x' }, 2, 1 },
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    link l;
    link_new(&l, 0);
    bytes s = {0};
    noise_cipher c = l.re.tx;
    raw_frame(&c, cases[i].pt, cases[i].n, &s);
    result r = {0};
    feed(&l.id, s.p, s.n, 0, &r);
    CHECK(cases[i].ok ? !r.failed && r.frames == 1 : r.failed && r.frames == 0, cases[i].name,
          "failed %d frames %d", r.failed, r.frames);
    result_free(&r);
    free(s.p);
    link_free(&l);
  }
  link l;
  link_new(&l, 0);
  unsigned char hdr[4] = { 0, 0, 0, FRAME_MIN_LEN - 1 };
  result r = {0};
  feed(&l.id, hdr, 4, 0, &r);
  CHECK(r.failed, "a length below FRAME_MIN_LEN fails", "accepted");
  size_t used;
  frame_msg m;
  CHECK(frame_dec_feed(&l.id, hdr, 0, &used, &m) == -1, "a failed decoder stays failed", "recovered");
  result_free(&r);
  link_free(&l);
  frame_msg bad = { FRAME_DATA, (const unsigned char *)"\0\0\0\7ab", 6 };
  size_t off = 0, rl;
  const unsigned char *rec;
  frame_msg tick = { FRAME_TICK, NULL, 0 };
  CHECK(frame_record_next(&bad, &off, &rec, &rl) == -1 && frame_record_next(&tick, &off, &rec, &rl) == -1,
        "frame_record_next refuses a malformed body and non-DATA frames", "accepted");
}

static void test_partial_writes(void) {
  link l;
  link_new(&l, 0);
  bytes s = {0};
  const unsigned char *p;
  size_t n;
  frame_enc_record(&l.re, "alpha", 5, NULL, 0);
  frame_enc_flush(&l.re, &p, &n);
  bytes_add(&s, p, 7);
  frame_enc_consumed(&l.re, 7);                 /* the socket took 7 bytes */
  frame_enc_record(&l.re, "beta", 4, NULL, 0);  /* more is queued meanwhile */
  CHECK(frame_enc_consumed(&l.re, frame_enc_pending(&l.re)) == -1,
        "consuming more than the sealed bytes is refused", "accepted");
  drain(&l.re, &s);
  result r = {0};
  feed(&l.id, s.p, s.n, -1, &r);
  bytes want = {0};
  expect_add(&want, "alpha", 5);
  expect_add(&want, "beta", 4);
  CHECK(!r.failed && r.recs.n == want.n && memcmp(r.recs.p, want.p, want.n) == 0 && frame_enc_pending(&l.re) == 0,
        "partial writes and records queued in between arrive intact and in order", "failed %d", r.failed);
  result_free(&r);
  free(s.p); free(want.p);
  link_free(&l);
}

int main(void) {
  if (noise_init()) { puts("not ok - libsodium does not start"); return 1; }
  randombytes_buf(PSK, sizeof PSK);
  test_round_trip();
  test_batching_and_limits();
  test_big_frame();
  test_control_order();
  test_bit_flips();
  test_replay_reorder_truncate();
  test_close();
  test_nonce_end();
  test_confirmation();
  test_malformed();
  test_partial_writes();
  return ctest_end();
}
