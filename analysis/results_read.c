// results_read.c: one result.json -> hax_run (libyaml reads the JSON), and
// the recursive search for result.json files.
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <yaml.h>

#include "src/core/common.h"
#include "src/core/yaml_util.h"
#include "analysis/results.h"

// ---------------------------------------------------------------------------
// Node access. A "doc" is a loaded libyaml document; lookups return NULL when
// a key is absent or the node is not a mapping.

typedef struct {
    yaml_document_t *doc;
    yaml_node_t *node;
} ynode;

static const char *scalar_text(ynode n) {
    return n.node && n.node->type == YAML_SCALAR_NODE ? (const char *)n.node->data.scalar.value : NULL;
}

static ynode get(ynode map, const char *key) {
    ynode none = {map.doc, NULL};
    if (!map.node || map.node->type != YAML_MAPPING_NODE) return none;
    yaml_node_pair_t *p;
    for (p = map.node->data.mapping.pairs.start; p < map.node->data.mapping.pairs.top; p++) {
        ynode k = {map.doc, yaml_document_get_node(map.doc, p->key)};
        const char *s = scalar_text(k);
        if (s && strcmp(s, key) == 0) return (ynode){map.doc, yaml_document_get_node(map.doc, p->value)};
    }
    return none;
}

// A dotted path: get_path(root, "config.model.arch").
static ynode get_path(ynode n, const char *path) {
    char buf[128];
    snprintf(buf, sizeof buf, "%s", path);
    for (char *tok = strtok(buf, "."); tok && n.node; tok = strtok(NULL, ".")) n = get(n, tok);
    return n;
}

// Shortened text of a node for messages.
static void describe(ynode n, char *buf, size_t len) {
    const char *s = scalar_text(n);
    if (!n.node) snprintf(buf, len, "nothing");
    else if (!s) snprintf(buf, len, "a %s", n.node->type == YAML_MAPPING_NODE ? "mapping" : "list");
    else if (n.node->data.scalar.style != YAML_PLAIN_SCALAR_STYLE) snprintf(buf, len, "the string '%.40s'", s);
    else snprintf(buf, len, "'%.40s'", s);
}

// A number: a plain (unquoted) scalar that strtod reads completely and that
// is finite. JSON's null, true and quoted strings are mistyped.
static int as_number(ynode n, double *out) {
    const char *s = scalar_text(n);
    if (!s || n.node->data.scalar.style != YAML_PLAIN_SCALAR_STYLE || !*s) return 0;
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (*end || errno == ERANGE || !isfinite(v)) return 0;
    *out = v;
    return 1;
}

static int as_int(ynode n, int64_t *out) {
    double v;
    if (!as_number(n, &v) || v != floor(v) || fabs(v) > 9.0e15) return 0;
    *out = (int64_t)v;
    return 1;
}

// JSON's null (YAML also spells it ~ or leaves it empty): an absent value.
static int is_null(ynode n) {
    const char *s = scalar_text(n);
    return s && n.node->data.scalar.style == YAML_PLAIN_SCALAR_STYLE &&
           (strcmp(s, "null") == 0 || strcmp(s, "~") == 0 || !*s);
}

// ---------------------------------------------------------------------------
// Fields

// An accuracy field: absent -> NaN and 0 returned; present -> it must be a
// number in [0, 1] (a fraction, as hax-train writes them).
static int read_acc(ynode root, const char *key, double *out, int required, char *err, int errlen) {
    ynode n = get_path(root, key);
    *out = NAN;
    if (!n.node || is_null(n))
        return required ? hax_errf(err, errlen, "%s: expected a number in [0, 1], found nothing", key) : 0;
    double v;
    if (!as_number(n, &v) || v < 0 || v > 1) {
        char what[80];
        describe(n, what, sizeof what);
        return hax_errf(err, errlen, "%s: expected a number in [0, 1], found %s", key, what);
    }
    *out = v;
    return 0;
}

// An optional string field copied into buf; mistyped (not a scalar) -> -1.
static int read_str(ynode root, const char *key, char *buf, size_t len, char *err, int errlen) {
    ynode n = get_path(root, key);
    if (!n.node || is_null(n)) return 0;
    const char *s = scalar_text(n);
    if (!s || !*s) {
        char what[80];
        describe(n, what, sizeof what);
        return hax_errf(err, errlen, "%s: expected a non-empty string, found %s", key, what);
    }
    if (strlen(s) >= len)
        return hax_errf(err, errlen, "%s: expected at most %zu characters, found %zu", key, len - 1, strlen(s));
    snprintf(buf, len, "%s", s);
    return 0;
}

static int read_int(ynode root, const char *key, int64_t lo, int64_t hi, int64_t *out, char *err, int errlen) {
    ynode n = get_path(root, key);
    if (!n.node || is_null(n)) return 0;
    int64_t v;
    if (!as_int(n, &v) || v < lo || v > hi) {
        char what[80];
        describe(n, what, sizeof what);
        return hax_errf(err, errlen, "%s: expected an integer in [%lld, %lld], found %s", key, (long long)lo,
                        (long long)hi, what);
    }
    *out = v;
    return 1;
}

// The folder-name fallbacks: .../<label>/lr_<lr>/seed_<seed>/result.json.
static void path_parts(const char *path, char *label, size_t llen, char *lr, size_t rlen, char *seed, size_t slen) {
    char buf[1024];
    snprintf(buf, sizeof buf, "%s", path);
    char *part[4] = {NULL, NULL, NULL, NULL};  // file, seed, lr, label
    for (int i = 0; i < 4; i++) {
        char *slash = strrchr(buf, '/');
        if (!slash) { part[i] = buf; break; }
        part[i] = slash + 1;
        *slash = 0;
    }
    label[0] = lr[0] = seed[0] = 0;
    if (part[1] && strncmp(part[1], "seed_", 5) == 0) snprintf(seed, slen, "%s", part[1] + 5);
    if (part[2] && strncmp(part[2], "lr_", 3) == 0) snprintf(lr, rlen, "%s", part[2] + 3);
    if (part[3] && *seed && *lr) snprintf(label, llen, "%s", part[3]);
}

// ---------------------------------------------------------------------------
// Per-cell accuracies. Accepted shapes for a cell list X:
//   [{"n_c": 5, "n_k": 7, "acc": 0.5}, ...]     (also "accuracy")
//   {"5x7": 0.5, ...}  or  {"5,7": 0.5, ...}
// found at "<split>_cells", "cells_<split>", "per_cell.<split>" or
// "cells.<split>"; or (valid and test only) one list
// "cells": [{"n_c", "n_k", "valid_acc", "test_acc"}].

static int cell_key(const char *s, int *n_c, int *n_k) {
    char *end;
    long a = strtol(s, &end, 10);
    if (end == s || (*end != 'x' && *end != ',')) return 0;
    const char *t = end + 1;
    long b = strtol(t, &end, 10);
    if (end == t || *end || a < 0 || b < 0 || a > 1000000 || b > 1000000) return 0;
    *n_c = (int)a;
    *n_k = (int)b;
    return 1;
}

static int cell_dim(ynode e, const char *k1, const char *k2, int *out) {
    ynode n = get(e, k1);
    if (!n.node) n = get(e, k2);
    int64_t v;
    if (!as_int(n, &v) || v < 0 || v > 1000000) return 0;
    *out = (int)v;
    return 1;
}

static void cells_push(hax_cells *c, int n_c, int n_k, double acc) {
    c->v = xrealloc(c->v, (size_t)(c->n + 1) * sizeof *c->v);
    c->v[c->n++] = (hax_cell_acc){n_c, n_k, acc};
}

// acc_key: the accuracy's key inside each list entry.
static int read_cell_list(ynode x, const char *where, const char *acc_key, hax_cells *out, char *err, int errlen) {
    if (x.node->type == YAML_MAPPING_NODE) {
        yaml_node_pair_t *p;
        for (p = x.node->data.mapping.pairs.start; p < x.node->data.mapping.pairs.top; p++) {
            ynode k = {x.doc, yaml_document_get_node(x.doc, p->key)}, v = {x.doc, yaml_document_get_node(x.doc, p->value)};
            int n_c, n_k;
            double acc;
            const char *ks = scalar_text(k);
            if (!ks || !cell_key(ks, &n_c, &n_k))
                return hax_errf(err, errlen, "%s: expected keys 'N_CxN_K', found '%.40s'", where, ks ? ks : "?");
            if (!as_number(v, &acc) || acc < 0 || acc > 1)
                return hax_errf(err, errlen, "%s.%s: expected a number in [0, 1]", where, ks);
            cells_push(out, n_c, n_k, acc);
        }
        return 0;
    }
    if (x.node->type != YAML_SEQUENCE_NODE)
        return hax_errf(err, errlen, "%s: expected a list or a mapping of cells", where);
    int i = 0;
    for (yaml_node_item_t *it = x.node->data.sequence.items.start; it < x.node->data.sequence.items.top; it++, i++) {
        ynode e = {x.doc, yaml_document_get_node(x.doc, *it)};
        int n_c, n_k;
        double acc;
        if (!cell_dim(e, "n_c", "contexts", &n_c) || !cell_dim(e, "n_k", "keys", &n_k))
            return hax_errf(err, errlen, "%s[%d]: expected integer fields n_c and n_k", where, i);
        ynode a = get(e, acc_key);
        if (!a.node && strcmp(acc_key, "acc") == 0) a = get(e, "accuracy");
        if (!as_number(a, &acc) || acc < 0 || acc > 1)
            return hax_errf(err, errlen, "%s[%d].%s: expected a number in [0, 1]", where, i, acc_key);
        cells_push(out, n_c, n_k, acc);
    }
    return 0;
}

static int read_cells(ynode root, const char *split, hax_cells *out, char *err, int errlen) {
    char keys[4][48];
    snprintf(keys[0], sizeof keys[0], "%s_cells", split);
    snprintf(keys[1], sizeof keys[1], "cells_%s", split);
    snprintf(keys[2], sizeof keys[2], "per_cell.%s", split);
    snprintf(keys[3], sizeof keys[3], "cells.%s", split);
    for (int i = 0; i < 4; i++) {
        ynode x = get_path(root, keys[i]);
        if (x.node) return read_cell_list(x, keys[i], "acc", out, err, errlen);
    }
    ynode x = get(root, "cells");
    if (x.node && x.node->type == YAML_SEQUENCE_NODE && strcmp(split, "test_reference") != 0) {
        char acc_key[32];
        snprintf(acc_key, sizeof acc_key, "%s_acc", split);
        return read_cell_list(x, "cells", acc_key, out, err, errlen);
    }
    return 0;  // no per-cell accuracies: allowed (no plots for this run)
}

// ---------------------------------------------------------------------------

static int load_doc(yaml_document_t *doc, const char *text, size_t len, const char *what, char *err, int errlen) {
    char e[256];
    int rc = hax_yaml_load(doc, text, len, HAX_MAX_DEPTH, e, sizeof e);
    if (rc == -1) return hax_errf(err, errlen, "%s: expected valid JSON, found a syntax error at %s", what, e);
    if (rc) return hax_errf(err, errlen, "%s: %s", what, e);
    if (!yaml_document_get_root_node(doc)) {
        yaml_document_delete(doc);
        return hax_errf(err, errlen, "%s: expected a JSON object, found an empty file", what);
    }
    return 0;
}

static const char *const status_names[] = {"complete", "running", "failed", "preempted", NULL};

// The fields, once the document (and the config's, when the config is
// embedded as YAML text) is loaded.
static int read_fields(ynode root, ynode cfg, const char *path, hax_run *r, char *err, int errlen) {
    if (root.node->type != YAML_MAPPING_NODE) return hax_errf(err, errlen, "expected a JSON object at the top");
    char status[32] = "";
    if (read_str(root, "status", status, sizeof status, err, errlen)) return -1;
    if (!status[0]) return hax_errf(err, errlen, "status: expected complete|running|failed|preempted, found nothing");
    int s = 0;
    while (status_names[s] && strcmp(status_names[s], status) != 0) s++;
    if (!status_names[s])
        return hax_errf(err, errlen, "status: expected complete|running|failed|preempted, found '%s'", status);
    r->status = (hax_run_status)s;
    snprintf(r->status_name, sizeof r->status_name, "%s", status);

    // The architecture: label from the config, else the top level, else the folder.
    char plabel[128], plr[64], pseed[64];
    path_parts(path, plabel, sizeof plabel, plr, sizeof plr, pseed, sizeof pseed);
    if (read_str(cfg, "output.arch", r->label, sizeof r->label, err, errlen)) return -1;
    if (!r->label[0] && read_str(root, "label", r->label, sizeof r->label, err, errlen)) return -1;
    if (!r->label[0] && read_str(root, "arch", r->label, sizeof r->label, err, errlen)) return -1;
    if (!r->label[0]) snprintf(r->label, sizeof r->label, "%s", plabel);
    if (!r->label[0])
        return hax_errf(err, errlen,
                        "config.output.arch: expected the architecture label, found nothing (and no "
                        "<arch>/lr_<lr>/seed_<seed> folders)");
    // The regime: two regimes never share a label (so never an average): a
    // non-fp32 run's label ends in "@<precision>" (hax-train adds it; added
    // here for files written otherwise).
    r->precision[0] = 0;
    if (read_str(cfg, "train.precision", r->precision, sizeof r->precision, err, errlen)) return -1;
    if (!r->precision[0] && read_str(root, "precision", r->precision, sizeof r->precision, err, errlen)) return -1;
    if (!r->precision[0]) snprintf(r->precision, sizeof r->precision, "fp32");
    if (strcmp(r->precision, "fp32") != 0) {
        char suf[20];
        snprintf(suf, sizeof suf, "@%s", r->precision);
        size_t la = strlen(r->label), ls = strlen(suf);
        if ((la < ls || strcmp(r->label + la - ls, suf) != 0) && la + ls < sizeof r->label) strcat(r->label, suf);
    }
    if (read_str(cfg, "model.arch", r->model, sizeof r->model, err, errlen)) return -1;
    if (read_str(cfg, "sparse.pattern", r->pattern, sizeof r->pattern, err, errlen)) return -1;
    int64_t v;
    int got;
    if ((got = read_int(cfg, "model.hidden_size", 1, 1 << 20, &v, err, errlen)) < 0) return -1;
    if (got) r->hidden_size = (int)v;
    if ((got = read_int(cfg, "model.n_layers", 1, 1 << 20, &v, err, errlen)) < 0) return -1;
    if (got) r->n_layers = (int)v;
    if ((got = read_int(cfg, "sparse.keys", 1, 1 << 30, &v, err, errlen)) < 0) return -1;
    if (got) r->sparse_keys = (int)v;

    // Learning rate and seed: the config's, else the top level's, else the folder's.
    ynode lr = get_path(cfg, "train.lr");
    if (!lr.node) lr = get(root, "lr");
    if (lr.node) {
        if (!as_number(lr, &r->lr) || r->lr <= 0) return hax_errf(err, errlen, "train.lr: expected a positive number");
    } else {
        char *end;
        r->lr = strtod(plr, &end);
        if (!plr[0] || *end || !(r->lr > 0))
            return hax_errf(err, errlen, "train.lr: expected a positive number, found nothing");
    }
    if ((got = read_int(cfg, "train.seed", 0, INT64_MAX, &v, err, errlen)) < 0) return -1;
    if (!got && (got = read_int(root, "seed", 0, INT64_MAX, &v, err, errlen)) < 0) return -1;
    if (got) r->seed = (uint64_t)v;
    else {
        char *end;
        r->seed = strtoull(pseed, &end, 10);
        if (!pseed[0] || *end) return hax_errf(err, errlen, "train.seed: expected an integer, found nothing");
    }

    int complete = r->status == RUN_COMPLETE;
    if (read_acc(root, "best_valid_acc", &r->best_valid_acc, complete, err, errlen)) return -1;
    if (read_acc(root, "test_acc", &r->test_acc, complete, err, errlen)) return -1;
    if (read_acc(root, "test_acc_reference", &r->test_acc_reference, 0, err, errlen)) return -1;
    if (read_int(root, "best_step", -1, INT64_MAX, &r->best_step, err, errlen) < 0) return -1;
    if (read_int(root, "steps", 0, INT64_MAX, &r->steps, err, errlen) < 0) return -1;
    if (read_int(root, "steps_planned", 0, INT64_MAX, &r->steps_planned, err, errlen) < 0) return -1;
    ynode hb = get(root, "heartbeat");
    if (hb.node && !is_null(hb) && (!as_number(hb, &r->heartbeat) || !(r->heartbeat >= 0)))
        return hax_errf(err, errlen, "heartbeat: expected unix seconds (a number >= 0), found '%s'",
                        scalar_text(hb) ? scalar_text(hb) : "an object or list");
    if (read_cells(root, "valid", &r->valid_cells, err, errlen)) return -1;
    if (read_cells(root, "test", &r->test_cells, err, errlen)) return -1;
    if (read_cells(root, "test_reference", &r->test_ref_cells, err, errlen)) return -1;
    return 0;
}

int results_read_text(const char *path, const char *text, size_t len, hax_run *r, char *err, int errlen) {
    memset(r, 0, sizeof *r);
    snprintf(r->path, sizeof r->path, "%s", path);
    r->best_valid_acc = r->test_acc = r->test_acc_reference = NAN;
    r->best_step = r->steps = r->steps_planned = -1;
    r->heartbeat = NAN;
    yaml_document_t doc, cdoc;
    if (load_doc(&doc, text, len, "result.json", err, errlen)) return -1;
    ynode root = {&doc, yaml_document_get_root_node(&doc)};
    ynode cfg = get(root, "config");
    int have_cdoc = 0, rc;
    // The resolved config may be embedded as an object or as YAML text.
    const char *ctext = scalar_text(cfg);
    if (ctext) {
        if (load_doc(&cdoc, ctext, strlen(ctext), "config", err, errlen)) {
            yaml_document_delete(&doc);
            return -1;
        }
        have_cdoc = 1;
        cfg = (ynode){&cdoc, yaml_document_get_root_node(&cdoc)};
    }
    if (cfg.node && cfg.node->type != YAML_MAPPING_NODE)
        rc = hax_errf(err, errlen, "config: expected an object");
    else rc = read_fields(root, cfg, path, r, err, errlen);
    if (have_cdoc) yaml_document_delete(&cdoc);
    yaml_document_delete(&doc);
    return rc;
}

int results_read_file(const char *path, hax_run *r, char *err, int errlen) {
    size_t len;
    char e[512];
    char *text = hax_read_file_max(path, HAX_MAX_TEXT_BYTES, &len, e, sizeof e);
    if (!text) {
        memset(r, 0, sizeof *r);
        // the caller names the file: keep what follows "PATH: "
        size_t pl = strlen(path);
        return hax_errf(err, errlen, "%s", strncmp(e, path, pl) == 0 && e[pl] == ':' ? e + pl + 2 : e);
    }
    if (memchr(text, 0, len)) {  // libyaml would stop at the NUL silently
        free(text);
        memset(r, 0, sizeof *r);
        return hax_errf(err, errlen, "expected JSON text, found a NUL byte");
    }
    int rc = results_read_text(path, text, len, r, err, errlen);
    free(text);
    return rc;
}

int results_mark_stale(hax_run *r, double now, double max_age) {
    if (r->status != RUN_RUNNING || max_age <= 0 || isnan(r->heartbeat) || now - r->heartbeat <= max_age) return 0;
    r->status = RUN_STALE;
    snprintf(r->status_name, sizeof r->status_name, "stale");
    return 1;
}

void results_run_free(hax_run *r) {
    free(r->valid_cells.v);
    free(r->test_cells.v);
    free(r->test_ref_cells.v);
    r->valid_cells = r->test_cells = r->test_ref_cells = (hax_cells){NULL, 0};
}

// ---------------------------------------------------------------------------
// The walk

typedef struct {
    char **v;
    int n, cap;
    int progress;
    int dirs;
} path_list;

static void walk(const char *dir, path_list *pl) {
    DIR *d = opendir(dir);
    if (!d) return;  // unreadable subfolder: nothing to find in it
    struct dirent *e;
    pl->dirs++;
    if (pl->progress && pl->dirs % 64 == 0) fprintf(stderr, "\r\033[Ksearching: %d result files so far", pl->n);
    while ((e = readdir(d))) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        size_t n = strlen(dir) + strlen(e->d_name) + 2;
        char *p = xmalloc(n);
        snprintf(p, n, "%s/%s", dir, e->d_name);
        struct stat st;
        if (lstat(p, &st) == 0 && S_ISDIR(st.st_mode)) {
            walk(p, pl);
            free(p);
        } else if (strcmp(e->d_name, "result.json") == 0) {
            if (pl->n == pl->cap) {
                pl->cap = pl->cap ? 2 * pl->cap : 64;
                pl->v = xrealloc(pl->v, (size_t)pl->cap * sizeof *pl->v);
            }
            pl->v[pl->n++] = p;
        } else {
            free(p);
        }
    }
    closedir(d);
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

int results_find(const char *dir, char ***paths, int progress, char *err, int errlen) {
    struct stat st;
    *paths = NULL;
    if (stat(dir, &st) != 0)
        return hax_errf(err, errlen, "%s: expected a results folder, found %s", dir, strerror(errno));
    if (!S_ISDIR(st.st_mode)) return hax_errf(err, errlen, "%s: expected a results folder, found a file", dir);
    DIR *d = opendir(dir);
    if (!d) return hax_errf(err, errlen, "%s: cannot open the folder: %s", dir, strerror(errno));
    closedir(d);
    // A trailing slash would double in every path.
    char root[1024];
    snprintf(root, sizeof root, "%s", dir);
    size_t n = strlen(root);
    while (n > 1 && root[n - 1] == '/') root[--n] = 0;
    path_list pl = {NULL, 0, 0, progress, 0};
    walk(root, &pl);
    if (progress && pl.dirs >= 64) fprintf(stderr, "\r\033[K");
    if (pl.n) qsort(pl.v, (size_t)pl.n, sizeof *pl.v, cmp_str);
    *paths = pl.v;
    return pl.n;
}
