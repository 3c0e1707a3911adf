// common.c: see common.h.

#include "src/core/common.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static void vprint_line(const char *prefix, const char *fmt, va_list ap) {
    char msg[2048];
    vsnprintf(msg, sizeof msg, fmt, ap);
    fprintf(stderr, "hax: %s%s\n", prefix, msg);
    fflush(stderr);
}

void hax_die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vprint_line("", fmt, ap);
    va_end(ap);
    exit(HAX_EXIT_ERROR);
}

void hax_die_code(int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vprint_line("", fmt, ap);
    va_end(ap);
    exit(code);
}

void hax_warn(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vprint_line("warning: ", fmt, ap);
    va_end(ap);
}

int hax_errf(char *err, int errlen, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    if (err && errlen > 0) vsnprintf(err, (size_t)errlen, fmt, ap);
    va_end(ap);
    return -1;
}

void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) hax_die("out of memory allocating %zu bytes", n);
    return p;
}

void *xcalloc(size_t count, size_t size) {
    void *p = calloc(count ? count : 1, size ? size : 1);
    if (!p) hax_die("out of memory allocating %zu x %zu bytes", count, size);
    return p;
}

void *xrealloc(void *p, size_t n) {
    void *q = realloc(p, n ? n : 1);
    if (!q) hax_die("out of memory reallocating %zu bytes", n);
    return q;
}

char *xstrdup(const char *s) {
    size_t n = strlen(s) + 1;
    char *d = xmalloc(n);
    memcpy(d, s, n);
    return d;
}

static int fsync_parent(const char *path) {
    char *copy = xstrdup(path);
    int fd = open(dirname(copy), O_RDONLY | O_DIRECTORY);
    free(copy);
    if (fd < 0) return -1;
    int rc = fsync(fd);
    close(fd);
    return rc;
}

int hax_write_file_atomic(const char *path, const void *buf, size_t len) {
    size_t n = strlen(path) + 32;
    char *tmp = xmalloc(n);
    snprintf(tmp, n, "%s.tmp.%ld", path, (long)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) { free(tmp); return -1; }
    const char *p = buf;
    size_t left = len;
    while (left > 0) {
        ssize_t w = write(fd, p, left);
        if (w < 0) {
            if (errno == EINTR) continue;
            goto fail;
        }
        p += w;
        left -= (size_t)w;
    }
    if (fsync(fd) != 0) goto fail;
    if (close(fd) != 0) { fd = -1; goto fail; }
    fd = -1;
    if (rename(tmp, path) != 0) goto fail;
    free(tmp);
    fsync_parent(path);
    return 0;
fail: {
        int saved = errno;
        if (fd >= 0) close(fd);
        unlink(tmp);
        free(tmp);
        errno = saved;
        return -1;
    }
}

static const char *file_kind(mode_t m) {
    return S_ISDIR(m) ? "a folder" : S_ISFIFO(m) ? "a FIFO" : S_ISCHR(m) ? "a character device" : S_ISBLK(m) ? "a block device"
         : S_ISSOCK(m) ? "a socket" : "a special file";
}

char *hax_read_file_max(const char *path, size_t max, size_t *len, char *err, int errlen) {
    // O_NONBLOCK: opening a FIFO without a writer must not wait for one
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) {
        hax_errf(err, errlen, "%s: cannot read: %s", path, strerror(errno));
        return NULL;
    }
    struct stat st = {0};
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        hax_errf(err, errlen, "%s: expected a regular file, found %s", path, file_kind(st.st_mode));
        close(fd);
        return NULL;
    }
    if ((uint64_t)st.st_size > max) {
        hax_errf(err, errlen, "%s: expected at most %zu bytes, found %lld", path, max, (long long)st.st_size);
        close(fd);
        return NULL;
    }
    // The file may grow while we read: never read past max.
    size_t cap = (size_t)st.st_size + 1, n = 0;
    char *buf = xmalloc(cap + 1);
    for (;;) {
        ssize_t r = read(fd, buf + n, cap - n);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            hax_errf(err, errlen, "%s: cannot read: %s", path, strerror(errno));
            free(buf);
            close(fd);
            return NULL;
        }
        if (r == 0) break;
        n += (size_t)r;
        if (n == cap) {
            if (cap > max) {
                hax_errf(err, errlen, "%s: expected at most %zu bytes, found more (the file grew)", path, max);
                free(buf);
                close(fd);
                return NULL;
            }
            cap = cap * 2 > max + 1 ? max + 1 : cap * 2;
            buf = xrealloc(buf, cap + 1);
        }
    }
    close(fd);
    buf[n] = 0;
    if (len) *len = n;
    return buf;
}

char *hax_read_file(const char *path, size_t *len) {
    struct stat st;
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
        errno = EISDIR;  // fopen accepts a folder; its reads would fail with a vaguer EIO
        return NULL;
    }
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 1 << 16, n = 0;
    char *buf = xmalloc(cap);
    for (;;) {
        if (n + 1 >= cap) { cap *= 2; buf = xrealloc(buf, cap); }
        size_t r = fread(buf + n, 1, cap - n - 1, f);
        n += r;
        if (r == 0) break;
    }
    int err = ferror(f);
    fclose(f);
    if (err) { free(buf); errno = EIO; return NULL; }
    buf[n] = 0;
    if (len) *len = n;
    return buf;
}

int hax_mkdir_p(const char *path) {
    char *p = xstrdup(path);
    for (char *s = p + 1; *s; s++) {
        if (*s != '/') continue;
        *s = 0;
        if (mkdir(p, 0755) != 0 && errno != EEXIST) { free(p); return -1; }
        *s = '/';
    }
    int rc = mkdir(p, 0755);
    free(p);
    if (rc != 0 && errno != EEXIST) return -1;
    struct stat st;
    if (stat(path, &st) != 0 || !S_ISDIR(st.st_mode)) { errno = ENOTDIR; return -1; }
    return 0;
}

double hax_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int hax_stderr_is_tty(void) { return isatty(2); }

char *hax_path_beside(const char *from, const char *path) {
    const char *slash = strrchr(from, '/');
    if (path[0] == '/' || !slash) return xstrdup(path);
    size_t dl = (size_t)(slash - from), n = dl + 1 + strlen(path) + 1;
    char *out = xmalloc(n);
    snprintf(out, n, "%.*s/%s", (int)dl, from, path);
    return out;
}

int hax_env_choice(const char *var, const char *choices, int unset) {
    const char *v = getenv(var);
    if (!v) return unset;
    char list[256] = "";
    int i = 0, n_words = 0;
    for (const char *c = choices; *c; c += *c == ' ') n_words++, c += strcspn(c, " ");
    for (const char *c = choices; *c; i++) {
        size_t n = strcspn(c, " ");
        if (strlen(v) == n && strncmp(v, c, n) == 0) return i;
        // "a", "a or b", "a, b or c"
        const char *sep = i == 0 ? "" : i == n_words - 1 ? " or " : ", ";
        size_t used = strlen(list);
        snprintf(list + used, sizeof list - used, "%s%.*s", sep, (int)n, c);
        c += n;
        c += *c == ' ';
    }
    hax_die("%s: expected %s, found '%s'", var, list, v);
}
