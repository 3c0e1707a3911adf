// safetensors_write.c: the safetensors writer (see safetensors.h).
#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "src/core/common.h"
#include "src/io/safetensors.h"

typedef struct {
    char *name;
    st_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIM];
    const void *data;
} st_entry;

struct st_writer {
    int n, cap;
    st_entry *e;
    int n_meta, cap_meta;
    char **meta_keys, **meta_vals;
};

st_writer *st_writer_new(void) { return xcalloc(1, sizeof(st_writer)); }

void st_writer_free(st_writer *w) {
    if (!w) return;
    for (int i = 0; i < w->n; i++) free(w->e[i].name);
    free(w->e);
    for (int i = 0; i < w->n_meta; i++) {
        free(w->meta_keys[i]);
        free(w->meta_vals[i]);
    }
    free(w->meta_keys);
    free(w->meta_vals);
    free(w);
}

int st_writer_add(st_writer *w, const char *name, st_dtype dt, int ndim, const int64_t *shape, const void *data,
                  char *err, int errlen) {
    if (!name[0] || strncmp(name, "__", 2) == 0) {
        snprintf(err, errlen, "tensor '%s': expected a name that is not empty and does not start with '__'", name);
        return -1;
    }
    if (dt >= ST_N_DTYPES || ndim < 0 || ndim > ST_MAX_DIM) {
        snprintf(err, errlen, "tensor %s: expected a known dtype and 0..%d dimensions, found dtype %d, %d dimensions",
                 name, ST_MAX_DIM, (int)dt, ndim);
        return -1;
    }
    for (int i = 0; i < ndim; i++)
        if (shape[i] < 0) {
            snprintf(err, errlen, "tensor %s: expected non-negative dimensions, found %lld", name, (long long)shape[i]);
            return -1;
        }
    for (int i = 0; i < w->n; i++)
        if (strcmp(w->e[i].name, name) == 0) {
            snprintf(err, errlen, "tensor %s: expected unique tensor names, found it twice", name);
            return -1;
        }
    if (w->n == w->cap) {
        w->cap = w->cap ? 2 * w->cap : 32;
        w->e = xrealloc(w->e, sizeof(st_entry) * w->cap);
    }
    st_entry *e = &w->e[w->n++];
    memset(e, 0, sizeof *e);
    e->name = xstrdup(name);
    e->dtype = dt;
    e->ndim = ndim;
    for (int i = 0; i < ndim; i++) e->shape[i] = shape[i];
    e->data = data;
    return 0;
}

void st_writer_put(st_writer *w, const char *name, st_dtype dt, int ndim, const int64_t *shape, const void *data) {
    char err[512];
    if (st_writer_add(w, name, dt, ndim, shape, data, err, sizeof err) != 0) hax_die("safetensors writer: %s", err);
}

void st_writer_meta(st_writer *w, const char *key, const char *value) {
    for (int i = 0; i < w->n_meta; i++)
        if (strcmp(w->meta_keys[i], key) == 0) {
            free(w->meta_vals[i]);
            w->meta_vals[i] = xstrdup(value);
            return;
        }
    if (w->n_meta == w->cap_meta) {
        w->cap_meta = w->cap_meta ? 2 * w->cap_meta : 8;
        w->meta_keys = xrealloc(w->meta_keys, sizeof(char *) * w->cap_meta);
        w->meta_vals = xrealloc(w->meta_vals, sizeof(char *) * w->cap_meta);
    }
    w->meta_keys[w->n_meta] = xstrdup(key);
    w->meta_vals[w->n_meta++] = xstrdup(value);
}

// A growing text buffer for the JSON header.
typedef struct {
    char *s;
    size_t n, cap;
} sbuf;

static void sb_put(sbuf *b, const char *s, size_t n) {
    if (b->n + n + 1 > b->cap) {
        b->cap = (b->n + n + 1) * 2;
        b->s = xrealloc(b->s, b->cap);
    }
    memcpy(b->s + b->n, s, n);
    b->n += n;
    b->s[b->n] = 0;
}

static void sb_printf(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(sbuf *b, const char *fmt, ...) {
    char tmp[256];
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    sb_put(b, tmp, (size_t)k);
}

// A JSON string literal; bytes >= 0x80 pass through (UTF-8).
static void sb_json_string(sbuf *b, const char *s) {
    sb_put(b, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\') {
            char e[2] = {'\\', (char)*p};
            sb_put(b, e, 2);
        } else if (*p < 0x20) sb_printf(b, "\\u%04x", *p);
        else sb_put(b, (const char *)p, 1);
    }
    sb_put(b, "\"", 1);
}

static size_t entry_bytes(const st_entry *e) {
    size_t n = st_dtype_size(e->dtype);
    for (int i = 0; i < e->ndim; i++) n *= (size_t)e->shape[i];
    return n;
}

unsigned char *st_writer_serialize(const st_writer *w, size_t *len) {
    sbuf h = {0};
    sb_put(&h, "{", 1);
    int first = 1;
    if (w->n_meta) {
        sb_put(&h, "\"__metadata__\":{", 16);
        for (int i = 0; i < w->n_meta; i++) {
            if (i) sb_put(&h, ",", 1);
            sb_json_string(&h, w->meta_keys[i]);
            sb_put(&h, ":", 1);
            sb_json_string(&h, w->meta_vals[i]);
        }
        sb_put(&h, "}", 1);
        first = 0;
    }
    size_t off = 0;
    for (int i = 0; i < w->n; i++) {
        const st_entry *e = &w->e[i];
        if (!first) sb_put(&h, ",", 1);
        first = 0;
        sb_json_string(&h, e->name);
        sb_printf(&h, ":{\"dtype\":\"%s\",\"shape\":[", st_dtype_name(e->dtype));
        for (int d = 0; d < e->ndim; d++) sb_printf(&h, "%s%lld", d ? "," : "", (long long)e->shape[d]);
        size_t nb = entry_bytes(e);
        sb_printf(&h, "],\"data_offsets\":[%zu,%zu]}", off, off + nb);
        off += nb;
    }
    sb_put(&h, "}", 1);
    while (h.n % 8) sb_put(&h, " ", 1);  // the data starts 8-byte aligned
    *len = 8 + h.n + off;
    unsigned char *out = xmalloc(*len ? *len : 1);
    for (int i = 0; i < 8; i++) out[i] = (unsigned char)((uint64_t)h.n >> (8 * i));
    memcpy(out + 8, h.s, h.n);
    unsigned char *p = out + 8 + h.n;
    for (int i = 0; i < w->n; i++) {
        size_t nb = entry_bytes(&w->e[i]);
        if (nb) memcpy(p, w->e[i].data, nb);
        p += nb;
    }
    free(h.s);
    return out;
}

int st_writer_write(const st_writer *w, const char *path, char *err, int errlen) {
    size_t len;
    unsigned char *buf = st_writer_serialize(w, &len);
    int rc = hax_write_file_atomic(path, buf, len);
    if (rc != 0) snprintf(err, errlen, "%s: cannot write: %s", path, strerror(errno));
    free(buf);
    return rc;
}
