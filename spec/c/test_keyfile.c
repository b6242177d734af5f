/*
** test_keyfile.c — the cluster key file: where it is, its creation on first
** use, and every refusal (mode, kind, size, missing named file). Every test
** runs in its own temporary directory, with HOME pointed at it when the
** default file is involved. Links only keyfile.c and libsodium.
*/
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <sodium.h>
#include "ctest.h"
#include "keyfile.h"

static char tmpdir[256];

static void path_in(char *out, size_t cap, const char *name) {
  snprintf(out, cap, "%s/%s", tmpdir, name);
}

static void write_file(const char *path, const void *data, size_t len, mode_t mode) {
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, mode);
  if (fd < 0 || write(fd, data, len) != (ssize_t)len) { perror(path); exit(2); }
  fchmod(fd, mode);
  close(fd);
}

static int all_zero(const unsigned char *k) {
  unsigned char z[KEY_BYTES] = {0};
  return memcmp(k, z, KEY_BYTES) == 0;
}

/* A fresh HOME with no key file in it; no KEY_ENV. */
static void fresh_home(const char *name, char *home, size_t cap) {
  path_in(home, cap, name);
  mkdir(home, 0755);
  setenv("HOME", home, 1);
  unsetenv(KEY_ENV);
}

static void test_default_created(void) {
  char home[512], file[600], dir[600], err[512];
  unsigned char k1[KEY_BYTES], k2[KEY_BYTES], raw[64];
  struct stat st;
  int fd;
  ssize_t n;
  fresh_home("home1", home, sizeof home);
  snprintf(dir, sizeof dir, "%s/.erlangen", home);
  snprintf(file, sizeof file, "%s/.erlangen/cluster.key", home);
  CHECK(key_load(NULL, k1, err, sizeof err) == 0, "a missing default key file is created", "%s", err);
  CHECK(stat(file, &st) == 0 && S_ISREG(st.st_mode) && (st.st_mode & 07777) == 0600,
        "the default key file has mode 0600", "mode %o", (unsigned)(st.st_mode & 07777));
  CHECK(st.st_size == KEY_BYTES, "the default key file holds 32 bytes", "%lld", (long long)st.st_size);
  CHECK(stat(dir, &st) == 0 && S_ISDIR(st.st_mode) && (st.st_mode & 07777) == 0700,
        "the key directory is created with mode 0700", "mode %o", (unsigned)(st.st_mode & 07777));
  fd = open(file, O_RDONLY);
  n = read(fd, raw, sizeof raw);
  close(fd);
  CHECK(n == KEY_BYTES && memcmp(raw, k1, KEY_BYTES) == 0, "the key is the file's bytes", "read %zd", n);
  CHECK(!all_zero(k1), "the created key is not all zeros", "zeros");
  CHECK(key_load(NULL, k2, err, sizeof err) == 0 && memcmp(k1, k2, KEY_BYTES) == 0,
        "loading the default key twice gives the same key", "%s", err);
}

static void test_two_homes_differ(void) {
  char home[512], err[512];
  unsigned char a[KEY_BYTES], b[KEY_BYTES];
  fresh_home("homeA", home, sizeof home);
  int ra = key_load(NULL, a, err, sizeof err);
  fresh_home("homeB", home, sizeof home);
  int rb = key_load(NULL, b, err, sizeof err);
  CHECK(ra == 0 && rb == 0 && memcmp(a, b, KEY_BYTES) != 0,
        "two fresh default key files hold different random keys", "%s", err);
}

static void test_default_race(void) {
  enum { N = 6 };
  char home[512], err[512];
  unsigned char keys[N][KEY_BYTES];
  int pipes[N][2], i, same = 1, ok = 1;
  pid_t pids[N];
  fresh_home("race", home, sizeof home);
  for (i = 0; i < N; i++) {
    if (pipe(pipes[i]) != 0) exit(2);
    pids[i] = fork();
    if (pids[i] == 0) {
      unsigned char k[KEY_BYTES];
      int r = key_load(NULL, k, err, sizeof err);
      if (r != 0) { fprintf(stderr, "child: %s\n", err); _exit(1); }
      if (write(pipes[i][1], k, KEY_BYTES) != KEY_BYTES) _exit(1);
      _exit(0);
    }
    close(pipes[i][1]);
  }
  for (i = 0; i < N; i++) {
    int status;
    ok &= read(pipes[i][0], keys[i], KEY_BYTES) == KEY_BYTES;
    close(pipes[i][0]);
    waitpid(pids[i], &status, 0);
    ok &= WIFEXITED(status) && WEXITSTATUS(status) == 0;
    if (i > 0 && memcmp(keys[0], keys[i], KEY_BYTES) != 0) same = 0;
  }
  CHECK(ok && same, "processes racing to create the default key all load the same key",
        "ok %d same %d", ok, same);
}

static void test_no_home(void) {
  char path[KEY_PATH_MAX], err[512];
  int is_default = -1;
  unsetenv(KEY_ENV);
  unsetenv("HOME");
  int r = key_path(path, sizeof path, &is_default, err, sizeof err);
  CHECK(r == 0 && is_default == 1 && strstr(path, "/.erlangen/cluster.key") != NULL,
        "without HOME the default path comes from the password database", "%d %s %s", r,
        r == 0 ? path : "", err);
}

static void check_refused(const char *name, const char *file, const char *want) {
  char err[512] = "";
  unsigned char k[KEY_BYTES];
  memset(k, 0xAA, sizeof k);
  int r = key_load(file, k, err, sizeof err);
  CHECK(r == -1 && strstr(err, want) != NULL && strstr(err, file) != NULL && all_zero(k),
        name, "r %d, err '%s', want '%s'", r, err, want);
}

static void test_modes(void) {
  char file[512], want[700];
  unsigned char key[KEY_BYTES];
  memset(key, 7, sizeof key);
  path_in(file, sizeof file, "k0640");
  write_file(file, key, sizeof key, 0640);
  snprintf(want, sizeof want, "key file '%s' has mode 0640: it must not be accessible by group "
           "or others (chmod 600)", file);
  check_refused("a key file readable by group (0640) is refused", file, want);
  path_in(file, sizeof file, "k0604");
  write_file(file, key, sizeof key, 0604);
  check_refused("a key file readable by others (0604) is refused", file, "has mode 0604");
  path_in(file, sizeof file, "k0620");
  write_file(file, key, sizeof key, 0620);
  check_refused("a key file writable by group (0620) is refused", file, "has mode 0620");
  path_in(file, sizeof file, "k0400");
  write_file(file, key, sizeof key, 0400);
  unsigned char got[KEY_BYTES];
  char err[512];
  CHECK(key_load(file, got, err, sizeof err) == 0 && memcmp(got, key, KEY_BYTES) == 0,
        "a read-only key file (0400) is accepted", "%s", err);
}

static void test_sizes(void) {
  char file[512];
  unsigned char bytes[100];
  memset(bytes, 'a', sizeof bytes);
  path_in(file, sizeof file, "k31");
  write_file(file, bytes, 31, 0600);
  check_refused("a 31-byte key file is refused", file, "has 31 bytes");
  path_in(file, sizeof file, "k33");
  write_file(file, bytes, 33, 0600);
  check_refused("a 33-byte key file is refused", file, "has 33 bytes");
  path_in(file, sizeof file, "k0");
  write_file(file, bytes, 0, 0600);
  check_refused("an empty key file is refused", file, "has 0 bytes");
  path_in(file, sizeof file, "k100");
  write_file(file, bytes, 100, 0600);
  check_refused("a 100-byte key file is refused", file, "has 100 bytes");
}

static void test_hex(void) {
  char file[512], err[512], hex[KEY_HEX_BYTES + 2];
  unsigned char key[KEY_BYTES], got[KEY_BYTES];
  randombytes_buf(key, sizeof key);
  sodium_bin2hex(hex, sizeof hex, key, sizeof key);
  strcat(hex, "\n");
  path_in(file, sizeof file, "khex");
  write_file(file, hex, KEY_HEX_BYTES + 1, 0600);
  CHECK(key_load(file, got, err, sizeof err) == 0 && memcmp(got, key, KEY_BYTES) == 0,
        "a key file of 64 hex digits and a newline gives those bytes", "%s", err);
  path_in(file, sizeof file, "khex2");
  write_file(file, hex, KEY_HEX_BYTES, 0600);
  CHECK(key_load(file, got, err, sizeof err) == 0 && memcmp(got, key, KEY_BYTES) == 0,
        "a key file of 64 hex digits without a newline is accepted", "%s", err);
  hex[10] = 'g';
  path_in(file, sizeof file, "kbadhex");
  write_file(file, hex, KEY_HEX_BYTES + 1, 0600);
  check_refused("a 65-byte key file that is not hex is refused", file, "are not 64 hex digits");
  hex[10] = 'a';
  hex[KEY_HEX_BYTES] = ' ';
  path_in(file, sizeof file, "kbadend");
  write_file(file, hex, KEY_HEX_BYTES + 1, 0600);
  check_refused("hex digits followed by anything but a newline are refused", file, "hex digits");
}

static void test_not_regular(void) {
  char dir[512], fifo[512], link[512], target[512], err[512];
  unsigned char key[KEY_BYTES], got[KEY_BYTES];
  path_in(dir, sizeof dir, "kdir");
  mkdir(dir, 0700);
  check_refused("a directory instead of a key file is refused", dir, "is not a regular file");
  path_in(fifo, sizeof fifo, "kfifo");
  mkfifo(fifo, 0600);
  check_refused("a FIFO instead of a key file is refused without blocking", fifo,
                "is not a regular file");
  memset(key, 3, sizeof key);
  path_in(target, sizeof target, "ktarget");
  write_file(target, key, sizeof key, 0600);
  path_in(link, sizeof link, "klink");
  if (symlink(target, link) != 0) perror("symlink");
  CHECK(key_load(link, got, err, sizeof err) == 0 && memcmp(got, key, KEY_BYTES) == 0,
        "a symlink to a good key file is followed", "%s", err);
}

static void test_named_missing(void) {
  char file[512], err[512] = "";
  unsigned char k[KEY_BYTES];
  struct stat st;
  path_in(file, sizeof file, "nosuch.key");
  int r = key_load(file, k, err, sizeof err);
  CHECK(r == -1 && strstr(err, "does not exist") != NULL && strstr(err, file) != NULL,
        "a missing key file named by the caller is an error", "r %d err '%s'", r, err);
  CHECK(stat(file, &st) != 0, "a missing key file named by the caller is not created", "exists");
  setenv(KEY_ENV, file, 1);
  r = key_load(NULL, k, err, sizeof err);
  CHECK(r == -1 && strstr(err, "does not exist") != NULL && strstr(err, KEY_ENV) != NULL,
        "a missing key file named by " KEY_ENV " is an error naming the variable",
        "r %d err '%s'", r, err);
  CHECK(stat(file, &st) != 0, "a missing key file named by " KEY_ENV " is not created", "exists");
  unsetenv(KEY_ENV);
}

static void test_env(void) {
  char home[512], file[512], other[512], err[512] = "", path[KEY_PATH_MAX], dflt[600];
  unsigned char key[KEY_BYTES], key2[KEY_BYTES], got[KEY_BYTES];
  struct stat st;
  int is_default = -1;
  fresh_home("envhome", home, sizeof home);
  memset(key, 0x5A, sizeof key);
  memset(key2, 0x33, sizeof key2);
  path_in(file, sizeof file, "envkey");
  write_file(file, key, sizeof key, 0600);
  path_in(other, sizeof other, "givenkey");
  write_file(other, key2, sizeof key2, 0600);
  setenv(KEY_ENV, file, 1);
  CHECK(key_path(path, sizeof path, &is_default, err, sizeof err) == 0 && is_default == 0 &&
        strcmp(path, file) == 0, KEY_ENV " names the key file", "%s %d", path, is_default);
  CHECK(key_load(NULL, got, err, sizeof err) == 0 && memcmp(got, key, KEY_BYTES) == 0,
        KEY_ENV " is honoured", "%s", err);
  snprintf(dflt, sizeof dflt, "%s/.erlangen/cluster.key", home);
  CHECK(stat(dflt, &st) != 0, "with " KEY_ENV " set, no default key file is created", "exists");
  CHECK(key_load(other, got, err, sizeof err) == 0 && memcmp(got, key2, KEY_BYTES) == 0,
        "a key file given by the caller wins over " KEY_ENV, "%s", err);
  chmod(file, 0644);
  int r = key_load(NULL, got, err, sizeof err);
  CHECK(r == -1 && strstr(err, "(from " KEY_ENV ") has mode 0644") != NULL,
        "a refusal of the " KEY_ENV " file says where the name came from", "'%s'", err);
  unsetenv(KEY_ENV);
}

static void test_create(void) {
  char file[512], err[512] = "";
  unsigned char before[KEY_BYTES], got[KEY_BYTES];
  path_in(file, sizeof file, "made.key");
  CHECK(key_create(file, err, sizeof err) == 0, "key_create makes a new key file", "%s", err);
  CHECK(key_load(file, before, err, sizeof err) == 0, "a file from key_create loads", "%s", err);
  int r = key_create(file, err, sizeof err);
  CHECK(r == -1 && strstr(err, "already exists") != NULL, "key_create refuses an existing file",
        "r %d '%s'", r, err);
  CHECK(key_load(file, got, err, sizeof err) == 0 && memcmp(before, got, KEY_BYTES) == 0,
        "a refused key_create leaves the existing key unchanged", "%s", err);
}

int main(void) {
  char tmpl[] = "/tmp/erlangen-keyfile-XXXXXX";
  char cmd[300];
  if (mkdtemp(tmpl) == NULL) { perror("mkdtemp"); return 2; }
  snprintf(tmpdir, sizeof tmpdir, "%s", tmpl);
  umask(022);
  test_default_created();
  test_two_homes_differ();
  test_default_race();
  test_modes();
  test_sizes();
  test_hex();
  test_not_regular();
  test_named_missing();
  test_env();
  test_create();
  test_no_home();
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
  if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmpdir);
  return ctest_end();
}
