/*
** test_portmap.c — the port mapper's checks (names, ports, loopback
** addresses), its client calls against a daemon forked from this test, and
** pmap_ensure starting the build tree's `erlangen --port-mapper`, alone and
** raced. Links only portmap.c (spec/portmap_spec.lua tests the protocol).
*/
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include "ctest.h"
#include "portmap.h"

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void pause_ms(int ms) {
  struct timespec ts = { 0, ms * 1000000L };
  nanosleep(&ts, NULL);
}

static void set_port_env(int port) {
  char s[16];
  snprintf(s, sizeof s, "%d", port);
  setenv(PMAP_PORT_ENV, s, 1);
}

/* A port nobody listens on (it was free a moment ago). */
static int free_port(void) {
  struct sockaddr_in a;
  socklen_t len = sizeof a;
  int s = socket(AF_INET, SOCK_STREAM, 0), port;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (bind(s, (struct sockaddr *)&a, sizeof a) != 0 || getsockname(s, (struct sockaddr *)&a, &len) != 0)
    exit(2);
  port = ntohs(a.sin_port);
  close(s);
  return port;
}

/* A socket listening on loopback that nobody accepts on; *port gets its port. */
static int silent_listener(int *port) {
  struct sockaddr_in a;
  socklen_t len = sizeof a;
  int s = socket(AF_INET, SOCK_STREAM, 0);
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (bind(s, (struct sockaddr *)&a, sizeof a) != 0 || listen(s, 8) != 0 ||
      getsockname(s, (struct sockaddr *)&a, &len) != 0)
    exit(2);
  *port = ntohs(a.sin_port);
  return s;
}

/* ---- pure checks ---- */

static int lb4(const char *ip) {
  struct sockaddr_in a;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  inet_pton(AF_INET, ip, &a.sin_addr);
  return pmap_is_loopback((struct sockaddr *)&a, sizeof a);
}

static int lb6(const char *ip) {
  struct sockaddr_in6 a;
  memset(&a, 0, sizeof a);
  a.sin6_family = AF_INET6;
  inet_pton(AF_INET6, ip, &a.sin6_addr);
  return pmap_is_loopback((struct sockaddr *)&a, sizeof a);
}

static void test_loopback(void) {
  struct sockaddr_un un;
  struct sockaddr_in in;
  CHECK(lb4("127.0.0.1") && lb4("127.1.2.3") && lb4("127.255.255.255"),
        "127.0.0.0/8 is loopback", "no");
  CHECK(!lb4("10.0.0.1") && !lb4("0.0.0.0") && !lb4("128.0.0.1") && !lb4("126.255.255.255") &&
        !lb4("192.168.1.127"), "other IPv4 addresses are not loopback", "yes");
  CHECK(lb6("::1"), "::1 is loopback", "no");
  CHECK(lb6("::ffff:127.0.0.1") && lb6("::ffff:127.9.9.9"),
        "IPv4-mapped 127.0.0.0/8 is loopback", "no");
  CHECK(!lb6("::") && !lb6("::2") && !lb6("::ffff:10.0.0.1") && !lb6("fe80::1") &&
        !lb6("::127.0.0.1") && !lb6("2001:db8::1"), "other IPv6 addresses are not loopback", "yes");
  memset(&un, 0, sizeof un);
  un.sun_family = AF_UNIX;
  memset(&in, 0, sizeof in);
  in.sin_family = AF_INET;
  in.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  CHECK(!pmap_is_loopback((struct sockaddr *)&un, sizeof un) &&
        !pmap_is_loopback((struct sockaddr *)&in, sizeof in - 1) && !pmap_is_loopback(NULL, 0),
        "another family, a short address or NULL is not loopback", "yes");
}

static void test_names(void) {
  char max[PMAP_NAME_MAX + 2];
  memset(max, 'n', PMAP_NAME_MAX);
  max[PMAP_NAME_MAX] = '\0';
  CHECK(pmap_valid_name("a") && pmap_valid_name("Node-1_x.y") && pmap_valid_name(max),
        "names of [A-Za-z0-9_.-] up to 64 characters are valid", "no");
  max[PMAP_NAME_MAX] = 'n';
  max[PMAP_NAME_MAX + 1] = '\0';
  CHECK(!pmap_valid_name(max), "a 65-character name is invalid", "valid");
  CHECK(!pmap_valid_name("") && !pmap_valid_name(NULL) && !pmap_valid_name("a b") &&
        !pmap_valid_name("a@b") && !pmap_valid_name("x/y") && !pmap_valid_name("a\n") &&
        !pmap_valid_name("caf\xc3\xa9"), "empty, NULL, spaces, '@', '/', controls and UTF-8 are invalid",
        "valid");
}

static void test_ports(void) {
  int p = -1, ok = 1;
  const char *bad[] = { "65536", "-1", "+1", "01", "", "12a", " 1", "1 ", "99999", "0x10", NULL };
  int i;
  CHECK(pmap_parse_port("0", &p) == 0 && p == 0 && pmap_parse_port("65535", &p) == 0 && p == 65535 &&
        pmap_parse_port("4370", &p) == 0 && p == 4370, "ports 0..65535 parse", "p %d", p);
  p = 77;
  for (i = 0; bad[i] != NULL; i++) ok &= pmap_parse_port(bad[i], &p) == -1 && p == 77;
  CHECK(ok && pmap_parse_port(NULL, &p) == -1, "malformed ports fail and leave the result alone",
        "p %d", p);
}

static void test_default_port(void) {
  char err[256] = "";
  int p = -1, r;
  unsetenv(PMAP_PORT_ENV);
  CHECK(pmap_default_port(&p, err, sizeof err) == 0 && p == PMAP_DEFAULT_PORT,
        "the default port is 4370", "p %d", p);
  setenv(PMAP_PORT_ENV, "5123", 1);
  CHECK(pmap_default_port(&p, err, sizeof err) == 0 && p == 5123,
        PMAP_PORT_ENV " sets the port", "p %d", p);
  setenv(PMAP_PORT_ENV, "0", 1);
  r = pmap_default_port(&p, err, sizeof err);
  CHECK(r == -1 && strstr(err, PMAP_PORT_ENV) != NULL && strstr(err, "1..65535") != NULL,
        PMAP_PORT_ENV "=0 is refused with a message", "r %d '%s'", r, err);
  setenv(PMAP_PORT_ENV, "http", 1);
  CHECK(pmap_default_port(&p, err, sizeof err) == -1, PMAP_PORT_ENV "=http is refused", "accepted");
  unsetenv(PMAP_PORT_ENV);
}

/* ---- the client calls against a forked daemon ---- */

static pid_t fork_daemon(int *port) {
  char err[256];
  int fd;
  pid_t pid;
  if (pmap_listen(0, &fd, port, err, sizeof err) != 0) { fprintf(stderr, "%s\n", err); exit(2); }
  pid = fork();
  if (pid == 0) _exit(pmap_serve(fd, err, sizeof err) == 0 ? 0 : 3);
  close(fd);
  return pid;
}

static int stop_daemon(pid_t pid) {
  int status = -1;
  kill(pid, SIGTERM);
  waitpid(pid, &status, 0);
  return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

/* Looks `name` up until the answer is "not registered" (1) or 2 s pass (0). */
static int await_gone(const char *name) {
  char err[256];
  int port;
  double end = now() + 2.0;
  while (now() < end) {
    if (pmap_lookup(NULL, name, &port, 1.0, err, sizeof err) == -1 && strstr(err, "no node") != NULL)
      return 1;
    pause_ms(5);
  }
  return 0;
}

static void test_client_calls(void) {
  char err[256] = "";
  int port = 0, got = 0, fd = -1, fd2 = -1, r, second;
  pid_t pid = fork_daemon(&port);
  int busy = -1;
  set_port_env(port);
  CHECK(pmap_listen(port, &busy, &got, err, sizeof err) == -1 && errno == EADDRINUSE &&
        strstr(err, "already in use") != NULL, "a second daemon cannot listen on a taken port",
        "'%s'", err);
  r = pmap_register("alpha", 9001, &fd, err, sizeof err);
  CHECK(r == 0 && fd >= 0, "pmap_register registers a name", "'%s'", err);
  CHECK(pmap_lookup(NULL, "alpha", &got, 2.0, err, sizeof err) == 0 && got == 9001,
        "pmap_lookup finds the registered port on loopback", "got %d '%s'", got, err);
  got = 0;
  CHECK(pmap_lookup("localhost", "alpha", &got, 2.0, err, sizeof err) == 0 && got == 9001,
        "pmap_lookup resolves 'localhost'", "got %d '%s'", got, err);
  got = 0;
  CHECK(pmap_lookup("127.0.0.1", "alpha", &got, 2.0, err, sizeof err) == 0 && got == 9001,
        "pmap_lookup takes a numeric address", "got %d '%s'", got, err);
  r = pmap_register("alpha", 9002, &fd2, err, sizeof err);
  CHECK(r == -1 && fd2 == -1 && strstr(err, "already registered") != NULL,
        "a live name cannot be registered twice", "r %d '%s'", r, err);
  r = pmap_lookup(NULL, "nobody", &got, 2.0, err, sizeof err);
  CHECK(r == -1 && strstr(err, "no node 'nobody'") != NULL, "looking up an unknown name fails",
        "r %d '%s'", r, err);
  r = pmap_register("bad name", 9003, &fd2, err, sizeof err);
  CHECK(r == -1 && strstr(err, "not a valid node name") != NULL, "pmap_register checks the name",
        "r %d '%s'", r, err);
  r = pmap_register("beta", 0, &fd2, err, sizeof err);
  CHECK(r == -1 && strstr(err, "1..65535") != NULL, "pmap_register checks the port", "'%s'", err);
  r = pmap_lookup(NULL, "x", &got, 0, err, sizeof err);
  CHECK(r == -1 && strstr(err, "timeout") != NULL, "pmap_lookup needs a positive timeout", "'%s'", err);
  close(fd);
  CHECK(await_gone("alpha"), "closing the registration's descriptor unregisters the name", "still there");
  second = pmap_register("alpha", 9004, &fd, err, sizeof err) == 0;
  CHECK(second && pmap_lookup(NULL, "alpha", &got, 2.0, err, sizeof err) == 0 && got == 9004,
        "a released name can be registered again", "'%s'", err);
  CHECK(stop_daemon(pid), "the daemon exits 0 on SIGTERM", "status");
  if (second) {
    char b;
    CHECK(read(fd, &b, 1) == 0, "a registration's descriptor reads EOF when the daemon goes away",
          "not EOF");
    close(fd);
  }
  r = pmap_register("gamma", 9005, &fd2, err, sizeof err);
  CHECK(r == -1 && strstr(err, "no port mapper answers") != NULL,
        "pmap_register without a daemon fails at once", "r %d '%s'", r, err);
  r = pmap_lookup(NULL, "alpha", &got, 2.0, err, sizeof err);
  CHECK(r == -1 && strstr(err, "no port mapper answers") != NULL,
        "pmap_lookup without a daemon fails", "r %d '%s'", r, err);
  unsetenv(PMAP_PORT_ENV);
}

static void test_lookup_bounded(void) {
  char err[256] = "";
  int port, got, r;
  int s = silent_listener(&port);
  double t0;
  set_port_env(port);
  t0 = now();
  r = pmap_lookup(NULL, "alpha", &got, 0.3, err, sizeof err);
  CHECK(r == -1 && now() - t0 < 2.0 && strstr(err, "in time") != NULL,
        "pmap_lookup of a host that never answers ends at its timeout", "r %d %.2fs '%s'", r,
        now() - t0, err);
  close(s);
  unsetenv(PMAP_PORT_ENV);
}

/* ---- pmap_ensure ---- */

/* The pids of live `erlangen --port-mapper --port <port>` processes. */
static int daemons(int port, pid_t *pids, int max) {
  char want[32], path[300], buf[512];
  DIR *d = opendir("/proc");
  struct dirent *e;
  int n = 0;
  snprintf(want, sizeof want, "%d", port);
  while (d != NULL && (e = readdir(d)) != NULL) {
    FILE *f;
    size_t len, i;
    const char *args[8];
    int argc = 0;
    if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
    snprintf(path, sizeof path, "/proc/%s/cmdline", e->d_name);
    f = fopen(path, "rb");
    if (f == NULL) continue;
    len = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[len] = '\0';
    for (i = 0; i < len && argc < 8; i += strlen(buf + i) + 1) args[argc++] = buf + i;
    if (argc == 4 && strcmp(args[1], "--port-mapper") == 0 && strcmp(args[2], "--port") == 0 &&
        strcmp(args[3], want) == 0 && n < max)
      pids[n++] = (pid_t)atoi(e->d_name);
  }
  if (d != NULL) closedir(d);
  return n;
}

/* Waits (at most 2 s) until exactly `want` daemons run on port. */
static int await_daemons(int port, int want, pid_t *pids) {
  double end = now() + 2.0;
  int n;
  while ((n = daemons(port, pids, 8)) != want && now() < end) pause_ms(10);
  return n;
}

static void kill_daemons(int port) {
  pid_t pids[8];
  int i, n = daemons(port, pids, 8);
  for (i = 0; i < n; i++) kill(pids[i], SIGTERM);
  await_daemons(port, 0, pids);
}

static void test_ensure(void) {
  char err[256] = "";
  int port = free_port(), n, fd = -1, got = 0, r;
  pid_t pids[8];
  set_port_env(port);
  r = pmap_ensure(err, sizeof err);
  CHECK(r == 0, "pmap_ensure starts a daemon when none runs", "'%s'", err);
  n = await_daemons(port, 1, pids);
  CHECK(n == 1, "pmap_ensure started one erlangen --port-mapper", "%d running", n);
  CHECK(pmap_register("ensured", 9100, &fd, err, sizeof err) == 0 &&
        pmap_lookup(NULL, "ensured", &got, 2.0, err, sizeof err) == 0 && got == 9100,
        "the started daemon serves registrations", "'%s'", err);
  if (n == 1)
    CHECK(getsid(pids[0]) != getsid(0), "the daemon runs in its own session", "sid %d",
          (int)getsid(0));
  r = pmap_ensure(err, sizeof err);
  n = daemons(port, pids, 8);
  CHECK(r == 0 && n == 1, "pmap_ensure with a daemon running starts no other", "r %d, %d running", r, n);
  if (fd >= 0) close(fd);
  kill_daemons(port);
  CHECK(daemons(port, pids, 8) == 0, "the started daemon exits on SIGTERM", "still running");
  unsetenv(PMAP_PORT_ENV);
}

static void test_ensure_race(void) {
  enum { N = 4 };
  char err[256];
  int port = free_port(), i, ok = 1, n;
  pid_t kids[N], pids[8];
  int fds[N][2];
  set_port_env(port);
  for (i = 0; i < N; i++) {
    if (pipe(fds[i]) != 0) exit(2);
    kids[i] = fork();
    if (kids[i] == 0) {
      char b;
      close(fds[i][1]);
      if (read(fds[i][0], &b, 1) != 1) _exit(2);  /* the start gun */
      _exit(pmap_ensure(err, sizeof err) == 0 ? 0 : 1);
    }
    close(fds[i][0]);
  }
  for (i = 0; i < N; i++) {
    if (write(fds[i][1], "x", 1) != 1) ok = 0;
    close(fds[i][1]);
  }
  for (i = 0; i < N; i++) {
    int status;
    waitpid(kids[i], &status, 0);
    ok &= WIFEXITED(status) && WEXITSTATUS(status) == 0;
  }
  CHECK(ok, "every process racing in pmap_ensure succeeds", "a racer failed");
  n = await_daemons(port, 1, pids);
  CHECK(n == 1, "processes racing in pmap_ensure end with exactly one daemon", "%d running", n);
  kill_daemons(port);
  unsetenv(PMAP_PORT_ENV);
}

/* A thread that answers every connection with a line that is not PONG. */
static void *impostor(void *arg) {
  int s = *(int *)arg, c;
  while ((c = accept(s, NULL, NULL)) >= 0) {
    ssize_t r = write(c, "SSH-2.0-OpenSSH\n", 16);
    (void)r;
    close(c);
  }
  return NULL;
}

static void test_ensure_impostor(void) {
  char err[256] = "";
  int port, r, s = silent_listener(&port);
  pthread_t t;
  double t0;
  pthread_create(&t, NULL, impostor, &s);
  set_port_env(port);
  t0 = now();
  r = pmap_ensure(err, sizeof err);
  CHECK(r == -1 && strstr(err, "not an erlangen port mapper") != NULL && now() - t0 < 1.5,
        "pmap_ensure refuses a port held by something else, at once", "r %d %.2fs '%s'", r,
        now() - t0, err);
  shutdown(s, SHUT_RDWR);
  pthread_join(t, NULL);
  close(s);
  unsetenv(PMAP_PORT_ENV);
}

int main(void) {
  signal(SIGPIPE, SIG_IGN);
  test_loopback();
  test_names();
  test_ports();
  test_default_port();
  test_client_calls();
  test_lookup_bounded();
  test_ensure();
  test_ensure_race();
  test_ensure_impostor();
  return ctest_end();
}
