/*
** links.h — links, monitors and exit signals between local processes.
**
** Links are kept on both ends and monitors on both ends, each end under its
** own proc.lock; no operation holds two proc locks at once. An exit signal
** that arrives through a link the receiver no longer has is ignored (so
** unlink guarantees no later signal from that link).
*/
#ifndef erlangen_links_h
#define erlangen_links_h

#include <stddef.h>
#include "term.h"

struct proc;

/* Delivers an exit signal from `from` to `to` with the encoded reason,
** following Erlang: "kill" (not via a link) kills with "killed"; a trapping
** target gets {"EXIT", from, reason}; "normal" is ignored by a non-trapping
** target unless it sent the signal to itself; anything else kills it. */
void sig_exit(term_id to, term_id from, const unsigned char *reason, size_t len, int via_link);

enum { SIG_OK = 0, SIG_NOPROC = -1, SIG_NOMEM = -2 };

/* Links self and other. Returns SIG_OK, SIG_NOPROC if other is not alive,
** or SIG_NOMEM (then no side is linked). */
int sig_link(struct proc *self, term_id other);
void sig_unlink(struct proc *self, term_id other);

/* Monitors target and stores the ref in *ref. A dead target yields DOWN
** "noproc" at once. Returns SIG_OK or SIG_NOMEM (then nothing is set up). */
int sig_monitor(struct proc *self, term_id target, term_id *ref);

/* Removes the monitor `ref`; with flush also a queued DOWN. Returns 1 if the
** monitor was still active. */
int sig_demonitor(struct proc *self, term_id ref, int flush);

/* Delivers {"DOWN", ref, from, reason} to watcher if it still holds ref. */
void sig_down(term_id watcher, term_id ref, term_id from, const unsigned char *reason, size_t len);

/* Removes, on self's side only, its link to `other` and (if ref is not
** NULL) its monitor `*ref`: undoes a spawn that could not start. */
void sig_forget(struct proc *self, term_id other, const term_id *ref);

/* Removes, on self's side only, its link to `other` and the watcher entry
** of monitor `*ref` (if ref is not NULL): the child's side of sig_forget. */
void sig_forget_watcher(struct proc *self, term_id other, const term_id *ref);

/* Sets trap_exit; returns the previous value. */
int sig_trap_exit(struct proc *self, int flag);

#endif
