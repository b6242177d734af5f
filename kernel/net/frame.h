/*
** frame.h — the encrypted frame layer of a node link, over the two cipher
** states a Noise handshake (noise.h) splits into.
**
** A frame on the wire (doc/handshake.md):
**
**   len (4 bytes, big-endian) || ChaChaPoly(k, n, ad = the 4 len bytes, type || body)
**
** `len` counts the ciphertext: 1 (type) + body + 16 (tag). Nonces are the
** implicit counter of the sending direction (0, 1, 2, ...), so a frame that
** is altered, replayed, reordered or dropped fails authentication, and the
** length is authenticated as associated data. Every failure is final: the
** decoder stays failed and the caller closes the link. A link ends in order
** only with a FRAME_CLOSE frame; EOF without one is a truncation.
**
** The initiator's first frame is FRAME_CONFIRM carrying the handshake hash
** (frame_start queues it). The responder's decoder accepts nothing else
** first, and nothing longer: until the confirmation has decrypted, the
** decoder allocates at most FRAME_CONFIRM_LEN bytes for the peer.
**
** Limits: a frame body is at most `max_body` bytes (FRAME_DEFAULT_MAX_BODY
** unless given; within [FRAME_MIN_MAX_BODY, FRAME_HARD_MAX_BODY]); both
** ends of a link must use the same value. The decoder checks `len` against
** it before it allocates anything.
**
** Conventions: 0 on success, -1 on failure. The structs are public so they
** can be embedded; their fields are private. One thread at a time per
** struct (a link's encoder and decoder may be used by two threads).
*/
#ifndef erlangen_frame_h
#define erlangen_frame_h

#include <stddef.h>
#include <stdint.h>
#include "noise.h"

#define FRAME_HEADERBYTES        4u    /* big-endian ciphertext length */
#define FRAME_TYPEBYTES          1u
#define FRAME_TAGBYTES           NOISE_TAGBYTES
#define FRAME_OVERHEAD           (FRAME_HEADERBYTES + FRAME_TYPEBYTES + FRAME_TAGBYTES)
#define FRAME_MIN_LEN            (FRAME_TYPEBYTES + FRAME_TAGBYTES)   /* smallest `len` */
#define FRAME_RECORD_HEADERBYTES 4u    /* big-endian length before each record of a DATA frame */
#define FRAME_DEFAULT_MAX_BODY   (1u << 20)
#define FRAME_HARD_MAX_BODY      (128u << 20)
#define FRAME_MIN_MAX_BODY       64u   /* smallest max_body accepted */
/* `len` of the confirmation frame: type, the handshake hash, the tag. */
#define FRAME_CONFIRM_LEN        (FRAME_TYPEBYTES + NOISE_HASHBYTES + FRAME_TAGBYTES)

/* Frame types: the first plaintext byte. Any other value fails the link. */
enum {
  FRAME_CONFIRM   = 0x01,  /* initiator's first frame: body = handshake hash (32) */
  FRAME_DATA      = 0x02,  /* a batch of records: (len (4, big-endian) || bytes)+, at least one */
  FRAME_TICK      = 0x03,  /* heartbeat; empty body */
  FRAME_CLOSE     = 0x04,  /* orderly close; empty body; nothing may follow */
  /* Control signals, one per frame; the node layer defines their bodies.
  ** The decoder passes any type in [FRAME_CONTROL_FIRST, FRAME_CONTROL_LAST]
  ** through with its body unchecked (at most max_body bytes). */
  FRAME_LINK      = 0x10,
  FRAME_UNLINK    = 0x11,
  FRAME_EXIT      = 0x12,
  FRAME_MONITOR   = 0x13,
  FRAME_DEMONITOR = 0x14,
  FRAME_DOWN      = 0x15,
  FRAME_CONTROL_FIRST = 0x10,
  FRAME_CONTROL_LAST  = 0x3f
};

/* ---- encoder: what this side sends ---- */

/* buf[0, sealed) holds sealed frames ready for the socket; when a DATA frame
** is open, buf[sealed, len) is its plaintext (header space, type, records),
** and cap >= len + FRAME_TAGBYTES so sealing never allocates. */
typedef struct frame_enc {
  noise_cipher tx;
  unsigned char *buf;
  size_t len, cap, sealed;
  size_t max_body;
  int state;              /* 0 open, 1 closed (CLOSE queued), -1 failed */
} frame_enc;

/* Takes over `tx` (the source is wiped). max_body 0 means the default.
** Fails if max_body is outside [FRAME_MIN_MAX_BODY, FRAME_HARD_MAX_BODY]
** or tx has no key. */
int frame_enc_init(frame_enc *e, noise_cipher *tx, size_t max_body);

/* Appends one record, the bytes a[0..alen) followed by b[0..blen) (b may be
** NULL), to the open DATA frame, opening one if needed and sealing the open
** one first when the record would not fit in it: many records, one frame,
** one write. The encoder copies the bytes; the caller keeps a and b. Fails,
** adding nothing, when the record cannot fit in an empty frame
** (FRAME_RECORD_HEADERBYTES + alen + blen > max_body), when memory runs out,
** after CLOSE, or when the encoder has failed. */
int frame_enc_record(frame_enc *e, const void *a, size_t alen, const void *b, size_t blen);

/* Seals the open DATA frame, then appends one sealed frame of `type` (a
** control type, FRAME_TICK or FRAME_CLOSE) with `body` (copied; len <=
** max_body; empty for TICK and CLOSE). Order with records is kept. After
** FRAME_CLOSE the encoder accepts nothing more but can still be flushed. */
int frame_enc_control(frame_enc *e, int type, const void *body, size_t len);

/* Seals the open DATA frame and points *out at every byte waiting for the
** socket (*out_len of them; 0 when idle). The bytes belong to the encoder
** and stay valid until the next frame_enc_* call. After writing n of them,
** call frame_enc_consumed(e, n). Fails when a frame cannot be sealed
** because the nonce counter is exhausted: the encoder has failed for good. */
int frame_enc_flush(frame_enc *e, const unsigned char **out, size_t *out_len);

/* Drops the first n sealed bytes (they were written). Fails, dropping
** nothing, if n is more than the sealed bytes. */
int frame_enc_consumed(frame_enc *e, size_t n);

/* Bytes held: sealed frames plus the open frame. For bounding a link's
** outgoing buffer. */
size_t frame_enc_pending(const frame_enc *e);

/* True once the encoder has failed for good (nonce counter exhausted). */
int frame_enc_failed(const frame_enc *e);

/* Wipes the key and frees the buffer. */
void frame_enc_free(frame_enc *e);

/* ---- decoder: what the peer sends ---- */

typedef struct frame_dec {
  noise_cipher rx;
  unsigned char hdr[FRAME_HEADERBYTES];
  size_t hdr_have;        /* header bytes gathered */
  size_t need, have;      /* ciphertext length of the frame being read (0: in header), bytes in buf */
  unsigned char *buf;     /* ciphertext, then plaintext (decrypted in place) */
  size_t cap;
  size_t max_body;
  unsigned char confirm[NOISE_HASHBYTES];
  int expect_confirm;     /* the first frame must be this confirmation */
  int state;              /* 0 running, 1 closed (CLOSE received), -1 failed */
} frame_dec;

/* One decoded frame. `body` points into the decoder and stays valid until
** the next frame_dec_* call on it. */
typedef struct frame_msg {
  int type;
  const unsigned char *body;
  size_t len;
} frame_msg;

/* Takes over `rx` (the source is wiped). With `confirm` non-NULL the first
** frame must be FRAME_CONFIRM with exactly these 32 bytes. max_body as for
** frame_enc_init. */
int frame_dec_init(frame_dec *d, noise_cipher *rx, const unsigned char confirm[NOISE_HASHBYTES],
                   size_t max_body);

/* Feeds bytes from the socket, any amount (parts of a header, several
** frames). Returns
**    1  a frame is in *out; *used bytes of `in` were taken: call again
**       with the rest (which may be empty),
**    0  all of `in` was taken (*used == in_len) and no frame is complete,
**   -1  the link is broken (bad length, failed authentication, a malformed
**       or unexpected frame, bytes after CLOSE, nonce counter exhausted,
**       out of memory). The key is wiped and every later call fails.
** A frame of a length outside [FRAME_MIN_LEN, FRAME_TAGBYTES + 1 + max_body]
** (before the confirmation: other than FRAME_CONFIRM_LEN) fails as soon as
** its header is complete, before anything is allocated for it.
** DATA frames are delivered only when every record in them is well formed;
** FRAME_CONFIRM is delivered once, when it matched (the peer is now
** authenticated); FRAME_CLOSE is delivered and the decoder is closed. */
int frame_dec_feed(frame_dec *d, const unsigned char *in, size_t in_len,
                   size_t *used, frame_msg *out);

/* At EOF on the socket: 0 if the peer closed in order (a CLOSE frame and
** nothing after it), -1 for a truncated or failed link. */
int frame_dec_eof(const frame_dec *d);

/* True when no confirmation is (still) awaited and the decoder has not failed. */
int frame_dec_authenticated(const frame_dec *d);

/* True while a frame is in progress: part of its header or body was fed. */
int frame_dec_partial(const frame_dec *d);

/* Wipes the key and frees the buffer. */
void frame_dec_free(frame_dec *d);

/* ---- records of a DATA frame ---- */

/* Iterates the records of a DATA frame: start with *off = 0; each call
** returning 1 sets *rec and *len to the next record (pointing into f->body).
** Returns 0 at the end, -1 on a malformed body (never for a frame the
** decoder delivered). */
int frame_record_next(const frame_msg *f, size_t *off, const unsigned char **rec, size_t *len);

/* ---- from a finished handshake ---- */

/* Splits `hs` (both handshake messages done; hs is wiped) into this side's
** encoder and decoder. The initiator's encoder starts with FRAME_CONFIRM
** queued (flush it); the responder's decoder requires it first. On failure
** nothing is allocated and hs is unchanged. */
int frame_start(noise_hs *hs, size_t max_body, frame_enc *e, frame_dec *d);

#endif
