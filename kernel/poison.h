/*
** poison.h — marks memory that a kernel allocator keeps but nobody may
** touch (an arena's free parts, a cached entry), so that AddressSanitizer
** reports a use of it as it would a use after free. No-ops in other builds.
*/
#ifndef erlangen_poison_h
#define erlangen_poison_h

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#define POISON(p, n)   ASAN_POISON_MEMORY_REGION((p), (n))
#define UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION((p), (n))
#else
#define POISON(p, n)   ((void)(p), (void)(n))
#define UNPOISON(p, n) ((void)(p), (void)(n))
#endif

#endif
