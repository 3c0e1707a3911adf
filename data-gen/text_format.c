// text_format.c: buffered writer of the reference's text layout (see text_format.h).
#include "data-gen/text_format.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "src/core/common.h"

#define TEXT_BUF (1 << 20)

static const char *split_names[3] = {"train", "valid", "test"};
static const char *kind_names[2] = {"inputs", "mask"};

typedef struct {
    char *path, *tmp;  // final name; temporary beside it
    FILE *f;
    char *buf;         // pending bytes
    size_t n;
} text_file;

struct text_writer {
    text_file file[3][2];  // [split][inputs/mask]
    int pad_len;
    char *pad_in, *pad_mask;  // " 3 3 3 ..." and " 0 0 0 ...", pad_len entries each
    char err[512];
};

static char close_err[512];

int text_format_path(char *buf, int buflen, const char *dir, int max_n_context, int max_n_key,
                     uint32_t seed, int split, int kind) {
    return snprintf(buf, (size_t)buflen, "%s/max_n_context_%d_max_n_key_%d_seed_%u_%s_%s.txt", dir,
                    max_n_context, max_n_key, seed, split_names[split], kind_names[kind]);
}

static int flush_file(text_writer *w, text_file *t) {
    if (t->n && fwrite(t->buf, 1, t->n, t->f) != t->n) {
        snprintf(w->err, sizeof w->err, "text: %s: write failed: %s", t->tmp, strerror(errno));
        return -1;
    }
    t->n = 0;
    return 0;
}

// Makes room for `need` more bytes in t's buffer.
static int reserve(text_writer *w, text_file *t, size_t need) {
    if (t->n + need <= TEXT_BUF) return 0;
    if (flush_file(w, t)) return -1;
    if (need > TEXT_BUF) {  // a line longer than the buffer: grow it once
        t->buf = xrealloc(t->buf, need);
    }
    return 0;
}

// Decimal digits of v (>= 0) at p; returns the count.
static int put_uint(char *p, uint32_t v) {
    char tmp[10];
    int n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    for (int i = 0; i < n; i++) p[i] = tmp[n - 1 - i];
    return n;
}

static int put_int(char *p, int32_t v) {
    if (v >= 0) return put_uint(p, (uint32_t)v);
    p[0] = '-';
    return 1 + put_uint(p + 1, (uint32_t)(-(int64_t)v));
}

static void free_writer(text_writer *w) {
    for (int s = 0; s < 3; s++)
        for (int k = 0; k < 2; k++) {
            text_file *t = &w->file[s][k];
            if (t->f) fclose(t->f);
            if (t->tmp) unlink(t->tmp);
            free(t->path);
            free(t->tmp);
            free(t->buf);
        }
    free(w->pad_in);
    free(w->pad_mask);
    free(w);
}

text_writer *text_writer_open(const char *dir, int max_n_context, int max_n_key, uint32_t seed,
                              int pad_len, char *err, int errlen) {
    if (pad_len < 1) {
        snprintf(err, (size_t)errlen, "text: pad_len: expected >= 1, found %d", pad_len);
        return NULL;
    }
    text_writer *w = xcalloc(1, sizeof *w);
    w->pad_len = pad_len;
    w->pad_in = xmalloc(2 * (size_t)pad_len);
    w->pad_mask = xmalloc(2 * (size_t)pad_len);
    for (int i = 0; i < pad_len; i++) {
        w->pad_in[2 * i] = w->pad_mask[2 * i] = ' ';
        w->pad_in[2 * i + 1] = '3';
        w->pad_mask[2 * i + 1] = '0';
    }
    for (int s = 0; s < 3; s++)
        for (int k = 0; k < 2; k++) {
            text_file *t = &w->file[s][k];
            int n = text_format_path(NULL, 0, dir, max_n_context, max_n_key, seed, s, k);
            t->path = xmalloc((size_t)n + 1);
            text_format_path(t->path, n + 1, dir, max_n_context, max_n_key, seed, s, k);
            t->tmp = xmalloc((size_t)n + 32);
            snprintf(t->tmp, (size_t)n + 32, "%s.part-%ld", t->path, (long)getpid());
            t->buf = xmalloc(TEXT_BUF);
            t->f = fopen(t->tmp, "wb");
            if (!t->f) {
                snprintf(err, (size_t)errlen, "text: %s: cannot create: %s", t->tmp, strerror(errno));
                free(t->tmp);  // nothing was created under this name
                t->tmp = NULL;
                free_writer(w);
                return NULL;
            }
        }
    return w;
}

int text_writer_add(text_writer *w, int split, const int32_t *tokens, const uint8_t *mask, int len) {
    if (split < 0 || split > 2 || len < 1 || len > w->pad_len) {
        snprintf(w->err, sizeof w->err, "text: sample: expected split 0..2 and 1..%d tokens, found split %d, %d tokens",
                 w->pad_len, split, len);
        return -1;
    }
    int pad = w->pad_len - len;
    // Inputs: up to 11 bytes per id, then the padding and a newline.
    text_file *t = &w->file[split][0];
    if (reserve(w, t, 12 * (size_t)len + 2 * (size_t)pad + 1)) return -1;
    char *p = t->buf + t->n;
    p += put_int(p, tokens[0]);
    for (int i = 1; i < len; i++) {
        *p++ = ' ';
        p += put_int(p, tokens[i]);
    }
    memcpy(p, w->pad_in, 2 * (size_t)pad);
    p += 2 * (size_t)pad;
    *p++ = '\n';
    t->n = (size_t)(p - t->buf);
    // Mask: one digit per position (masks are 0/1; larger values still print).
    t = &w->file[split][1];
    if (reserve(w, t, 4 * (size_t)len + 2 * (size_t)pad + 1)) return -1;
    p = t->buf + t->n;
    for (int i = 0; i < len; i++) {
        if (i) *p++ = ' ';
        p += put_uint(p, mask[i]);
    }
    memcpy(p, w->pad_mask, 2 * (size_t)pad);
    p += 2 * (size_t)pad;
    *p++ = '\n';
    t->n = (size_t)(p - t->buf);
    return 0;
}

// Flushes, syncs and closes one temporary.
static int finish_file(text_writer *w, text_file *t) {
    if (flush_file(w, t)) return -1;
    int bad = fflush(t->f) != 0 || fsync(fileno(t->f)) != 0;
    int e = errno;
    bad |= fclose(t->f) != 0;
    t->f = NULL;
    if (bad) {
        snprintf(w->err, sizeof w->err, "text: %s: write failed: %s", t->tmp, strerror(e ? e : errno));
        return -1;
    }
    return 0;
}

int text_writer_close(text_writer *w, int commit) {
    if (!w) return 0;
    int rc = 0;
    if (commit) {
        for (int s = 0; s < 3 && rc == 0; s++)
            for (int k = 0; k < 2 && rc == 0; k++) rc = finish_file(w, &w->file[s][k]);
        // All six are complete on disk before any takes its final name.
        for (int s = 0; s < 3 && rc == 0; s++)
            for (int k = 0; k < 2 && rc == 0; k++) {
                text_file *t = &w->file[s][k];
                if (rename(t->tmp, t->path) != 0) {
                    snprintf(w->err, sizeof w->err, "text: %s: cannot rename to %s: %s", t->tmp, t->path,
                             strerror(errno));
                    rc = -1;
                } else {
                    free(t->tmp);
                    t->tmp = NULL;
                }
            }
        if (rc == 0) {  // make the renames durable
            char *dir = xstrdup(w->file[0][0].path);
            char *slash = strrchr(dir, '/');
            if (slash) *slash = '\0';
            int fd = open(slash ? dir : ".", O_RDONLY | O_DIRECTORY);
            if (fd >= 0) {
                fsync(fd);
                close(fd);
            }
            free(dir);
        }
        if (rc) snprintf(close_err, sizeof close_err, "%s", w->err);
    }
    free_writer(w);  // removes whatever temporaries remain
    return rc;
}

const char *text_writer_error(const text_writer *w) {
    return w ? w->err : close_err;
}
