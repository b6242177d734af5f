/*
** test_portmap.c — the port mapper's checks (names, ports, loopback
** addresses), its client calls against a daemon forked from this test
** (more than 256 registrations, the stall rule, out of descriptors, the
** busy and full messages), pmap_names against that daemon and against a
** fake one whose malformed listings it must refuse, pmap_ensure starting
** the build tree's `erlangen --port-mapper`, alone and raced, and
** pmap_keeper registering again across daemon restarts. Links portmap.c
** and portmapd.c (spec/portmap_spec.lua tests the protocol). Every daemon
** is ended by pid; every fake daemon's thread is joined.
*/
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include "ctest.h"
#include "portmapd.h"

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void pause_ms(int ms) {
  struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {}
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
  return pmapd_is_loopback((struct sockaddr *)&a, sizeof a);
}

static int lb6(const char *ip) {
  struct sockaddr_in6 a;
  memset(&a, 0, sizeof a);
  a.sin6_family = AF_INET6;
  inet_pton(AF_INET6, ip, &a.sin6_addr);
  return pmapd_is_loopback((struct sockaddr *)&a, sizeof a);
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
  CHECK(!pmapd_is_loopback((struct sockaddr *)&un, sizeof un) &&
        !pmapd_is_loopback((struct sockaddr *)&in, sizeof in - 1) && !pmapd_is_loopback(NULL, 0),
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

/* Forks a daemon on *port (0: any free port, which *port then gets) whose
** descriptors are limited to nofile (0: as inherited). -1 if the port
** cannot be had. */
static pid_t fork_daemon_on(int *port, int nofile) {
  char err[256];
  int fd, want = *port;
  pid_t pid;
  if (pmapd_listen(want, &fd, port, err, sizeof err) != 0) {
    if (want != 0) return -1;
    fprintf(stderr, "%s\n", err);
    exit(2);
  }
  pid = fork();
  if (pid == 0) {
    if (nofile > 0) {
      struct rlimit rl = { (rlim_t)nofile, (rlim_t)nofile };
      if (setrlimit(RLIMIT_NOFILE, &rl) != 0) _exit(4);
    }
    _exit(pmapd_serve(fd, err, sizeof err) == 0 ? 0 : 3);
  }
  close(fd);
  return pid;
}

static pid_t fork_daemon(int *port) {
  *port = 0;
  return fork_daemon_on(port, 0);
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
  CHECK(pmapd_listen(port, &busy, &got, err, sizeof err) == -1 && errno == EADDRINUSE &&
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

/* ---- the daemon's limits ---- */

/* A connected, blocking TCP socket to ip:port whose reads time out after
** 5 s (-1 on failure). */
static int dial(const char *ip, int port) {
  struct sockaddr_in a;
  struct timeval tv = { 5, 0 };
  int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_port = htons((uint16_t)port);
  inet_pton(AF_INET, ip, &a.sin_addr);
  setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  if (connect(s, (struct sockaddr *)&a, sizeof a) != 0) {
    close(s);
    return -1;
  }
  return s;
}

/* Sends `req` (unless NULL) and reads one line, without its '\n', into
** out: "" at EOF or on the read timeout. */
static void ask_line(int s, const char *req, char *out, size_t cap) {
  size_t got = 0;
  out[0] = '\0';
  if (req != NULL && write(s, req, strlen(req)) != (ssize_t)strlen(req)) return;
  while (got < cap - 1) {
    ssize_t n = read(s, out + got, 1);
    if (n <= 0 || out[got] == '\n') break;
    got++;
  }
  out[got] = '\0';
}

/* Seconds until the daemon closes s (what comes is dropped), or limit + 1
** if it has not after `limit` seconds. */
static double time_to_close(int s, double limit) {
  double t0 = now();
  char b[64];
  while (now() - t0 < limit) {
    struct pollfd p = { s, POLLIN, 0 };
    if (poll(&p, 1, 50) == 1 && read(s, b, sizeof b) <= 0) return now() - t0;
  }
  return limit + 1;
}

/* The "slot exhaustion": the 256 fixed slots of old are gone. */
static void test_many_registrations(void) {
  enum { N = 300, IDLE = 20 };  /* the test's fds stay well under 1024 */
  char err[256] = "", name[32];
  int port, fds[N], idle[IDLE], i, ok = 0, got = 0, late = -1;
  pid_t pid = fork_daemon(&port);
  set_port_env(port);
  for (i = 0; i < N; i++) {
    snprintf(name, sizeof name, "many%d", i);
    fds[i] = -1;
    ok += pmap_register(name, 20000 + i, &fds[i], err, sizeof err) == 0;
  }
  CHECK(ok == N, "300 local connections register", "%d registered; last error '%s'", ok, err);
  for (i = 0; i < IDLE; i++) idle[i] = dial("127.0.0.1", port);
  CHECK(pmap_lookup(NULL, "many150", &got, 2.0, err, sizeof err) == 0 && got == 20150,
        "with 300 registrations and 20 idle connections held, a lookup works", "got %d '%s'", got, err);
  CHECK(pmap_register("late", 9200, &late, err, sizeof err) == 0 &&
        pmap_lookup(NULL, "late", &got, 2.0, err, sizeof err) == 0 && got == 9200,
        "and a new registration works", "'%s'", err);
  for (i = 0; i < N; i++) if (fds[i] >= 0) close(fds[i]);
  for (i = 0; i < IDLE; i++) if (idle[i] >= 0) close(idle[i]);
  CHECK(await_gone("many299"), "their names are released when they close", "still there");
  if (late >= 0) close(late);
  CHECK(stop_daemon(pid), "the daemon exits 0 on SIGTERM", "status");
  unsetenv(PMAP_PORT_ENV);
}

/* The stall rule: a connection with no registration and nothing pending
** is closed PMAPD_STALL_SECONDS after its last answered request; one that
** keeps asking stays; a registered idle one stays; a request line must end
** in that time however it trickles. */
static void test_stall_rule(void) {
  const char *slow = "LOOKUP slowly\n";
  char line[64];
  int port, i, got = 0, reg, idle, asking, trickle, asked_ok = 1;
  pid_t pid = fork_daemon(&port);
  double t, t0;
  set_port_env(port);
  reg = dial("127.0.0.1", port);
  ask_line(reg, "REGISTER patient 9300\n", line, sizeof line);
  CHECK(strcmp(line, "OK") == 0, "a connection registers", "'%s'", line);
  idle = dial("127.0.0.1", port);
  t = time_to_close(idle, PMAPD_STALL_SECONDS + 2);
  CHECK(t > PMAPD_STALL_SECONDS - 0.3 && t < PMAPD_STALL_SECONDS + 1.0,
        "an unregistered connection that asks nothing is closed after PMAPD_STALL_SECONDS",
        "closed after %.2f s", t);
  asking = dial("127.0.0.1", port);
  t0 = now();
  for (i = 0; i < 5 && asked_ok; i++) {
    if (i > 0) pause_ms(1000);  /* the pace of the requests, not a wait for anything */
    ask_line(asking, "PING\n", line, sizeof line);
    asked_ok = strcmp(line, "PONG 1") == 0;
  }
  CHECK(asked_ok && now() - t0 > PMAPD_STALL_SECONDS + 0.5,
        "an unregistered connection that asks every second stays open past PMAPD_STALL_SECONDS",
        "ended at request %d after %.2f s", i, now() - t0);
  trickle = dial("127.0.0.1", port);
  t0 = now();
  for (i = 0; slow[i] != '\0' && now() - t0 < PMAPD_STALL_SECONDS + 2; i++) {
    if (write(trickle, slow + i, 1) != 1) break;  /* EPIPE once the daemon has closed it */
    pause_ms(400);  /* 14 bytes over 5.6 s: each byte is progress, the line is not */
  }
  t = now() - t0;
  CHECK(slow[i] != '\0' && t < PMAPD_STALL_SECONDS + 1.0,
        "a request line trickled byte by byte is cut off PMAPD_STALL_SECONDS after it began",
        "%d bytes went through in %.2f s", i, t);
  ask_line(reg, "PING\n", line, sizeof line);
  CHECK(strcmp(line, "PONG 1") == 0, "the registered connection, idle 9 s, is still open",
        "'%s'", line);
  CHECK(pmap_lookup(NULL, "patient", &got, 2.0, line, sizeof line) == 0 && got == 9300,
        "and its name still registered", "'%s'", line);
  close(idle);
  close(asking);
  close(trickle);
  close(reg);
  CHECK(stop_daemon(pid), "the daemon exits 0 on SIGTERM", "status");
  unsetenv(PMAP_PORT_ENV);
}

/* A daemon out of descriptors answers "ERR busy" (from its reserve), and
** the client's error says so; it serves again once descriptors free up. */
static void test_out_of_descriptors(void) {
  enum { NOFILE = 40, MAX = 64 };
  char err[256] = "", name[32];
  int port = 0, fds[MAX], n, i, r = 0, got = 0, again = -1;
  pid_t pid = fork_daemon_on(&port, NOFILE);
  double t0;
  set_port_env(port);
  for (i = 0; i < MAX; i++) fds[i] = -1;
  for (n = 0; n < MAX; n++) {
    snprintf(name, sizeof name, "fd%d", n);
    r = pmap_register(name, 9400 + n, &fds[n], err, sizeof err);
    if (r != 0) break;
  }
  CHECK(n > 10 && n < NOFILE && r == -1, "a daemon limited to 40 descriptors takes what it can",
        "%d registered", n);
  CHECK(strstr(err, "the port mapper on 127.0.0.1:") != NULL && strstr(err, "is busy (ERR busy)") != NULL,
        "then pmap_register says the port mapper is busy", "'%s'", err);
  r = pmap_lookup(NULL, "fd0", &got, 2.0, err, sizeof err);
  CHECK(r == -1 && strstr(err, "is busy (ERR busy)") != NULL && strstr(err, "not an erlangen") == NULL,
        "and so does pmap_lookup", "r %d '%s'", r, err);
  r = pmap_ensure(err, sizeof err);
  CHECK(r == 0, "pmap_ensure takes a busy daemon for a running one", "'%s'", err);
  for (i = 0; i < 3 && i < n; i++) {
    close(fds[i]);
    fds[i] = -1;
  }
  t0 = now();
  got = 0;
  while (now() - t0 < 2.0 && pmap_lookup(NULL, "fd5", &got, 1.0, err, sizeof err) != 0) pause_ms(20);
  CHECK(got == 9405, "when descriptors free up, it answers lookups again", "'%s'", err);
  CHECK(pmap_register("fd_again", 9500, &again, err, sizeof err) == 0,
        "and takes registrations", "'%s'", err);
  if (again >= 0) close(again);
  for (i = 0; i < n; i++) if (fds[i] >= 0) close(fds[i]);
  CHECK(stop_daemon(pid), "the daemon exits 0 on SIGTERM", "status");
  unsetenv(PMAP_PORT_ENV);
}

/* A local address that is not loopback into ip, or 0 if the host has none. */
static int outside_ip(char *ip, size_t cap) {
  struct sockaddr_in a;
  socklen_t len = sizeof a;
  int u = socket(AF_INET, SOCK_DGRAM, 0), ok = 0;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_port = htons(9);
  inet_pton(AF_INET, "192.0.2.1", &a.sin_addr);
  if (connect(u, (struct sockaddr *)&a, sizeof a) == 0 &&
      getsockname(u, (struct sockaddr *)&a, &len) == 0 && a.sin_addr.s_addr != 0 &&
      (ntohl(a.sin_addr.s_addr) >> 24) != 127)
    ok = inet_ntop(AF_INET, &a.sin_addr, ip, (socklen_t)cap) != NULL;
  close(u);
  return ok;
}

static void test_remote_full(void) {
  char err[256] = "", ip[64], line[64];
  int port, held[PMAP_MAX_REMOTE], i, ok = 0, r, got = 0, reg = -1;
  pid_t pid;
  if (!outside_ip(ip, sizeof ip)) {
    SKIP("remote peers past PMAP_MAX_REMOTE get ERR full", "this host has no address besides loopback");
    return;
  }
  pid = fork_daemon(&port);
  set_port_env(port);
  for (i = 0; i < PMAP_MAX_REMOTE; i++) {
    held[i] = dial(ip, port);
    ask_line(held[i], "PING\n", line, sizeof line);  /* accepted, in order */
    ok += strcmp(line, "PONG 1") == 0;
  }
  CHECK(ok == PMAP_MAX_REMOTE, "PMAP_MAX_REMOTE connections from a non-loopback address are served",
        "%d", ok);
  r = pmap_lookup(ip, "anyone", &got, 2.0, err, sizeof err);
  CHECK(r == -1 && strstr(err, "the port mapper on ") != NULL && strstr(err, "is full (ERR full)") != NULL,
        "one more gets 'ERR full', and pmap_lookup says the port mapper is full", "r %d '%s'", r, err);
  CHECK(pmap_register("local", 9600, &reg, err, sizeof err) == 0 &&
        pmap_lookup(NULL, "local", &got, 2.0, err, sizeof err) == 0 && got == 9600,
        "loopback peers are still served", "'%s'", err);
  for (i = 0; i < PMAP_MAX_REMOTE; i++) close(held[i]);
  if (reg >= 0) close(reg);
  CHECK(stop_daemon(pid), "the daemon exits 0 on SIGTERM", "status");
  unsetenv(PMAP_PORT_ENV);
}

/* ---- pmap_names ---- */

static void test_names_listing(void) {
  const char *names[] = { "zeta", "alpha", "mid" };
  char err[256] = "", ip[64];
  int port, fds[3], i, ok = 1, r;
  pmap_name *v = NULL;
  size_t n = 99;
  pid_t pid = fork_daemon(&port);
  set_port_env(port);
  r = pmap_names(NULL, 2.0, &v, &n, err, sizeof err);
  CHECK(r == 0 && n == 0 && v == NULL, "pmap_names of a daemon without names gives an empty list",
        "r %d n %zu '%s'", r, n, err);
  for (i = 0; i < 3; i++) ok &= pmap_register(names[i], 9800 + i, &fds[i], err, sizeof err) == 0;
  r = pmap_names(NULL, 2.0, &v, &n, err, sizeof err);
  CHECK(ok && r == 0 && n == 3 && strcmp(v[0].name, "alpha") == 0 && v[0].port == 9801 &&
        strcmp(v[1].name, "mid") == 0 && v[1].port == 9802 && strcmp(v[2].name, "zeta") == 0 &&
        v[2].port == 9800, "pmap_names lists the registered names with their ports, sorted by name",
        "r %d n %zu '%s'", r, n, err);
  if (r == 0) free(v);
  v = NULL;
  r = pmap_names("localhost", 2.0, &v, &n, err, sizeof err);
  CHECK(r == 0 && n == 3, "pmap_names resolves 'localhost'", "r %d n %zu '%s'", r, n, err);
  if (r == 0) free(v);
  v = NULL;
  close(fds[0]);
  CHECK(await_gone("zeta"), "a registration closes", "still there");
  r = pmap_names(NULL, 2.0, &v, &n, err, sizeof err);
  CHECK(r == 0 && n == 2 && strcmp(v[0].name, "alpha") == 0 && strcmp(v[1].name, "mid") == 0,
        "a released name leaves the listing", "r %d n %zu '%s'", r, n, err);
  if (r == 0) free(v);
  r = pmap_names(NULL, 0, &v, &n, err, sizeof err);
  CHECK(r == -1 && strstr(err, "timeout") != NULL, "pmap_names needs a positive timeout", "'%s'", err);
  if (outside_ip(ip, sizeof ip)) {
    r = pmap_names(ip, 2.0, &v, &n, err, sizeof err);
    CHECK(r == -1 && strstr(err, "only to its own host (ERR loopback only)") != NULL,
          "pmap_names from another address is refused, and says why", "r %d '%s'", r, err);
  }
  else
    SKIP("pmap_names from another address is refused", "this host has no address besides loopback");
  for (i = 1; i < 3; i++) close(fds[i]);
  CHECK(stop_daemon(pid), "the daemon exits 0 on SIGTERM", "status");
  v = NULL;
  n = 77;
  r = pmap_names(NULL, 1.0, &v, &n, err, sizeof err);
  CHECK(r == -1 && strstr(err, "no port mapper answers") != NULL && v == NULL && n == 77,
        "pmap_names without a daemon fails, leaving its results alone", "r %d '%s'", r, err);
  unsetenv(PMAP_PORT_ENV);
}

/* A fake daemon for one connection: it reads the request line, answers
** `len` bytes of `reply`, then closes, or with `hold` waits until the
** client closes. Every wait is bounded (5 s), so a test cannot hang. */
typedef struct fake_daemon {
  int listener;
  const char *reply;
  size_t len;
  int hold;
} fake_daemon;

static void *fake_serve(void *arg) {
  fake_daemon *f = arg;
  struct pollfd p = { f->listener, POLLIN, 0 };
  struct timeval tv = { 5, 0 };
  char b[PMAP_LINE_MAX];
  size_t off = 0;
  int c, i;
  if (poll(&p, 1, 5000) != 1 || (c = accept(f->listener, NULL, NULL)) < 0) return NULL;
  setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  for (i = 0; i < PMAP_LINE_MAX; i++)  /* the request, a byte at a time up to its '\n' */
    if (read(c, b, 1) != 1 || b[0] == '\n') break;
  while (off < f->len) {
    ssize_t w = write(c, f->reply + off, f->len - off);
    if (w <= 0) break;  /* the client has refused and closed */
    off += (size_t)w;
  }
  if (f->hold)
    while (read(c, b, sizeof b) > 0) {}
  close(c);
  return NULL;
}

/* pmap_names against a fake daemon answering `reply` (len bytes). */
static int names_from(const char *reply, size_t len, int hold, double timeout, pmap_name **v,
                      size_t *n, char *err, size_t errlen) {
  fake_daemon f = { -1, reply, len, hold };
  pthread_t t;
  int port, r;
  f.listener = silent_listener(&port);
  set_port_env(port);
  pthread_create(&t, NULL, fake_serve, &f);
  r = pmap_names(NULL, timeout, v, n, err, errlen);
  pthread_join(t, NULL);
  close(f.listener);
  unsetenv(PMAP_PORT_ENV);
  return r;
}

static void test_names_refused(void) {
  static const struct { const char *reply; size_t len; const char *says, *what; } cases[] = {
#define R(s) s, sizeof s - 1
    { R("NAMES 2\nalpha 1\n"), "ended its listing after 1 of 2 names",
      "a listing that ends before its count" },
    { R("NAMES 1\nalpha 1"), "ended its listing after 0 of 1 names",
      "a last entry without its '\\n'" },
    { R("NAMES 65537\n"), "more than the 65536", "a count over PMAP_NAMES_MAX" },
    { R("NAMES 123456789012345678901234567890\n"), "more than the 65536", "a count of 30 digits" },
    { R("NAMES 1\nbad!name 1\n"), "bad answer in its listing", "an entry with a bad name" },
    { R("NAMES 1\nalpha 0\n"), "bad answer in its listing", "an entry with port 0" },
    { R("NAMES 1\nalpha 65536\n"), "bad answer in its listing", "an entry with port 65536" },
    { R("NAMES 1\nalpha  1\n"), "bad answer in its listing", "an entry with two spaces" },
    { R("NAMES 1\nalpha\n"), "bad answer in its listing", "an entry without a port" },
    { R("NAMES 1\nal\0pha 1\n"), "bad answer in its listing", "an entry holding a NUL" },
    { R("NAMES 2\nalpha 1\nalpha 2\n"), "lists 'alpha' twice", "a name listed twice" },
    { R("NAMES x\n"), "gave a bad answer: 'NAMES x'", "a count that is not a number" },
    { R("NAMES -1\n"), "gave a bad answer", "a negative count" },
    { R("NAMES 01\n"), "gave a bad answer", "a count with a leading zero" },
    { R("NAMES \n"), "gave a bad answer", "an empty count" },
    { R("NAMES 1\0\nalpha 1\n"), "gave a bad answer", "a header holding a NUL" },
    { R("PORT 4000\n"), "gave a bad answer: 'PORT 4000'", "an answer that is not a listing" },
    { R("NAMES 1\naaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa 1\n"),
      "the answer is too long", "an entry line longer than PMAP_LINE_MAX" },
    { R("ERR busy\n"), "is busy (ERR busy)", "'ERR busy'" },
    { R("ERR full\n"), "is full (ERR full)", "'ERR full'" },
    { R("ERR loopback only\n"), "only to its own host (ERR loopback only)", "'ERR loopback only'" },
#undef R
  };
  char err[256], name[160];
  pmap_name *v = NULL;
  size_t n = 0, i;
  int r;
  for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    v = NULL;
    n = 55;
    err[0] = '\0';
    r = names_from(cases[i].reply, cases[i].len, 0, 2.0, &v, &n, err, sizeof err);
    snprintf(name, sizeof name, "pmap_names refuses %s", cases[i].what);
    CHECK(r == -1 && v == NULL && n == 55 && strstr(err, cases[i].says) != NULL, name,
          "r %d '%s'", r, err);
    if (r == 0) free(v);
  }
  r = names_from("NAMES 2\nalpha 1\n", 16, 1, 0.3, &v, &n, err, sizeof err);
  CHECK(r == -1 && strstr(err, "after 1 of 2 names: no answer in time") != NULL,
        "pmap_names gives up on a listing that stops coming, at its timeout", "r %d '%s'", r, err);
  r = names_from("NAMES 3\nb 2\nc 3\na 1\n", 21, 0, 2.0, &v, &n, err, sizeof err);
  CHECK(r == 0 && n == 3 && strcmp(v[0].name, "a") == 0 && v[0].port == 1 &&
        strcmp(v[1].name, "b") == 0 && v[1].port == 2 && strcmp(v[2].name, "c") == 0 && v[2].port == 3,
        "pmap_names sorts a listing that comes in another order", "r %d '%s'", r, err);
  if (r == 0) free(v);
}

/* ---- pmap_keeper ---- */

static int is_registered(const pmap_keeper *k) { return pmap_keeper_registered(k); }
static int is_lost(const pmap_keeper *k) { return !pmap_keeper_registered(k); }
static int never(const pmap_keeper *k) { (void)k; return 0; }

/* Steps k as an event loop would until want(k) holds or `seconds` pass.
** *slowest gets the longest step in seconds (a step must never block). */
static int drive(pmap_keeper *k, int (*want)(const pmap_keeper *), double seconds, double *slowest) {
  double end = now() + seconds, t0 = now();
  int64_t next = pmap_keeper_step(k, pmap_now_ms());
  if (now() - t0 > *slowest) *slowest = now() - t0;
  while (!want(k) && now() < end) {
    int64_t left = next == PMAP_KEEPER_NEVER ? 50 : next - pmap_now_ms();
    int wait = left < 0 ? 0 : left > 50 ? 50 : (int)left;
    struct pollfd p = { pmap_keeper_fd(k), (short)pmap_keeper_events(k), 0 };
    if (p.fd >= 0) poll(&p, 1, wait);
    else pause_ms(wait);
    t0 = now();
    next = pmap_keeper_step(k, pmap_now_ms());
    if (now() - t0 > *slowest) *slowest = now() - t0;
  }
  return want(k);
}

static int looks_up(const char *name, int want) {
  char err[256];
  int got = 0;
  return pmap_lookup(NULL, name, &got, 2.0, err, sizeof err) == 0 && got == want;
}

static void test_keeper_checks(void) {
  char err[256] = "";
  pmap_keeper k;
  CHECK(pmap_keeper_start(&k, "bad name", 9700, -1, err, sizeof err) == -1 &&
        strstr(err, "not a valid node name") != NULL && pmap_keeper_fd(&k) == -1,
        "pmap_keeper_start refuses a bad name", "'%s'", err);
  CHECK(pmap_keeper_start(&k, "ok", 0, -1, err, sizeof err) == -1 && strstr(err, "1..65535") != NULL,
        "pmap_keeper_start refuses a bad port", "'%s'", err);
  setenv(PMAP_PORT_ENV, "http", 1);
  CHECK(pmap_keeper_start(&k, "ok", 9700, -1, err, sizeof err) == -1,
        "pmap_keeper_start refuses a bad " PMAP_PORT_ENV, "accepted");
  unsetenv(PMAP_PORT_ENV);
}

/* The "daemon restart": a registration comes back by itself, from
** a forked daemon and from the build's erlangen --port-mapper. */
static void test_keeper_restart(void) {
  char err[256] = "";
  int port = 0, p2, r;
  unsigned before;
  double slowest = 0, t0;
  pmap_keeper k;
  pid_t pid = fork_daemon(&port), pid2, pids[8];
  set_port_env(port);
  r = pmap_keeper_start(&k, "kept", 9701, -1, err, sizeof err);
  CHECK(r == 0 && pmap_keeper_fd(&k) == -1 && !pmap_keeper_registered(&k),
        "a keeper starts without a connection", "'%s'", err);
  CHECK(drive(&k, is_registered, 2.0, &slowest) && looks_up("kept", 9701) && pmap_keeper_registrations(&k) == 1,
        "the keeper registers its name", "'%s'", pmap_keeper_error(&k));
  kill(pid, SIGKILL);
  waitpid(pid, NULL, 0);
  CHECK(drive(&k, is_lost, 1.0, &slowest), "the keeper notices that the daemon died (EOF)",
        "still registered");
  CHECK(strstr(pmap_keeper_error(&k), "went away") != NULL, "and says so", "'%s'",
        pmap_keeper_error(&k));
  before = pmap_keeper_attempts(&k);
  drive(&k, never, 1.0, &slowest);
  CHECK(pmap_keeper_attempts(&k) - before >= 2 && pmap_keeper_attempts(&k) - before <= 4,
        "with no daemon it retries with back-off (100, 200, 400 ms: 3 tries in 1 s)", "%u tries",
        pmap_keeper_attempts(&k) - before);
  CHECK(strstr(pmap_keeper_error(&k), "no port mapper answers") != NULL, "and says why it fails",
        "'%s'", pmap_keeper_error(&k));
  p2 = port;
  pid2 = fork_daemon_on(&p2, 0);
  CHECK(pid2 > 0, "a new daemon takes the same port", "pmapd_listen failed");
  t0 = now();
  r = drive(&k, is_registered, 3.0, &slowest);
  CHECK(r && looks_up("kept", 9701) && pmap_keeper_registrations(&k) == 2,
        "when the daemon comes back, the keeper registers again within its back-off",
        "after %.2f s: '%s'", now() - t0, pmap_keeper_error(&k));
  if (pid2 > 0) stop_daemon(pid2);
  CHECK(drive(&k, is_lost, 1.0, &slowest), "a daemon stopped by SIGTERM is noticed too",
        "still registered");
  r = pmap_ensure(err, sizeof err);  /* the build's erlangen --port-mapper, on the same port */
  CHECK(r == 0 && drive(&k, is_registered, 6.0, &slowest) && looks_up("kept", 9701) &&
        pmap_keeper_registrations(&k) == 3, "with a daemon that pmap_ensure starts, it registers a third time",
        "'%s' '%s'", err, pmap_keeper_error(&k));
  CHECK(slowest < 0.05, "no step blocks (each takes under 50 ms)", "the slowest took %.3f s", slowest);
  pmap_keeper_stop(&k);
  CHECK(pmap_keeper_fd(&k) == -1 && await_gone("kept"), "pmap_keeper_stop releases the name",
        "still there");
  pmap_keeper_stop(&k);
  kill_daemons(port);
  CHECK(daemons(port, pids, 8) == 0, "the started daemon exits on SIGTERM", "still running");
  unsetenv(PMAP_PORT_ENV);
}

/* A keeper adopts pmap_register's descriptor; a name held by another
** connection is retried until it is free. */
static void test_keeper_adopt_and_taken(void) {
  char err[256] = "";
  int port, fd = -1, holder = -1, r;
  double slowest = 0;
  pmap_keeper k, k2;
  pid_t pid = fork_daemon(&port);
  set_port_env(port);
  r = pmap_register("adopted", 9702, &fd, err, sizeof err);
  CHECK(r == 0 && pmap_keeper_start(&k, "adopted", 9702, fd, err, sizeof err) == 0 &&
        pmap_keeper_registered(&k) && pmap_keeper_fd(&k) == fd && pmap_keeper_events(&k) == POLLIN,
        "a keeper takes over a registration from pmap_register", "'%s'", err);
  drive(&k, never, 0.2, &slowest);
  CHECK(pmap_keeper_registered(&k) && pmap_keeper_attempts(&k) == 0 && looks_up("adopted", 9702),
        "and keeps it without reconnecting", "%u attempts", pmap_keeper_attempts(&k));
  r = pmap_register("contested", 9703, &holder, err, sizeof err);
  CHECK(r == 0 && pmap_keeper_start(&k2, "contested", 9704, -1, err, sizeof err) == 0,
        "another connection holds a name", "'%s'", err);
  drive(&k2, never, 0.5, &slowest);
  CHECK(!pmap_keeper_registered(&k2) && strstr(pmap_keeper_error(&k2), "already registered") != NULL,
        "a keeper for that name does not get it and says why", "'%s'", pmap_keeper_error(&k2));
  close(holder);
  CHECK(drive(&k2, is_registered, 3.0, &slowest) && looks_up("contested", 9704),
        "when the name is free, the keeper gets it", "'%s'", pmap_keeper_error(&k2));
  CHECK(slowest < 0.05, "no step blocks", "the slowest took %.3f s", slowest);
  pmap_keeper_stop(&k);
  pmap_keeper_stop(&k2);
  CHECK(await_gone("adopted") && await_gone("contested"), "stopped keepers release their names",
        "still there");
  CHECK(stop_daemon(pid), "the daemon exits 0 on SIGTERM", "status");
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
  test_many_registrations();
  test_stall_rule();
  test_out_of_descriptors();
  test_remote_full();
  test_names_listing();
  test_names_refused();
  test_keeper_checks();
  test_keeper_restart();
  test_keeper_adopt_and_taken();
  return ctest_end();
}
