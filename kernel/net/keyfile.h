/*
** keyfile.h — the cluster key: 32 secret bytes in a file that only its owner
** can read, shared by every node of a cluster (doc/portmap.md, "The key file").
**
** Which file: the path given (`--key FILE`, start_node's key_file), else
** $KEY_ENV, else ~/KEY_DEFAULT_DIR/KEY_DEFAULT_FILE ($HOME, or the password
** database's home when HOME is unset or empty).
**
** Only the default file is ever created: when it does not exist, key_load
** makes the directory (mode 0700) and the file (mode 0600) with KEY_BYTES
** from randombytes_buf. The file appears complete or not at all (written
** under a temporary name, then hard-linked into place), so a node racing
** another to create it reads the winner's key. A file named by the caller
** or by $KEY_ENV that does not exist is an error, as for ssh -i: a typo
** must not silently make a new cluster.
**
** A key file is refused unless it is a regular file (symlinks are
** followed), has no permission bit for group or others, and holds exactly
** KEY_BYTES raw bytes, or KEY_HEX_BYTES hex digits with an optional '\n'.
**
** Conventions (as libsodium): 0 on success, -1 on failure with a message
** naming the file in err (NUL-terminated when errlen > 0); on failure the
** key is zeroed. Every buffer that held key bytes is wiped with
** sodium_memzero. Thread-safe; the caller wipes its key when done.
*/
#ifndef erlangen_keyfile_h
#define erlangen_keyfile_h

#include <stddef.h>

#define KEY_BYTES         32u    /* the cluster key (the Noise PSK) */
#define KEY_HEX_BYTES     64u    /* the same key as hex digits */
#define KEY_ENV           "ERLANGEN_KEY_FILE"
#define KEY_DEFAULT_DIR   ".erlangen"      /* under the home directory */
#define KEY_DEFAULT_FILE  "cluster.key"
#define KEY_PATH_MAX      4096u  /* longest key file path, its NUL included */

/* Loads the cluster key from `path` (NULL: $KEY_ENV, else the default
** file, created if missing) into key. */
int key_load(const char *path, unsigned char key[KEY_BYTES], char *err, size_t errlen);

/* Writes into out (cap bytes) the file key_load(NULL, ...) would use and
** sets *is_default to 1 for the default file, 0 for $KEY_ENV. Fails if
** there is no home directory or the path does not fit. */
int key_path(char *out, size_t cap, int *is_default, char *err, size_t errlen);

/* Creates a new key file at `path` (mode 0600, KEY_BYTES random raw bytes)
** as key_load does for the default; the directory must exist. Fails, with
** nothing created, if anything is already at `path`. */
int key_create(const char *path, char *err, size_t errlen);

#endif
