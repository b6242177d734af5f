/*
** registry.h — the two ways to address a process besides its pid:
** registered names and aliases (refs a process accepts messages through,
** OTP's alias/unalias).
** A name maps to at most one live process and a process has at most one
** name; an alias belongs to one process. Both directions of each map change
** together under the registry lock, and a process's names and aliases are
** removed by reg_remove when it exits.
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

/* A new alias of p, stored in *ref. Returns 0, or -1 when out of memory or
** p is exiting. */
int reg_alias(struct proc *p, term_id *ref);
/* Deactivates p's alias `ref`; returns 1 if it was active. */
int reg_unalias(struct proc *p, term_id ref);
/* The owner of an active alias; 1 if found. */
int reg_alias_owner(term_id ref, term_id *pid);
/* 1 while `ref` is an active alias of p. */
int reg_alias_active(struct proc *p, term_id ref);

#endif
