// curves.c: metrics.csv -> validation points, and the set of curves of a
// results tree. See curves.h for the rules.
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "analysis/aggregate.h"
#include "analysis/curves.h"
#include "src/core/common.h"

// ---------------------------------------------------------------------------
// metrics.csv

// Splits line (modified in place) at commas; returns the field count.
static int split_fields(char *line, char **f, int max) {
    int n = 0;
    f[n++] = line;
    for (char *p = line; *p; p++)
        if (*p == ',') {
            *p = 0;
            if (n == max) return max + 1;
            f[n++] = p + 1;
        }
    return n;
}

enum { MAX_COLS = 32 };

// The next line of text at *p (its end, '\n' or NUL, becomes NUL; a '\r'
// before it is dropped); NULL at the end.
static char *next_line(char **p) {
    if (!**p) return NULL;
    char *line = *p, *nl = strchr(line, '\n');
    if (nl) {
        *nl = 0;
        *p = nl + 1;
    } else {
        *p = line + strlen(line);
    }
    line[strcspn(line, "\r")] = 0;
    return line;
}

int metrics_read_text(const char *text, size_t len, hax_point **out, char *err, int errlen) {
    *out = NULL;
    if (memchr(text, 0, len)) return hax_errf(err, errlen, "expected CSV text, found a NUL byte");
    char *buf = xmalloc(len + 1), *p = buf;
    memcpy(buf, text, len);
    buf[len] = 0;
    char *f[MAX_COLS + 1];
    int step_col = -1, valid_col = -1, n_cols = 0, n = 0, lineno = 1;
    char *line = next_line(&p);
    if (line) {
        n_cols = split_fields(line, f, MAX_COLS);
        for (int i = 0; i < n_cols && n_cols <= MAX_COLS; i++) {
            if (strcmp(f[i], "step") == 0) step_col = i;
            if (strcmp(f[i], "valid_acc") == 0) valid_col = i;
        }
    }
    if (step_col < 0 || valid_col < 0) {
        free(buf);
        return hax_errf(err, errlen, "line 1: expected a header with the columns step and valid_acc (%s), found %s",
                        "step,loss,gate_loss,train_acc,lr,valid_acc", line ? "other columns" : "an empty file");
    }
    hax_point *v = NULL;
    int64_t last = -1;
    while ((line = next_line(&p))) {
        lineno++;
        if (!line[0]) continue;
        int k = split_fields(line, f, MAX_COLS);
        char *end;
        if (k != n_cols) {
            free(v);
            free(buf);
            return hax_errf(err, errlen, "line %d: expected %d comma-separated fields, found %d", lineno, n_cols, k);
        }
        errno = 0;
        long long s = strtoll(f[step_col], &end, 10);
        if (!f[step_col][0] || *end || errno || s <= last) {
            hax_errf(err, errlen, "line %d: step: expected an integer above %lld (the row before), found '%.40s'",
                     lineno, (long long)last, f[step_col]);
            free(v);
            free(buf);
            return -1;
        }
        last = s;
        if (!f[valid_col][0]) continue;  // no validation at this row
        double acc = strtod(f[valid_col], &end);
        if (*end || !(acc >= 0 && acc <= 1)) {
            hax_errf(err, errlen, "line %d: valid_acc: expected a number in [0, 1] or nothing, found '%.40s'", lineno,
                     f[valid_col]);
            free(v);
            free(buf);
            return -1;
        }
        v = xrealloc(v, (size_t)(n + 1) * sizeof *v);
        v[n++] = (hax_point){last, acc};
    }
    free(buf);
    *out = v;
    return n;
}

int metrics_read_file(const char *path, hax_point **out, char *err, int errlen) {
    size_t len;
    char e[512];
    *out = NULL;
    struct stat st;
    if (lstat(path, &st) != 0 && errno == ENOENT) return hax_errf(err, errlen, "missing");
    char *text = hax_read_file_max(path, HAX_MAX_TEXT_BYTES, &len, e, sizeof e);
    if (!text) {
        size_t pl = strlen(path);  // the caller names the file
        return hax_errf(err, errlen, "%s", strncmp(e, path, pl) == 0 && e[pl] == ':' ? e + pl + 2 : e);
    }
    int n = metrics_read_text(text, len, out, err, errlen);
    free(text);
    return n;
}

// ---------------------------------------------------------------------------
// The curves of a results tree

// 1 when label is selected by the comma-separated list sel (NULL: all).
static int selected(const char *label, const char *base, const char *sel) {
    if (!sel) return 1;
    size_t ll = strlen(label), lb = strlen(base);
    for (const char *p = sel; *p;) {
        size_t k = strcspn(p, ",");
        if ((k == ll && strncmp(p, label, k) == 0) || (k == lb && strncmp(p, base, k) == 0)) return 1;
        p += k + (p[k] == ',');
    }
    return 0;
}

static int cmp_curve(const void *a, const void *b) {
    const hax_curve *x = a, *y = b;
    int c = strcmp(x->base, y->base);
    if (c) return c;
    int rx = regime_index(x->precision), ry = regime_index(y->precision);
    if (rx != ry) return rx - ry;
    if (x->lr != y->lr) return x->lr < y->lr ? -1 : 1;
    if (x->seed != y->seed) return x->seed < y->seed ? -1 : 1;
    return strcmp(x->label, y->label);
}

void curves_load(const hax_run *runs, int n_runs, const char *select, hax_curves *out) {
    out->v = NULL;
    out->n = 0;
    int n_missing = 0;
    const char *first_missing = NULL;
    for (int i = 0; i < n_runs; i++) {
        const hax_run *r = &runs[i];
        hax_curve c;
        memset(&c, 0, sizeof c);
        snprintf(c.label, sizeof c.label, "%s", r->label);
        snprintf(c.base, sizeof c.base, "%s", r->label);
        c.base[strcspn(c.base, "@")] = 0;
        snprintf(c.precision, sizeof c.precision, "%s", r->precision[0] ? r->precision : "fp32");
        snprintf(c.status, sizeof c.status, "%s", r->status_name);
        c.lr = r->lr;
        c.seed = r->seed;
        c.steps = r->steps;
        c.selected = selected(c.label, c.base, select);
        int dup = 0;  // the same (label, lr, seed) again: the tables' footer names it
        for (int k = 0; k < out->n && !dup; k++)
            dup = strcmp(out->v[k].label, c.label) == 0 && out->v[k].lr == c.lr && out->v[k].seed == c.seed;
        if (dup) continue;
        char path[1100], err[512];
        snprintf(path, sizeof path, "%s", r->path);
        char *slash = strrchr(path, '/');
        snprintf(slash ? slash + 1 : path, sizeof path - (size_t)(slash ? slash + 1 - path : 0), "metrics.csv");
        int n = metrics_read_file(path, &c.v, err, sizeof err);
        if (n < 0 && strcmp(err, "missing") == 0) {
            if (!n_missing++) first_missing = r->path;
            continue;
        }
        if (n < 0) {
            hax_warn("%s: %s; no curve for this run", path, err);
            continue;
        }
        if (n == 0) continue;  // no validation yet
        c.n = n;
        out->v = xrealloc(out->v, (size_t)(out->n + 1) * sizeof *out->v);
        out->v[out->n++] = c;
    }
    int n_sel = 0;
    for (int k = 0; k < out->n; k++) n_sel += out->v[k].selected;
    if (select && out->n && !n_sel) hax_warn("--curves %s: no run with validation rows matches; no curves.svg", select);
    if (n_missing)
        hax_warn("--plot: %d run%s without a metrics.csv beside result.json (first: %s); no curve for %s", n_missing,
                 n_missing == 1 ? "" : "s", first_missing, n_missing == 1 ? "it" : "them");
    if (out->n) qsort(out->v, (size_t)out->n, sizeof *out->v, cmp_curve);
}

void curves_free(hax_curves *c) {
    for (int i = 0; i < c->n; i++) free(c->v[i].v);
    free(c->v);
    c->v = NULL;
    c->n = 0;
}

void curve_name(const hax_curve *c, char *buf, int len) {
    int w = snprintf(buf, (size_t)len, "%s@%s, lr %g, seed %llu", c->base, c->precision, c->lr,
                     (unsigned long long)c->seed);
    if (w < 0 || w >= len || strcmp(c->status, "complete") == 0) return;
    if (c->steps >= 0) snprintf(buf + w, (size_t)(len - w), ", %s at step %lld", c->status, (long long)c->steps);
    else snprintf(buf + w, (size_t)(len - w), ", %s", c->status);
}
