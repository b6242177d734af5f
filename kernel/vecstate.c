/*
** vecstate.c — resets the AVX-512 register state before a sleep (see
** vecstate.h).
*/
#include <stdatomic.h>
#include "vecstate.h"

#if defined(__x86_64__)
#include <cpuid.h>

/* XSAVE state components (Intel SDM vol. 1, 13.1). */
#define X_OPMASK    (1u << 5)   /* k0-7 */
#define X_ZMM_HI256 (1u << 6)   /* upper 256 bits of zmm0-15 */
#define X_HI16_ZMM  (1u << 7)   /* zmm16-31 */
#define X_AVX512    (X_OPMASK | X_ZMM_HI256 | X_HI16_ZMM)
#define UNKNOWN     (~0u)

/* The module's one global: the components to reset, found once (every
** thread finds the same value, so a race to store it is harmless; relaxed
** atomics keep it defined). */
static _Atomic unsigned mask = UNKNOWN;

/* An XSAVE area in the standard form whose header (at byte 512) says every
** component is in its initial state: XRSTOR from it initializes each
** component it is asked for. It is whole, not just the header: XRSTOR may
** read any byte of a component it is asked for even when the header marks
** it initial (the SDM says so, and this AMD CPU does: with the area cut
** short before a guard page it faults), and AVX-512's components end at
** byte 2,688. find_mask checks that against what the CPU reports. */
static _Alignas(64) const unsigned char initial[4096];

static unsigned find_mask(void) {
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & bit_OSXSAVE)) return 0;
  unsigned lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));   /* XCR0: what the OS enabled */
  (void)hi;
  if ((lo & X_AVX512) != X_AVX512) return 0;
  for (unsigned i = 5; i <= 7; i++) {   /* each component's size (EAX) and offset (EBX) */
    if (!__get_cpuid_count(0xd, i, &a, &b, &c, &d)) return 0;
    if ((unsigned long)a + b > sizeof initial) return 0;
  }
  return X_AVX512;
}

unsigned vec_release_mask(void) {
  unsigned m = atomic_load_explicit(&mask, memory_order_relaxed);
  if (m == UNKNOWN) {
    m = find_mask();
    atomic_store_explicit(&mask, m, memory_order_relaxed);
  }
  return m;
}

/* noipa, not just noinline: the asm declares no vector clobbers (a build
** without -mavx512f cannot name zmm16-31 or k0-7), and GCC's interprocedural
** register allocation would otherwise let a caller that sees this body keep
** values in registers it believes untouched. With noipa every caller
** assumes the ABI: all vector and mask registers are clobbered. */
#if defined(__has_attribute)
#if __has_attribute(noipa)
#define VEC_OPAQUE __attribute__((noipa))
#endif
#endif
#ifndef VEC_OPAQUE
#define VEC_OPAQUE __attribute__((noinline))
#endif

VEC_OPAQUE void vec_release(void) {
  unsigned m = vec_release_mask();
  /* Not the AVX component (bit 2): restoring it also loads MXCSR, which
  ** would then come from the zero area and unmask every FP exception. */
  if (m)
    __asm__ volatile("xrstor64 %0"
                     : : "m"(*(const unsigned char (*)[sizeof initial])initial), "a"(m), "d"(0u));
}

#else
unsigned vec_release_mask(void) { return 0; }
void vec_release(void) {}
#endif
