/*
** registry.c — registered names and aliases: two chained hash tables under
** one lock.
*/
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include "process.h"
#include "registry.h"

typedef struct reg_entry {
  struct reg_entry *next;
  proc *p;                  /* holds a reference while registered */
  char name[];
} reg_entry;

typedef struct alias_entry {
  struct alias_entry *next;
  term_id ref;
  proc *p;                  /* no reference: reg_remove drops the entry first */
} alias_entry;

#define ALIAS_BUCKETS 256u  /* aliases live for one call each: few at a time */

/* The module's one global. Everything in it is guarded by `lock`. */
static struct {
  pthread_mutex_t lock;
  reg_entry **buckets;
  size_t nbuckets, n;
  alias_entry *aliases[ALIAS_BUCKETS];
} R = { PTHREAD_MUTEX_INITIALIZER, NULL, 0, 0, {0} };

static size_t hash(const char *s) {
  size_t h = 1469598103934665603ull;
  for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
  return h;
}

int reg_init(void) {
  pthread_mutex_lock(&R.lock);
  if (!R.buckets) {
    R.nbuckets = 64;
    R.buckets = calloc(R.nbuckets, sizeof *R.buckets);
  }
  int ok = R.buckets != NULL;
  pthread_mutex_unlock(&R.lock);
  return ok ? 0 : -1;
}

static reg_entry **find_locked(const char *name) {
  reg_entry **e = &R.buckets[hash(name) & (R.nbuckets - 1)];
  while (*e && strcmp((*e)->name, name) != 0) e = &(*e)->next;
  return e;
}

static void grow_locked(void) {
  size_t nb = R.nbuckets * 2;
  reg_entry **b = calloc(nb, sizeof *b);
  if (!b) return;  /* keep the old table: slower, still correct */
  for (size_t i = 0; i < R.nbuckets; i++)
    for (reg_entry *e = R.buckets[i], *next; e; e = next) {
      next = e->next;
      size_t h = hash(e->name) & (nb - 1);
      e->next = b[h];
      b[h] = e;
    }
  free(R.buckets);
  R.buckets = b;
  R.nbuckets = nb;
}

int reg_register(const char *name, proc *p) {
  int rc = REG_OK;
  pthread_mutex_lock(&R.lock);
  if (*find_locked(name)) rc = REG_TAKEN;
  else if (p->name) rc = REG_HAS_NAME;
  else {
    int alive = proc_alive(p);
    size_t len = strlen(name);
    reg_entry *e = alive ? malloc(sizeof *e + len + 1) : NULL;
    if (!alive) rc = REG_DEAD;
    else if (!e || !(p->name = strdup(name))) { free(e); rc = REG_DEAD; }
    else {
      memcpy(e->name, name, len + 1);
      e->p = p;
      proc_retain(p);
      reg_entry **slot = find_locked(name);
      e->next = *slot;
      *slot = e;
      if (++R.n > R.nbuckets) grow_locked();
    }
  }
  pthread_mutex_unlock(&R.lock);
  return rc;
}

static proc *unlink_locked(const char *name) {
  reg_entry **slot = find_locked(name), *e = *slot;
  if (!e) return NULL;
  *slot = e->next;
  R.n--;
  proc *p = e->p;
  free(p->name);
  p->name = NULL;
  free(e);
  return p;
}

int reg_unregister(const char *name) {
  pthread_mutex_lock(&R.lock);
  proc *p = unlink_locked(name);
  pthread_mutex_unlock(&R.lock);
  if (!p) return -1;
  proc_release(p);
  return 0;
}

int reg_whereis(const char *name, term_id *pid) {
  pthread_mutex_lock(&R.lock);
  reg_entry *e = R.buckets ? *find_locked(name) : NULL;
  if (e) *pid = e->p->pid;
  pthread_mutex_unlock(&R.lock);
  return e != NULL;
}

static alias_entry **alias_find_locked(term_id ref) {
  alias_entry **e = &R.aliases[(ref.n ^ ref.node) % ALIAS_BUCKETS];
  while (*e && !term_eq((*e)->ref, ref)) e = &(*e)->next;
  return e;
}

static void alias_drop_locked(alias_entry **slot) {
  alias_entry *e = *slot;
  *slot = e->next;
  free(e);
}

void reg_remove(proc *p) {
  pthread_mutex_lock(&R.lock);
  proc *q = p->name ? unlink_locked(p->name) : NULL;
  term_id *a = p->aliases.items;
  for (size_t i = 0; i < p->aliases.n; i++) {
    alias_entry **slot = alias_find_locked(a[i]);
    if (*slot) alias_drop_locked(slot);
  }
  p->aliases.n = 0;
  pthread_mutex_unlock(&R.lock);
  if (q) proc_release(q);
}

size_t reg_snapshot(char *buf, size_t cap) {
  size_t need = 0;
  pthread_mutex_lock(&R.lock);
  for (size_t i = 0; i < R.nbuckets; i++)
    for (reg_entry *e = R.buckets[i]; e; e = e->next) need += strlen(e->name) + 1;
  if (need <= cap) {
    char *w = buf;
    for (size_t i = 0; i < R.nbuckets; i++)
      for (reg_entry *e = R.buckets[i]; e; e = e->next) {
        size_t n = strlen(e->name) + 1;
        memcpy(w, e->name, n);
        w += n;
      }
  }
  pthread_mutex_unlock(&R.lock);
  return need;
}

int reg_name_of(proc *p, char *buf, size_t n) {
  int has = 0;
  pthread_mutex_lock(&R.lock);
  if (p->name && n) {
    strncpy(buf, p->name, n - 1);
    buf[n - 1] = '\0';
    has = 1;
  }
  pthread_mutex_unlock(&R.lock);
  return has;
}

int reg_alias(proc *p, term_id *ref) {
  alias_entry *e = malloc(sizeof *e);
  if (!e) return -1;
  e->ref = term_new_ref();
  e->p = p;
  int rc = -1;
  pthread_mutex_lock(&R.lock);
  /* proc_exit sets the status before reg_remove takes this lock, so an
  ** alias added after the check is still removed by it. */
  if (proc_alive(p) && proc_vec_push(&p->aliases, &e->ref, sizeof e->ref) == 0) {
    alias_entry **slot = alias_find_locked(e->ref);
    e->next = *slot;
    *slot = e;
    *ref = e->ref;
    rc = 0;
  }
  pthread_mutex_unlock(&R.lock);
  if (rc != 0) free(e);
  return rc;
}

int reg_unalias(proc *p, term_id ref) {
  int found = 0;
  pthread_mutex_lock(&R.lock);
  alias_entry **slot = alias_find_locked(ref);
  if (*slot && (*slot)->p == p) {
    alias_drop_locked(slot);
    term_id *a = p->aliases.items;
    for (size_t i = 0; i < p->aliases.n; i++)
      if (term_eq(a[i], ref)) { a[i] = a[--p->aliases.n]; break; }
    found = 1;
  }
  pthread_mutex_unlock(&R.lock);
  return found;
}

int reg_alias_owner(term_id ref, term_id *pid) {
  pthread_mutex_lock(&R.lock);
  alias_entry *e = *alias_find_locked(ref);
  if (e) *pid = e->p->pid;
  pthread_mutex_unlock(&R.lock);
  return e != NULL;
}

int reg_alias_active(proc *p, term_id ref) {
  pthread_mutex_lock(&R.lock);
  alias_entry *e = *alias_find_locked(ref);
  int active = e && e->p == p;
  pthread_mutex_unlock(&R.lock);
  return active;
}
