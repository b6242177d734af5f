/*
** registry.h — registered process names. A name maps to at most one live
** process and a process has at most one name; both directions change
** together under the registry lock.
*/
#ifndef erlangen_registry_h
#define erlangen_registry_h

#include "term.h"

struct proc;

enum { REG_OK = 0, REG_TAKEN, REG_HAS_NAME, REG_DEAD };

int reg_init(void);
int reg_register(const char *name, struct proc *p);   /* REG_* */
int reg_unregister(const char *name);                 /* 0, or -1 if not registered */
int reg_whereis(const char *name, term_id *pid);      /* 1 if found */
void reg_remove(struct proc *p);                      /* on exit */
/* Copies every registered name, each followed by a NUL, into buf if they
** fit in `cap` bytes. Returns the bytes needed (copied only if <= cap). */
size_t reg_snapshot(char *buf, size_t cap);
/* Copies p's name into buf (size n); returns 0 if p has none. */
int reg_name_of(struct proc *p, char *buf, size_t n);

#endif
