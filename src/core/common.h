// common.h: errors, allocation, atomic files, timing. Used by every program.
#ifndef HAX_COMMON_H
#define HAX_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

// Exit statuses shared by all programs (documented in the README).
enum {
    HAX_EXIT_OK = 0,
    HAX_EXIT_ERROR = 1,      // bad input or a failed run: nothing to retry
    HAX_EXIT_USAGE = 2,      // bad command line
    HAX_EXIT_PREEMPTED = 3,  // stopped by a signal after writing a checkpoint: requeue to resume
};

// Prints "hax: <message>" as one line on stderr and exits with HAX_EXIT_ERROR.
// Messages name the file, the field, what was expected and what was found.
void hax_die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
// Same, with a chosen exit status.
void hax_die_code(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3), noreturn));
// Prints "hax: warning: <message>" on stderr.
void hax_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

// Formats an error message into err (when err is not NULL) and returns -1,
// for functions that report failure to a caller that decides what to do.
int hax_errf(char *err, int errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

// Allocation that never returns NULL (dies with the requested size instead).
void *xmalloc(size_t n);
void *xcalloc(size_t count, size_t size);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);
// path as a file at `from` names it: relative to from's folder, unless absolute
// or from has no folder (a new string).
char *hax_path_beside(const char *from, const char *path);

// Writes len bytes to path atomically: a temporary file beside it, fsync,
// rename, fsync of the folder. Returns 0, or -1 with errno set (path untouched).
int hax_write_file_atomic(const char *path, const void *buf, size_t len);

// Reads a whole file into a new buffer (NUL-terminated for convenience).
// Returns NULL with errno set on failure.
char *hax_read_file(const char *path, size_t *len);

// Input limits of the readers (manifest, result.json, golden and checkpoint
// headers, configs): text files and JSON headers, and nesting depth.
#define HAX_MAX_TEXT_BYTES ((size_t)64 << 20)
#define HAX_MAX_DEPTH 64

// Bounded hax_read_file for input files: refuses anything that is not a
// regular file (a FIFO, /dev/zero, a folder: checked without blocking) and a
// file over max bytes, before reading it. Returns the buffer (NUL-terminated)
// or NULL with "PATH: expected ..., found ..." (or "PATH: cannot read: ...")
// in err.
char *hax_read_file_max(const char *path, size_t max, size_t *len, char *err, int errlen);

// Creates a folder and its parents (like mkdir -p). Returns 0 or -1 (errno).
int hax_mkdir_p(const char *path);

// Monotonic wall clock in seconds.
double hax_now(void);

// 1 if stderr is a terminal (live progress lines are only drawn there).
int hax_stderr_is_tty(void);

// A kernel or mode choice from the environment: the position of variable
// var's value in choices (space-separated words, "new old" -> 0 or 1), or
// unset when var is not set; any other value (the empty one included) is an
// error naming var and the choices. Callers read it once and keep it.
int hax_env_choice(const char *var, const char *choices, int unset);

#endif
