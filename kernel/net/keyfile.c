/*
** keyfile.c — the cluster key file: finding, creating and checking it
** (see keyfile.h).
*/
#include <errno.h>
#include <fcntl.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "crypto.h"
#include "errbuf.h"

#include "keyfile.h"

/* Largest file read: hex digits and a '\n'. Anything bigger is refused
** from its size alone, before a byte is read. */
#define FILE_MAX  (KEY_HEX_BYTES + 1u)
#define PWBUF_BYTES 4096

/* The home directory into out: $HOME, else the password database's. */
static int home_dir(char *out, size_t cap, char *err, size_t errlen) {
  const char *home = getenv("HOME");
  struct passwd pw, *res = NULL;
  char buf[PWBUF_BYTES];
  if (home == NULL || home[0] == '\0') {
    if (getpwuid_r(geteuid(), &pw, buf, sizeof buf, &res) == 0 && res != NULL)
      home = res->pw_dir;
  }
  if (home == NULL || home[0] == '\0') {
    errbuf_set(err, errlen, "no home directory for the default key file (HOME is not set): "
           "name a key file with --key or %s", KEY_ENV);
    return -1;
  }
  if (strlen(home) >= cap) {
    errbuf_set(err, errlen, "the home directory's path is too long");
    return -1;
  }
  strcpy(out, home);
  return 0;
}

int key_path(char *out, size_t cap, int *is_default, char *err, size_t errlen) {
  const char *env = getenv(KEY_ENV);
  char home[KEY_PATH_MAX];
  if (env != NULL && env[0] != '\0') {
    if (strlen(env) >= cap) {
      errbuf_set(err, errlen, "%s is too long", KEY_ENV);
      return -1;
    }
    strcpy(out, env);
    *is_default = 0;
    return 0;
  }
  if (home_dir(home, sizeof home, err, errlen) != 0) return -1;
  if ((size_t)snprintf(out, cap, "%s/%s/%s", home, KEY_DEFAULT_DIR, KEY_DEFAULT_FILE) >= cap) {
    errbuf_set(err, errlen, "the default key file's path is too long");
    return -1;
  }
  *is_default = 1;
  return 0;
}

int key_create(const char *path, char *err, size_t errlen) {
  unsigned char key[KEY_BYTES];
  char tmp[KEY_PATH_MAX + 32];
  size_t off = 0;
  int fd, e = 0;
  if (sodium_init() < 0) {
    errbuf_set(err, errlen, "cannot start libsodium: %s", sodium_why());
    return -1;
  }
  if ((size_t)snprintf(tmp, sizeof tmp, "%s.%ld.%08x.tmp", path, (long)getpid(),
                       (unsigned)randombytes_random()) >= sizeof tmp) {
    errbuf_set(err, errlen, "key file path is too long");
    return -1;
  }
  fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd < 0) {
    errbuf_set(err, errlen, "cannot create key file '%s': %s", path, strerror(errno));
    return -1;
  }
  randombytes_buf(key, sizeof key);
  if (fchmod(fd, 0600) != 0) e = errno;  /* whatever the umask */
  while (e == 0 && off < sizeof key) {
    ssize_t n = write(fd, key + off, sizeof key - off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) e = n < 0 ? errno : EIO;
    else off += (size_t)n;
  }
  sodium_memzero(key, sizeof key);
  if (e == 0 && fsync(fd) != 0) e = errno;
  if (close(fd) != 0 && e == 0) e = errno;
  /* link, unlike rename, never replaces: the file appears whole or not at all */
  if (e == 0 && link(tmp, path) != 0) e = errno;
  unlink(tmp);
  if (e != 0) {
    if (e == EEXIST)
      errbuf_set(err, errlen, "cannot create key file '%s': it already exists", path);
    else
      errbuf_set(err, errlen, "cannot create key file '%s': %s", path, strerror(e));
    errno = e;
    return -1;
  }
  return 0;
}

/* Makes the default file's directory (0700) if it is missing. */
static int make_parent(const char *path, char *err, size_t errlen) {
  char dir[KEY_PATH_MAX];
  char *slash;
  if (strlen(path) >= sizeof dir) return -1;
  strcpy(dir, path);
  slash = strrchr(dir, '/');
  if (slash == NULL || slash == dir) return 0;
  *slash = '\0';
  if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
    errbuf_set(err, errlen, "cannot create the key directory '%s': %s", dir, strerror(errno));
    return -1;
  }
  return 0;
}

/* Reads and checks the key file at path; `from` says who named it (for
** messages), `named` whether a caller or KEY_ENV did. *missing is set to 1
** when the file does not exist. */
static int read_key(const char *path, const char *from, int named, int *missing,
                    unsigned char key[KEY_BYTES], char *err, size_t errlen) {
  unsigned char buf[FILE_MAX + 1];
  struct stat st;
  size_t got = 0, len, binlen = 0;
  int fd, ok = 0;
  *missing = 0;
  fd = open(path, O_RDONLY | O_NOCTTY | O_NONBLOCK | O_CLOEXEC);  /* a FIFO must not block */
  if (fd < 0) {
    int e = errno;
    *missing = (e == ENOENT);
    if (e == ENOENT && named)
      errbuf_set(err, errlen, "key file '%s'%s does not exist (only the default key file is "
             "created; make one with 32 random bytes and chmod 600)", path, from);
    else
      errbuf_set(err, errlen, "cannot open key file '%s'%s: %s", path, from, strerror(e));
    return -1;
  }
  if (fstat(fd, &st) != 0) {
    errbuf_set(err, errlen, "cannot stat key file '%s'%s: %s", path, from, strerror(errno));
    close(fd);
    return -1;
  }
  if (!S_ISREG(st.st_mode)) {
    errbuf_set(err, errlen, "key file '%s'%s is not a regular file", path, from);
    close(fd);
    return -1;
  }
  if ((st.st_mode & 077) != 0) {
    errbuf_set(err, errlen, "key file '%s'%s has mode %04o: it must not be accessible by group "
           "or others (chmod 600)", path, from, (unsigned)(st.st_mode & 07777));
    close(fd);
    return -1;
  }
  if (st.st_size != KEY_BYTES && st.st_size != KEY_HEX_BYTES && st.st_size != KEY_HEX_BYTES + 1) {
    errbuf_set(err, errlen, "key file '%s'%s has %lld bytes: it must hold %u raw bytes or %u hex "
           "digits", path, from, (long long)st.st_size, KEY_BYTES, KEY_HEX_BYTES);
    close(fd);
    return -1;
  }
  for (;;) {  /* read to EOF, so a file that grew since fstat is seen */
    ssize_t n = read(fd, buf + got, sizeof buf - got);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      errbuf_set(err, errlen, "cannot read key file '%s'%s: %s", path, from, strerror(errno));
      close(fd);
      sodium_memzero(buf, sizeof buf);
      return -1;
    }
    if (n == 0 || got + (size_t)n == sizeof buf) { got += (size_t)n; break; }
    got += (size_t)n;
  }
  close(fd);
  len = got;
  if (len == KEY_BYTES) {
    memcpy(key, buf, KEY_BYTES);
    ok = 1;
  }
  else if (len == KEY_HEX_BYTES || (len == KEY_HEX_BYTES + 1 && buf[KEY_HEX_BYTES] == '\n')) {
    ok = sodium_hex2bin(key, KEY_BYTES, (const char *)buf, KEY_HEX_BYTES, NULL, &binlen, NULL) == 0 &&
         binlen == KEY_BYTES;
    if (!ok) {
      sodium_memzero(key, KEY_BYTES);
      errbuf_set(err, errlen, "key file '%s'%s holds %zu bytes that are not %u hex digits",
             path, from, len, KEY_HEX_BYTES);
    }
  }
  else
    errbuf_set(err, errlen, "key file '%s'%s has %zu bytes: it must hold %u raw bytes or %u hex "
           "digits", path, from, len, KEY_BYTES, KEY_HEX_BYTES);
  sodium_memzero(buf, sizeof buf);
  return ok ? 0 : -1;
}

int key_load(const char *path, unsigned char key[KEY_BYTES], char *err, size_t errlen) {
  char file[KEY_PATH_MAX];
  const char *from = "";
  int is_default = 0, missing = 0, r;
  if (sodium_init() < 0) {
    errbuf_set(err, errlen, "cannot start libsodium: %s", sodium_why());
    return -1;
  }
  sodium_memzero(key, KEY_BYTES);
  if (path != NULL) {
    if (path[0] == '\0') {
      errbuf_set(err, errlen, "the key file's name is empty");
      return -1;
    }
    if (strlen(path) >= sizeof file) {
      errbuf_set(err, errlen, "the key file's path is too long");
      return -1;
    }
    strcpy(file, path);
  }
  else {
    if (key_path(file, sizeof file, &is_default, err, errlen) != 0) return -1;
    if (!is_default) from = " (from " KEY_ENV ")";
  }
  r = read_key(file, from, !is_default, &missing, key, err, errlen);
  if (r != 0 && is_default && missing) {
    /* first use: make the default key; a racing node may win, then read its key */
    if (make_parent(file, err, errlen) != 0) return -1;
    if (key_create(file, err, errlen) != 0 && errno != EEXIST) return -1;
    r = read_key(file, from, 0, &missing, key, err, errlen);
  }
  return r;
}
