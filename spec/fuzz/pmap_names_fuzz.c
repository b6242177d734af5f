/*
** pmap_names_fuzz.c — libFuzzer target for the client's side of NAMES: the
** input is a daemon's whole reply, read by pmap_names's own reader and
** parser (kernel/net/portmap.c, included whole so that its static
** reply_reader and names_reply are reached) from a socketpair that holds
** the input and then EOF. Invariants checked (abort on violation): a
** success gives at most PMAP_NAMES_MAX entries, each a valid name and a
** port 1..65535, in strictly increasing name order, and an array exactly
** when there are entries; a failure gives a message and leaves the results
** alone.
*/
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include "portmap.c"

static void check(int ok) {
  if (!ok) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char err[256] = "";
  const char *reply;
  static pmap_name untouched;  /* v's value before the call: a failure keeps it */
  reply_reader rd;
  pmap_name *v = &untouched;
  size_t n = 12345, i;
  int sv[2], r;
  if (size > 4096 || socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) return 0;
  if (size > 0 && send(sv[1], data, size, MSG_NOSIGNAL) != (ssize_t)size) abort();
  close(sv[1]);  /* the reply, then EOF: nothing waits */
  reader_init(&rd, sv[0], now_ms() + 10000);
  reply = reader_line(&rd, err, sizeof err);
  if (reply == NULL) {
    check(err[0] != '\0');
    close(sv[0]);
    return 0;
  }
  r = names_reply(&rd, reply, "fuzz", 4370, &v, &n, err, sizeof err);
  close(sv[0]);
  if (r != 0) {
    check(r == -1 && err[0] != '\0' && v == &untouched && n == 12345);
    return 0;
  }
  check(n <= PMAP_NAMES_MAX && (n == 0) == (v == NULL));
  for (i = 0; i < n; i++) {
    check(pmap_valid_name(v[i].name) && v[i].port >= 1 && v[i].port <= 65535);
    if (i > 0) check(strcmp(v[i - 1].name, v[i].name) < 0);
  }
  free(v);
  return 0;
}
