/*
** errbuf.h — writing an error message into a caller's buffer.
**
** The kernel's functions that can fail for reasons a user must read (a key
** file, the port mapper) take `char *err, size_t errlen`; either may be
** NULL/0 when the caller does not want the text. The text is always
** NUL-terminated and cut to fit.
*/
#ifndef erlangen_errbuf_h
#define erlangen_errbuf_h

#include <stdarg.h>
#include <stdio.h>

static inline void errbuf_set(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static inline void errbuf_set(char *err, size_t errlen, const char *fmt, ...) {
  va_list ap;
  if (err == NULL || errlen == 0) return;
  va_start(ap, fmt);
  vsnprintf(err, errlen, fmt, ap);
  va_end(ap);
}

#endif
