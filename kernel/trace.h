/*
** trace.h — erlangen.trace: which processes are traced, for which events,
** and to which tracer; the delivery of trace messages.
**
** A traced process has its events in proc.trace (an atomic byte its own
** send and receive test: one branch when it is 0). Its tracer is kept
** here: for a process traced on its own, in a table by pid; for one traced
** through "all", as the one tracer of all (TRACE_ALL marks it). A process
** spawned while "all" is on is traced from its start. Trace messages are
** ordinary messages to the tracer: queued without waiting, and when its
** mailbox is full dropped and counted in its `dropped`. A tracer that has
** ended stops the tracing that used it.
*/
#ifndef erlangen_trace_h
#define erlangen_trace_h

#include <stddef.h>
#include <stdint.h>
#include "term.h"

struct proc;

enum {
  TRACE_SEND = 1, TRACE_RECEIVE = 2, TRACE_SPAWN = 4, TRACE_EXIT = 8, TRACE_LINK = 16,
  TRACE_EVENTS = 31,
  TRACE_ALL = 128   /* the tracer is the one of "all" */
};

/* Traces process `target` (local) for `events` (TRACE_*; 0 stops) to
** `tracer` (local). Returns 0, or -1 if target is not alive or memory ran
** out. */
int trace_set(term_id target, unsigned events, term_id tracer);

/* Traces every process, those alive now and those spawned later, but the
** tracer itself (events 0: stops tracing through "all"). Returns 0 or -1. */
int trace_set_all(unsigned events, term_id tracer);

/* At spawn, before p runs: p is traced if "all" is on. */
void trace_inherit(struct proc *p);

/* Queues the encoded trace message (the caller built it) for p's tracer,
** never waiting; takes ownership of nothing. A tracer that is gone stops
** p's tracing. */
void trace_deliver(struct proc *p, const unsigned char *msg, size_t len);

/* {"trace", pid, "exit", reason} for p, which is exiting with `reason`
** (codec bytes), built in a state of its own. */
void trace_exit(struct proc *p, const unsigned char *reason, size_t len);

/* p has ended: its entry goes. */
void trace_forget(struct proc *p);

#endif
