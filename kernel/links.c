/*
** links.c — links, monitors and exit signals between local processes.
*/
#include <stdlib.h>
#include <string.h>
#include "kernel.h"
#include "process.h"
#include "links.h"

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
                              int via_link) {
  mbox_msg *m = mbox_msg_new(MBOX_EXIT, reason, len);
  if (!m) return;  /* out of memory: the signal is lost, as on a dead link */
  m->from = from;
  mbox_put_signal(&p->mb, m, !via_link);
}

void sig_exit(term_id to, term_id from, const unsigned char *reason, size_t len, int via_link) {
  proc *p = proc_get(to);
  if (!p) return;
  int kill = !via_link && kern_reason_is(reason, len, KR_KILL);
  int normal = kern_reason_is(reason, len, KR_NORMAL);
  int doom = 0;
  pthread_mutex_lock(&p->lock);
  if (p->status == PROC_ALIVE && (!via_link || link_remove(&p->links, from))) {
    if (kill) doom = 1;
    else if (p->trap_exit) queue_exit_locked(p, from, reason, len, via_link);
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
  link_remove(&self->links, other);
  pthread_mutex_unlock(&self->lock);
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
    sig_down(self->pid, ref, target, noproc, len);
  }
  return SIG_OK;
}

int sig_demonitor(proc *self, term_id ref, int flush) {
  proc_mon m;
  pthread_mutex_lock(&self->lock);
  int active = mon_remove(&self->monitors, ref, &m);
  pthread_mutex_unlock(&self->lock);
  if (flush) mbox_remove_down(&self->mb, ref);
  if (active) {
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

void sig_down(term_id watcher, term_id ref, term_id from, const unsigned char *reason, size_t len) {
  proc *p = proc_get(watcher);
  if (!p) return;
  pthread_mutex_lock(&p->lock);
  if (p->status == PROC_ALIVE && mon_remove(&p->monitors, ref, NULL)) {
    mbox_msg *m = mbox_msg_new(MBOX_DOWN, reason, len);
    if (m) {
      m->from = from;
      m->ref = ref;
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
