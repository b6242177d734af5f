/*
** vecstate.h — what a thread gives back before it sleeps in the kernel:
** the AVX-512 registers that glibc's string functions leave in use.
**
** On a CPU with AVX-512, glibc's memcpy, strlen and friends use zmm16-31
** (and the mask registers k0-7), and once used, that state stays "in use"
** until something resets it: no ordinary instruction does (vzeroupper
** leaves zmm16-31 alone). Every context switch of such a thread then saves
** and restores about 1 KiB more of register state, and in a ring of 1,000
** processes that memory is cold each time. vec_release() puts those
** registers back in their initial state, so the kernel has nothing of them
** to save or restore until the thread uses them again.
**
** Contract: vec_release() changes no register a caller may hold a value in.
** It resets only the opmask, ZMM_Hi256 and Hi16_ZMM components (k0-7, the
** upper halves of zmm0-15, zmm16-31), which the x86-64 System V ABI makes
** call-clobbered, and it is an opaque call (noipa: no caller may assume it
** leaves any of them alone); x87, SSE (xmm0-15, MXCSR)
** and the AVX upper halves of ymm0-15 are left as they are. It does nothing
** where the OS has not enabled AVX-512 state (other CPUs, valgrind) or on
** other architectures. Safe from any thread at any time.
*/
#ifndef erlangen_vecstate_h
#define erlangen_vecstate_h

/* Resets the AVX-512 register state, if any, to its initial state. */
void vec_release(void);

/* The XSAVE components vec_release resets on this machine (a bit mask as
** in XCR0; 0 when it does nothing). For tests and docs. */
unsigned vec_release_mask(void);

#endif
