/*
** test_noise.c — the NNpsk0 handshake: the published cacophony vector for
** Noise_NNpsk0_25519_ChaChaPoly_SHA256 byte for byte, our own flow's
** vectors (the ones doc/handshake.md shows, checked there too), and the
** failures: wrong key, every bit flip, truncation, oversize, replay.
** `test_noise --print` prints our flow's vectors instead.
** Links only noise.c, frame.c and libsodium.
*/
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sodium.h>
#include "ctest.h"
#include "noise.h"
#include "frame.h"

#ifndef DOC_HANDSHAKE
#define DOC_HANDSHAKE "doc/handshake.md"
#endif

static size_t unhex(const char *hex, unsigned char *out, size_t cap) {
  size_t n = strlen(hex) / 2;
  if (n > cap) abort();
  for (size_t i = 0; i < n; i++) {
    unsigned v;
    if (sscanf(hex + 2 * i, "%2x", &v) != 1) abort();
    out[i] = (unsigned char)v;
  }
  return n;
}

static char *tohex(const unsigned char *p, size_t n) {
  static char buf[8][4096];
  static int slot;
  char *s = buf[slot++ & 7];
  sodium_bin2hex(s, sizeof buf[0], p, n);
  return s;
}

static int same_hex(const unsigned char *p, size_t n, const char *hex) {
  return strlen(hex) == 2 * n && strcmp(tohex(p, n), hex) == 0;
}

/* ---- the cacophony vector ----
** From vectors/cacophony.txt of github.com/haskell-cryptography/cacophony
** (commit 36c1e5c3a799342b226547ce9fdb3579ab60ccd3), entry
** "Noise_NNpsk0_25519_ChaChaPoly_SHA256". Messages 1-2 are the handshake;
** 3 and 5 go initiator -> responder, 4 and 6 back, as transport messages
** (associated data empty). */
static const char *CACO_PROLOGUE = "4a6f686e2047616c74";
static const char *CACO_PSK = "54686973206973206d7920417573747269616e20706572737065637469766521";
static const char *CACO_INIT_E = "893e28b9dc6ca8d611ab664754b8ceb7bac5117349a4439a6b0569da977c464a";
static const char *CACO_RESP_E = "bbdb4cdbd309f1a1f2e1456967fe288cadd6f712d65dc7b7793d5e63da6b375b";
static const char *CACO_MSG[6][2] = {
  { "4c756477696720766f6e204d69736573",
    "ca35def5ae56cec33dc2036731ab14896bc4c75dbb07a61f879f8e3afa4c794479b962b8aff8485742ac32f905ba45369e2465fb59e138a93d67a0d1266b6a54" },
  { "4d757272617920526f746862617264",
    "95ebc60d2b1fa672c1f46a8aa265ef51bfe38e7ccb39ec5be34069f144808843d6062704d5a9c422a8e834423f8c1feada7e8d0d910a1a2cd030fb584221e3" },
  { "462e20412e20486179656b", "e632c3763d7669067383433197a3baddf146e9e70ad4b4e9e59e0f" },
  { "4361726c204d656e676572", "64c6bee32ea91c8474bb4c21d7a700109ad45af77b29764ba5eb1e" },
  { "4a65616e2d426170746973746520536179",
    "e2fa0bed0603b62d3ccac2ecabbf3fe33f3e86514909b323361626266cb2471cc8" },
  { "457567656e2042f6686d20766f6e2042617765726b",
    "0c01dc9cec1fe4ddd692e8dd32188aa351088dc91183639a53b57aa4692b5ebdef8b8ca111" },
};

static void test_cacophony(void) {
  unsigned char prologue[16], psk[32], ie[32], re[32], pay[NOISE_MAX_PAYLOAD], msg[NOISE_MAX_MSG];
  unsigned char got[NOISE_MAX_PAYLOAD];
  size_t plen = unhex(CACO_PROLOGUE, prologue, sizeof prologue), n, m, glen;
  unhex(CACO_PSK, psk, 32);
  unhex(CACO_INIT_E, ie, 32);
  unhex(CACO_RESP_E, re, 32);
  noise_hs I, R;
  CHECK(noise_hs_init(&I, NOISE_INITIATOR, psk, prologue, plen) == 0 &&
        noise_hs_init(&R, NOISE_RESPONDER, psk, prologue, plen) == 0 &&
        noise_hs_set_ephemeral(&I, ie) == 0 && noise_hs_set_ephemeral(&R, re) == 0,
        "cacophony: both sides start with the vector's prologue, psk and ephemerals", "init failed");

  n = unhex(CACO_MSG[0][0], pay, sizeof pay);
  int w = noise_hs_write(&I, pay, n, msg, sizeof msg, &m);
  CHECK(w == 0 && same_hex(msg, m, CACO_MSG[0][1]), "cacophony: msg1 (-> psk, e) matches byte for byte",
        "got %s", w ? "(failed)" : tohex(msg, m));
  int r = noise_hs_read(&R, msg, m, got, sizeof got, &glen);
  CHECK(r == 0 && glen == n && memcmp(got, pay, n) == 0, "cacophony: the responder reads msg1's payload",
        "read %d", r);

  n = unhex(CACO_MSG[1][0], pay, sizeof pay);
  w = noise_hs_write(&R, pay, n, msg, sizeof msg, &m);
  CHECK(w == 0 && same_hex(msg, m, CACO_MSG[1][1]), "cacophony: msg2 (<- e, ee) matches byte for byte",
        "got %s", w ? "(failed)" : tohex(msg, m));
  r = noise_hs_read(&I, msg, m, got, sizeof got, &glen);
  CHECK(r == 0 && glen == n && memcmp(got, pay, n) == 0, "cacophony: the initiator reads msg2's payload",
        "read %d", r);

  noise_cipher itx, irx, rtx, rrx;
  unsigned char ih[32], rh[32];
  CHECK(noise_hs_split(&I, &itx, &irx, ih) == 0 && noise_hs_split(&R, &rtx, &rrx, rh) == 0 &&
        memcmp(ih, rh, 32) == 0, "cacophony: both split, with the same handshake hash", "split failed");
  for (int i = 2; i < 6; i++) {
    noise_cipher *tx = i % 2 == 0 ? &itx : &rtx, *rx = i % 2 == 0 ? &rrx : &irx;
    unsigned char ct[128];
    char name[96];
    n = unhex(CACO_MSG[i][0], pay, sizeof pay);
    w = noise_cipher_encrypt(tx, NULL, 0, pay, n, ct);
    snprintf(name, sizeof name, "cacophony: transport message %d (%s) matches byte for byte", i + 1,
             i % 2 == 0 ? "initiator -> responder" : "responder -> initiator");
    CHECK(w == 0 && same_hex(ct, n + 16, CACO_MSG[i][1]), name, "got %s", tohex(ct, n + 16));
    r = noise_cipher_decrypt(rx, NULL, 0, ct, n + 16, got);
    snprintf(name, sizeof name, "cacophony: transport message %d decrypts on the other side", i + 1);
    CHECK(r == 0 && memcmp(got, pay, n) == 0, name, "decrypt %d", r);
  }
  noise_cipher_wipe(&itx); noise_cipher_wipe(&irx); noise_cipher_wipe(&rtx); noise_cipher_wipe(&rrx);
}

/* ---- our flow ---- */

static unsigned char PSK[32], PSK2[32], IE[32], RE[32];

static void fixed_keys(void) {
  for (int i = 0; i < 32; i++) {
    PSK[i] = (unsigned char)i;              /* 000102...1f */
    PSK2[i] = (unsigned char)(i ^ 0x80);
    IE[i] = (unsigned char)(0x20 + i);      /* 202122...3f */
    RE[i] = (unsigned char)(0x40 + i);      /* 404142...5f */
  }
}

typedef struct flow {
  unsigned char msg1[NOISE_MAX_MSG], msg2[NOISE_MAX_MSG];
  size_t msg1_len, msg2_len;
  noise_hello i_seen_by_r, r_seen_by_i;
  frame_enc ie, re;    /* initiator's and responder's encoders */
  frame_dec id, rd;
  int ok;
} flow;

/* The full handshake: initiator "alpha@localhost" creation 1, responder
** "beta@localhost" creation 7; fixed ephemerals when `fixed`. */
static int run_flow(flow *f, const unsigned char *ipsk, const unsigned char *rpsk, int fixed) {
  noise_hs I, R;
  unsigned char hello[NOISE_HELLO_MAX], pay[NOISE_MAX_PAYLOAD];
  size_t hl, pl;
  memset(f, 0, sizeof *f);
  const unsigned char *pro = (const unsigned char *)NOISE_PROLOGUE;
  if (noise_hs_init(&I, NOISE_INITIATOR, ipsk, pro, NOISE_PROLOGUE_LEN) ||
      noise_hs_init(&R, NOISE_RESPONDER, rpsk, pro, NOISE_PROLOGUE_LEN)) return -1;
  if (fixed && (noise_hs_set_ephemeral(&I, IE) || noise_hs_set_ephemeral(&R, RE))) return -1;
  int rc = -1;
  if (noise_hello_encode("alpha@localhost", 1, hello, sizeof hello, &hl) ||
      noise_hs_write(&I, hello, hl, f->msg1, sizeof f->msg1, &f->msg1_len)) goto out;
  if (noise_hs_read(&R, f->msg1, f->msg1_len, pay, sizeof pay, &pl) ||
      noise_hello_decode(pay, pl, &f->i_seen_by_r)) { rc = -2; goto out; }
  if (noise_hello_encode("beta@localhost", 7, hello, sizeof hello, &hl) ||
      noise_hs_write(&R, hello, hl, f->msg2, sizeof f->msg2, &f->msg2_len)) goto out;
  if (noise_hs_read(&I, f->msg2, f->msg2_len, pay, sizeof pay, &pl) ||
      noise_hello_decode(pay, pl, &f->r_seen_by_i)) { rc = -3; goto out; }
  if (frame_start(&I, 0, &f->ie, &f->id) || frame_start(&R, 0, &f->re, &f->rd)) goto out;
  f->ok = 1;
  rc = 0;
out:
  noise_hs_wipe(&I);
  noise_hs_wipe(&R);
  return rc;
}

static void flow_free(flow *f) {
  if (!f->ok) return;
  frame_enc_free(&f->ie); frame_enc_free(&f->re);
  frame_dec_free(&f->id); frame_dec_free(&f->rd);
}

/* Feeds all of `p` to d; returns the number of frames, -1 on failure. The
** frames' types land in types[] and DATA records are appended to recs. */
static int feed_all(frame_dec *d, const unsigned char *p, size_t n, int *types, size_t max_types) {
  size_t count = 0, used;
  frame_msg m;
  for (;;) {
    int r = frame_dec_feed(d, p, n, &used, &m);
    if (r < 0) return -1;
    if (r == 0) return (int)count;
    if (count < max_types) types[count] = m.type;
    count++;
    p += used;
    n -= used;
  }
}

/* The bytes our flow sends, for the doc: msg1, msg2, the initiator's first
** flush (CONFIRM, then a DATA frame with records "ping" and "pong"), the
** responder's first flush (TICK), then each side's CLOSE. */
typedef struct flow_bytes {
  unsigned char i1[256], r1[64], iclose[64], rclose[64];
  size_t i1_len, r1_len, iclose_len, rclose_len;
} flow_bytes;

static int flow_traffic(flow *f, flow_bytes *b) {
  const unsigned char *out;
  size_t n;
  if (frame_enc_record(&f->ie, "ping", 4, NULL, 0) || frame_enc_record(&f->ie, "po", 2, "ng", 2) ||
      frame_enc_flush(&f->ie, &out, &n) || n > sizeof b->i1) return -1;
  memcpy(b->i1, out, n); b->i1_len = n; frame_enc_consumed(&f->ie, n);
  if (frame_enc_control(&f->re, FRAME_TICK, NULL, 0) || frame_enc_flush(&f->re, &out, &n) ||
      n > sizeof b->r1) return -1;
  memcpy(b->r1, out, n); b->r1_len = n; frame_enc_consumed(&f->re, n);
  if (frame_enc_control(&f->ie, FRAME_CLOSE, NULL, 0) || frame_enc_flush(&f->ie, &out, &n)) return -1;
  memcpy(b->iclose, out, n); b->iclose_len = n; frame_enc_consumed(&f->ie, n);
  if (frame_enc_control(&f->re, FRAME_CLOSE, NULL, 0) || frame_enc_flush(&f->re, &out, &n)) return -1;
  memcpy(b->rclose, out, n); b->rclose_len = n; frame_enc_consumed(&f->re, n);
  return 0;
}

/* Our flow's vectors (doc/handshake.md, "Test vectors"). */
static const char *V_MSG1 =
  "358072d6365880d1aeea329adf9121383851ed21a28e3b75e965d0d2cd1662543e3d90b11b016b0979b65b083dc84289"
  "a6dabb7f27f70cd0079f6b6295cb38b0d1b4aea7";
static const char *V_MSG2 =
  "79a631eede1bf9c98f12032cdeadd0e7a079398fc786b88cc846ec89af85a51a983d0f56be4d07b9dec3f900871c93ab"
  "a6daa6b1e34ea7944ffd15998e718831296759";
static const char *V_I1 =
  "00000031aead938c6a7cb3146af11edd66909afccf5f6aad6fd7a21670822adaf72840cad12e977dfa08978740151877"
  "0968a7bba600000021873c7af05b52368dee35a94d709ca538d80863c157e646cfef94cdcc724a2f1298";
static const char *V_R1 = "0000001186f2c780afd815f5c579ed0ab04db87cce";
static const char *V_ICLOSE = "000000110d878028adc96ed5c3ca3587a6c1410542";
static const char *V_RCLOSE = "00000011d18195c3356de6733922bac24f040dc956";

static int doc_has(const char *doc, const char *hex) { return doc && strstr(doc, hex) != NULL; }

static char *read_doc(void) {
  FILE *fp = fopen(DOC_HANDSHAKE, "rb");
  if (!fp) return NULL;
  static char buf[1 << 17];
  size_t n = fread(buf, 1, sizeof buf - 1, fp);
  fclose(fp);
  buf[n] = '\0';
  return buf;
}

static void test_our_vectors(void) {
  flow f;
  flow_bytes b;
  int rc = run_flow(&f, PSK, PSK, 1);
  CHECK(rc == 0, "our flow: the handshake with fixed keys completes", "rc %d", rc);
  if (rc) return;
  CHECK(strcmp(f.i_seen_by_r.name, "alpha@localhost") == 0 && f.i_seen_by_r.creation == 1 &&
        strcmp(f.r_seen_by_i.name, "beta@localhost") == 0 && f.r_seen_by_i.creation == 7,
        "our flow: each side learns the other's name and creation", "got %s/%u %s/%u",
        f.i_seen_by_r.name, f.i_seen_by_r.creation, f.r_seen_by_i.name, f.r_seen_by_i.creation);
  CHECK(flow_traffic(&f, &b) == 0, "our flow: confirmation, data, tick and close frames are encoded",
        "encoder failed");
  const char *doc = read_doc();
  struct { const char *name; const unsigned char *p; size_t n; const char *want; } v[] = {
    { "msg1", f.msg1, f.msg1_len, V_MSG1 },
    { "msg2", f.msg2, f.msg2_len, V_MSG2 },
    { "initiator's first flush (CONFIRM + DATA)", b.i1, b.i1_len, V_I1 },
    { "responder's first flush (TICK)", b.r1, b.r1_len, V_R1 },
    { "initiator's CLOSE", b.iclose, b.iclose_len, V_ICLOSE },
    { "responder's CLOSE", b.rclose, b.rclose_len, V_RCLOSE },
  };
  for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
    char name[128];
    snprintf(name, sizeof name, "our vectors: %s is exactly the documented bytes", v[i].name);
    CHECK(same_hex(v[i].p, v[i].n, v[i].want), name, "got %s", tohex(v[i].p, v[i].n));
    snprintf(name, sizeof name, "our vectors: doc/handshake.md shows %s", v[i].name);
    CHECK(doc_has(doc, v[i].want), name, "%s", doc ? "hex not found in the doc" : "cannot read " DOC_HANDSHAKE);
  }
  /* The bytes decode on the other side, in order. */
  int types[8];
  int n = feed_all(&f.rd, b.i1, b.i1_len, types, 8);
  CHECK(n == 2 && types[0] == FRAME_CONFIRM && types[1] == FRAME_DATA && frame_dec_authenticated(&f.rd),
        "our vectors: the responder reads CONFIRM then DATA and counts the peer authenticated", "n %d", n);
  n = feed_all(&f.id, b.r1, b.r1_len, types, 8);
  CHECK(n == 1 && types[0] == FRAME_TICK, "our vectors: the initiator reads the TICK", "n %d", n);
  CHECK(feed_all(&f.rd, b.iclose, b.iclose_len, types, 8) == 1 && types[0] == FRAME_CLOSE &&
        frame_dec_eof(&f.rd) == 0 && feed_all(&f.id, b.rclose, b.rclose_len, types, 8) == 1 &&
        frame_dec_eof(&f.id) == 0, "our vectors: both CLOSE frames end the link in order", "close failed");
  flow_free(&f);
}

static void print_vectors(void) {
  flow f;
  flow_bytes b;
  if (run_flow(&f, PSK, PSK, 1) || flow_traffic(&f, &b)) { puts("flow failed"); return; }
  printf("msg1   %s\nmsg2   %s\ni1     %s\nr1     %s\niclose %s\nrclose %s\n",
         tohex(f.msg1, f.msg1_len), tohex(f.msg2, f.msg2_len), tohex(b.i1, b.i1_len),
         tohex(b.r1, b.r1_len), tohex(b.iclose, b.iclose_len), tohex(b.rclose, b.rclose_len));
  flow_free(&f);
}

/* ---- failures ---- */

static void test_wrong_psk(void) {
  flow f;
  int rc = run_flow(&f, PSK, PSK2, 0);
  CHECK(rc == -2, "a responder with another key cannot read msg1", "rc %d", rc);
  flow_free(&f);
  rc = run_flow(&f, PSK2, PSK, 0);
  CHECK(rc == -2, "an initiator with another key is refused at msg1", "rc %d", rc);
  flow_free(&f);
  rc = run_flow(&f, PSK, PSK, 0);
  CHECK(rc == 0, "with the same key and random ephemerals the handshake completes", "rc %d", rc);
  flow_free(&f);
}

/* A responder that has read msg1 (and so may answer it). */
static int responder_reads(const unsigned char *msg, size_t len, noise_hs *R) {
  unsigned char pay[NOISE_MAX_PAYLOAD];
  size_t pl;
  noise_hs_init(R, NOISE_RESPONDER, PSK, (const unsigned char *)NOISE_PROLOGUE, NOISE_PROLOGUE_LEN);
  return noise_hs_read(R, msg, len, pay, sizeof pay, &pl);
}

static void test_bit_flips(void) {
  noise_hs I, R, I0;
  unsigned char hello[NOISE_HELLO_MAX], msg1[NOISE_MAX_MSG], msg2[NOISE_MAX_MSG], pay[NOISE_MAX_PAYLOAD];
  size_t hl, m1, m2, pl;
  const unsigned char *pro = (const unsigned char *)NOISE_PROLOGUE;
  noise_hs_init(&I, NOISE_INITIATOR, PSK, pro, NOISE_PROLOGUE_LEN);
  noise_hello_encode("alpha@localhost", 1, hello, sizeof hello, &hl);
  noise_hs_write(&I, hello, hl, msg1, sizeof msg1, &m1);
  int accepted = 0;
  for (size_t bit = 0; bit < m1 * 8; bit++) {
    msg1[bit / 8] ^= (unsigned char)(1u << (bit % 8));
    if (responder_reads(msg1, m1, &R) == 0) accepted++;
    noise_hs_wipe(&R);
    msg1[bit / 8] ^= (unsigned char)(1u << (bit % 8));
  }
  CHECK(accepted == 0, "every single-bit flip of msg1 is refused by the responder",
        "%d of %zu accepted", accepted, m1 * 8);
  CHECK(responder_reads(msg1, m1, &R) == 0, "the unflipped msg1 is accepted", "refused");
  noise_hello_encode("beta@localhost", 7, hello, sizeof hello, &hl);
  noise_hs_write(&R, hello, hl, msg2, sizeof msg2, &m2);
  I0 = I;
  accepted = 0;
  int unchanged = 1;
  for (size_t bit = 0; bit < m2 * 8; bit++) {
    msg2[bit / 8] ^= (unsigned char)(1u << (bit % 8));
    if (noise_hs_read(&I, msg2, m2, pay, sizeof pay, &pl) == 0) { accepted++; I = I0; }
    if (memcmp(&I, &I0, sizeof I) != 0) unchanged = 0;
    msg2[bit / 8] ^= (unsigned char)(1u << (bit % 8));
  }
  CHECK(accepted == 0, "every single-bit flip of msg2 is refused by the initiator",
        "%d of %zu accepted", accepted, m2 * 8);
  CHECK(unchanged, "a refused msg2 leaves the initiator's state unchanged", "state changed");
  CHECK(noise_hs_read(&I, msg2, m2, pay, sizeof pay, &pl) == 0,
        "after all the refusals the real msg2 is still accepted", "refused");
  noise_hs_wipe(&I); noise_hs_wipe(&I0); noise_hs_wipe(&R);
}

static void test_lengths(void) {
  noise_hs I, R, R0;
  unsigned char hello[NOISE_HELLO_MAX], msg1[NOISE_MAX_MSG + 64], pay[NOISE_MAX_PAYLOAD], big[NOISE_MAX_PAYLOAD + 1];
  size_t hl, m1, pl;
  const unsigned char *pro = (const unsigned char *)NOISE_PROLOGUE;
  noise_hs_init(&I, NOISE_INITIATOR, PSK, pro, NOISE_PROLOGUE_LEN);
  noise_hello_encode("alpha@localhost", 1, hello, sizeof hello, &hl);
  noise_hs_write(&I, hello, hl, msg1, sizeof msg1, &m1);
  noise_hs_init(&R, NOISE_RESPONDER, PSK, pro, NOISE_PROLOGUE_LEN);
  R0 = R;
  int refused = 1;
  for (size_t n = 0; n < m1; n++) {
    if (noise_hs_read(&R, msg1, n, pay, sizeof pay, &pl) == 0) refused = 0;
    if (memcmp(&R, &R0, sizeof R) != 0) refused = 0;
  }
  CHECK(refused, "every truncation of msg1 is refused and leaves the responder unchanged", "accepted one");
  msg1[m1] = 0;
  CHECK(noise_hs_read(&R, msg1, m1 + 1, pay, sizeof pay, &pl) == -1,
        "msg1 with one byte appended is refused", "accepted");
  memset(msg1 + m1, 0, sizeof msg1 - m1);
  CHECK(noise_hs_read(&R, msg1, NOISE_MAX_MSG + 1, pay, sizeof pay, &pl) == -1,
        "a message over NOISE_MAX_MSG is refused", "accepted");
  CHECK(noise_hs_read(&R, msg1, m1, pay, m1 - NOISE_MIN_MSG - 1, &pl) == -1,
        "a payload buffer that is too small is refused", "accepted");
  CHECK(noise_hs_read(&R, msg1, m1, pay, sizeof pay, &pl) == 0 && pl == hl,
        "the intact msg1 is accepted afterwards", "refused");
  noise_hs_init(&I, NOISE_INITIATOR, PSK, pro, NOISE_PROLOGUE_LEN);
  memset(big, 'x', sizeof big);
  unsigned char out[NOISE_MAX_MSG + 64];
  size_t ol;
  CHECK(noise_hs_write(&I, big, NOISE_MAX_PAYLOAD + 1, out, sizeof out, &ol) == -1,
        "writing a payload over NOISE_MAX_PAYLOAD fails", "wrote");
  CHECK(noise_hs_write(&I, big, NOISE_MAX_PAYLOAD, out, sizeof out, &ol) == 0 && ol == NOISE_MAX_MSG,
        "a payload of exactly NOISE_MAX_PAYLOAD makes a NOISE_MAX_MSG message", "ol %zu", ol);
  unsigned char h[2];
  size_t len;
  h[0] = 0; h[1] = 47;
  int a = noise_msg_len(h, &len);
  h[1] = 48;
  int b = noise_msg_len(h, &len);
  h[0] = NOISE_MAX_MSG >> 8; h[1] = NOISE_MAX_MSG & 0xff;
  int c = noise_msg_len(h, &len);
  h[1]++;
  int d = noise_msg_len(h, &len);
  h[0] = 0xff; h[1] = 0xff;
  int e = noise_msg_len(h, &len);
  CHECK(a == -1 && b == 0 && c == 0 && d == -1 && e == -1,
        "noise_msg_len takes lengths in [NOISE_MIN_MSG, NOISE_MAX_MSG] only", "%d %d %d %d %d", a, b, c, d, e);
  noise_hs_wipe(&I); noise_hs_wipe(&R); noise_hs_wipe(&R0);
}

/* A recorded msg1 replayed to a fresh responder gets a msg2, but the replayer
** cannot produce the confirmation: neither the recorded one nor a guess. */
static void test_replay(void) {
  flow f;
  flow_bytes b;
  run_flow(&f, PSK, PSK, 0);
  flow_traffic(&f, &b);
  noise_hs R2;
  unsigned char hello[NOISE_HELLO_MAX], msg2[NOISE_MAX_MSG];
  size_t hl, m2;
  int r = responder_reads(f.msg1, f.msg1_len, &R2);
  noise_hello_encode("beta@localhost", 7, hello, sizeof hello, &hl);
  int w = noise_hs_write(&R2, hello, hl, msg2, sizeof msg2, &m2);
  CHECK(r == 0 && w == 0, "a replayed msg1 is read by a fresh responder, which answers with a msg2",
        "read %d write %d", r, w);
  CHECK(m2 != f.msg2_len || memcmp(msg2, f.msg2, m2) != 0,
        "the fresh responder's msg2 differs from the recorded one (new ephemeral)", "same msg2");
  frame_enc e2;
  frame_dec d2;
  noise_hs R3 = R2;
  CHECK(frame_start(&R2, 0, &e2, &d2) == 0 && !frame_dec_authenticated(&d2),
        "the replay's responder awaits a confirmation", "start failed");
  int types[4];
  int n = feed_all(&d2, b.i1, b.i1_len, types, 4);
  CHECK(n == -1 && !frame_dec_authenticated(&d2),
        "the recorded confirmation does not decrypt for the replay's responder", "n %d", n);
  frame_enc_free(&e2);
  frame_dec_free(&d2);
  /* A replayer who sends a made-up confirmation fares no better. */
  CHECK(frame_start(&R3, 0, &e2, &d2) == 0, "a second replay's responder starts", "start failed");
  unsigned char fake[FRAME_HEADERBYTES + FRAME_CONFIRM_LEN];
  randombytes_buf(fake, sizeof fake);
  fake[0] = 0; fake[1] = 0; fake[2] = 0; fake[3] = FRAME_CONFIRM_LEN;
  n = feed_all(&d2, fake, sizeof fake, types, 4);
  CHECK(n == -1 && !frame_dec_authenticated(&d2), "a made-up confirmation fails too", "n %d", n);
  frame_enc_free(&e2);
  frame_dec_free(&d2);
  flow_free(&f);
}

/* An initiator (holding the key) that sends a low-order point as its
** ephemeral: the responder's ee DH is all zeros, and it refuses to answer. */
static void test_low_order(void) {
  static const unsigned char points[2][32] = { { 0 }, { 1 } };   /* u = 0 and u = 1 */
  for (int i = 0; i < 2; i++) {
    noise_hs I, R;
    unsigned char msg[NOISE_MAX_MSG], pay[NOISE_MAX_PAYLOAD];
    size_t m, pl;
    const unsigned char *pro = (const unsigned char *)NOISE_PROLOGUE;
    noise_hs_init(&I, NOISE_INITIATOR, PSK, pro, NOISE_PROLOGUE_LEN);
    noise_hs_set_ephemeral(&I, IE);
    memcpy(I.e_pk, points[i], 32);          /* test-only: a forged public key */
    int w = noise_hs_write(&I, NULL, 0, msg, sizeof msg, &m);
    noise_hs_init(&R, NOISE_RESPONDER, PSK, pro, NOISE_PROLOGUE_LEN);
    int r = noise_hs_read(&R, msg, m, pay, sizeof pay, &pl);
    noise_hs R0 = R;
    int w2 = noise_hs_write(&R, NULL, 0, msg, sizeof msg, &m);
    CHECK(w == 0 && r == 0 && w2 == -1 && memcmp(&R, &R0, sizeof R) == 0,
          i == 0 ? "a low-order ephemeral (u = 0) makes the responder refuse: all-zero DH"
                 : "a low-order ephemeral (u = 1) makes the responder refuse: all-zero DH",
          "write %d read %d answer %d", w, r, w2);
    noise_hs_wipe(&I); noise_hs_wipe(&R); noise_hs_wipe(&R0);
  }
}

static void test_api(void) {
  noise_hs I, R;
  noise_cipher tx, rx;
  unsigned char msg[NOISE_MAX_MSG], pay[NOISE_MAX_PAYLOAD];
  size_t m, pl;
  const unsigned char *pro = (const unsigned char *)NOISE_PROLOGUE;
  CHECK(noise_init() == 0 && noise_init() == 0, "noise_init can be called twice", "failed");
  CHECK(noise_hs_init(&I, 3, PSK, pro, NOISE_PROLOGUE_LEN) == -1, "an unknown role is refused", "accepted");
  noise_hs_init(&I, NOISE_INITIATOR, PSK, pro, NOISE_PROLOGUE_LEN);
  noise_hs_init(&R, NOISE_RESPONDER, PSK, pro, NOISE_PROLOGUE_LEN);
  CHECK(noise_hs_read(&I, msg, 64, pay, sizeof pay, &pl) == -1 && noise_hs_write(&R, NULL, 0, msg, sizeof msg, &m) == -1,
        "neither side may act out of turn", "accepted");
  CHECK(noise_hs_split(&I, &tx, &rx, NULL) == -1, "splitting before the handshake is done fails", "split");
  CHECK(noise_hs_write(&I, NULL, 0, msg, NOISE_MIN_MSG - 1, &m) == -1, "a too small output buffer is refused", "wrote");
  CHECK(noise_hs_write(&I, NULL, 0, msg, sizeof msg, &m) == 0 && m == NOISE_MIN_MSG,
        "an empty payload makes a 48-byte msg1", "m %zu", m);
  CHECK(noise_hs_set_ephemeral(&I, IE) == -1, "an ephemeral cannot be injected after it was sent", "accepted");
  CHECK(noise_hs_write(&I, NULL, 0, msg, sizeof msg, &m) == -1, "msg1 cannot be written twice", "wrote");
  CHECK(noise_hs_read(&R, msg, m, pay, sizeof pay, &pl) == 0 && pl == 0 &&
        noise_hs_write(&R, NULL, 0, msg, sizeof msg, &m) == 0 &&
        noise_hs_read(&I, msg, m, pay, sizeof pay, &pl) == 0,
        "a handshake with empty payloads completes", "failed");
  noise_hs I2 = I;
  CHECK(noise_hs_split(&I, &tx, &rx, NULL) == 0 && sodium_is_zero((unsigned char *)&I, sizeof I),
        "split wipes the whole handshake state, ephemeral keys included", "not wiped");
  noise_hs_wipe(&I2);
  CHECK(sodium_is_zero((unsigned char *)&I2, sizeof I2), "noise_hs_wipe zeroes the state", "not zero");
  noise_cipher_wipe(&tx);
  CHECK(sodium_is_zero((unsigned char *)&tx, sizeof tx) &&
        noise_cipher_encrypt(&tx, NULL, 0, pay, 1, msg) == -1,
        "a wiped cipher state is zero and refuses to encrypt", "encrypted");
  noise_cipher_wipe(&rx);
  noise_hs_wipe(&R);
}

static void test_nonce_end(void) {
  flow f;
  run_flow(&f, PSK, PSK, 0);
  noise_cipher tx = f.ie.tx, rx = f.rd.rx;
  unsigned char ct[64], pt[64];
  noise_cipher_set_nonce(&tx, UINT64_MAX - 1);
  noise_cipher_set_nonce(&rx, UINT64_MAX - 1);
  int a = noise_cipher_encrypt(&tx, NULL, 0, (const unsigned char *)"x", 1, ct);
  int b = noise_cipher_decrypt(&rx, NULL, 0, ct, 17, pt);
  CHECK(a == 0 && b == 0, "nonce 2^64-2 is the last one used", "encrypt %d decrypt %d", a, b);
  a = noise_cipher_encrypt(&tx, NULL, 0, (const unsigned char *)"x", 1, ct);
  b = noise_cipher_decrypt(&rx, NULL, 0, ct, 17, pt);
  CHECK(a == -1 && b == -1, "at nonce 2^64-1 both encrypt and decrypt refuse", "encrypt %d decrypt %d", a, b);
  noise_cipher_wipe(&tx); noise_cipher_wipe(&rx);
  flow_free(&f);
}

static void test_hello(void) {
  unsigned char p[NOISE_HELLO_MAX + 8];
  size_t n;
  noise_hello h, h0;
  char name[NOISE_NAME_MAX + 2];
  memset(name, 'n', sizeof name);
  name[NOISE_NAME_MAX] = '\0';
  CHECK(noise_hello_encode(name, 0xdeadbeef, p, sizeof p, &n) == 0 && n == NOISE_HELLO_MAX &&
        noise_hello_decode(p, n, &h) == 0 && strcmp(h.name, name) == 0 && h.creation == 0xdeadbeef,
        "a hello with a 255-byte name round-trips", "failed");
  name[NOISE_NAME_MAX] = 'n'; name[NOISE_NAME_MAX + 1] = '\0';
  CHECK(noise_hello_encode(name, 1, p, sizeof p, &n) == -1, "a 256-byte name is refused", "encoded");
  CHECK(noise_hello_encode("", 1, p, sizeof p, &n) == -1 && noise_hello_encode("a b", 1, p, sizeof p, &n) == -1 &&
        noise_hello_encode("a\n", 1, p, sizeof p, &n) == -1, "empty, spaced and control-character names are refused",
        "encoded");
  noise_hello_encode("node@h", 3, p, sizeof p, &n);
  memset(&h0, 0x5a, sizeof h0);
  h = h0;
  int bad = 0;
  for (size_t k = 0; k < n; k++) if (noise_hello_decode(p, k, &h) == 0) bad++;
  p[n] = 0;
  if (noise_hello_decode(p, n + 1, &h) == 0) bad++;
  p[0] = 0;
  if (noise_hello_decode(p, n, &h) == 0) bad++;
  CHECK(bad == 0 && memcmp(&h, &h0, sizeof h) == 0,
        "truncated, padded or zero-length hellos are refused and change nothing", "%d accepted", bad);
  CHECK(noise_hello_encode("node@h", 3, p, 10, &n) == -1, "hello_encode checks the capacity", "encoded");
}

int main(int argc, char **argv) {
  if (noise_init()) { puts("not ok - libsodium does not start"); return 1; }
  fixed_keys();
  if (argc > 1 && strcmp(argv[1], "--print") == 0) { print_vectors(); return 0; }
  test_cacophony();
  test_our_vectors();
  test_wrong_psk();
  test_bit_flips();
  test_lengths();
  test_replay();
  test_low_order();
  test_api();
  test_nonce_end();
  test_hello();
  return ctest_end();
}
