/*
** noise.c — Noise_NNpsk0_25519_ChaChaPoly_SHA256 (Noise revision 34) on
** libsodium: SymmetricState, CipherState and the two-message handshake,
** and the erlangen hello payload. Checked against the cacophony vectors
** (spec/c/test_noise.c).
*/
#include <string.h>
#include "crypto.h"
#include "noise.h"

#define NONCE_MAX UINT64_MAX   /* reserved: the counter never uses it */

int noise_init(void) {
  return sodium_init() < 0 ? -1 : 0;
}

/* ---- CipherState ---- */

/* ChaChaPoly's nonce: 4 zero bytes, then n as 64-bit little-endian. */
static void nonce_bytes(uint64_t n, unsigned char out[12]) {
  memset(out, 0, 4);
  for (int i = 0; i < 8; i++) out[4 + i] = (unsigned char)(n >> (8 * i));
}

int noise_cipher_encrypt(noise_cipher *c, const unsigned char *ad, size_t ad_len,
                         const unsigned char *m, size_t m_len, unsigned char *out) {
  unsigned char nonce[12];
  if (!c->has_key || c->n == NONCE_MAX) return -1;
  nonce_bytes(c->n, nonce);
  crypto_aead_chacha20poly1305_ietf_encrypt(out, NULL, m, m_len, ad, ad_len, NULL, nonce, c->k);
  c->n++;
  return 0;
}

int noise_cipher_decrypt(noise_cipher *c, const unsigned char *ad, size_t ad_len,
                         const unsigned char *ct, size_t ct_len, unsigned char *out) {
  unsigned char nonce[12];
  if (!c->has_key || c->n == NONCE_MAX || ct_len < NOISE_TAGBYTES) return -1;
  nonce_bytes(c->n, nonce);
  if (crypto_aead_chacha20poly1305_ietf_decrypt(out, NULL, NULL, ct, ct_len, ad, ad_len,
                                                nonce, c->k) != 0)
    return -1;
  c->n++;
  return 0;
}

void noise_cipher_set_nonce(noise_cipher *c, uint64_t n) { c->n = n; }

void noise_cipher_wipe(noise_cipher *c) { sodium_memzero(c, sizeof *c); }

static void cipher_init_key(noise_cipher *c, const unsigned char k[NOISE_KEYBYTES]) {
  memcpy(c->k, k, NOISE_KEYBYTES);
  c->n = 0;
  c->has_key = 1;
}

/* ---- SymmetricState: HASH, HMAC, HKDF ---- */

static void hmac(const unsigned char *key, size_t key_len, const unsigned char *a, size_t a_len,
                 const unsigned char *b, size_t b_len, unsigned char out[NOISE_HASHBYTES]) {
  crypto_auth_hmacsha256_state st;
  crypto_auth_hmacsha256_init(&st, key, key_len);
  crypto_auth_hmacsha256_update(&st, a, a_len);
  if (b_len) crypto_auth_hmacsha256_update(&st, b, b_len);
  crypto_auth_hmacsha256_final(&st, out);
  sodium_memzero(&st, sizeof st);
}

/* HKDF(ck, ikm) with three outputs (out3 may be NULL for two). */
static void hkdf(const unsigned char ck[NOISE_HASHBYTES], const unsigned char *ikm, size_t ikm_len,
                 unsigned char out1[NOISE_HASHBYTES], unsigned char out2[NOISE_HASHBYTES],
                 unsigned char *out3) {
  unsigned char temp[NOISE_HASHBYTES];
  const unsigned char one = 1, two = 2, three = 3;
  hmac(ck, NOISE_HASHBYTES, ikm, ikm_len, NULL, 0, temp);
  hmac(temp, sizeof temp, &one, 1, NULL, 0, out1);
  hmac(temp, sizeof temp, out1, NOISE_HASHBYTES, &two, 1, out2);
  if (out3) hmac(temp, sizeof temp, out2, NOISE_HASHBYTES, &three, 1, out3);
  sodium_memzero(temp, sizeof temp);
}

static void mix_hash(noise_hs *hs, const unsigned char *data, size_t len) {
  crypto_hash_sha256_state st;
  crypto_hash_sha256_init(&st);
  crypto_hash_sha256_update(&st, hs->h, NOISE_HASHBYTES);
  crypto_hash_sha256_update(&st, data, len);
  crypto_hash_sha256_final(&st, hs->h);
}

static void mix_key(noise_hs *hs, const unsigned char *ikm, size_t len) {
  unsigned char k[NOISE_HASHBYTES];
  hkdf(hs->ck, ikm, len, hs->ck, k, NULL);
  cipher_init_key(&hs->c, k);
  sodium_memzero(k, sizeof k);
}

static void mix_key_and_hash(noise_hs *hs, const unsigned char *ikm, size_t len) {
  unsigned char th[NOISE_HASHBYTES], k[NOISE_HASHBYTES];
  hkdf(hs->ck, ikm, len, hs->ck, th, k);
  mix_hash(hs, th, sizeof th);
  cipher_init_key(&hs->c, k);
  sodium_memzero(th, sizeof th);
  sodium_memzero(k, sizeof k);
}

/* out = Encrypt(payload) with h as associated data; then MixHash(out). */
static int encrypt_and_hash(noise_hs *hs, const unsigned char *p, size_t len, unsigned char *out) {
  if (noise_cipher_encrypt(&hs->c, hs->h, NOISE_HASHBYTES, p, len, out)) return -1;
  mix_hash(hs, out, len + NOISE_TAGBYTES);
  return 0;
}

static int decrypt_and_hash(noise_hs *hs, const unsigned char *ct, size_t len, unsigned char *out) {
  if (noise_cipher_decrypt(&hs->c, hs->h, NOISE_HASHBYTES, ct, len, out)) return -1;
  mix_hash(hs, ct, len);
  return 0;
}

/* X25519; an all-zero result (a low-order peer key) is a failure. */
static int dh(const unsigned char sk[32], const unsigned char pk[32], unsigned char out[32]) {
  if (crypto_scalarmult_curve25519(out, sk, pk) != 0 || sodium_is_zero(out, 32)) {
    sodium_memzero(out, 32);
    return -1;
  }
  return 0;
}

/* ---- HandshakeState ---- */

int noise_hs_init(noise_hs *hs, int role, const unsigned char psk[NOISE_PSKBYTES],
                  const unsigned char *prologue, size_t prologue_len) {
  if ((role != NOISE_INITIATOR && role != NOISE_RESPONDER) || prologue_len > 256 ||
      (prologue_len && !prologue) || noise_init())
    return -1;
  memset(hs, 0, sizeof *hs);
  /* The name is longer than HASHLEN, so h = HASH(name). */
  crypto_hash_sha256(hs->h, (const unsigned char *)NOISE_PROTOCOL_NAME,
                     sizeof NOISE_PROTOCOL_NAME - 1);
  memcpy(hs->ck, hs->h, NOISE_HASHBYTES);
  mix_hash(hs, prologue, prologue_len);
  memcpy(hs->psk, psk, NOISE_PSKBYTES);
  hs->role = role;
  return 0;
}

int noise_hs_set_ephemeral(noise_hs *hs, const unsigned char sk[32]) {
  int sent = hs->role == NOISE_INITIATOR ? hs->step > 0 : hs->step > 1;
  if (!hs->role || sent) return -1;
  memcpy(hs->e_sk, sk, 32);
  if (crypto_scalarmult_curve25519_base(hs->e_pk, hs->e_sk) != 0) {
    sodium_memzero(hs->e_sk, 32);
    return -1;
  }
  hs->e_fixed = 1;
  return 0;
}

/* This side's turn to write: initiator at step 0, responder at step 1. */
static int my_turn(const noise_hs *hs, int writing) {
  int want = (hs->role == NOISE_INITIATOR) == writing ? 0 : 1;
  return hs->role && hs->step == want;
}

int noise_hs_write(noise_hs *hs, const unsigned char *payload, size_t payload_len,
                   unsigned char *out, size_t cap, size_t *out_len) {
  if (!my_turn(hs, 1) || payload_len > NOISE_MAX_PAYLOAD || cap < NOISE_MIN_MSG + payload_len ||
      (payload_len && !payload))
    return -1;
  noise_hs t = *hs;   /* work on a copy: commit only on success */
  int rc = -1;
  if (!t.e_fixed) {
    randombytes_buf(t.e_sk, sizeof t.e_sk);
    if (crypto_scalarmult_curve25519_base(t.e_pk, t.e_sk) != 0) goto done;
  }
  if (t.role == NOISE_INITIATOR) mix_key_and_hash(&t, t.psk, NOISE_PSKBYTES);   /* psk */
  /* e */
  memcpy(out, t.e_pk, NOISE_DHBYTES);
  mix_hash(&t, t.e_pk, NOISE_DHBYTES);
  mix_key(&t, t.e_pk, NOISE_DHBYTES);          /* psk handshakes mix e into the key */
  if (t.role == NOISE_RESPONDER) {            /* ee */
    unsigned char ss[32];
    if (dh(t.e_sk, t.re, ss)) goto done;
    mix_key(&t, ss, sizeof ss);
    sodium_memzero(ss, sizeof ss);
  }
  if (encrypt_and_hash(&t, payload, payload_len, out + NOISE_DHBYTES)) goto done;
  *out_len = NOISE_MIN_MSG + payload_len;
  t.step++;
  *hs = t;
  rc = 0;
done:
  sodium_memzero(&t, sizeof t);
  return rc;
}

int noise_hs_read(noise_hs *hs, const unsigned char *msg, size_t msg_len,
                  unsigned char *payload, size_t cap, size_t *payload_len) {
  if (!my_turn(hs, 0) || msg_len < NOISE_MIN_MSG || msg_len > NOISE_MAX_MSG ||
      cap < msg_len - NOISE_MIN_MSG)
    return -1;
  noise_hs t = *hs;
  int rc = -1;
  if (t.role == NOISE_RESPONDER) mix_key_and_hash(&t, t.psk, NOISE_PSKBYTES);   /* psk */
  /* e */
  memcpy(t.re, msg, NOISE_DHBYTES);
  mix_hash(&t, t.re, NOISE_DHBYTES);
  mix_key(&t, t.re, NOISE_DHBYTES);
  if (t.role == NOISE_INITIATOR) {            /* ee */
    unsigned char ss[32];
    if (dh(t.e_sk, t.re, ss)) goto done;
    mix_key(&t, ss, sizeof ss);
    sodium_memzero(ss, sizeof ss);
  }
  if (decrypt_and_hash(&t, msg + NOISE_DHBYTES, msg_len - NOISE_DHBYTES, payload)) goto done;
  *payload_len = msg_len - NOISE_MIN_MSG;
  t.step++;
  *hs = t;
  rc = 0;
done:
  sodium_memzero(&t, sizeof t);
  return rc;
}

int noise_hs_split(noise_hs *hs, noise_cipher *tx, noise_cipher *rx,
                   unsigned char hash[NOISE_HASHBYTES]) {
  unsigned char k1[NOISE_HASHBYTES], k2[NOISE_HASHBYTES];
  if (!hs->role || hs->step != 2) return -1;
  hkdf(hs->ck, NULL, 0, k1, k2, NULL);
  noise_cipher c1 = {0}, c2 = {0};
  cipher_init_key(&c1, k1);   /* initiator -> responder */
  cipher_init_key(&c2, k2);   /* responder -> initiator */
  if (hs->role == NOISE_INITIATOR) *tx = c1, *rx = c2;
  else *tx = c2, *rx = c1;
  if (hash) memcpy(hash, hs->h, NOISE_HASHBYTES);
  sodium_memzero(k1, sizeof k1);
  sodium_memzero(k2, sizeof k2);
  sodium_memzero(&c1, sizeof c1);
  sodium_memzero(&c2, sizeof c2);
  noise_hs_wipe(hs);
  return 0;
}

void noise_hs_wipe(noise_hs *hs) { sodium_memzero(hs, sizeof *hs); }

int noise_msg_len(const unsigned char hdr[NOISE_LENBYTES], size_t *len) {
  size_t n = ((size_t)hdr[0] << 8) | hdr[1];
  if (n < NOISE_MIN_MSG || n > NOISE_MAX_MSG) return -1;
  *len = n;
  return 0;
}

/* ---- the hello payload ---- */

static int name_ok(const unsigned char *s, size_t len) {
  if (len == 0 || len > NOISE_NAME_MAX) return 0;
  for (size_t i = 0; i < len; i++)
    if (s[i] < 0x21 || s[i] > 0x7e) return 0;
  return 1;
}

int noise_hello_encode(const char *name, uint32_t creation,
                       unsigned char *out, size_t cap, size_t *out_len) {
  size_t len = strnlen(name, NOISE_NAME_MAX + 1);
  if (!name_ok((const unsigned char *)name, len) || cap < len + 5) return -1;
  out[0] = (unsigned char)len;
  memcpy(out + 1, name, len);
  for (int i = 0; i < 4; i++) out[1 + len + i] = (unsigned char)(creation >> (24 - 8 * i));
  *out_len = len + 5;
  return 0;
}

int noise_hello_decode(const unsigned char *p, size_t len, noise_hello *out) {
  if (len < 1) return -1;
  size_t n = p[0];
  if (len != n + 5 || !name_ok(p + 1, n)) return -1;
  memcpy(out->name, p + 1, n);
  out->name[n] = '\0';
  out->creation = (uint32_t)p[1 + n] << 24 | (uint32_t)p[2 + n] << 16 |
                  (uint32_t)p[3 + n] << 8 | p[4 + n];
  return 0;
}
