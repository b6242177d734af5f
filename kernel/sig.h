/*
** sig.h — signals: links, monitors and exit signals, between local processes and
** with processes of other nodes (through remote.h).
**
** Links are kept on both ends and monitors on both ends, each end under its
** own proc.lock; no operation holds two proc locks at once. An exit signal
** that arrives through a link the receiver no longer has is ignored (so
** unlink guarantees no later signal from that link). For a process of
** another node, this node keeps only the local end; the `_remote_in`
** functions apply what the other node's end asked for.
*/
#ifndef erlangen_sig_h
#define erlangen_sig_h

#include <stddef.h>
#include "term.h"

struct proc;

/* Delivers an exit signal from `from` to `to` with the encoded reason,
** following Erlang: "kill" (not via a link) kills with "killed"; a trapping
** target gets {"EXIT", from, reason}; "normal" is ignored by a non-trapping
** target unless it sent the signal to itself; anything else kills it. */
/* flags: SIG_VIA_LINK (the signal of a link), SIG_WIRE (reason in the wire form). */
void sig_exit(term_id to, term_id from, const unsigned char *reason, size_t len, int flags);

enum { SIG_VIA_LINK = 1, SIG_WIRE = 2 };
enum { SIG_OK = 0, SIG_NOPROC = -1, SIG_NOMEM = -2, SIG_NOCONN = -3 };

/* Links self and other. Returns SIG_OK, SIG_NOPROC if other is not alive,
** SIG_NOCONN if other's node cannot be reached, or SIG_NOMEM (then no side
** is linked). */
int sig_link(struct proc *self, term_id other);
void sig_unlink(struct proc *self, term_id other);

/* Monitors target and stores the ref in *ref. A dead target yields DOWN
** "noproc" at once. Returns SIG_OK or SIG_NOMEM (then nothing is set up). */
int sig_monitor(struct proc *self, term_id target, term_id *ref);

/* Removes the monitor `ref`; with flush also a queued DOWN. Returns 1 if the
** monitor was still active. */
int sig_demonitor(struct proc *self, term_id ref, int flush);

/* Delivers {"DOWN", ref, from, reason} to watcher if it still holds ref
** (flags: SIG_WIRE). */
void sig_down(term_id watcher, term_id ref, term_id from, const unsigned char *reason, size_t len,
              int flags);

/* The local ends of what another node set up or took down. The in
** functions return SIG_NOPROC when the local process is not alive. */
int sig_link_remote_in(term_id local, term_id remote);
void sig_unlink_remote_in(term_id local, term_id remote);
int sig_monitor_remote_in(term_id local, term_id watcher, term_id ref);
void sig_demonitor_remote_in(term_id local, term_id ref);
/* The caller's end of a remote spawn_link / spawn_monitor. */
void sig_link_remote(struct proc *self, term_id remote);
int sig_monitor_remote(struct proc *self, term_id remote, term_id ref);   /* SIG_OK, SIG_NOPROC, SIG_NOMEM */

/* A monitor of a name on another node starts with target {0, node, 0}
** (creation 0: any incarnation) and learns its pid when the node answers.
** Returns 1 if self still holds monitor `ref` (now of `target` if it was
** unresolved and of target's node); 0 if it was taken down meanwhile. */
int sig_monitor_resolve(struct proc *self, term_id ref, term_id target);

/* For a lost link to node idx (incarnation `creation`, 0: any): copies p's links
** to that node's processes into *links (n of them) and its monitors of
** them into *mons as (ref, pid) pairs, and drops the monitors that
** processes of that node hold on p. Arrays are malloc'ed (free them). */
void sig_collect_node(struct proc *p, uint32_t idx, uint32_t creation, term_id **links, size_t *nl,
                      term_id **mons, size_t *nm);

/* Calls fn(node, ud) for each pid of another node in p's links, monitors
** and monitored-by (under p->lock: fn must take no lock but leaves). */
void sig_each_remote(struct proc *p, void (*fn)(uint32_t node, void *ud), void *ud);

/* Removes, on self's side only, its link to `other` and (if ref is not
** NULL) its monitor `*ref`: undoes a spawn that could not start. */
void sig_forget(struct proc *self, term_id other, const term_id *ref);

/* Removes, on self's side only, its link to `other` and the watcher entry
** of monitor `*ref` (if ref is not NULL): the child's side of sig_forget. */
void sig_forget_watcher(struct proc *self, term_id other, const term_id *ref);

/* Sets trap_exit; returns the previous value. */
int sig_trap_exit(struct proc *self, int flag);

#endif
