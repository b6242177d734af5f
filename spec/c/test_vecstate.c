/*
** test_vecstate.c — vec_release (kernel/vecstate.c): after it, the AVX-512
** registers are back in their initial state (zmm16, k1 and zmm15's upper
** half read as zero, and the CPU reports them not in use), while ymm15 and
** the callee-saved control state a caller relies on (MXCSR's modes, the x87
** control word) are unchanged.
*/
#include <cpuid.h>
#include <stdint.h>
#include <string.h>
#include "ctest.h"
#include "vecstate.h"

#define X_AVX512 0xe0u   /* opmask, ZMM_Hi256, Hi16_ZMM */

static unsigned get_mxcsr(void) { unsigned v; __asm__ volatile("stmxcsr %0" : "=m"(v)); return v; }
static void set_mxcsr(unsigned v) { __asm__ volatile("ldmxcsr %0" : : "m"(v)); }
static unsigned short get_fpucw(void) { unsigned short v; __asm__ volatile("fnstcw %0" : "=m"(v)); return v; }
static void set_fpucw(unsigned short v) { __asm__ volatile("fldcw %0" : : "m"(v)); }

/* XINUSE (XGETBV with ECX=1), or -1 when the CPU cannot report it. */
static long long in_use(void) {
  unsigned a, b, c, d;
  if (!__get_cpuid_count(0xd, 1, &a, &b, &c, &d) || !(a & (1u << 2))) return -1;
  unsigned lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(1));
  return ((long long)hi << 32) | lo;
}

static void control_state_is_kept(void) {
  unsigned mx = get_mxcsr();
  unsigned short cw = get_fpucw();
  /* Non-default modes: round toward zero, flush-to-zero, denormals-are-zero,
  ** the divide-by-zero exception unmasked; x87 rounding toward zero. */
  unsigned want_mx = (mx & ~0x0200u) | 0x6000u | 0x8000u | 0x0040u;
  unsigned short want_cw = (unsigned short)(cw | 0x0c00u);
  set_mxcsr(want_mx);
  set_fpucw(want_cw);
  vec_release();
  unsigned got_mx = get_mxcsr();
  unsigned short got_cw = get_fpucw();
  set_mxcsr(mx);
  set_fpucw(cw);
  CHECK((got_mx & ~0x3fu) == (want_mx & ~0x3fu), "MXCSR's modes are kept", "%#x, wanted %#x", got_mx, want_mx);
  CHECK(got_cw == want_cw, "the x87 control word is kept", "%#x, wanted %#x", got_cw, want_cw);
}

static void avx512_state_is_reset(void) {
  unsigned char z16[64], z15[64];
  unsigned k1;
  /* Dirty what glibc's string functions dirty (zmm16, a mask register),
  ** and all of zmm15, whose upper half is the ZMM_Hi256 component while its
  ** lower half (xmm15 and the AVX part) must survive. Compiled code between
  ** here and the reads below uses no vector register above xmm7. */
  __asm__ volatile("vpternlogd $0xff, %%zmm16, %%zmm16, %%zmm16\n\t"
                   "vpternlogd $0xff, %%zmm15, %%zmm15, %%zmm15\n\t"
                   "kxnorw %%k1, %%k1, %%k1" : : : "memory");
  long long before = in_use();
  vec_release();
  long long after = in_use();
  __asm__ volatile("vmovdqu64 %%zmm16, %0\n\t"
                   "vmovdqu64 %%zmm15, %1\n\t"
                   "kmovw %%k1, %2" : "=m"(z16), "=m"(z15), "=r"(k1));
  unsigned char zero[64] = {0}, ones[32];
  memset(ones, 0xff, sizeof ones);
  CHECK(memcmp(z16, zero, sizeof z16) == 0, "zmm16 is zero after vec_release", "it kept its bytes");
  CHECK(memcmp(z15 + 32, zero, 32) == 0, "zmm15's upper half is zero after vec_release", "it kept its bytes");
  CHECK(memcmp(z15, ones, 32) == 0, "ymm15 (the SSE and AVX parts) is kept", "it changed");
  CHECK(k1 == 0, "k1 is zero after vec_release", "%#x", k1);
  if (before >= 0) {
    CHECK((before & X_AVX512) != 0, "zmm16 and k1 show as in use before", "XINUSE %#llx", before);
    CHECK((after & 2) == (before & 2), "SSE's in-use bit is left alone", "%#llx -> %#llx", before, after);
    /* The SDM lets a CPU keep a component marked in use after XRSTOR put it
    ** in its initial state; then the reset still works but frees nothing. */
    if ((after & X_AVX512) == 0) CHECK(1, "no AVX-512 component is in use after", "-");
    else SKIP("no AVX-512 component is in use after", "this CPU keeps XINUSE %#llx after an initializing XRSTOR", after);
  }
}

int main(void) {
  control_state_is_kept();
  unsigned m = vec_release_mask();
  unsigned a, b, c, d;
  int avx512 = __get_cpuid_count(7, 0, &a, &b, &c, &d) && (b & bit_AVX512F);
  if (m) {
    CHECK(m == X_AVX512, "the reset covers exactly the AVX-512 components", "mask %#x", m);
    avx512_state_is_reset();
  } else {
    /* Nothing to reset: then the CPU or the OS must really lack AVX-512. */
    unsigned lo = 0, hi = 0;
    if (__get_cpuid(1, &a, &b, &c, &d) && (c & bit_OSXSAVE))
      __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    CHECK(!avx512 || (lo & X_AVX512) != X_AVX512, "vec_release is off only without AVX-512 state",
          "XCR0 %#x enables it", lo);
  }
  return ctest_end();
}
