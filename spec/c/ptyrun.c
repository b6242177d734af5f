/*
** ptyrun.c — runs a program on a pseudo-terminal for the specs (spec/repl_spec.lua).
**
** usage: ptyrun SECONDS PROGRAM [ARGS...]
** The program runs with the pty (80x24) as its stdin, stdout and stderr.
** ptyrun copies its own stdin to the terminal and the terminal's output to
** its stdout. Its first output line is "ptyrun <own pid> <child pid>".
**
** It always ends, and always ends the child first (by its pid):
** - when the child exits, it prints "\nptyrun: exit N" (or "signal N") and
**   exits 0;
** - when its stdin ends, it sends the child SIGTERM, then SIGKILL after
**   GRACE_MS, and exits 0;
** - after SECONDS it sends the child SIGKILL, prints "\nptyrun: timeout" and
**   exits 124 (as timeout(1)).
** A reader that goes away costs nothing but the output (SIGPIPE is ignored).
*/

#include <errno.h>
#include <poll.h>
#include <pty.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#define GRACE_MS 2000

static pid_t child;

static long long now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void put(const char *buf, size_t len) {
  while (len > 0) {
    ssize_t n = write(STDOUT_FILENO, buf, len);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;  /* the reader is gone */
    buf += n;
    len -= (size_t)n;
  }
}

/* Prints how the child ended; returns 0. */
static int report(int status) {
  char line[64];
  if (WIFEXITED(status)) snprintf(line, sizeof line, "\nptyrun: exit %d\n", WEXITSTATUS(status));
  else snprintf(line, sizeof line, "\nptyrun: signal %d\n", WTERMSIG(status));
  put(line, strlen(line));
  return 0;
}

/* Waits up to ms for the child; 1 and its status if it ended. */
static int reap(int ms, int *status) {
  long long end = now_ms() + ms;
  for (;;) {
    pid_t r = waitpid(child, status, WNOHANG);
    if (r == child) return 1;
    if (r < 0 && errno != EINTR) { *status = 0; return 1; }
    if (now_ms() >= end) return 0;
    poll(NULL, 0, 10);
  }
}

/* Ends the child by its pid: SIGTERM, then SIGKILL after the grace. */
static int end_child(void) {
  int status;
  kill(child, SIGTERM);
  if (!reap(GRACE_MS, &status)) {
    kill(child, SIGKILL);
    reap(GRACE_MS, &status);
  }
  return 0;
}

int main(int argc, char **argv) {
  struct winsize ws = { .ws_row = 24, .ws_col = 80 };
  char buf[4096];
  int master, status;
  long long deadline;
  if (argc < 3 || atoi(argv[1]) <= 0) {
    fputs("usage: ptyrun SECONDS PROGRAM [ARGS...]\n", stderr);
    return 2;
  }
  deadline = now_ms() + 1000LL * atoi(argv[1]);
  signal(SIGPIPE, SIG_IGN);
  child = forkpty(&master, NULL, NULL, &ws);
  if (child < 0) { perror("ptyrun: forkpty"); return 2; }
  if (child == 0) {
    signal(SIGPIPE, SIG_DFL);
    execvp(argv[2], argv + 2);
    perror("ptyrun: exec");
    _exit(127);
  }
  snprintf(buf, sizeof buf, "ptyrun %d %d\n", (int)getpid(), (int)child);
  put(buf, strlen(buf));
  for (;;) {
    struct pollfd fds[2] = { { master, POLLIN, 0 }, { STDIN_FILENO, POLLIN, 0 } };
    long long left = deadline - now_ms();
    int n;
    if (left <= 0) {
      kill(child, SIGKILL);
      reap(GRACE_MS, &status);
      put("\nptyrun: timeout\n", 17);
      return 124;
    }
    n = poll(fds, 2, left > 100 ? 100 : (int)left);
    if (n < 0 && errno != EINTR) break;
    if (n <= 0) continue;
    if (fds[0].revents & (POLLIN | POLLHUP | POLLERR)) {
      ssize_t got = read(master, buf, sizeof buf);
      if (got > 0) put(buf, (size_t)got);
      else if (got < 0 && errno == EINTR) continue;
      else {  /* EIO: every slave end is closed, the child is ending */
        if (reap((int)(deadline - now_ms() > 0 ? deadline - now_ms() : 0), &status)) return report(status);
        continue;  /* the deadline check ends it */
      }
    }
    if ((fds[1].revents & (POLLIN | POLLHUP | POLLERR))) {
      ssize_t got = read(STDIN_FILENO, buf, sizeof buf);
      if (got == 0 || (got < 0 && errno != EINTR)) return end_child();
      for (ssize_t off = 0; off < got;) {
        ssize_t w = write(master, buf + off, (size_t)(got - off));
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) break;
        off += w;
      }
    }
  }
  return end_child();
}
