/*
** entry.h — memory for small mailbox entries, recycled between threads.
**
** A message is usually made by one thread and freed by another (its
** receiver). glibc takes such a block back one free at a time, through an
** atomic on a line the allocating thread contends for, and the allocating
** thread then goes the slow way through malloc for every message. Here each
** thread keeps two short lists of blocks (magazines): one it allocates
** from and one it frees into. A full free magazine goes to a shared depot,
** and an empty allocation magazine is refilled from it (or from the
** thread's own free magazine): one mutex per ENTRY_MAG messages instead of
** two contended allocator calls per message.
**
** Bounds: a running thread holds at most 2 * ENTRY_MAG blocks, and none
** once entry_flush ran (a thread calls it before it sleeps in the kernel,
** so 20,000 idle processes hold nothing); the depot holds at most
** ENTRY_DEPOT magazines and frees the rest; a thread's blocks go back to
** the depot when it exits.
*/
#ifndef erlangen_entry_h
#define erlangen_entry_h

#include <stddef.h>

#define ENTRY_SMALL 128   /* the size of every pooled block, in bytes */

/* A block of ENTRY_SMALL bytes, 64-byte aligned (allocated when no recycled
** one is at hand), or NULL when memory is short. */
void *entry_alloc(void);

/* Takes back a block from entry_alloc (any thread's). */
void entry_free(void *p);

/* Gives the calling thread's magazines to the depot. */
void entry_flush(void);

/* Blocks held by the depot now (for tests). */
size_t entry_depot_blocks(void);

#define ENTRY_MAG   32    /* blocks per magazine */
#define ENTRY_DEPOT 64    /* magazines the depot keeps (256 KiB at most) */

#endif
