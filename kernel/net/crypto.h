/*
** crypto.h — libsodium, loaded the first time a node needs it.
**
** The kernel does not link libsodium: it dlopen()s it (SODIUM_SONAME, in crypto.c) when
** sodium_init() is first called, which happens only on the way to a node
** (node_start, the key file, the Noise handshake). A library linked at
** start-up puts its thread-local storage (libsodium: 568 bytes) in the
** static TLS block that sits at the top of every thread's stack, and that
** pushed each process thread onto one more resident 4 KiB page, used or not
** (doc/performance.md, "RSS per idle process"). Loaded later, its TLS is
** allocated only in the threads that touch it.
**
** Include this instead of <sodium.h>: it declares the same names, and each
** of the functions below goes through the table. Invariant: `sodium_api`
** is written once, inside the pthread_once of the first sodium_init(),
** and only read afterwards; every call below comes after a sodium_init()
** that returned 0 (libsodium's own rule), so it never sees a NULL entry.
*/
#ifndef erlangen_crypto_h
#define erlangen_crypto_h

#include <sodium.h>

#define SODIUM_FUNCTIONS(X) \
  X(sodium_init) X(sodium_memzero) X(sodium_memcmp) X(sodium_is_zero) X(sodium_hex2bin) \
  X(randombytes_buf) X(randombytes_random) \
  X(crypto_scalarmult_curve25519) X(crypto_scalarmult_curve25519_base) \
  X(crypto_hash_sha256) X(crypto_hash_sha256_init) X(crypto_hash_sha256_update) \
  X(crypto_hash_sha256_final) \
  X(crypto_auth_hmacsha256_init) X(crypto_auth_hmacsha256_update) \
  X(crypto_auth_hmacsha256_final) \
  X(crypto_aead_chacha20poly1305_ietf_encrypt) X(crypto_aead_chacha20poly1305_ietf_decrypt)

typedef struct sodium_table {
#define SODIUM_MEMBER(f) __typeof__(f) *p_##f;
  SODIUM_FUNCTIONS(SODIUM_MEMBER)
#undef SODIUM_MEMBER
} sodium_table;

extern sodium_table sodium_api;   /* the module's one global; see above */

/* Loads the library once (thread-safe) and runs its sodium_init. Returns
** 0 or 1 as libsodium's does, or -1 when it cannot be loaded or started;
** sodium_why() then says why. */
int sodium_start(void);
const char *sodium_why(void);

#define sodium_init() sodium_start()
#define sodium_memzero (sodium_api.p_sodium_memzero)
#define sodium_memcmp (sodium_api.p_sodium_memcmp)
#define sodium_is_zero (sodium_api.p_sodium_is_zero)
#define sodium_hex2bin (sodium_api.p_sodium_hex2bin)
#define randombytes_buf (sodium_api.p_randombytes_buf)
#define randombytes_random (sodium_api.p_randombytes_random)
#define crypto_scalarmult_curve25519 (sodium_api.p_crypto_scalarmult_curve25519)
#define crypto_scalarmult_curve25519_base (sodium_api.p_crypto_scalarmult_curve25519_base)
#define crypto_hash_sha256 (sodium_api.p_crypto_hash_sha256)
#define crypto_hash_sha256_init (sodium_api.p_crypto_hash_sha256_init)
#define crypto_hash_sha256_update (sodium_api.p_crypto_hash_sha256_update)
#define crypto_hash_sha256_final (sodium_api.p_crypto_hash_sha256_final)
#define crypto_auth_hmacsha256_init (sodium_api.p_crypto_auth_hmacsha256_init)
#define crypto_auth_hmacsha256_update (sodium_api.p_crypto_auth_hmacsha256_update)
#define crypto_auth_hmacsha256_final (sodium_api.p_crypto_auth_hmacsha256_final)
#define crypto_aead_chacha20poly1305_ietf_encrypt (sodium_api.p_crypto_aead_chacha20poly1305_ietf_encrypt)
#define crypto_aead_chacha20poly1305_ietf_decrypt (sodium_api.p_crypto_aead_chacha20poly1305_ietf_decrypt)

#endif
