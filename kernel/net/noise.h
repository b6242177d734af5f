/*
** noise.h — the node-link handshake: Noise_NNpsk0_25519_ChaChaPoly_SHA256
** (Noise Protocol Framework, revision 34) built on libsodium 1.0.18, plus
** the erlangen payload ("hello": node name and creation) it carries.
** doc/handshake.md gives the bytes on the wire and the threat model.
**
**   NNpsk0:   -> psk, e        msg1 = e.pub (32) || AEAD(hello of initiator)
**             <- e, ee         msg2 = e.pub (32) || AEAD(hello of responder)
**
** On TCP each handshake message travels behind a 2-byte big-endian length
** (NOISE_LENBYTES). A reader checks that length with noise_msg_len before
** reading the message into a buffer of NOISE_MAX_MSG bytes on its stack:
** nothing bigger is ever allocated for an unauthenticated peer.
**
** After msg2 both sides call noise_hs_split (or frame_start in frame.h).
** The responder must not count the peer as authenticated, nor act on the
** name in msg1 (no names, no processes, no tie-break of a simultaneous
** connect), until the initiator's confirmation frame has decrypted: msg1
** can be replayed by anyone who recorded it; only a party that computed
** the ee key can produce the confirmation.
**
** Conventions (as libsodium): functions return 0 on success and -1 on
** failure; a failed call changes nothing in the state it was given; key
** material lives only in these structs and is wiped with sodium_memzero by
** noise_hs_wipe / noise_hs_split / noise_cipher_wipe. The structs are
** public so they can be embedded, but their fields are private.
** A state is used by one thread at a time.
*/
#ifndef erlangen_noise_h
#define erlangen_noise_h

#include <stddef.h>
#include <stdint.h>

#define NOISE_PROTOCOL_NAME "Noise_NNpsk0_25519_ChaChaPoly_SHA256"
#define NOISE_PROLOGUE      "erlangen/1"   /* what nodes pass as the prologue */
#define NOISE_PROLOGUE_LEN  (sizeof NOISE_PROLOGUE - 1)

#define NOISE_PSKBYTES   32u   /* the cluster key */
#define NOISE_KEYBYTES   32u   /* a cipher key */
#define NOISE_DHBYTES    32u   /* an X25519 public key */
#define NOISE_HASHBYTES  32u   /* SHA-256; also the handshake hash */
#define NOISE_TAGBYTES   16u   /* Poly1305 tag */

/* Largest handshake message, and so the largest payload one can carry.
** Both handshake messages are e (32) || encrypted payload (payload + 16). */
#define NOISE_MAX_MSG      512u
#define NOISE_MIN_MSG      (NOISE_DHBYTES + NOISE_TAGBYTES)
#define NOISE_MAX_PAYLOAD  (NOISE_MAX_MSG - NOISE_MIN_MSG)
#define NOISE_LENBYTES     2u  /* big-endian length before each message on TCP */

/* The hello payload: name length (1 byte, 1..NOISE_NAME_MAX), the name
** (printable ASCII without space, 0x21..0x7e), creation (4 bytes, big-endian). */
#define NOISE_NAME_MAX     255u
#define NOISE_HELLO_MAX    (1u + NOISE_NAME_MAX + 4u)

enum { NOISE_INITIATOR = 1, NOISE_RESPONDER = 2 };

/* A Noise CipherState: a key and the 64-bit nonce counter. Nonce
** 2^64-1 is reserved: once n reaches it, encrypt and decrypt fail. */
typedef struct noise_cipher {
  unsigned char k[NOISE_KEYBYTES];
  uint64_t n;
  int has_key;
} noise_cipher;

/* A HandshakeState of NNpsk0. */
typedef struct noise_hs {
  unsigned char ck[NOISE_HASHBYTES], h[NOISE_HASHBYTES];
  noise_cipher c;
  unsigned char psk[NOISE_PSKBYTES];
  unsigned char e_sk[32], e_pk[NOISE_DHBYTES], re[NOISE_DHBYTES];
  int role;      /* NOISE_INITIATOR or NOISE_RESPONDER; 0 once wiped */
  int step;      /* messages done: 0, 1, 2 (then split) */
  int e_fixed;   /* an ephemeral key was injected (tests only) */
} noise_hs;

typedef struct noise_hello {
  char name[NOISE_NAME_MAX + 1];   /* NUL-terminated */
  uint32_t creation;
} noise_hello;

/* Initializes libsodium. Idempotent and thread-safe; noise_hs_init calls
** it too. Returns -1 only if libsodium cannot start. */
int noise_init(void);

/* ---- the handshake ---- */

/* Starts a handshake as `role` with the cluster key and a prologue (both
** sides must pass the same bytes; nodes pass NOISE_PROLOGUE). Copies both;
** prologue_len <= 256. */
int noise_hs_init(noise_hs *hs, int role, const unsigned char psk[NOISE_PSKBYTES],
                  const unsigned char *prologue, size_t prologue_len);

/* FOR TEST VECTORS ONLY: makes `sk` this side's ephemeral private key
** instead of a fresh random one. Allowed only before this side has sent
** its message. Never call it in a node. */
int noise_hs_set_ephemeral(noise_hs *hs, const unsigned char sk[32]);

/* Writes this side's next handshake message (msg1 for the initiator, msg2
** for the responder) with `payload` encrypted inside. `out` must hold
** NOISE_MIN_MSG + payload_len bytes (at most NOISE_MAX_MSG); *out_len gets
** the length. Fails if it is not this side's turn, payload_len >
** NOISE_MAX_PAYLOAD, cap is too small, or the DH result is all zero. */
int noise_hs_write(noise_hs *hs, const unsigned char *payload, size_t payload_len,
                   unsigned char *out, size_t cap, size_t *out_len);

/* Reads the peer's handshake message (untrusted bytes) and decrypts its
** payload into `payload` (cap >= msg_len - NOISE_MIN_MSG; NOISE_MAX_PAYLOAD
** always suffices), length in *payload_len. Fails, leaving hs unchanged, on
** a wrong turn, a length outside [NOISE_MIN_MSG, NOISE_MAX_MSG], a failed
** authentication (wrong key, tampering) or an all-zero DH result. The caller
** then wipes hs and closes the connection. */
int noise_hs_read(noise_hs *hs, const unsigned char *msg, size_t msg_len,
                  unsigned char *payload, size_t cap, size_t *payload_len);

/* After both messages: derives the two transport cipher states, `tx` for
** what this side sends and `rx` for what it receives, copies the handshake
** hash to `hash` (may be NULL), then wipes hs entirely (ephemeral keys
** included). Fails, changing nothing, before both messages are done. */
int noise_hs_split(noise_hs *hs, noise_cipher *tx, noise_cipher *rx,
                   unsigned char hash[NOISE_HASHBYTES]);

/* Wipes every key in hs. Safe on a wiped or zeroed state. */
void noise_hs_wipe(noise_hs *hs);

/* Checks a 2-byte length read from TCP before a handshake message:
** *len gets it; fails if it is outside [NOISE_MIN_MSG, NOISE_MAX_MSG]. */
int noise_msg_len(const unsigned char hdr[NOISE_LENBYTES], size_t *len);

/* ---- cipher states (the transport; frame.h builds on these) ---- */

/* out = ciphertext || tag of mlen + NOISE_TAGBYTES bytes, with the
** associated data `ad`; out may equal m (in place). Then n += 1.
** Fails without a key or when n has reached 2^64-1. */
int noise_cipher_encrypt(noise_cipher *c, const unsigned char *ad, size_t ad_len,
                         const unsigned char *m, size_t m_len, unsigned char *out);

/* out = plaintext of clen - NOISE_TAGBYTES bytes; out may equal ct. Then
** n += 1. Fails, leaving n unchanged, on a bad tag, clen < NOISE_TAGBYTES,
** no key, or n at 2^64-1. */
int noise_cipher_decrypt(noise_cipher *c, const unsigned char *ad, size_t ad_len,
                         const unsigned char *ct, size_t ct_len, unsigned char *out);

/* The Noise SetNonce(): for tests of the counter's end. */
void noise_cipher_set_nonce(noise_cipher *c, uint64_t n);

void noise_cipher_wipe(noise_cipher *c);

/* ---- the hello payload ---- */

/* Writes the hello for `name` (NUL-terminated) and `creation` into out
** (cap >= NOISE_HELLO_MAX suffices). Fails on an empty, too long or
** non-printable name. */
int noise_hello_encode(const char *name, uint32_t creation,
                       unsigned char *out, size_t cap, size_t *out_len);

/* Parses a decrypted hello. Fails, leaving *out unchanged, unless the bytes
** are exactly one well-formed hello. */
int noise_hello_decode(const unsigned char *p, size_t len, noise_hello *out);

#endif
