/*
** sig.c — signals: links, monitors and exit signals.
*/
#include <stdlib.h>
#include <string.h>
#include "kernel.h"
#include "process.h"
#include "sig.h"
#include "remote.h"

static int link_index(proc_vec *v, term_id pid) {
  proc_link *l = v->items;
  for (size_t i = 0; i < v->n; i++) if (term_eq(l[i].pid, pid)) return (int)i;
  return -1;
}

static int link_remove(proc_vec *v, term_id pid) {
  int i = link_index(v, pid);
  if (i < 0) return 0;
  proc_link *l = v->items;
  l[i] = l[--v->n];
  return 1;
}

static int mon_remove(proc_vec *v, term_id ref, proc_mon *out) {
  proc_mon *m = v->items;
  for (size_t i = 0; i < v->n; i++)
    if (term_eq(m[i].ref, ref)) {
      if (out) *out = m[i];
      m[i] = m[--v->n];
      return 1;
    }
  return 0;
}

/* Queues {"EXIT", from, reason} into p's mailbox (p->lock held). An EXIT
** of a link is never dropped (there is one per link); those sent with
** exit/2 have a bound of their own (see mbox_put_signal). */
static void queue_exit_locked(proc *p, term_id from, const unsigned char *reason, size_t len,
                              int flags) {
  mbox_msg *m = mbox_msg_new(MBOX_EXIT, reason, len, from, (term_id){0, 0, 0});
  if (!m) return;  /* out of memory: the signal is lost, as on a dead link */
  m->wire = (flags & SIG_WIRE) != 0;
  mbox_put_signal(&p->mb, m, !(flags & SIG_VIA_LINK));
}

void sig_exit(term_id to, term_id from, const unsigned char *reason, size_t len, int flags) {
  int via_link = (flags & SIG_VIA_LINK) != 0;
  if (to.node != 0) { remote_get()->exit(from, to, reason, len, via_link); return; }
  proc *p = proc_get(to);
  if (!p) return;
  int kill = !via_link && kern_reason_is(reason, len, KR_KILL);
  int normal = kern_reason_is(reason, len, KR_NORMAL);
  int doom = 0;
  pthread_mutex_lock(&p->lock);
  if (p->status == PROC_ALIVE && (!via_link || link_remove(&p->links, from))) {
    if (kill) doom = 1;
    else if (p->trap_exit) queue_exit_locked(p, from, reason, len, flags);
    else if (!normal || term_eq(to, from)) doom = 1;
  }
  pthread_mutex_unlock(&p->lock);
  if (doom) {
    size_t klen;
    const unsigned char *killed = kern_reason(KR_KILLED, &klen);
    if (kill) proc_doom(p, killed, klen); else proc_doom(p, reason, len);
  }
  proc_release(p);
}

int sig_link(proc *self, term_id other) {
  if (term_eq(self->pid, other)) return 0;
  pthread_mutex_lock(&self->lock);
  int added = link_index(&self->links, other) < 0;
  if (added) {
    proc_link l = { other };
    if (proc_vec_push(&self->links, &l, sizeof l) != 0) {
      pthread_mutex_unlock(&self->lock);
      return SIG_NOMEM;
    }
  }
  pthread_mutex_unlock(&self->lock);
  if (other.node != 0) {
    int rc = remote_get()->link(self->pid, other);
    if (rc != REMOTE_OK && added) {
      pthread_mutex_lock(&self->lock);
      link_remove(&self->links, other);
      pthread_mutex_unlock(&self->lock);
    }
    return rc == REMOTE_OK ? SIG_OK : rc == REMOTE_NOCONN ? SIG_NOCONN : SIG_NOPROC;
  }
  int alive = 0, nomem = 0;
  proc *q = proc_get(other);
  if (q) {
    pthread_mutex_lock(&q->lock);
    if (q->status == PROC_ALIVE) {
      alive = 1;
      if (link_index(&q->links, self->pid) < 0) {
        proc_link l = { self->pid };
        nomem = proc_vec_push(&q->links, &l, sizeof l) != 0;
      }
    }
    pthread_mutex_unlock(&q->lock);
    proc_release(q);
  }
  if ((!alive || nomem) && added) {
    pthread_mutex_lock(&self->lock);
    link_remove(&self->links, other);
    pthread_mutex_unlock(&self->lock);
  }
  return nomem ? SIG_NOMEM : alive ? SIG_OK : SIG_NOPROC;
}

void sig_unlink(proc *self, term_id other) {
  pthread_mutex_lock(&self->lock);
  int had = link_remove(&self->links, other);
  pthread_mutex_unlock(&self->lock);
  if (other.node != 0) {
    if (had) remote_get()->unlink(self->pid, other);
    return;
  }
  proc *q = proc_get(other);
  if (q) {
    pthread_mutex_lock(&q->lock);
    link_remove(&q->links, self->pid);
    pthread_mutex_unlock(&q->lock);
    proc_release(q);
  }
}

int sig_monitor(proc *self, term_id target, term_id *out) {
  term_id ref = term_new_ref();
  proc_mon mine = { ref, target }, theirs = { ref, self->pid };
  pthread_mutex_lock(&self->lock);
  int nomem = proc_vec_push(&self->monitors, &mine, sizeof mine) != 0;
  pthread_mutex_unlock(&self->lock);
  if (nomem) return SIG_NOMEM;
  int alive = 0;
  if (target.node != 0) {
    *out = ref;
    int rc = remote_get()->monitor(self->pid, target, ref);
    if (rc != REMOTE_OK) {
      size_t len;
      const unsigned char *why = kern_reason(rc == REMOTE_NOCONN ? KR_NOCONNECTION : KR_NOPROC, &len);
      sig_down(self->pid, ref, target, why, len, 0);
    }
    return SIG_OK;
  }
  proc *q = proc_get(target);
  if (q) {
    pthread_mutex_lock(&q->lock);
    if (q->status == PROC_ALIVE) {
      alive = 1;
      nomem = proc_vec_push(&q->monitored_by, &theirs, sizeof theirs) != 0;
    }
    pthread_mutex_unlock(&q->lock);
    proc_release(q);
  }
  if (nomem) {
    pthread_mutex_lock(&self->lock);
    mon_remove(&self->monitors, ref, NULL);
    pthread_mutex_unlock(&self->lock);
    return SIG_NOMEM;
  }
  *out = ref;
  if (!alive) {
    size_t len;
    const unsigned char *noproc = kern_reason(KR_NOPROC, &len);
    sig_down(self->pid, ref, target, noproc, len, 0);
  }
  return SIG_OK;
}

int sig_demonitor(proc *self, term_id ref, int flush) {
  proc_mon m;
  pthread_mutex_lock(&self->lock);
  int active = mon_remove(&self->monitors, ref, &m);
  pthread_mutex_unlock(&self->lock);
  if (flush) mbox_remove_down(&self->mb, ref);
  if (active && m.pid.node != 0) remote_get()->demonitor(self->pid, m.pid, ref);
  else if (active) {
    proc *q = proc_get(m.pid);
    if (q) {
      pthread_mutex_lock(&q->lock);
      mon_remove(&q->monitored_by, ref, NULL);
      pthread_mutex_unlock(&q->lock);
      proc_release(q);
    }
  }
  return active;
}

void sig_down(term_id watcher, term_id ref, term_id from, const unsigned char *reason, size_t len,
              int flags) {
  if (watcher.node != 0) { remote_get()->down(from, watcher, ref, reason, len); return; }
  proc *p = proc_get(watcher);
  if (!p) return;
  pthread_mutex_lock(&p->lock);
  if (p->status == PROC_ALIVE && mon_remove(&p->monitors, ref, NULL)) {
    mbox_msg *m = mbox_msg_new(MBOX_DOWN, reason, len, from, ref);
    if (m) {
      m->wire = (flags & SIG_WIRE) != 0;
      mbox_put_signal(&p->mb, m, 0);
    }
  }
  pthread_mutex_unlock(&p->lock);
  proc_release(p);
}

/* Removes self's link to `other` and monitor `*ref`, as the monitoring
** side (monitors) or the monitored side (monitored_by). */
static void forget(proc *self, term_id other, const term_id *ref, int watched) {
  pthread_mutex_lock(&self->lock);
  link_remove(&self->links, other);
  if (ref) mon_remove(watched ? &self->monitored_by : &self->monitors, *ref, NULL);
  pthread_mutex_unlock(&self->lock);
}

void sig_forget(proc *self, term_id other, const term_id *ref) { forget(self, other, ref, 0); }

void sig_forget_watcher(proc *self, term_id other, const term_id *ref) { forget(self, other, ref, 1); }

int sig_trap_exit(proc *self, int flag) {
  pthread_mutex_lock(&self->lock);
  int old = self->trap_exit;
  self->trap_exit = flag;
  pthread_mutex_unlock(&self->lock);
  return old;
}

/* ---- the local ends of links and monitors with other nodes ---- */

/* Adds `item` to the vector `off` bytes into p (under p's lock) if p is
** alive. Returns SIG_OK, SIG_NOPROC or SIG_NOMEM. */
static int add_if_alive(proc *p, proc_vec *v, const void *item, size_t size, int unique_link) {
  int rc = SIG_OK;
  pthread_mutex_lock(&p->lock);
  if (p->status != PROC_ALIVE) rc = SIG_NOPROC;
  else if (!(unique_link && link_index(v, *(const term_id *)item) >= 0) &&
           proc_vec_push(v, item, size) != 0)
    rc = SIG_NOMEM;
  pthread_mutex_unlock(&p->lock);
  return rc;
}

int sig_link_remote_in(term_id local, term_id remote) {
  proc *p = proc_get(local);
  if (!p) return SIG_NOPROC;
  proc_link l = { remote };
  int rc = add_if_alive(p, &p->links, &l, sizeof l, 1);
  proc_release(p);
  return rc;
}

void sig_unlink_remote_in(term_id local, term_id remote) {
  proc *p = proc_get(local);
  if (!p) return;
  pthread_mutex_lock(&p->lock);
  link_remove(&p->links, remote);
  pthread_mutex_unlock(&p->lock);
  proc_release(p);
}

int sig_monitor_remote_in(term_id local, term_id watcher, term_id ref) {
  proc *p = proc_get(local);
  if (!p) return SIG_NOPROC;
  proc_mon m = { ref, watcher };
  int rc = add_if_alive(p, &p->monitored_by, &m, sizeof m, 0);
  proc_release(p);
  return rc;
}

void sig_demonitor_remote_in(term_id local, term_id ref) {
  proc *p = proc_get(local);
  if (!p) return;
  pthread_mutex_lock(&p->lock);
  mon_remove(&p->monitored_by, ref, NULL);
  pthread_mutex_unlock(&p->lock);
  proc_release(p);
}

void sig_link_remote(proc *self, term_id remote) {
  proc_link l = { remote };
  add_if_alive(self, &self->links, &l, sizeof l, 1);
}

int sig_monitor_remote(proc *self, term_id remote, term_id ref) {
  proc_mon m = { ref, remote };
  return add_if_alive(self, &self->monitors, &m, sizeof m, 0);
}

int sig_monitor_resolve(proc *self, term_id ref, term_id target) {
  int found = 0;
  pthread_mutex_lock(&self->lock);
  proc_mon *m = self->monitors.items;
  for (size_t i = 0; i < self->monitors.n && !found; i++)
    if (term_eq(m[i].ref, ref)) {
      found = 1;
      if (m[i].pid.n == 0 && m[i].pid.node == target.node) m[i].pid = target;   /* only an unresolved one, by its node */
    }
  pthread_mutex_unlock(&self->lock);
  return found;
}

/* creation 0 (never a node's), asked or held: any incarnation. */
static int of_node(term_id id, uint32_t idx, uint32_t creation) {
  return id.node == idx && (creation == 0 || id.creation == 0 || id.creation == creation);
}

void sig_collect_node(proc *p, uint32_t idx, uint32_t creation, term_id **links, size_t *nl,
                      term_id **mons, size_t *nm) {
  *links = *mons = NULL;
  *nl = *nm = 0;
  pthread_mutex_lock(&p->lock);
  proc_link *l = p->links.items;
  proc_mon *m = p->monitors.items, *w = p->monitored_by.items;
  size_t want_l = 0, want_m = 0;
  for (size_t i = 0; i < p->links.n; i++) want_l += of_node(l[i].pid, idx, creation);
  for (size_t i = 0; i < p->monitors.n; i++) want_m += of_node(m[i].pid, idx, creation);
  if (want_l) *links = malloc(want_l * sizeof **links);
  if (want_m) *mons = malloc(2 * want_m * sizeof **mons);
  for (size_t i = 0; *links && i < p->links.n; i++)
    if (of_node(l[i].pid, idx, creation)) (*links)[(*nl)++] = l[i].pid;
  for (size_t i = 0; *mons && i < p->monitors.n; i++)
    if (of_node(m[i].pid, idx, creation)) {
      (*mons)[2 * *nm] = m[i].ref;
      (*mons)[2 * *nm + 1] = m[i].pid;
      (*nm)++;
    }
  for (size_t i = 0; i < p->monitored_by.n;)
    if (of_node(w[i].pid, idx, creation)) w[i] = w[--p->monitored_by.n];
    else i++;
  pthread_mutex_unlock(&p->lock);
}

void sig_each_remote(proc *p, void (*fn)(uint32_t node, void *ud), void *ud) {
  pthread_mutex_lock(&p->lock);
  proc_link *l = p->links.items;
  proc_mon *m = p->monitors.items, *w = p->monitored_by.items;
  for (size_t i = 0; i < p->links.n; i++) if (l[i].pid.node) fn(l[i].pid.node, ud);
  for (size_t i = 0; i < p->monitors.n; i++) if (m[i].pid.node) fn(m[i].pid.node, ud);
  for (size_t i = 0; i < p->monitored_by.n; i++) if (w[i].pid.node) fn(w[i].pid.node, ud);
  pthread_mutex_unlock(&p->lock);
}
