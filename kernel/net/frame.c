/*
** frame.c — encrypted, length-checked, batched frames over a node link:
** the encoder (records into DATA frames, control frames, flush) and the
** incremental decoder (arbitrary TCP chunks in, verified frames out).
*/
#include <stdlib.h>
#include <string.h>
#include "crypto.h"
#include "frame.h"

/* A decoder buffer above this size is given back when a smaller frame comes. */
#define FRAME_DEC_KEEP (64u << 10)
/* An encoder buffer above this size is freed once everything was written. */
#define FRAME_ENC_KEEP (256u << 10)

static void put32(unsigned char *p, uint32_t v) {
  p[0] = (unsigned char)(v >> 24); p[1] = (unsigned char)(v >> 16);
  p[2] = (unsigned char)(v >> 8);  p[3] = (unsigned char)v;
}

static uint32_t get32(const unsigned char *p) {
  return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static int max_body_ok(size_t *max_body) {
  if (*max_body == 0) *max_body = FRAME_DEFAULT_MAX_BODY;
  return *max_body >= FRAME_MIN_MAX_BODY && *max_body <= FRAME_HARD_MAX_BODY;
}

/* ---- encoder ---- */

int frame_enc_init(frame_enc *e, noise_cipher *tx, size_t max_body) {
  if (!max_body_ok(&max_body) || !tx->has_key) return -1;
  memset(e, 0, sizeof *e);
  e->tx = *tx;
  noise_cipher_wipe(tx);
  e->max_body = max_body;
  return 0;
}

static int is_open(const frame_enc *e) { return e->len > e->sealed; }

/* Makes room for `more` bytes after len, plus a tag. Changes nothing on failure. */
static int enc_reserve(frame_enc *e, size_t more) {
  size_t want = e->len + more + FRAME_TAGBYTES;
  if (want <= e->cap) return 0;
  size_t cap = e->cap ? e->cap : 4096;
  while (cap < want) cap *= 2;
  unsigned char *p = realloc(e->buf, cap);
  if (!p) return -1;
  e->buf = p;
  e->cap = cap;
  return 0;
}

/* Encrypts buf[start + HEADER, len) in place under its header. */
static int enc_seal_at(frame_enc *e, size_t start) {
  size_t plain = e->len - start - FRAME_HEADERBYTES;
  unsigned char *hdr = e->buf + start;
  put32(hdr, (uint32_t)(plain + FRAME_TAGBYTES));
  if (noise_cipher_encrypt(&e->tx, hdr, FRAME_HEADERBYTES, hdr + FRAME_HEADERBYTES, plain,
                           hdr + FRAME_HEADERBYTES)) {
    e->state = -1;
    noise_cipher_wipe(&e->tx);
    return -1;
  }
  e->len += FRAME_TAGBYTES;
  e->sealed = e->len;
  return 0;
}

static int enc_seal_open(frame_enc *e) {
  if (e->state < 0) return -1;
  return is_open(e) ? enc_seal_at(e, e->sealed) : 0;
}

int frame_enc_record(frame_enc *e, const void *a, size_t alen, const void *b, size_t blen) {
  if (e->state != 0 || alen > e->max_body || blen > e->max_body - alen ||
      alen + blen > e->max_body - FRAME_RECORD_HEADERBYTES || (alen && !a) || (blen && !b))
    return -1;
  size_t rec = FRAME_RECORD_HEADERBYTES + alen + blen;
  int fits = is_open(e) &&
             e->len - e->sealed - FRAME_HEADERBYTES - FRAME_TYPEBYTES + rec <= e->max_body;
  size_t more = fits ? rec : FRAME_HEADERBYTES + FRAME_TYPEBYTES + rec;
  /* Room for the new frame after the current one is sealed (+ its tag). */
  if (enc_reserve(e, more + (is_open(e) && !fits ? FRAME_TAGBYTES : 0))) return -1;
  if (!fits) {
    if (enc_seal_open(e)) return -1;
    e->buf[e->len + FRAME_HEADERBYTES] = FRAME_DATA;
    e->len += FRAME_HEADERBYTES + FRAME_TYPEBYTES;
  }
  unsigned char *p = e->buf + e->len;
  put32(p, (uint32_t)(alen + blen));
  if (alen) memcpy(p + FRAME_RECORD_HEADERBYTES, a, alen);
  if (blen) memcpy(p + FRAME_RECORD_HEADERBYTES + alen, b, blen);
  e->len += rec;
  return 0;
}

static int control_type_ok(int type) {
  return type == FRAME_TICK || type == FRAME_CLOSE ||
         (type >= FRAME_CONTROL_FIRST && type <= FRAME_CONTROL_LAST);
}

/* Appends one sealed frame; CONFIRM only through frame_start. */
static int enc_frame(frame_enc *e, int type, const void *body, size_t len) {
  if (e->state != 0 || len > e->max_body || (len && !body)) return -1;
  size_t more = FRAME_HEADERBYTES + FRAME_TYPEBYTES + len;
  if (enc_reserve(e, more + (is_open(e) ? FRAME_TAGBYTES : 0))) return -1;
  if (enc_seal_open(e)) return -1;
  size_t start = e->len;
  e->buf[start + FRAME_HEADERBYTES] = (unsigned char)type;
  if (len) memcpy(e->buf + start + FRAME_HEADERBYTES + FRAME_TYPEBYTES, body, len);
  e->len += more;
  if (enc_seal_at(e, start)) return -1;
  if (type == FRAME_CLOSE) e->state = 1;
  return 0;
}

int frame_enc_control(frame_enc *e, int type, const void *body, size_t len) {
  if (!control_type_ok(type) || ((type == FRAME_TICK || type == FRAME_CLOSE) && len)) return -1;
  return enc_frame(e, type, body, len);
}

int frame_enc_flush(frame_enc *e, const unsigned char **out, size_t *out_len) {
  if (enc_seal_open(e)) return -1;
  *out = e->buf;
  *out_len = e->sealed;
  return 0;
}

int frame_enc_consumed(frame_enc *e, size_t n) {
  if (n > e->sealed) return -1;
  if (n == 0) return 0;
  memmove(e->buf, e->buf + n, e->len - n);
  e->len -= n;
  e->sealed -= n;
  if (e->len == 0 && e->cap > FRAME_ENC_KEEP) {
    free(e->buf);
    e->buf = NULL;
    e->cap = 0;
  }
  return 0;
}

size_t frame_enc_pending(const frame_enc *e) { return e->len; }

int frame_enc_failed(const frame_enc *e) { return e->state < 0; }

void frame_enc_free(frame_enc *e) {
  noise_cipher_wipe(&e->tx);
  free(e->buf);
  memset(e, 0, sizeof *e);
  e->state = -1;
}

/* ---- decoder ---- */

int frame_dec_init(frame_dec *d, noise_cipher *rx, const unsigned char confirm[NOISE_HASHBYTES],
                   size_t max_body) {
  if (!max_body_ok(&max_body) || !rx->has_key) return -1;
  memset(d, 0, sizeof *d);
  d->rx = *rx;
  noise_cipher_wipe(rx);
  d->max_body = max_body;
  if (confirm) {
    memcpy(d->confirm, confirm, NOISE_HASHBYTES);
    d->expect_confirm = 1;
  }
  return 0;
}

static int dec_fail(frame_dec *d) {
  d->state = -1;
  noise_cipher_wipe(&d->rx);
  sodium_memzero(d->confirm, sizeof d->confirm);
  return -1;
}

/* buf holds at least n bytes afterwards; big buffers are given back. */
static int dec_reserve(frame_dec *d, size_t n) {
  size_t cap = n;
  if (n <= d->cap) {
    if (d->cap <= FRAME_DEC_KEEP || n > FRAME_DEC_KEEP) return 0;
    cap = FRAME_DEC_KEEP;
  }
  unsigned char *p = realloc(d->buf, cap);
  if (!p) return -1;
  d->buf = p;
  d->cap = cap;
  return 0;
}

static int records_ok(const unsigned char *p, size_t len) {
  size_t off = 0;
  if (len == 0) return 0;
  while (off < len) {
    if (len - off < FRAME_RECORD_HEADERBYTES) return 0;
    size_t n = get32(p + off);
    off += FRAME_RECORD_HEADERBYTES;
    if (n > len - off) return 0;
    off += n;
  }
  return 1;
}

/* Decrypts the current frame (from `ct`, into buf) and checks it. */
static int dec_open(frame_dec *d, const unsigned char *ct, frame_msg *out) {
  size_t n = d->need;
  if (noise_cipher_decrypt(&d->rx, d->hdr, FRAME_HEADERBYTES, ct, n, d->buf)) return dec_fail(d);
  int type = d->buf[0];
  const unsigned char *body = d->buf + FRAME_TYPEBYTES;
  size_t len = n - FRAME_TAGBYTES - FRAME_TYPEBYTES;
  if (d->expect_confirm) {
    if (type != FRAME_CONFIRM || len != NOISE_HASHBYTES ||
        sodium_memcmp(body, d->confirm, NOISE_HASHBYTES) != 0)
      return dec_fail(d);
    d->expect_confirm = 0;
    sodium_memzero(d->confirm, sizeof d->confirm);
  } else if (type == FRAME_DATA) {
    if (!records_ok(body, len)) return dec_fail(d);
  } else if (type == FRAME_TICK || type == FRAME_CLOSE) {
    if (len) return dec_fail(d);
    if (type == FRAME_CLOSE) d->state = 1;
  } else if (type < FRAME_CONTROL_FIRST || type > FRAME_CONTROL_LAST) {
    return dec_fail(d);   /* unknown, or a CONFIRM not awaited */
  }
  d->hdr_have = d->need = d->have = 0;
  out->type = type;
  out->body = body;
  out->len = len;
  return 1;
}

int frame_dec_feed(frame_dec *d, const unsigned char *in, size_t in_len,
                   size_t *used, frame_msg *out) {
  size_t pos = 0;
  *used = 0;
  if (d->state < 0) return -1;
  if (d->state == 1) return in_len ? dec_fail(d) : 0;   /* nothing may follow CLOSE */
  while (pos < in_len) {
    if (d->need == 0) {
      size_t take = FRAME_HEADERBYTES - d->hdr_have;
      if (take > in_len - pos) take = in_len - pos;
      memcpy(d->hdr + d->hdr_have, in + pos, take);
      d->hdr_have += take;
      pos += take;
      if (d->hdr_have < FRAME_HEADERBYTES) break;
      size_t n = get32(d->hdr);
      if (d->expect_confirm ? n != FRAME_CONFIRM_LEN
                            : n < FRAME_MIN_LEN || n > FRAME_MIN_LEN + d->max_body)
        return dec_fail(d);
      if (dec_reserve(d, n)) return dec_fail(d);
      d->need = n;
      d->have = 0;
      if (in_len - pos >= n) {   /* the whole frame is here: decrypt it from `in` */
        int r = dec_open(d, in + pos, out);
        if (r < 0) return r;
        *used = pos + n;
        return r;
      }
      continue;
    }
    size_t take = d->need - d->have;
    if (take > in_len - pos) take = in_len - pos;
    memcpy(d->buf + d->have, in + pos, take);
    d->have += take;
    pos += take;
    if (d->have == d->need) {
      int r = dec_open(d, d->buf, out);
      if (r < 0) return r;
      *used = pos;
      return r;
    }
  }
  *used = pos;
  return 0;
}

int frame_dec_eof(const frame_dec *d) { return d->state == 1 ? 0 : -1; }

int frame_dec_authenticated(const frame_dec *d) { return d->state >= 0 && !d->expect_confirm; }

int frame_dec_partial(const frame_dec *d) { return d->hdr_have > 0 || d->need > 0; }

void frame_dec_free(frame_dec *d) {
  noise_cipher_wipe(&d->rx);
  free(d->buf);
  sodium_memzero(d, sizeof *d);
  d->state = -1;
}

int frame_record_next(const frame_msg *f, size_t *off, const unsigned char **rec, size_t *len) {
  if (f->type != FRAME_DATA || *off > f->len) return -1;
  if (*off == f->len) return 0;
  if (f->len - *off < FRAME_RECORD_HEADERBYTES) return -1;
  size_t n = get32(f->body + *off);
  size_t at = *off + FRAME_RECORD_HEADERBYTES;
  if (n > f->len - at) return -1;
  *rec = f->body + at;
  *len = n;
  *off = at + n;
  return 1;
}

/* ---- from a finished handshake ---- */

int frame_start(noise_hs *hs, size_t max_body, frame_enc *e, frame_dec *d) {
  noise_cipher tx, rx;
  unsigned char h[NOISE_HASHBYTES];
  int role = hs->role;
  size_t mb = max_body;
  if (!max_body_ok(&mb) || role == 0 || hs->step != 2) return -1;
  noise_hs saved = *hs;
  int rc = -1;
  if (noise_hs_split(hs, &tx, &rx, h)) goto done;
  if (frame_enc_init(e, &tx, max_body)) goto done;
  if (frame_dec_init(d, &rx, role == NOISE_RESPONDER ? h : NULL, max_body)) goto done;
  if (role == NOISE_INITIATOR && enc_frame(e, FRAME_CONFIRM, h, sizeof h)) {
    frame_enc_free(e);
    frame_dec_free(d);
    goto done;
  }
  rc = 0;
done:
  if (rc) *hs = saved;
  sodium_memzero(&saved, sizeof saved);
  sodium_memzero(h, sizeof h);
  noise_cipher_wipe(&tx);
  noise_cipher_wipe(&rx);
  return rc;
}
