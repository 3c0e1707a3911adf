// safetensors.c: see safetensors.h. The header is parsed by a small strict
// JSON parser for exactly the safetensors grammar: an object whose values are
// tensor entries {dtype: string, shape: [uint...], data_offsets: [uint, uint]}
// or, under "__metadata__", an object of strings.
#include "src/io/safetensors.h"

#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "src/core/common.h"

static const struct {
    const char *name;
    size_t size;
} dtypes[ST_N_DTYPES] = {
    [ST_F64] = {"F64", 8}, [ST_F32] = {"F32", 4}, [ST_F16] = {"F16", 2}, [ST_BF16] = {"BF16", 2},
    [ST_I64] = {"I64", 8}, [ST_I32] = {"I32", 4}, [ST_I16] = {"I16", 2}, [ST_I8] = {"I8", 1},
    [ST_U64] = {"U64", 8}, [ST_U32] = {"U32", 4}, [ST_U16] = {"U16", 2}, [ST_U8] = {"U8", 1},
    [ST_BOOL] = {"BOOL", 1},
};

size_t st_dtype_size(st_dtype dt) { return dt < ST_N_DTYPES ? dtypes[dt].size : 0; }
const char *st_dtype_name(st_dtype dt) { return dt < ST_N_DTYPES ? dtypes[dt].name : "?"; }

int st_dtype_parse(const char *name) {
    for (int i = 0; i < ST_N_DTYPES; i++)
        if (strcmp(name, dtypes[i].name) == 0) return i;
    return -1;
}

size_t st_numel(const st_tensor *t) {
    size_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= (size_t)t->shape[i];
    return n;
}

void st_format_shape(char *buf, size_t n, int ndim, const int64_t *shape) {
    size_t k = 0;
    k += (size_t)snprintf(buf + k, n - k, "[");
    for (int i = 0; i < ndim && k < n; i++)
        k += (size_t)snprintf(buf + k, n - k, "%s%lld", i ? "," : "", (long long)shape[i]);
    if (k < n) snprintf(buf + k, n - k, "]");
}

// ---------------------------------------------------------------- JSON header

typedef struct {
    const char *s;  // header text
    size_t n, pos;
    const char *path;
    char *err;
    int errlen;
    int failed;
} json_in;

static int jfail(json_in *j, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int jfail(json_in *j, const char *fmt, ...) {
    if (j->failed) return -1;
    j->failed = 1;
    char msg[384];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    snprintf(j->err, j->errlen, "%s: %s", j->path, msg);
    return -1;
}

static void skip_ws(json_in *j) {
    while (j->pos < j->n && (j->s[j->pos] == ' ' || j->s[j->pos] == '\t' || j->s[j->pos] == '\n' || j->s[j->pos] == '\r'))
        j->pos++;
}

// What is at the current position, for messages.
static const char *found_desc(json_in *j, char *buf, size_t n) {
    if (j->pos >= j->n) return "the end of the header";
    unsigned char c = (unsigned char)j->s[j->pos];
    if (c >= 0x20 && c < 0x7f) snprintf(buf, n, "'%c' at header byte %zu", c, j->pos);
    else snprintf(buf, n, "byte 0x%02x at header byte %zu", c, j->pos);
    return buf;
}

static int expect_char(json_in *j, char c, const char *what) {
    skip_ws(j);
    if (j->pos < j->n && j->s[j->pos] == c) {
        j->pos++;
        return 0;
    }
    char b[64];
    return jfail(j, "header: expected %s, found %s", what, found_desc(j, b, sizeof b));
}

static void put_utf8(char *out, size_t *k, unsigned cp) {
    if (cp < 0x80) out[(*k)++] = (char)cp;
    else if (cp < 0x800) {
        out[(*k)++] = (char)(0xc0 | (cp >> 6));
        out[(*k)++] = (char)(0x80 | (cp & 0x3f));
    } else if (cp < 0x10000) {
        out[(*k)++] = (char)(0xe0 | (cp >> 12));
        out[(*k)++] = (char)(0x80 | ((cp >> 6) & 0x3f));
        out[(*k)++] = (char)(0x80 | (cp & 0x3f));
    } else {
        out[(*k)++] = (char)(0xf0 | (cp >> 18));
        out[(*k)++] = (char)(0x80 | ((cp >> 12) & 0x3f));
        out[(*k)++] = (char)(0x80 | ((cp >> 6) & 0x3f));
        out[(*k)++] = (char)(0x80 | (cp & 0x3f));
    }
}

static int hex4(json_in *j, unsigned *v) {
    if (j->pos + 4 > j->n) return jfail(j, "header: expected 4 hex digits after \\u, found the end of the header");
    *v = 0;
    for (int i = 0; i < 4; i++) {
        char c = j->s[j->pos++];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
        if (d < 0) return jfail(j, "header: expected a hex digit in \\u escape, found '%c' at header byte %zu", c, j->pos - 1);
        *v = *v * 16 + (unsigned)d;
    }
    return 0;
}

// Parses a JSON string; returns a new NUL-terminated copy or NULL.
static char *parse_string(json_in *j, const char *what) {
    if (expect_char(j, '"', what) != 0) return NULL;
    size_t start = j->pos;
    char *out = xmalloc(j->n - start + 1);  // decoded text is never longer than the source
    size_t k = 0;
    while (j->pos < j->n) {
        unsigned char c = (unsigned char)j->s[j->pos++];
        if (c == '"') {
            out[k] = 0;
            if (memchr(out, 0, k)) {
                free(out);
                jfail(j, "header: expected a string without NUL characters, found \\u0000 at header byte %zu", start);
                return NULL;
            }
            return out;
        }
        if (c < 0x20) {
            free(out);
            jfail(j, "header: expected a string character, found control byte 0x%02x at header byte %zu", c, j->pos - 1);
            return NULL;
        }
        if (c != '\\') {
            out[k++] = (char)c;
            continue;
        }
        if (j->pos >= j->n) break;
        char e = j->s[j->pos++];
        unsigned cp;
        switch (e) {
        case '"': out[k++] = '"'; break;
        case '\\': out[k++] = '\\'; break;
        case '/': out[k++] = '/'; break;
        case 'b': out[k++] = '\b'; break;
        case 'f': out[k++] = '\f'; break;
        case 'n': out[k++] = '\n'; break;
        case 'r': out[k++] = '\r'; break;
        case 't': out[k++] = '\t'; break;
        case 'u':
            if (hex4(j, &cp) != 0) break;
            if (cp >= 0xd800 && cp < 0xdc00) {  // a surrogate pair
                unsigned lo = 0;
                if (j->pos + 2 <= j->n && j->s[j->pos] == '\\' && j->s[j->pos + 1] == 'u') {
                    j->pos += 2;
                    if (hex4(j, &lo) != 0) break;
                }
                if (lo < 0xdc00 || lo >= 0xe000) {
                    jfail(j, "header: expected a low surrogate after \\u%04x at header byte %zu", cp, j->pos);
                    break;
                }
                cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
            } else if (cp >= 0xdc00 && cp < 0xe000) {
                jfail(j, "header: expected a high surrogate first, found \\u%04x at header byte %zu", cp, j->pos - 6);
                break;
            }
            put_utf8(out, &k, cp);
            break;
        default:
            jfail(j, "header: expected an escape among \\\" \\\\ \\/ \\b \\f \\n \\r \\t \\u, found '\\%c' at header byte %zu",
                  e, j->pos - 2);
        }
        if (j->failed) {
            free(out);
            return NULL;
        }
    }
    free(out);
    jfail(j, "header: expected the end of the string that starts at header byte %zu, found the end of the header",
          start - 1);
    return NULL;
}

// A non-negative integer (no sign, fraction or exponent).
static int parse_uint(json_in *j, uint64_t *v, const char *what) {
    skip_ws(j);
    char b[64];
    if (j->pos >= j->n || j->s[j->pos] < '0' || j->s[j->pos] > '9')
        return jfail(j, "header: %s: expected a non-negative integer, found %s", what, found_desc(j, b, sizeof b));
    uint64_t x = 0;
    size_t start = j->pos;
    while (j->pos < j->n && j->s[j->pos] >= '0' && j->s[j->pos] <= '9') {
        uint64_t d = (uint64_t)(j->s[j->pos] - '0');
        if (x > (UINT64_MAX - d) / 10) return jfail(j, "header: %s: expected an integer below 2^64, found a longer one", what);
        x = x * 10 + d;
        j->pos++;
    }
    if (j->pos - start > 1 && j->s[start] == '0')
        return jfail(j, "header: %s: expected an integer without leading zeros, found one at header byte %zu", what, start);
    if (j->pos < j->n && (j->s[j->pos] == '.' || j->s[j->pos] == 'e' || j->s[j->pos] == 'E'))
        return jfail(j, "header: %s: expected an integer, found a fraction or exponent at header byte %zu", what, j->pos);
    *v = x;
    return 0;
}

// An array of non-negative integers; returns the count or -1.
static int parse_uint_array(json_in *j, uint64_t *v, int max, const char *what) {
    char w[160];
    snprintf(w, sizeof w, "'[' opening %s", what);
    if (expect_char(j, '[', w) != 0) return -1;
    skip_ws(j);
    int n = 0;
    if (j->pos < j->n && j->s[j->pos] == ']') {
        j->pos++;
        return 0;
    }
    for (;;) {
        if (n == max) return jfail(j, "header: %s: expected at most %d entries, found more", what, max);
        if (parse_uint(j, &v[n++], what) != 0) return -1;
        skip_ws(j);
        char b[64];
        if (j->pos < j->n && j->s[j->pos] == ',') { j->pos++; continue; }
        if (j->pos < j->n && j->s[j->pos] == ']') { j->pos++; return n; }
        return jfail(j, "header: %s: expected ',' or ']', found %s", what, found_desc(j, b, sizeof b));
    }
}

// Reads ',' (returns 1: more members) or the closing '}' (returns 0).
static int next_member(json_in *j, const char *what) {
    skip_ws(j);
    char b[64];
    if (j->pos < j->n && j->s[j->pos] == ',') { j->pos++; return 1; }
    if (j->pos < j->n && j->s[j->pos] == '}') { j->pos++; return 0; }
    return jfail(j, "header: %s: expected ',' or '}', found %s", what, found_desc(j, b, sizeof b));
}

static int parse_tensor(json_in *j, st_tensor *t) {
    char what[300];
    snprintf(what, sizeof what, "tensor %s", t->name);
    if (expect_char(j, '{', "'{' opening a tensor entry") != 0) return -1;
    int have_dtype = 0, have_shape = 0, have_off = 0;
    skip_ws(j);
    int more = !(j->pos < j->n && j->s[j->pos] == '}');
    if (!more) j->pos++;
    while (more) {
        char *key = parse_string(j, "a field name of a tensor entry");
        if (!key) return -1;
        if (expect_char(j, ':', "':' after a field name") != 0) { free(key); return -1; }
        char w[400];
        snprintf(w, sizeof w, "tensor %s: %s", t->name, key);
        if (strcmp(key, "dtype") == 0 && !have_dtype) {
            char *dt = parse_string(j, "a dtype string");
            if (!dt) { free(key); return -1; }
            int d = st_dtype_parse(dt);
            if (d < 0) {
                jfail(j, "tensor %s: dtype: expected one of F64 F32 F16 BF16 I64 I32 I16 I8 U64 U32 U16 U8 BOOL, found '%s'",
                      t->name, dt);
                free(dt);
                free(key);
                return -1;
            }
            free(dt);
            t->dtype = (st_dtype)d;
            have_dtype = 1;
        } else if (strcmp(key, "shape") == 0 && !have_shape) {
            uint64_t s[ST_MAX_DIM];
            int n = parse_uint_array(j, s, ST_MAX_DIM, w);
            if (n < 0) { free(key); return -1; }
            t->ndim = n;
            for (int i = 0; i < n; i++) {
                if (s[i] > (uint64_t)INT64_MAX / 2) {
                    free(key);
                    return jfail(j, "tensor %s: shape: expected dimensions below 2^62, found %llu", t->name,
                                 (unsigned long long)s[i]);
                }
                t->shape[i] = (int64_t)s[i];
            }
            have_shape = 1;
        } else if (strcmp(key, "data_offsets") == 0 && !have_off) {
            uint64_t o[2];
            int n = parse_uint_array(j, o, 2, w);
            if (n < 0) { free(key); return -1; }
            if (n != 2) {
                free(key);
                return jfail(j, "tensor %s: data_offsets: expected [begin, end], found %d numbers", t->name, n);
            }
            t->begin = (size_t)o[0];
            t->end = (size_t)o[1];
            have_off = 1;
        } else {
            int dup = !strcmp(key, "dtype") || !strcmp(key, "shape") || !strcmp(key, "data_offsets");
            jfail(j, "tensor %s: expected the fields dtype, shape and data_offsets once each, found %s'%s'", t->name,
                  dup ? "a second " : "", key);
            free(key);
            return -1;
        }
        free(key);
        more = next_member(j, what);
        if (more < 0) return -1;
    }
    if (!have_dtype || !have_shape || !have_off)
        return jfail(j, "tensor %s: expected the field %s, found none", t->name,
                     !have_dtype ? "dtype" : !have_shape ? "shape" : "data_offsets");
    return 0;
}

static int parse_metadata(json_in *j, st_file *f) {
    if (f->n_meta || f->meta_keys) return jfail(j, "header: expected one __metadata__ entry, found a second");
    if (expect_char(j, '{', "'{' opening __metadata__") != 0) return -1;
    int cap = 8;
    f->meta_keys = xmalloc(sizeof(char *) * cap);
    f->meta_vals = xmalloc(sizeof(char *) * cap);
    skip_ws(j);
    if (j->pos < j->n && j->s[j->pos] == '}') { j->pos++; return 0; }
    for (;;) {
        char *k = parse_string(j, "a __metadata__ key string");
        if (!k) return -1;
        for (int i = 0; i < f->n_meta; i++)
            if (strcmp(f->meta_keys[i], k) == 0) {
                jfail(j, "__metadata__: expected unique keys, found '%s' twice", k);
                free(k);
                return -1;
            }
        if (expect_char(j, ':', "':' after a __metadata__ key") != 0) { free(k); return -1; }
        char what[300];
        snprintf(what, sizeof what, "a string value for __metadata__ key '%s'", k);
        char *v = parse_string(j, what);
        if (!v) { free(k); return -1; }
        if (f->n_meta == cap) {
            cap *= 2;
            f->meta_keys = xrealloc(f->meta_keys, sizeof(char *) * cap);
            f->meta_vals = xrealloc(f->meta_vals, sizeof(char *) * cap);
        }
        f->meta_keys[f->n_meta] = k;
        f->meta_vals[f->n_meta++] = v;
        int more = next_member(j, "__metadata__");
        if (more <= 0) return more;
    }
}

static int parse_header(json_in *j, st_file *f) {
    if (expect_char(j, '{', "'{' opening the header") != 0) return -1;
    int cap = 16;
    f->tensors = xcalloc(cap, sizeof(st_tensor));
    skip_ws(j);
    int more = !(j->pos < j->n && j->s[j->pos] == '}');
    if (!more) j->pos++;
    while (more) {
        char *name = parse_string(j, "a tensor name string");
        if (!name) return -1;
        if (expect_char(j, ':', "':' after a tensor name") != 0) { free(name); return -1; }
        if (strcmp(name, "__metadata__") == 0) {
            free(name);
            if (parse_metadata(j, f) != 0) return -1;
        } else {
            for (int i = 0; i < f->n_tensors; i++)
                if (strcmp(f->tensors[i].name, name) == 0) {
                    jfail(j, "tensor %s: expected unique tensor names, found it twice", name);
                    free(name);
                    return -1;
                }
            if (f->n_tensors == cap) {
                cap *= 2;
                f->tensors = xrealloc(f->tensors, sizeof(st_tensor) * cap);
            }
            st_tensor *t = &f->tensors[f->n_tensors++];
            memset(t, 0, sizeof *t);
            t->name = name;
            if (parse_tensor(j, t) != 0) return -1;
        }
        more = next_member(j, "top-level object");
        if (more < 0) return -1;
    }
    skip_ws(j);
    char b[64];
    if (j->pos != j->n) return jfail(j, "header: expected only spaces after the closing '}', found %s", found_desc(j, b, sizeof b));
    return 0;
}

// ---------------------------------------------------------------- layout checks

static int cmp_begin(const void *a, const void *b) {
    const st_tensor *x = *(const st_tensor *const *)a, *y = *(const st_tensor *const *)b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    return x->end < y->end ? -1 : x->end > y->end;
}

static int check_layout(st_file *f, char *err, int errlen) {
    size_t data_len = f->len - f->data_start;
    for (int i = 0; i < f->n_tensors; i++) {
        st_tensor *t = &f->tensors[i];
        size_t bytes = st_dtype_size(t->dtype), numel = 1;
        for (int d = 0; d < t->ndim; d++)
            if (__builtin_mul_overflow(numel, (size_t)t->shape[d], &numel)) bytes = SIZE_MAX;
        char shp[160];
        st_format_shape(shp, sizeof shp, t->ndim, t->shape);
        if (bytes == SIZE_MAX || __builtin_mul_overflow(numel, st_dtype_size(t->dtype), &bytes)) {
            snprintf(err, errlen, "%s: tensor %s: shape %s is too large", f->path, t->name, shp);
            return -1;
        }
        if (t->end < t->begin) {
            snprintf(err, errlen, "%s: tensor %s: data_offsets: expected begin <= end, found [%zu,%zu]", f->path, t->name,
                     t->begin, t->end);
            return -1;
        }
        if (t->end - t->begin != bytes) {
            snprintf(err, errlen, "%s: tensor %s: expected %zu bytes (%s %s), found data_offsets [%zu,%zu] (%zu bytes)",
                     f->path, t->name, bytes, st_dtype_name(t->dtype), shp, t->begin, t->end, t->end - t->begin);
            return -1;
        }
        if (t->end > data_len) {
            snprintf(err, errlen, "%s: tensor %s: data_offsets [%zu,%zu] run past the data (%zu bytes): truncated file?",
                     f->path, t->name, t->begin, t->end, data_len);
            return -1;
        }
        t->data = f->buf + f->data_start + t->begin;
    }
    // Sorted by offset, the tensors must tile the data exactly: no overlap, no gap.
    const st_tensor **order = xmalloc(sizeof(st_tensor *) * (f->n_tensors + 1));
    for (int i = 0; i < f->n_tensors; i++) order[i] = &f->tensors[i];
    qsort(order, f->n_tensors, sizeof *order, cmp_begin);
    size_t at = 0;
    int rc = 0;
    for (int i = 0; i < f->n_tensors && rc == 0; i++) {
        const st_tensor *t = order[i];
        if (t->begin < at) {
            snprintf(err, errlen, "%s: tensor %s: data_offsets [%zu,%zu] overlap tensor %s (ends at %zu)", f->path,
                     t->name, t->begin, t->end, order[i - 1]->name, at);
            rc = -1;
        } else if (t->begin > at) {
            snprintf(err, errlen, "%s: tensor %s: data_offsets [%zu,%zu] leave a gap: expected begin %zu", f->path,
                     t->name, t->begin, t->end, at);
            rc = -1;
        }
        at = t->end;
    }
    if (rc == 0 && at != data_len) {
        snprintf(err, errlen, "%s: data: expected %zu bytes after the header (the tensors' total), found %zu", f->path, at,
                 data_len);
        rc = -1;
    }
    free(order);
    return rc;
}

// ---------------------------------------------------------------- reader API

st_file *st_parse(const char *path, unsigned char *buf, size_t len, char *err, int errlen) {
    st_file *f = xcalloc(1, sizeof *f);
    f->path = xstrdup(path);
    f->buf = buf;
    f->len = len;
    if (len < 8) {
        snprintf(err, errlen, "%s: expected at least 8 bytes (the header length), found %zu: truncated file?", path, len);
        goto fail;
    }
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = hlen << 8 | buf[i];
    if (hlen > len - 8) {
        snprintf(err, errlen, "%s: header length %llu runs past the end of the file (%zu bytes): truncated or not safetensors",
                 path, (unsigned long long)hlen, len);
        goto fail;
    }
    if (hlen > HAX_MAX_TEXT_BYTES) {
        snprintf(err, errlen, "%s: header length: expected at most %zu bytes, found %llu", path, HAX_MAX_TEXT_BYTES,
                 (unsigned long long)hlen);
        goto fail;
    }
    if (hlen < 2) {
        snprintf(err, errlen, "%s: header: expected a JSON object, found %llu bytes", path, (unsigned long long)hlen);
        goto fail;
    }
    f->data_start = 8 + (size_t)hlen;
    json_in j = {(const char *)buf + 8, (size_t)hlen, 0, path, err, errlen, 0};
    if (parse_header(&j, f) != 0) goto fail;
    if (check_layout(f, err, errlen) != 0) goto fail;
    return f;
fail:
    st_close(f);
    return NULL;
}

st_file *st_load(const char *path, char *err, int errlen) {
    size_t len;
    char *buf = hax_read_file_max(path, ST_MAX_FILE_BYTES, &len, err, errlen);
    if (!buf) return NULL;
    return st_parse(path, (unsigned char *)buf, len, err, errlen);
}

st_file *st_open(const char *path) {
    char err[512];
    st_file *f = st_load(path, err, sizeof err);
    if (!f) hax_die("%s", err);
    return f;
}

void st_close(st_file *f) {
    if (!f) return;
    for (int i = 0; i < f->n_tensors; i++) free(f->tensors[i].name);
    free(f->tensors);
    for (int i = 0; i < f->n_meta; i++) {
        free(f->meta_keys[i]);
        free(f->meta_vals[i]);
    }
    free(f->meta_keys);
    free(f->meta_vals);
    free(f->buf);
    free(f->path);
    free(f);
}

const st_tensor *st_find(const st_file *f, const char *name) {
    for (int i = 0; i < f->n_tensors; i++)
        if (strcmp(f->tensors[i].name, name) == 0) return &f->tensors[i];
    return NULL;
}

const char *st_meta(const st_file *f, const char *key) {
    for (int i = 0; i < f->n_meta; i++)
        if (strcmp(f->meta_keys[i], key) == 0) return f->meta_vals[i];
    return NULL;
}
