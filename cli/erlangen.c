/*
** erlangen.c — the erlangen interpreter: lua5.4's command line, run as a process.
**
** usage: erlangen [options] [script [args]]
** The options, the global `arg`, LUA_INIT_5_4 / LUA_INIT and the exit status
** are those of lua5.4 (-E also hides LUA_PATH and LUA_CPATH from every
** process). The main thread is attached to the kernel, so the main chunk and
** the REPL are a process: they can spawn, send and receive. Uncaught errors
** print "erlangen: " and a traceback; erlangen.exit("normal") is no error.
**
** When the main chunk returns (or the REPL ends) every remaining process gets
** exit signal "shutdown"; those still alive after the grace period are killed.
** The grace period is ERLANGEN_GRACE seconds (default 2).
**
** `erlangen --observer [HOST:]PORT [--connect NODE]` and `erlangen --top NODE
** [--interval S]` start a node (named observer_<pid>@127.0.0.1 or
** top_<pid>@127.0.0.1 unless --name is given), connect it to NODE and run
** erlangen.observer_web.main (the web observer) or erlangen.top.main
** instead of a script or the REPL.
**
** `erlangen --port-mapper [--port N]` runs the port mapper daemon
** (portmapd.h) in the foreground instead: it prints the port it listens on
** (one line) and serves until SIGTERM or SIGINT, then exits 0.
**
** The REPL reads with readline when stdin is a terminal, and with plain
** getline otherwise. Ctrl-C interrupts the running expression
** (erlangen_interrupt), or clears the line at the prompt. On a terminal:
** - an exit signal that kills the REPL's process while it waits is reported
**   at once ("** exception exit: ..."), and the REPL goes on as a fresh
**   process, as the Erlang shell does; no command typed is lost to it;
** - output of other processes is printed above the prompt, and the line
**   being typed is drawn again below it;
** - Tab completes globals, fields of tables and methods of strings;
** - ~/.erlangen_history keeps an entry of several lines as one.
*/

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/select.h>
#include <termios.h>
#include <unistd.h>

#include <readline/readline.h>
#include <readline/history.h>

#include <lua.h>
#include <lauxlib.h>
#include <lualib.h>

#include "erlangen.h"
#include "erlangen_config.h"
#include "portmap.h"
#include "portmapd.h"

#define PROGNAME        "erlangen"
#define GRACE_DEFAULT   2.0         /* seconds; see ERLANGEN_GRACE */
#define HISTORY_FILE    ".erlangen_history"
#define HISTORY_MAX     1000        /* entries kept in the history file */
#define PROMPT1         "> "
#define PROMPT2         ">> "
#define EOF_MARK        "<eof>"     /* how the parser ends "incomplete" errors */

/* Flags collected from the command line. */
enum {
  OPT_BAD = 1,      /* an unknown option, or one without its argument */
  OPT_EXEC = 2,     /* -e */
  OPT_INTERACT = 4, /* -i */
  OPT_VERSION = 8,  /* -v (and -i) */
  OPT_NOENV = 16,   /* -E */
  OPT_NOARG = 32    /* with OPT_BAD: the option lacks its argument */
};

/* What reading a line of the REPL can give. */
enum { LINE_OK, LINE_EOF, LINE_INTERRUPTED };

/* Results of repl_load besides the lua status codes. */
#define REPL_EOF   (-1)
#define REPL_SKIP  (-2)   /* Ctrl-C at the prompt: nothing to run */

typedef struct cmdline {
  int argc;
  char **argv;
  int flags;
  int script;   /* argv index of the script; argc if none; the bad option if OPT_BAD */
  /* --name, --key, --listen, --tick: start this program as a node */
  const char *node_name, *key_file, *listen, *tick;
  int no_port_mapper;   /* --no-port-mapper */
  /* --observer, --connect, --top, --interval, --allow-kill: the observer tools */
  const char *observer, *connect, *top, *interval;
  int allow_kill;
  int help;             /* --help */
} cmdline;

/* Prefix of error messages: the program name, none in the REPL (as lua). */
static const char *msg_prefix = PROGNAME;

/* The main process's state, the target of Ctrl-C while it evaluates. */
static lua_State *main_L;
static atomic_int evaluating;

/* Self-pipe telling the prompt that Ctrl-C was pressed. */
static int sigpipe_fd[2] = { -1, -1 };

static int use_readline;      /* the REPL reads a terminal */
static char *history_path;    /* NULL: no history file */

/* Registry keys of the printer's functions (see printer_source). */
static int show_key, render_key, flush_key;


/* {================= messages, calls and the message handler */

static void message(const char *msg) {
  if (msg_prefix != NULL) fprintf(stderr, "%s: ", msg_prefix);
  fprintf(stderr, "%s\n", msg);
  fflush(stderr);
}

/* Prints the error on top of the stack (if status is an error) and pops it. */
static int report(lua_State *L, int status) {
  if (status != LUA_OK) {
    const char *msg = lua_tostring(L, -1);
    message(msg != NULL ? msg : "(error object is not a string)");
    lua_pop(L, 1);
  }
  return status;
}

/* Is the value at idx an exit object (raised by erlangen.exit, and by an
** exit signal that dooms the process)? Raw accesses only. */
static int is_exit_object(lua_State *L, int idx) {
  int is;
  if (lua_type(L, idx) != LUA_TTABLE || luaL_getmetafield(L, idx, "__name") == LUA_TNIL) return 0;
  is = lua_type(L, -1) == LUA_TSTRING && strcmp(lua_tostring(L, -1), "erlangen.exit") == 0;
  lua_pop(L, 1);
  return is;
}

/* Is the value at idx the error object of erlangen.exit("normal")? */
static int is_normal_exit(lua_State *L, int idx) {
  int normal;
  if (!is_exit_object(L, idx)) return 0;
  idx = lua_absindex(L, idx);
  lua_pushliteral(L, "reason");
  lua_rawget(L, idx);
  normal = lua_type(L, -1) == LUA_TSTRING && strcmp(lua_tostring(L, -1), "normal") == 0;
  lua_pop(L, 1);
  return normal;
}

/* Pushes a description of the (non-string) error object at idx: its type
** and, when the printer is loaded, its value. */
static const char *push_error_object(lua_State *L, int idx) {
  const char *type = luaL_typename(L, idx);
  if (!lua_isnil(L, idx)) {
    if (lua_rawgetp(L, LUA_REGISTRYINDEX, &render_key) == LUA_TFUNCTION) {
      lua_pushvalue(L, idx);
      if (lua_pcall(L, 1, 1, 0) == LUA_OK && lua_type(L, -1) == LUA_TSTRING)
        return lua_pushfstring(L, "(error object is a %s value: %s)", type, lua_tostring(L, -1));
    }
    lua_pop(L, 1);  /* no printer, or its error */
  }
  return lua_pushfstring(L, "(error object is a %s value)", type);
}

/* Message handler: adds a traceback to the error. */
static int traceback(lua_State *L) {
  const char *msg = lua_tostring(L, 1);
  if (msg == NULL) {
    if (is_normal_exit(L, 1)) return 1;  /* not an error; see docall */
    if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING)
      return 1;  /* the object describes itself */
    msg = push_error_object(L, 1);
  }
  luaL_traceback(L, L, msg, 1);
  return 1;
}

/* Calls the function below `narg` arguments under the traceback handler;
** Ctrl-C interrupts it. erlangen.exit("normal") ends the chunk without an
** error (and without results). */
static int docall(lua_State *L, int narg, int nres) {
  int base = lua_gettop(L) - narg;
  int status;
  lua_pushcfunction(L, traceback);
  lua_insert(L, base);
  atomic_store(&evaluating, 1);
  status = lua_pcall(L, narg, nres, base);
  atomic_store(&evaluating, 0);
  lua_remove(L, base);
  if (status != LUA_OK && is_normal_exit(L, -1)) {
    lua_pop(L, 1);
    if (nres != LUA_MULTRET) {
      luaL_checkstack(L, nres, NULL);
      for (; nres > 0; nres--) lua_pushnil(L);
    }
    status = LUA_OK;
  }
  return status;
}

static int dostring(lua_State *L, const char *s, const char *name) {
  int status = luaL_loadbuffer(L, s, strlen(s), name);
  if (status == LUA_OK) status = docall(L, 0, 0);
  return report(L, status);
}

/* Runs the file `name`, or stdin if name is NULL. */
static int dofile(lua_State *L, const char *name) {
  int status = luaL_loadfile(L, name);
  if (status == LUA_OK) status = docall(L, 0, 0);
  return report(L, status);
}

static void print_version(void) {
  fputs(PROGNAME " " ERLANGEN_VERSION " on " LUA_COPYRIGHT "\n", stdout);
  fflush(stdout);
}

/* }================= */


/* {================= the command line */

static void print_help(FILE *out) {
  fputs("usage: " PROGNAME " [options] [script [args]]\n"
        "Available options are:\n"
        "  -e stat   execute string 'stat'\n"
        "  -i        enter interactive mode after executing 'script'\n"
        "  -l mod    require library 'mod' into global 'mod'\n"
        "  -l g=mod  require library 'mod' into global 'g'\n"
        "  -v        show version information\n"
        "  -E        ignore environment variables\n"
        "  -W        turn warnings on\n"
        "  --        stop handling options\n"
        "  -         stop handling options and execute stdin\n"
        "  --name NAME[@HOST]  start as a node (distribution; see doc/distribution.md)\n"
        "  --key FILE          the cluster key file (default ~/.erlangen/cluster.key)\n"
        "  --listen HOST:PORT  where the node listens (default all interfaces, any port)\n"
        "  --tick SECONDS      silence after which a node link is lost (default 60)\n"
        "  --no-port-mapper    do not register with the port mapper (peers use name@host:port)\n"
        "  --help              show this help\n"
        "or:    " PROGNAME " --observer [HOST:]PORT [--connect NODE] [--allow-kill]\n"
        "                      serve the web observer of NODE's cluster (on 127.0.0.1 unless HOST)\n"
        "or:    " PROGNAME " --top NODE [--interval SECONDS]   a live table of the busiest processes\n"
        "       (both start a node: --name, --key, --listen, --tick apply; see doc/observer.md)\n"
        "or:    " PROGNAME " --port-mapper [--port N]   run the port mapper daemon\n"
        "Environment: ERLANGEN_GRACE  seconds processes get to handle \"shutdown\""
        " at exit (default 2)\n", out);
  fflush(out);
}

static void print_usage(const char *bad, int noarg) {
  if (noarg)
    fprintf(stderr, "%s: '%s' needs argument\n", PROGNAME, bad);
  else
    fprintf(stderr, "%s: unrecognized option '%s'\n", PROGNAME, bad);
  print_help(stderr);
}

/* Scans the options; stops at the script (or "-"), after "--", or at the
** first bad option. */
static void parse_cmdline(cmdline *c) {
  int i;
  c->flags = 0;
  c->node_name = c->key_file = c->listen = c->tick = NULL;
  c->no_port_mapper = 0;
  c->observer = c->connect = c->top = c->interval = NULL;
  c->allow_kill = c->help = 0;
  for (i = 1; i < c->argc; i++) {
    const char *a = c->argv[i];
    c->script = i;
    if (a[0] != '-' || a[1] == '\0') return;  /* the script, or "-" (stdin) */
    switch (a[1]) {
      case '-': {
        const char **slot = !strcmp(a, "--name") ? &c->node_name : !strcmp(a, "--key") ? &c->key_file
                          : !strcmp(a, "--listen") ? &c->listen : !strcmp(a, "--tick") ? &c->tick
                          : !strcmp(a, "--observer") ? &c->observer : !strcmp(a, "--connect") ? &c->connect
                          : !strcmp(a, "--top") ? &c->top : !strcmp(a, "--interval") ? &c->interval : NULL;
        if (slot) {
          if (i + 1 >= c->argc) { c->flags = OPT_BAD | OPT_NOARG; return; }
          *slot = c->argv[++i];
          break;
        }
        if (!strcmp(a, "--no-port-mapper")) { c->no_port_mapper = 1; break; }
        if (!strcmp(a, "--allow-kill")) { c->allow_kill = 1; break; }
        if (!strcmp(a, "--help")) { c->help = 1; break; }
        if (a[2] != '\0') { c->flags = OPT_BAD; return; }
        c->script = i + 1;
        return;
      }
      case 'E': case 'W': case 'i': case 'v':
        if (a[2] != '\0') { c->flags = OPT_BAD; return; }
        if (a[1] == 'E') c->flags |= OPT_NOENV;
        else if (a[1] == 'i') c->flags |= OPT_INTERACT | OPT_VERSION;
        else if (a[1] == 'v') c->flags |= OPT_VERSION;
        break;
      case 'e': case 'l':
        if (a[1] == 'e') c->flags |= OPT_EXEC;
        if (a[2] == '\0') {  /* the argument is the next word */
          if (i + 1 >= c->argc || c->argv[i + 1][0] == '-') { c->flags = OPT_BAD | OPT_NOARG; return; }
          i++;
        }
        break;
      default:
        c->flags = OPT_BAD;
        return;
    }
  }
  c->script = c->argc;
}

/* The global `arg`: the script at 0, its arguments above, the interpreter
** and options below. Without a script, the interpreter is at 0. */
static void create_arg_table(lua_State *L, const cmdline *c) {
  int script = (c->script == c->argc) ? 0 : c->script;
  int i;
  lua_createtable(L, c->argc - script - 1 > 0 ? c->argc - script - 1 : 0, script + 1);
  for (i = 0; i < c->argc; i++) {
    lua_pushstring(L, c->argv[i]);
    lua_rawseti(L, -2, i - script);
  }
  lua_setglobal(L, "arg");
}

/* -l [g=]mod: g = require "mod". Without "=", the global is the module name
** up to a '-' (so "-l mod-v2" sets `mod`). */
static int dolibrary(lua_State *L, const char *spec) {
  const char *eq = strchr(spec, '=');
  const char *modname = (eq != NULL) ? eq + 1 : spec;
  size_t globlen = (eq != NULL) ? (size_t)(eq - spec) : strcspn(spec, "-");
  int status;
  lua_pushlstring(L, spec, globlen);
  lua_getglobal(L, "require");
  lua_pushstring(L, modname);
  status = docall(L, 1, 1);
  if (status == LUA_OK) {
    lua_setglobal(L, lua_tostring(L, -2));
    lua_pop(L, 1);  /* the global's name */
  }
  else
    lua_remove(L, -2);  /* the global's name, under the error */
  return report(L, status);
}

/* --name and its companions: erlangen.start_node{...} before anything runs.
** The key file may also come from ERLANGEN_KEY_FILE. */
static int start_node(lua_State *L, const cmdline *c) {
  lua_getglobal(L, "erlangen");
  lua_getfield(L, -1, "start_node");
  lua_remove(L, -2);
  lua_createtable(L, 0, 4);
  lua_pushstring(L, c->node_name);
  lua_setfield(L, -2, "name");
  if (c->key_file) { lua_pushstring(L, c->key_file); lua_setfield(L, -2, "key_file"); }
  if (c->listen) { lua_pushstring(L, c->listen); lua_setfield(L, -2, "listen"); }
  if (c->no_port_mapper) { lua_pushboolean(L, 0); lua_setfield(L, -2, "port_mapper"); }
  if (c->tick) {
    char *end;
    double t = strtod(c->tick, &end);
    if (*end != '\0' || !(t > 0)) {
      lua_pop(L, 2);
      lua_pushfstring(L, "--tick '%s': not a positive number of seconds", c->tick);
      return report(L, LUA_ERRRUN);
    }
    lua_pushnumber(L, t);
    lua_setfield(L, -2, "tick");
  }
  return report(L, docall(L, 1, 0));
}

/* Runs -e and -l (and -W) in their order. Returns 0 on the first error. */
static int run_options(lua_State *L, const cmdline *c) {
  int last = c->script;
  int i;
  if (c->node_name && start_node(L, c) != LUA_OK) return 0;
  for (i = 1; i < last; i++) {
    const char *a = c->argv[i];
    if (!strcmp(a, "--no-port-mapper") || !strcmp(a, "--allow-kill") || !strcmp(a, "--help")) continue;
    if (a[0] == '-' && a[1] == '-') { i++; continue; }   /* --name X and the like */
    int opt = a[1];
    if (opt == 'e' || opt == 'l') {
      const char *extra = (a[2] != '\0') ? a + 2 : c->argv[++i];
      int status = (opt == 'e') ? dostring(L, extra, "=(command line)")
                                : dolibrary(L, extra);
      if (status != LUA_OK) return 0;
    }
    else if (opt == 'W')
      lua_warning(L, "@on", 0);
  }
  return 1;
}

/* A positive number of seconds from option `opt`'s text `s`, pushed; or an
** error reported (returns 0). */
static int push_seconds(lua_State *L, const char *opt, const char *s) {
  char *end;
  double t = strtod(s, &end);
  if (*end != '\0' || !(t > 0)) {
    lua_pushfstring(L, "%s '%s': not a positive number of seconds", opt, s);
    report(L, LUA_ERRRUN);
    return 0;
  }
  lua_pushnumber(L, t);
  return 1;
}

/* --observer and --top: starts the node (a generated name unless --name),
** connects to NODE, then calls the tool's main with its options table; it
** returns only when the tool ends. Returns 0 after reporting an error. */
static int run_tool(lua_State *L, const cmdline *c) {
  const char *node = c->top ? c->top : c->connect;
  if (c->script < c->argc || (c->flags & OPT_EXEC)) {
    lua_pushfstring(L, "%s takes no script and no -e", c->top ? "--top" : "--observer");
    return report(L, LUA_ERRRUN) == LUA_OK;
  }
  if (!c->node_name) {
    cmdline named = *c;
    char name[64];
    snprintf(name, sizeof name, "%s_%ld@127.0.0.1", c->top ? "top" : "observer", (long)getpid());
    named.node_name = name;
    if (start_node(L, &named) != LUA_OK) return 0;
  }
  if (node) {
    lua_getglobal(L, "erlangen");
    lua_getfield(L, -1, "connect");
    lua_remove(L, -2);
    lua_pushstring(L, node);
    if (report(L, docall(L, 1, 2)) != LUA_OK) return 0;
    if (!lua_toboolean(L, -2)) {
      lua_pushfstring(L, "cannot connect to %s: %s", node, luaL_optstring(L, -1, "?"));
      return report(L, LUA_ERRRUN) == LUA_OK;
    }
    lua_pop(L, 2);
  }
  lua_getglobal(L, "require");
  lua_pushstring(L, c->top ? "erlangen.top" : "erlangen.observer_web");
  if (report(L, docall(L, 1, 1)) != LUA_OK) return 0;
  lua_getfield(L, -1, "main");
  lua_remove(L, -2);
  lua_createtable(L, 0, 3);
  if (c->top) {
    lua_pushstring(L, c->top);
    lua_setfield(L, -2, "node");
    if (c->interval) {
      if (!push_seconds(L, "--interval", c->interval)) return 0;
      lua_setfield(L, -2, "interval");
    }
  }
  else {
    lua_pushstring(L, c->observer);
    lua_setfield(L, -2, "listen");
    lua_pushboolean(L, c->allow_kill);
    lua_setfield(L, -2, "allow_kill");
  }
  return report(L, docall(L, 1, 0)) == LUA_OK;
}

static int run_luainit(lua_State *L) {
  const char *name = "=LUA_INIT_" LUA_VERSION_MAJOR "_" LUA_VERSION_MINOR;
  const char *init = getenv(name + 1);
  if (init == NULL) {
    name = "=LUA_INIT";
    init = getenv(name + 1);
  }
  if (init == NULL) return LUA_OK;
  if (init[0] == '@') return dofile(L, init + 1);
  return dostring(L, init, name);
}

/* Pushes arg[1..n]; returns n. */
static int push_script_args(lua_State *L) {
  int i, n;
  if (lua_getglobal(L, "arg") != LUA_TTABLE)
    luaL_error(L, "'arg' is not a table");
  n = (int)luaL_len(L, -1);
  luaL_checkstack(L, n + 3, "too many arguments to script");
  for (i = 1; i <= n; i++) lua_rawgeti(L, -i, i);
  lua_remove(L, -i);  /* the table */
  return n;
}

static int run_script(lua_State *L, const cmdline *c) {
  const char *fname = c->argv[c->script];
  int status;
  if (strcmp(fname, "-") == 0 && strcmp(c->argv[c->script - 1], "--") != 0)
    fname = NULL;  /* stdin */
  status = luaL_loadfile(L, fname);
  if (status == LUA_OK) {
    int n = push_script_args(L);
    status = docall(L, n, LUA_MULTRET);
  }
  return report(L, status);
}

/* -E: the environment must not reach any process's package paths either. */
static void ignore_environment(void) {
  static const char *const vars[] = {
    "LUA_INIT", "LUA_INIT_5_4", "LUA_PATH", "LUA_PATH_5_4", "LUA_CPATH", "LUA_CPATH_5_4"
  };
  size_t i;
  for (i = 0; i < sizeof(vars) / sizeof(vars[0]); i++) unsetenv(vars[i]);
}

/* }================= */


/* {================= Ctrl-C */

static void on_sigint(int sig) {
  int saved = errno;
  (void)sig;
  if (atomic_load(&evaluating))
    erlangen_interrupt(main_L);
  else if (sigpipe_fd[1] >= 0) {
    ssize_t r = write(sigpipe_fd[1], "", 1);
    (void)r;
  }
  errno = saved;
}

/* Returns 1 if Ctrl-C was pressed since the last call. */
static int take_sigint(void) {
  char buf[64];
  int got = 0;
  while (read(sigpipe_fd[0], buf, sizeof buf) > 0) got = 1;
  return got;
}

static void catch_sigint(int on) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sigemptyset(&sa.sa_mask);
  if (on) {
    sa.sa_handler = on_sigint;
    sa.sa_flags = SA_RESTART;
  }
  else
    sa.sa_handler = SIG_DFL;
  sigaction(SIGINT, &sa, NULL);
}

/* }================= */


/* {================= the output relay */

/* While the REPL reads a terminal, fds 1 and 2 are one pseudo-terminal in
** raw mode (one, so that a writer's stdout and stderr keep their order; a
** terminal, so that the programs a command runs still write to one) and a
** relay thread copies its output to the real terminal. While a command runs,
** text goes straight through; while the prompt waits, text is held and the
** prompt loop prints it above the prompt, then redraws the line being typed.
** Writers wait for nothing but the terminal, as without the relay. */
#define HOLD_MAX   (1u << 20)   /* held bytes beyond this go straight through */
#define DRAIN_MS   20           /* at stop: how long a quiet relay is awaited, */
#define DRAIN_MAX  10           /* and how many times */

static struct {
  int on;                     /* main thread only */
  int tty;                    /* immutable while on: the terminal (the old fd 1) */
  int saved_err;              /* immutable while on: the old fd 2, -1 if not moved */
  int rd;                     /* immutable while on: the pseudo-terminal's master, non-blocking; read under lock */
  int wake[2];                /* the relay tells the prompt loop that text is held */
  int quit[2];                /* the main thread tells the relay to stop */
  FILE *out;                  /* immutable while on: readline's output, the terminal */
  pthread_t thread;
  /* Every read of rd happens under the lock together with what is done with
  ** the bytes, so that they reach the terminal in the order they were read. */
  pthread_mutex_t lock;
  int holding;                /* lock: the prompt is shown */
  char *held;                 /* lock: text for the prompt loop */
  size_t held_len, held_cap;  /* lock */
} relay = { .saved_err = -1, .rd = -1, .wake = { -1, -1 }, .quit = { -1, -1 },
            .lock = PTHREAD_MUTEX_INITIALIZER };

static void write_all(int fd, const char *s, size_t n) {
  while (n > 0) {
    ssize_t w = write(fd, s, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return;  /* the terminal is gone */
    s += w;
    n -= (size_t)w;
  }
}

/* Holds n bytes; 0 if they do not fit (HOLD_MAX or no memory). Lock held. */
static int relay_keep(const char *s, size_t n) {
  if (relay.held_len + n > HOLD_MAX) return 0;
  if (relay.held_len + n > relay.held_cap) {
    size_t cap = relay.held_cap ? relay.held_cap : 4096;
    char *p;
    while (cap < relay.held_len + n) cap *= 2;
    p = realloc(relay.held, cap);
    if (p == NULL) return 0;
    relay.held = p;
    relay.held_cap = cap;
  }
  memcpy(relay.held + relay.held_len, s, n);
  relay.held_len += n;
  return 1;
}

/* Writes the held text to the terminal. Lock held. */
static void relay_release(void) {
  write_all(relay.tty, relay.held, relay.held_len);
  relay.held_len = 0;
}

/* Reads what the pseudo-terminal has and holds or passes it. Lock held.
** Returns 0 when every writer's end is closed (EIO) or it failed, else 1. */
static int relay_drain(void) {
  char buf[4096];
  for (;;) {
    ssize_t n = read(relay.rd, buf, sizeof buf);
    if (n == 0) return 0;
    if (n < 0) return errno == EAGAIN || errno == EINTR;
    if (relay.holding && relay_keep(buf, (size_t)n)) {
      ssize_t r = write(relay.wake[1], "", 1);  /* full: the loop is woken already */
      (void)r;
    }
    else {
      relay_release();  /* held text first: the order is kept, the prompt is not */
      write_all(relay.tty, buf, (size_t)n);
    }
  }
}

static void *relay_main(void *ud) {
  struct pollfd fds[2] = { { relay.rd, POLLIN, 0 }, { relay.quit[0], POLLIN, 0 } };
  int more = 1, i;
  (void)ud;
  while (more && !(fds[1].revents & POLLIN)) {
    if (poll(fds, 2, -1) < 0 && errno != EINTR) break;
    pthread_mutex_lock(&relay.lock);
    more = relay_drain();
    pthread_mutex_unlock(&relay.lock);
  }
  /* Stopping: fds 1 and 2 are the terminal again. A write begun before
  ** they moved may still land; one quiet for DRAIN_MS has none left. */
  pthread_mutex_lock(&relay.lock);
  relay.holding = 0;
  relay_release();
  for (i = 0; more && i < DRAIN_MAX && poll(fds, 1, DRAIN_MS) > 0; i++) more = relay_drain();
  pthread_mutex_unlock(&relay.lock);
  return NULL;
}

static void close_pair(int fd[2]) {
  if (fd[0] >= 0) close(fd[0]);
  if (fd[1] >= 0) close(fd[1]);
  fd[0] = fd[1] = -1;
}

/* Frees what relay_start made, after the fds are back. */
static void relay_close(void) {
  fclose(relay.out);
  relay.out = NULL;
  close(relay.tty);
  if (relay.saved_err >= 0) close(relay.saved_err);
  relay.saved_err = -1;
  close(relay.rd);
  relay.rd = -1;
  close_pair(relay.wake);
  close_pair(relay.quit);
  free(relay.held);
  relay.held = NULL;
  relay.held_len = relay.held_cap = 0;
}

/* Opens a raw pseudo-terminal: pty[0] the master (non-blocking), pty[1]
** the writers' end. Returns 0, or -1 with nothing open. */
static int open_raw_pty(int pty[2]) {
  char name[64];
  struct termios raw;
  pty[0] = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
  pty[1] = -1;
  if (pty[0] >= 0 && grantpt(pty[0]) == 0 && unlockpt(pty[0]) == 0 &&
      ptsname_r(pty[0], name, sizeof name) == 0)
    pty[1] = open(name, O_RDWR | O_NOCTTY | O_CLOEXEC);
  if (pty[1] < 0 || tcgetattr(pty[1], &raw) != 0) {
    close_pair(pty);
    return -1;
  }
  cfmakeraw(&raw);  /* the bytes as written: the real terminal does the rest */
  tcsetattr(pty[1], TCSANOW, &raw);
  fcntl(pty[0], F_SETFL, O_NONBLOCK);
  return 0;
}

/* The writers see the real terminal's size (ls, for one, asks). */
static void relay_copy_size(void) {
  struct winsize ws;
  if (ioctl(relay.tty, TIOCGWINSZ, &ws) == 0) ioctl(relay.rd, TIOCSWINSZ, &ws);
}

/* Moves fds 1 and 2 (those that are terminals) onto the relay. Does nothing
** unless stdout is a terminal, or if a resource is short. */
static void relay_start(void) {
  int pty[2], out_fd;
  sigset_t all, old;
  if (relay.on || !isatty(STDOUT_FILENO)) return;
  fflush(stdout);
  fflush(stderr);
  if (open_raw_pty(pty) != 0) return;
  relay.tty = fcntl(STDOUT_FILENO, F_DUPFD_CLOEXEC, 0);
  out_fd = relay.tty >= 0 ? fcntl(relay.tty, F_DUPFD_CLOEXEC, 0) : -1;
  relay.out = out_fd >= 0 ? fdopen(out_fd, "w") : NULL;
  if (relay.out == NULL || pipe2(relay.wake, O_CLOEXEC | O_NONBLOCK) != 0 ||
      pipe2(relay.quit, O_CLOEXEC) != 0) {
    if (relay.out != NULL) fclose(relay.out);
    else if (out_fd >= 0) close(out_fd);
    if (relay.tty >= 0) close(relay.tty);
    relay.out = NULL;
    close_pair(pty);
    close_pair(relay.wake);
    close_pair(relay.quit);
    return;
  }
  relay.rd = pty[0];
  relay_copy_size();
  relay.saved_err = isatty(STDERR_FILENO) ? fcntl(STDERR_FILENO, F_DUPFD_CLOEXEC, 0) : -1;
  dup2(pty[1], STDOUT_FILENO);
  if (relay.saved_err >= 0) dup2(pty[1], STDERR_FILENO);
  close(pty[1]);
  sigfillset(&all);  /* SIGINT is the main thread's, through its handler */
  pthread_sigmask(SIG_SETMASK, &all, &old);
  relay.on = pthread_create(&relay.thread, NULL, relay_main, NULL) == 0;
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  if (relay.on) {
    rl_outstream = relay.out;
    return;
  }
  dup2(relay.tty, STDOUT_FILENO);  /* no thread: everything back as it was */
  if (relay.saved_err >= 0) dup2(relay.saved_err, STDERR_FILENO);
  relay_close();
}

/* Puts fds 1 and 2 back and ends the relay after it has written what it had. */
static void relay_stop(void) {
  ssize_t r;
  if (!relay.on) return;
  rl_outstream = stdout;
  fflush(stdout);
  fflush(stderr);
  dup2(relay.tty, STDOUT_FILENO);
  if (relay.saved_err >= 0) dup2(relay.saved_err, STDERR_FILENO);
  r = write(relay.quit[1], "", 1);
  (void)r;
  pthread_join(relay.thread, NULL);
  relay.on = 0;
  relay_close();
}

/* The prompt is about to show: what was written before it goes above it. */
static void relay_hold(void) {
  if (!relay.on) return;
  fflush(stdout);
  fflush(stderr);
  pthread_mutex_lock(&relay.lock);
  relay_drain();
  relay.holding = 1;
  pthread_mutex_unlock(&relay.lock);
}

/* The prompt is gone: text goes straight through again. */
static void relay_pass(void) {
  if (!relay.on) return;
  relay_copy_size();  /* for the command about to run; readline follows the real one */
  pthread_mutex_lock(&relay.lock);
  relay_release();
  relay.holding = 0;
  pthread_mutex_unlock(&relay.lock);
}

/* Prints text above the prompt and redraws the prompt and the line. */
static void show_above_prompt(const char *text, size_t len) {
  size_t bells = 0;
  while (bells < len && text[bells] == '\a') bells++;
  if (bells == len) {  /* readline's own bell, which it rings on stderr */
    fwrite(text, 1, len, rl_outstream);
    fflush(rl_outstream);
    return;
  }
  rl_clear_visible_line();
  fwrite(text, 1, len, rl_outstream);
  if (len > 0 && text[len - 1] != '\n') fputc('\n', rl_outstream);
  rl_forced_update_display();
  fflush(rl_outstream);
}

/* While the prompt is shown: prints the held text above it. */
static void relay_show(void) {
  char buf[64];
  if (!relay.on) return;
  while (read(relay.wake[0], buf, sizeof buf) > 0) {}
  pthread_mutex_lock(&relay.lock);
  relay_drain();  /* what is in the pipe now comes with it */
  if (relay.held_len > 0) {
    show_above_prompt(relay.held, relay.held_len);
    relay.held_len = 0;
  }
  pthread_mutex_unlock(&relay.lock);
}

/* }================= */


/* {================= exits at the prompt */

/* An exit signal that reaches the REPL's process while it waits at the
** prompt dooms it (it does not trap exits), and the doom is raised by the
** next erlangen call or Lua instruction. The REPL lets it land before it
** reads on and before it runs a command, reports it as the Erlang shell
** does, and goes on as a fresh process. */
static int self_key, pending_exit_key;

static int call_self(lua_State *L) {
  lua_rawgetp(L, LUA_REGISTRYINDEX, &self_key);
  lua_call(L, 0, 0);
  return 0;
}

/* Reports the exit object at idx. */
static void report_exit(lua_State *L, int idx) {
  const char *s = luaL_tolstring(L, idx, NULL);
  message(lua_pushfstring(L, "** exception %s", s));
  lua_pop(L, 2);
}

/* Keeps the error on top (popped) if it is an exit object, for take_exit. */
static void keep_exit(lua_State *L) {
  if (is_exit_object(L, -1)) lua_rawsetp(L, LUA_REGISTRYINDEX, &pending_exit_key);
  else lua_pop(L, 1);
}

/* Lets a pending exit land and reports it. Returns 1 if there was one. */
static int take_exit(lua_State *L) {
  int found = 0, i;
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &pending_exit_key) != LUA_TNIL) {
    report_exit(L, -1);
    lua_pushnil(L);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &pending_exit_key);
    found = 1;
  }
  lua_pop(L, 1);
  /* The doom raises in erlangen.self and once more in the hook its signal
  ** armed, if that comes later; then erlangen.self makes a fresh process. */
  for (i = 0; i < 3; i++) {
    lua_pushcfunction(L, call_self);
    if (lua_pcall(L, 0, 0, 0) == LUA_OK) break;
    if (!found && is_exit_object(L, -1)) {
      report_exit(L, -1);
      found = 1;
    }
    lua_pop(L, 1);
  }
  return found;
}

/* }================= */


/* {================= completion */

/* Tab completes a global, a field of a table ("erlangen.sp", "string.fo")
** or a method ("s:up", through the string's metatable). It reads with raw
** accesses only, also through __index tables, so that completing runs no
** code of the user's. */
#define INDEX_DEPTH 8   /* __index tables followed at most */

static char **matches;            /* main thread: the completions of one Tab */
static size_t matches_n, matches_next;

static int is_name(const char *s, size_t len) {
  static const char *const keywords[] = {
    "and", "break", "do", "else", "elseif", "end", "false", "for", "function", "goto", "if", "in",
    "local", "nil", "not", "or", "repeat", "return", "then", "true", "until", "while"
  };
  size_t i;
  if (len == 0 || !(isalpha((unsigned char)s[0]) || s[0] == '_')) return 0;
  for (i = 1; i < len; i++)
    if (!(isalnum((unsigned char)s[i]) || s[i] == '_')) return 0;
  for (i = 0; i < sizeof keywords / sizeof keywords[0]; i++)
    if (strlen(keywords[i]) == len && memcmp(keywords[i], s, len) == 0) return 0;
  return 1;
}

/* Replaces the value on top with the __index of its metatable if that is a
** table; returns 0 and pops the value otherwise. */
static int to_index_table(lua_State *L) {
  if (lua_getmetatable(L, -1)) {
    lua_pushliteral(L, "__index");
    if (lua_rawget(L, -2) == LUA_TTABLE) {
      lua_replace(L, -3);
      lua_pop(L, 1);
      return 1;
    }
    lua_pop(L, 2);
  }
  lua_pop(L, 1);
  return 0;
}

/* Replaces the value on top with its field `name`, or nil. */
static void raw_field(lua_State *L, const char *name, size_t len) {
  int depth;
  for (depth = 0; depth <= INDEX_DEPTH; depth++) {
    if (lua_type(L, -1) == LUA_TTABLE) {
      lua_pushlstring(L, name, len);
      if (lua_rawget(L, -2) != LUA_TNIL) {
        lua_remove(L, -2);
        return;
      }
      lua_pop(L, 1);
    }
    if (!to_index_table(L)) {
      lua_pushnil(L);
      return;
    }
  }
  lua_pop(L, 1);
  lua_pushnil(L);
}

/* Pops the value on top and adds to the set at `set` the names of its
** fields (and those of its __index tables) that start with `word`;
** functions only for a method. */
static void add_fields(lua_State *L, int set, const char *word, size_t wlen, int method) {
  int depth;
  for (depth = 0; depth <= INDEX_DEPTH; depth++) {
    if (lua_type(L, -1) == LUA_TTABLE) {
      lua_pushnil(L);
      while (lua_next(L, -2)) {
        size_t klen;
        const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tolstring(L, -2, &klen) : NULL;
        if (k != NULL && klen >= wlen && memcmp(k, word, wlen) == 0 && is_name(k, klen) &&
            (!method || lua_type(L, -1) == LUA_TFUNCTION)) {
          lua_pushvalue(L, -2);
          lua_pushboolean(L, 1);
          lua_rawset(L, set);
        }
        lua_pop(L, 1);
      }
    }
    if (!to_index_table(L)) return;
  }
  lua_pop(L, 1);
}

/* [text] -> [set, prefix length]: the names that complete text, as
** the keys of a table, and how much of text comes before them. */
static int push_completions(lua_State *L) {
  size_t len;
  const char *text = lua_tolstring(L, 1, &len);
  const char *word = text, *p;
  int set;
  lua_newtable(L);
  set = lua_gettop(L);
  for (p = text; p < text + len; p++)
    if (*p == '.' || *p == ':') word = p + 1;
  lua_pushglobaltable(L);
  for (p = text; p < word;) {  /* the path to the table: names joined by '.' */
    const char *end = p;
    while (*end != '.' && *end != ':') end++;
    if (!is_name(p, (size_t)(end - p)) || (*end == ':' && end + 1 != word)) {
      lua_settop(L, set);  /* no completions */
      lua_pushinteger(L, 0);
      return 2;
    }
    raw_field(L, p, (size_t)(end - p));
    p = end + 1;
  }
  add_fields(L, set, word, len - (size_t)(word - text), word > text && word[-1] == ':');
  lua_pushinteger(L, (lua_Integer)(word - text));
  return 2;
}

static char *next_match(const char *text, int state) {
  (void)text;
  if (state == 0) matches_next = 0;
  return matches_next < matches_n ? matches[matches_next++] : NULL;
}

/* readline's completion: the matches of text, no file names. */
static char **complete(const char *text, int start, int end) {
  lua_State *L = main_L;
  char **found = NULL;
  size_t n = 0, prefix;
  int top = lua_gettop(L);
  (void)start;
  (void)end;
  rl_attempted_completion_over = 1;
  rl_completion_append_character = '\0';
  lua_pushcfunction(L, push_completions);
  lua_pushstring(L, text);
  if (lua_pcall(L, 1, 2, 0) != LUA_OK) {  /* out of memory, or an exit landed */
    keep_exit(L);
    lua_settop(L, top);
    return NULL;
  }
  prefix = (size_t)lua_tointeger(L, -1);
  lua_pushnil(L);
  while (lua_next(L, -3)) { n++; lua_pop(L, 1); }
  matches = n > 0 ? calloc(n, sizeof *matches) : NULL;
  matches_n = 0;
  lua_pushnil(L);
  while (matches != NULL && lua_next(L, -3)) {
    size_t klen;
    const char *k = lua_tolstring(L, -2, &klen);
    char *m = malloc(prefix + klen + 1);
    if (m != NULL) {
      memcpy(m, text, prefix);
      memcpy(m + prefix, k, klen + 1);
      matches[matches_n++] = m;
    }
    lua_pop(L, 1);
  }
  lua_settop(L, top);
  if (matches_n > 0) found = rl_completion_matches(text, next_match);
  while (matches_next < matches_n) free(matches[matches_next++]);  /* those not taken */
  free(matches);
  matches = NULL;
  matches_n = matches_next = 0;
  return found;
}

/* Tab: indents at the start of a line, completes elsewhere. */
static int tab_key(int count, int key) {
  int i;
  for (i = 0; i < rl_point; i++)
    if (!isspace((unsigned char)rl_line_buffer[i])) return rl_complete(count, key);
  return rl_insert(count, key);
}

/* }================= */


/* {================= reading lines */

#define EXIT_POLL_MS 200   /* the longest an exit signal waits at the prompt to be reported */

static char *rl_result;
static int rl_finished;

static void on_readline(char *line) {
  rl_result = line;
  rl_finished = 1;
  rl_callback_handler_remove();  /* leaves the terminal as it found it */
}

/* readline's callback interface, so that Ctrl-C (through the self-pipe),
** exit signals and the relay's text are seen while the prompt waits. An
** exit signal's own signal interrupts select; the timeout bounds the wait
** for one that came just before select began. */
static char *read_terminal(const char *prompt, int *how) {
  take_sigint();  /* a Ctrl-C pressed while printing is not for this line */
  relay_hold();
  take_exit(main_L);
  rl_finished = 0;
  rl_result = NULL;
  rl_callback_handler_install(prompt, on_readline);
  for (;;) {
    struct timeval tv = { 0, EXIT_POLL_MS * 1000 };
    int maxfd = STDIN_FILENO, n;
    fd_set fds;
    FD_ZERO(&fds);
    FD_SET(STDIN_FILENO, &fds);
    if (sigpipe_fd[0] >= 0) FD_SET(sigpipe_fd[0], &fds);
    if (sigpipe_fd[0] > maxfd) maxfd = sigpipe_fd[0];
    if (relay.on) FD_SET(relay.wake[0], &fds);
    if (relay.on && relay.wake[0] > maxfd) maxfd = relay.wake[0];
    n = select(maxfd + 1, &fds, NULL, NULL, &tv);
    if (n < 0 && errno != EINTR) {
      rl_callback_handler_remove();
      relay_pass();
      *how = LINE_EOF;
      return NULL;
    }
    if (take_exit(main_L) && !relay.on) rl_forced_update_display();
    relay_show();
    if (n <= 0) continue;
    if (sigpipe_fd[0] >= 0 && FD_ISSET(sigpipe_fd[0], &fds) && take_sigint()) {
      rl_free_line_state();
      rl_callback_sigcleanup();
      rl_cleanup_after_signal();
      rl_callback_handler_remove();
      relay_pass();
      fputs("\n", stdout);
      fflush(stdout);
      *how = LINE_INTERRUPTED;
      return NULL;
    }
    if (FD_ISSET(STDIN_FILENO, &fds)) {
      rl_callback_read_char();
      if (rl_finished) {
        relay_pass();
        *how = (rl_result != NULL) ? LINE_OK : LINE_EOF;
        return rl_result;
      }
    }
  }
}

/* Not a terminal: print the prompt and read a plain line. */
static char *read_plain(const char *prompt, int *how) {
  char *line = NULL;
  size_t cap = 0;
  ssize_t n;
  fputs(prompt, stdout);
  fflush(stdout);
  n = getline(&line, &cap, stdin);
  if (n < 0) {
    free(line);
    *how = LINE_EOF;
    return NULL;
  }
  if (n > 0 && line[n - 1] == '\n') line[n - 1] = '\0';
  *how = LINE_OK;
  return line;
}

/* Pushes the prompt: _PROMPT / _PROMPT2 through tostring, or the default. */
static const char *push_prompt(lua_State *L, int first) {
  if (lua_getglobal(L, first ? "_PROMPT" : "_PROMPT2") == LUA_TNIL) {
    lua_pop(L, 1);
    return lua_pushstring(L, first ? PROMPT1 : PROMPT2);
  }
  luaL_tolstring(L, -1, NULL);
  lua_remove(L, -2);
  return lua_tostring(L, -1);
}

/* Reads a line and pushes it (on LINE_OK only). A first line "=expr" means
** "return expr", as in lua 5.4. */
static int push_line(lua_State *L, int first) {
  const char *prompt = push_prompt(L, first);
  int how;
  char *b = use_readline ? read_terminal(prompt, &how) : read_plain(prompt, &how);
  lua_pop(L, 1);  /* the prompt */
  if (b == NULL) return how;
  if (first && b[0] == '=')
    lua_pushfstring(L, "return %s", b + 1);
  else
    lua_pushstring(L, b);
  free(b);
  return LINE_OK;
}

/* }================= */


/* {================= history and the terminal */

/* ~/.erlangen_history keeps the last HISTORY_MAX entries of all sessions.
** Each entry follows a "#<seconds>" line, so that an entry of several lines
** reads back as one (readline's multi-line entries); a line inside an entry
** that itself reads "#<digit>..." would start a new one. */

/* 1 if the file at path is missing or empty or starts with a timestamp. */
static int has_timestamps(const char *path) {
  char head[2];
  size_t n;
  FILE *f = fopen(path, "rb");
  if (f == NULL) return 1;
  n = fread(head, 1, 2, f);
  fclose(f);
  return n == 0 || (n == 2 && head[0] == '#' && isdigit((unsigned char)head[1]));
}

static void history_open(void) {
  const char *home = getenv("HOME");
  using_history();
  stifle_history(HISTORY_MAX);
  history_comment_char = '#';   /* before any entry is made: it starts the timestamps */
  history_write_timestamps = 1;
  if (home != NULL && home[0] != '\0') {
    size_t len = strlen(home) + sizeof("/" HISTORY_FILE);
    history_path = malloc(len);
    if (history_path != NULL) {
      snprintf(history_path, len, "%s/%s", home, HISTORY_FILE);
      if (!has_timestamps(history_path)) {  /* from an older erlangen: each line an entry */
        read_history(history_path);
        write_history(history_path);
      }
      else
        read_history(history_path);
    }
  }
}

static void save_line(const char *line) {
  HIST_ENTRY *last;
  if (!use_readline || line[0] == '\0') return;
  last = history_get(history_base + history_length - 1);
  if (last != NULL && strcmp(last->line, line) == 0) return;  /* the same again */
  add_history(line);
  if (history_path != NULL && append_history(1, history_path) != 0)
    write_history(history_path);  /* the file did not exist yet */
}

/* Other sessions may have appended since: every session's entries are read
** back (the stifle keeps the last) and written over the file. */
static void history_close(void) {
  if (history_path != NULL) {
    clear_history();
    if (read_history(history_path) == 0) write_history(history_path);
    free(history_path);
    history_path = NULL;
  }
}

static void repl_open_terminal(void) {
  static char word_breaks[] = " \t\n\"\\'`@$<>=;|&{}()[]+-*/%^#~,";
  rl_readline_name = PROGNAME;
  rl_catch_signals = 0;   /* Ctrl-C is ours */
  rl_catch_sigwinch = 0;
  rl_attempted_completion_function = complete;
  rl_completer_word_break_characters = word_breaks;  /* not '.' and ':': "erlangen.sp" is one word */
  rl_bind_key('\t', tab_key);
  rl_variable_bind("show-all-if-ambiguous", "on");  /* lists at once, as erl; ~/.inputrc may say otherwise */
  history_open();
  relay_start();
}

static void repl_close_terminal(void) {
  relay_stop();
  history_close();
}

/* }================= */


/* {================= the REPL */

/* The printer, in Lua. It returns show(...), which prints the REPL's
** results; render(v), which describes error objects; and flush(), the REPL's
** global. Values look like Lua literals: strings quoted, tables nested up to
** MAX_DEPTH levels and MAX_ITEMS entries, cycles marked, anything with
** __tostring (pids, refs) through tostring. */
static const char printer_source[] =
  "local erlangen = require 'erlangen'\n"
  "local MAX_DEPTH, MAX_ITEMS, WIDTH, MAX_SORT = 3, 50, 78, 1000\n"
  "local keywords = {}\n"
  "for w in ('and break do else elseif end false for function goto if in local '..\n"
  "          'nil not or repeat return then true until while'):gmatch('%a+') do\n"
  "  keywords[w] = true\n"
  "end\n"
  "local escapes = { ['\"'] = '\\\\\"', ['\\\\'] = '\\\\\\\\', ['\\a'] = '\\\\a',\n"
  "  ['\\b'] = '\\\\b', ['\\f'] = '\\\\f', ['\\n'] = '\\\\n', ['\\r'] = '\\\\r',\n"
  "  ['\\t'] = '\\\\t', ['\\v'] = '\\\\v' }\n"
  "local function quote(s)\n"
  "  return '\"' .. s:gsub('[%c\"\\\\]', function(c)\n"
  "    return escapes[c] or string.format('\\\\%03d', c:byte())\n"
  "  end) .. '\"'\n"
  "end\n"
  "local rank = { number = 1, string = 2, boolean = 3 }\n"
  "local function before(a, b)\n"
  "  local ta, tb = type(a), type(b)\n"
  "  if ta ~= tb then\n"
  "    local ra, rb = rank[ta] or 4, rank[tb] or 4\n"
  "    if ra ~= rb then return ra < rb end\n"
  "    return ta < tb\n"
  "  end\n"
  "  if ta == 'number' or ta == 'string' then return a < b end\n"
  "  if ta == 'boolean' then return b and not a end\n"
  "  return tostring(a) < tostring(b)\n"
  "end\n"
  "local render\n"
  "local function render_key(k, depth, path, indent)\n"
  "  if type(k) == 'string' and k:match('^[%a_][%w_]*$') and not keywords[k] then\n"
  "    return k\n"
  "  end\n"
  "  return '[' .. render(k, depth, path, indent) .. ']'\n"
  "end\n"
  "function render(v, depth, path, indent)\n"
  "  local t = type(v)\n"
  "  if t == 'string' then return quote(v) end\n"
  "  if t ~= 'table' then return tostring(v) end\n"
  "  local mt = getmetatable(v)\n"
  "  if type(mt) == 'table' and rawget(mt, '__tostring') then return tostring(v) end\n"
  "  if path[v] then return '<cycle>' end\n"
  "  if next(v) == nil then return '{}' end\n"
  "  if depth >= MAX_DEPTH then return '{...}' end\n"
  "  path[v] = true\n"
  "  local n, keys = rawlen(v), {}\n"
  "  for k in next, v do\n"
  "    if not (math.type(k) == 'integer' and k >= 1 and k <= n) then keys[#keys + 1] = k end\n"
  "  end\n"
  "  if #keys <= MAX_SORT then pcall(table.sort, keys, before) end\n"
  "  local total = n + #keys\n"
  "  local shown = math.min(total, MAX_ITEMS)\n"
  "  local items = {}\n"
  "  for i = 1, math.min(n, shown) do\n"
  "    items[i] = render(rawget(v, i), depth + 1, path, indent + 2)\n"
  "  end\n"
  "  for i = 1, shown - n do\n"
  "    local k = keys[i]\n"
  "    items[#items + 1] = render_key(k, depth + 1, path, indent + 2) .. ' = ' ..\n"
  "                        render(rawget(v, k), depth + 1, path, indent + 2)\n"
  "  end\n"
  "  if total > shown then items[#items + 1] = '... (' .. (total - shown) .. ' more)' end\n"
  "  path[v] = nil\n"
  "  local line = '{' .. table.concat(items, ', ') .. '}'\n"
  "  if #line + indent <= WIDTH and not line:find('\\n', 1, true) then return line end\n"
  "  local pad, lines, run = string.rep(' ', indent + 2), {}, nil\n"
  "  for i, item in ipairs(items) do\n"
  "    if i <= n and not item:find('\\n', 1, true) then\n"
  "      if run and indent + #run + #item + 4 <= WIDTH then\n"
  "        run = run .. ', ' .. item\n"
  "      else\n"
  "        lines[#lines + 1] = run\n"
  "        run = item\n"
  "      end\n"
  "    else\n"
  "      lines[#lines + 1] = run\n"
  "      lines[#lines + 1] = item\n"
  "      run = nil\n"
  "    end\n"
  "  end\n"
  "  lines[#lines + 1] = run\n"
  "  return '{\\n' .. pad .. table.concat(lines, ',\\n' .. pad) .. '\\n' ..\n"
  "         string.rep(' ', indent) .. '}'\n"
  "end\n"
  "local function show(...)\n"
  "  local out = table.pack(...)\n"
  "  for i = 1, out.n do out[i] = render(out[i], 0, {}, 0) end\n"
  "  print(table.unpack(out, 1, out.n))\n"
  "end\n"
  "local function flush()\n"
  "  while true do\n"
  "    local msg = erlangen.receive(0)\n"
  "    if msg == nil then return end\n"
  "    print('Shell got ' .. render(msg, 0, {}, 10))\n"
  "  end\n"
  "end\n"
  "return show, function(v) return render(v, 0, {}, 0) end, flush\n";

/* Loads the printer's functions into the registry. */
static void open_printer(lua_State *L) {
  if (luaL_loadbuffer(L, printer_source, sizeof printer_source - 1, "=printer") != LUA_OK)
    lua_error(L);
  lua_call(L, 0, 3);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &flush_key);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &render_key);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &show_key);
}

/* A syntax error at <eof> means the chunk goes on in the next line. */
static int incomplete(lua_State *L, int status) {
  size_t len;
  const char *msg;
  if (status != LUA_ERRSYNTAX) return 0;
  msg = lua_tolstring(L, -1, &len);
  return len >= sizeof(EOF_MARK) - 1 &&
         strcmp(msg + len - (sizeof(EOF_MARK) - 1), EOF_MARK) == 0;
}

/* Stack [line] -> [line, function] on success; [line] otherwise. */
static int load_expression(lua_State *L) {
  const char *line = lua_tostring(L, 1);
  const char *retline = lua_pushfstring(L, "return %s;", line);
  int status = luaL_loadbuffer(L, retline, strlen(retline), "=stdin");
  if (status == LUA_OK) {
    lua_remove(L, -2);
    save_line(line);
  }
  else
    lua_pop(L, 2);
  return status;
}

/* Stack [line] -> [chunk, function or error], reading more lines while the
** chunk is incomplete. */
static int load_statements(lua_State *L) {
  for (;;) {
    size_t len;
    const char *chunk = lua_tolstring(L, 1, &len);
    int status = luaL_loadbuffer(L, chunk, len, "=stdin");
    int how;
    if (!incomplete(L, status)) {
      save_line(chunk);
      return status;
    }
    how = push_line(L, 0);
    if (how == LINE_EOF) {  /* report the incomplete chunk's error */
      save_line(chunk);
      return status;
    }
    if (how == LINE_INTERRUPTED) return REPL_SKIP;
    lua_remove(L, -2);  /* the error */
    lua_pushliteral(L, "\n");
    lua_insert(L, -2);
    lua_concat(L, 3);
  }
}

/* Reads and compiles one input. Leaves the function (LUA_OK) or the error on
** an otherwise empty stack; REPL_EOF and REPL_SKIP leave it empty. */
static int repl_load(lua_State *L) {
  int status;
  lua_settop(L, 0);
  switch (push_line(L, 1)) {
    case LINE_EOF: return REPL_EOF;
    case LINE_INTERRUPTED: return REPL_SKIP;
    default: break;
  }
  status = load_expression(L);
  if (status != LUA_OK) status = load_statements(L);
  if (status == REPL_SKIP) {
    lua_settop(L, 0);
    return status;
  }
  lua_remove(L, 1);  /* the line */
  return status;
}

static void repl_print(lua_State *L) {
  int n = lua_gettop(L);
  if (n == 0) return;
  luaL_checkstack(L, LUA_MINSTACK, "too many results to print");
  lua_rawgetp(L, LUA_REGISTRYINDEX, &show_key);
  lua_insert(L, 1);
  if (lua_pcall(L, n, 0, 0) == LUA_OK) return;
  if (is_exit_object(L, -1))
    report_exit(L, -1);
  else
    message(lua_pushfstring(L, "error calling 'print' (%s)", lua_tostring(L, -1)));
}

static void repl(lua_State *L) {
  const char *saved_prefix = msg_prefix;
  int status;
  lua_rawgetp(L, LUA_REGISTRYINDEX, &flush_key);
  lua_setglobal(L, "flush");
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  lua_getfield(L, -1, "erlangen");
  lua_getfield(L, -1, "self");
  lua_rawsetp(L, LUA_REGISTRYINDEX, &self_key);
  lua_pop(L, 2);
  use_readline = isatty(STDIN_FILENO);
  if (use_readline) repl_open_terminal();
  msg_prefix = NULL;
  while ((status = repl_load(L)) != REPL_EOF) {
    if (status == REPL_SKIP) continue;
    take_exit(L);  /* one that came while the line was read is not the command's */
    if (status == LUA_OK) status = docall(L, 0, LUA_MULTRET);
    if (status == LUA_OK) repl_print(L);
    else report(L, status);
  }
  lua_settop(L, 0);
  fputs("\n", stdout);
  fflush(stdout);
  msg_prefix = saved_prefix;
  repl_close_terminal();
}

/* }================= */


static double grace_period(void) {
  const char *s = getenv("ERLANGEN_GRACE");
  char *end;
  double g;
  if (s == NULL || s[0] == '\0') return GRACE_DEFAULT;
  g = strtod(s, &end);
  return (*end == '\0' && g >= 0) ? g : GRACE_DEFAULT;
}

/* Ends the main process and stops the kernel: every remaining process gets
** "shutdown", and "kill" after the grace period. */
static void finish(void) {
  catch_sigint(0);  /* from here on Ctrl-C ends the program */
  repl_close_terminal();
  erlangen_detach(main_L);
  main_L = NULL;
  erlangen_stop(grace_period());
}

/* os.exit of the main state: the kernel shuts down first, as at the end of
** the main chunk. The state is always closed. */
static int os_exit(lua_State *L) {
  int status;
  if (lua_isboolean(L, 1))
    status = lua_toboolean(L, 1) ? EXIT_SUCCESS : EXIT_FAILURE;
  else
    status = (int)luaL_optinteger(L, 1, EXIT_SUCCESS);
  fflush(stdout);
  finish();
  exit(status);
}

/* Runs the command line in the attached state, as lua5.4 does. Pushes true
** if everything ran without error. */
static int run_main(lua_State *L) {
  const cmdline *c = lua_touserdata(L, 1);
  lua_settop(L, 0);
  if (lua_getglobal(L, "os") == LUA_TTABLE) {
    lua_pushcfunction(L, os_exit);
    lua_setfield(L, -2, "exit");
  }
  lua_pop(L, 1);
  open_printer(L);
  if (c->flags & OPT_VERSION) print_version();
  create_arg_table(L, c);
  if (!(c->flags & OPT_NOENV) && run_luainit(L) != LUA_OK) return 0;
  if (!run_options(L, c)) return 0;
  if (c->observer || c->top) {
    if (!run_tool(L, c)) return 0;
    lua_pushboolean(L, 1);
    return 1;
  }
  if (c->script < c->argc && run_script(L, c) != LUA_OK) return 0;
  if (c->flags & OPT_INTERACT)
    repl(L);
  else if (c->script == c->argc && !(c->flags & (OPT_EXEC | OPT_VERSION))) {
    if (isatty(STDIN_FILENO)) {
      print_version();
      repl(L);
    }
    else if (dofile(L, NULL) != LUA_OK)
      return 0;
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* erlangen --port-mapper [--port N] */
static int port_mapper(int argc, char **argv) {
  char err[256];
  int port, fd, bound;
  sigset_t stops;
  if (argc == 4 && strcmp(argv[2], "--port") == 0) {
    if (pmap_parse_port(argv[3], &port) != 0) {
      fprintf(stderr, "%s: --port '%s': not a port number 0..65535\n", PROGNAME, argv[3]);
      return EXIT_FAILURE;
    }
  }
  else if (argc != 2) {
    int port_given = strcmp(argv[2], "--port") == 0;
    if (port_given && argc == 3)
      fprintf(stderr, "%s: '--port' needs argument\n", PROGNAME);
    else
      fprintf(stderr, "%s: unrecognized option '%s'\n", PROGNAME, argv[port_given ? 4 : 2]);
    fputs("usage: " PROGNAME " --port-mapper [--port N]\n", stderr);
    return EXIT_FAILURE;
  }
  else if (pmap_default_port(&port, err, sizeof err) != 0) {  /* ERLANGEN_PORT_MAPPER_PORT */
    message(err);
    return EXIT_FAILURE;
  }
  signal(SIGPIPE, SIG_IGN);  /* whoever reads the port line may be gone */
  if (pmapd_listen(port, &fd, &bound, err, sizeof err) != 0) {
    message(err);
    return EXIT_FAILURE;
  }
  /* Stop signals stay blocked outside pmapd_serve's wait: one sent as soon
  ** as the port line is read is held until the loop takes it, and one that
  ** comes after the loop has ended (timeout(1) signals the child and then
  ** its group) stays pending while we exit 0. */
  sigemptyset(&stops);
  sigaddset(&stops, SIGINT);
  sigaddset(&stops, SIGTERM);
  sigprocmask(SIG_BLOCK, &stops, NULL);
  printf("%d\n", bound);
  fflush(stdout);
  if (pmapd_serve(fd, err, sizeof err) != 0) {
    message(err);
    return EXIT_FAILURE;
  }
  return EXIT_SUCCESS;
}

int main(int argc, char **argv) {
  cmdline c;
  lua_State *L;
  int status, ok;
  c.argc = argc;
  c.argv = argv;
  if (argc < 1) {  /* no program name: nothing to parse */
    static char *none[] = { PROGNAME, NULL };
    c.argc = 1;
    c.argv = none;
  }
  else if (argc > 1 && strcmp(argv[1], "--port-mapper") == 0)
    return port_mapper(argc, argv);
  parse_cmdline(&c);
  if (c.flags & OPT_BAD) {
    print_usage(c.argv[c.script], c.flags & OPT_NOARG);
    return EXIT_FAILURE;
  }
  if (c.help) {
    print_help(stdout);
    return EXIT_SUCCESS;
  }
  if ((c.observer && c.top) || (c.connect && !c.observer) || (c.interval && !c.top)
      || (c.allow_kill && !c.observer)) {
    message(c.observer && c.top ? "--observer and --top cannot be used together"
            : c.connect ? "--connect goes with --observer (--top NODE connects to NODE)"
            : c.interval ? "--interval goes with --top" : "--allow-kill goes with --observer");
    return EXIT_FAILURE;
  }
  if (c.flags & OPT_NOENV) ignore_environment();
  if (erlangen_start(NULL) != 0) {
    message("cannot start the kernel");
    return EXIT_FAILURE;
  }
  L = erlangen_attach();
  if (L == NULL) {
    message("cannot attach the main thread to the kernel");
    erlangen_stop(0);
    return EXIT_FAILURE;
  }
  main_L = L;
  if (pipe2(sigpipe_fd, O_NONBLOCK | O_CLOEXEC) != 0)
    sigpipe_fd[0] = sigpipe_fd[1] = -1;
  catch_sigint(1);
  lua_pushcfunction(L, run_main);
  lua_pushlightuserdata(L, &c);
  status = lua_pcall(L, 1, 1, 0);
  ok = (status == LUA_OK) && lua_toboolean(L, -1);
  report(L, status);
  finish();
  return ok ? EXIT_SUCCESS : EXIT_FAILURE;
}
