// grid.c: the sweep's grid file and the array index -> run mapping (grid.h).
#include "src/train/grid.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#include "src/core/common.h"
#include "src/core/yaml_util.h"
#include "src/io/dataset.h"
#include "src/train/train.h"

static int line_of(const yaml_node_t *n) { return n ? (int)n->start_mark.line + 1 : 1; }
static const char *scalar(const yaml_node_t *n) { return (const char *)n->data.scalar.value; }

static const char *node_kind(const yaml_node_t *n) {
    if (!n) return "nothing";
    switch (n->type) {
    case YAML_MAPPING_NODE: return "a mapping";
    case YAML_SEQUENCE_NODE: return "a list";
    case YAML_SCALAR_NODE: return *scalar(n) ? "a single value" : "nothing";
    default: return "an empty node";
    }
}

// 0 when s is a learning rate: a number in (0, 1].
static int check_lr(const char *s, double *v) {
    char *end;
    errno = 0;
    *v = strtod(s, &end);
    return (end == s || *end || errno || !isfinite(*v) || *v <= 0 || *v > 1) ? -1 : 0;
}

// 0 when s is a seed: a decimal integer >= 0.
static int check_seed(const char *s, unsigned long long *v) {
    char *end;
    if (!*s || s[0] == '-' || s[0] == '+') return -1;
    errno = 0;
    *v = strtoull(s, &end, 10);
    return (*end || errno) ? -1 : 0;
}

// Reads one list value ("key: [a, b]" or a block list) of scalars into *out.
static int read_list(yaml_document_t *doc, const char *file, const char *key, yaml_node_t *v, char ***out, int *n,
                     int may_be_empty, char *err, int errlen) {
    if (v->type == YAML_SCALAR_NODE && !*scalar(v) && may_be_empty) return 0;  // "overrides:" with nothing
    if (v->type != YAML_SEQUENCE_NODE)
        return hax_errf(err, errlen, "%s:%d: %s: expected a list, found %s", file, line_of(v), key, node_kind(v));
    int count = (int)(v->data.sequence.items.top - v->data.sequence.items.start);
    if (count == 0 && !may_be_empty)
        return hax_errf(err, errlen, "%s:%d: %s: expected at least one entry, found an empty list", file, line_of(v),
                        key);
    *out = xcalloc((size_t)count + 1, sizeof(char *));
    for (int i = 0; i < count; i++) {
        yaml_node_t *e = yaml_document_get_node(doc, v->data.sequence.items.start[i]);
        if (!e || e->type != YAML_SCALAR_NODE || !*scalar(e))
            return hax_errf(err, errlen, "%s:%d: %s: expected a list of single values, found %s as entry %d", file,
                            line_of(e ? e : v), key, node_kind(e), i + 1);
        (*out)[i] = xstrdup(scalar(e));
        *n = i + 1;
    }
    return 0;
}

// Checks the values of one list (numbers, no repeats) with their lines.
static int check_values(yaml_document_t *doc, const char *file, const char *key, yaml_node_t *v, char **vals, int n,
                        char *err, int errlen) {
    for (int i = 0; i < n; i++) {
        int line = line_of(yaml_document_get_node(doc, v->data.sequence.items.start[i]));
        double lr_i, lr_j;
        unsigned long long s_i, s_j;
        if (strcmp(key, "lrs") == 0 && check_lr(vals[i], &lr_i) != 0)
            return hax_errf(err, errlen, "%s:%d: lrs: expected a learning rate in (0, 1], found '%s'", file, line,
                            vals[i]);
        if (strcmp(key, "seeds") == 0 && check_seed(vals[i], &s_i) != 0)
            return hax_errf(err, errlen, "%s:%d: seeds: expected an integer >= 0, found '%s'", file, line, vals[i]);
        if (strcmp(key, "overrides") == 0 && !strchr(vals[i], '='))
            return hax_errf(err, errlen, "%s:%d: overrides: expected section.field=value, found '%s'", file, line,
                            vals[i]);
        for (int j = 0; j < i; j++) {
            int same = strcmp(vals[i], vals[j]) == 0;
            if (strcmp(key, "lrs") == 0) same = (check_lr(vals[j], &lr_j), lr_i == lr_j);
            if (strcmp(key, "seeds") == 0) same = (check_seed(vals[j], &s_j), s_i == s_j);
            if (same && strcmp(key, "overrides") != 0)
                return hax_errf(err, errlen, "%s:%d: %s: expected each value once, found '%s' again (as '%s')", file,
                                line, key, vals[i], vals[j]);
        }
    }
    return 0;
}

static int walk(yaml_document_t *doc, hax_grid *g, char *err, int errlen) {
    static const char *const keys[] = {"configs", "lrs", "seeds", "overrides"};
    const char *file = g->path;
    yaml_node_t *root = yaml_document_get_root_node(doc);
    if (!root || root->type != YAML_MAPPING_NODE)
        return hax_errf(err, errlen, "%s:%d: expected a mapping with configs, lrs, seeds (and overrides), found %s",
                        file, line_of(root), node_kind(root));
    int seen[4] = {0};
    for (yaml_node_pair_t *p = root->data.mapping.pairs.start; p < root->data.mapping.pairs.top; p++) {
        yaml_node_t *k = yaml_document_get_node(doc, p->key), *v = yaml_document_get_node(doc, p->value);
        int which = -1;
        for (int i = 0; k->type == YAML_SCALAR_NODE && i < 4; i++)
            if (strcmp(scalar(k), keys[i]) == 0) which = i;
        if (which < 0)
            return hax_errf(err, errlen, "%s:%d: expected a key among configs, lrs, seeds, overrides; found %s%s%s",
                            file, line_of(k), k->type == YAML_SCALAR_NODE ? "'" : node_kind(k),
                            k->type == YAML_SCALAR_NODE ? scalar(k) : "", k->type == YAML_SCALAR_NODE ? "'" : "");
        if (seen[which])
            return hax_errf(err, errlen, "%s:%d: %s: expected once, found it again (first at line %d)", file,
                            line_of(k), keys[which], seen[which]);
        seen[which] = line_of(k);
        char ***lists[4] = {&g->configs, &g->lrs, &g->seeds, &g->overrides};
        int *counts[4] = {&g->n_configs, &g->n_lrs, &g->n_seeds, &g->n_overrides};
        if (read_list(doc, file, keys[which], v, lists[which], counts[which], which == 3, err, errlen) != 0) return -1;
        if (v->type == YAML_SEQUENCE_NODE &&
            check_values(doc, file, keys[which], v, *lists[which], *counts[which], err, errlen) != 0)
            return -1;
    }
    for (int i = 0; i < 3; i++)
        if (!seen[i]) return hax_errf(err, errlen, "%s:1: %s: expected a list, found no such key", file, keys[i]);
    for (int i = 0; i < g->n_configs; i++) {  // config paths: relative to the grid file
        char *r = hax_path_beside(g->path, g->configs[i]);
        free(g->configs[i]);
        g->configs[i] = r;
        for (int j = 0; j < i; j++)
            if (strcmp(g->configs[i], g->configs[j]) == 0)
                return hax_errf(err, errlen, "%s: configs: expected each config once, found %s twice", file, r);
    }
    return 0;
}

int grid_load(hax_grid *g, const char *path, char *err, int errlen) {
    memset(g, 0, sizeof *g);
    if (strlen(path) >= sizeof g->path)
        return hax_errf(err, errlen, "%s: expected a path of at most %zu characters", path, sizeof g->path - 1);
    strcpy(g->path, path);
    size_t len;
    char e[512];
    char *text = hax_read_file_max(path, HAX_MAX_TEXT_BYTES, &len, e, sizeof e);
    if (!text) return hax_errf(err, errlen, "%s", e);
    yaml_document_t doc;
    int rc = hax_yaml_load(&doc, text, len, HAX_MAX_DEPTH, e, sizeof e);
    if (rc == -1) {
        rc = hax_errf(err, errlen, "%s: expected valid YAML, found a syntax error at %s", path, e);
    } else if (rc) {
        rc = hax_errf(err, errlen, "%s: %s", path, e);
    } else {
        rc = walk(&doc, g, err, errlen);
        yaml_document_delete(&doc);
    }
    free(text);
    if (rc != 0) grid_free(g);
    return rc;
}

static void free_list(char **v, int n) {
    for (int i = 0; v && i < n; i++) free(v[i]);
    free(v);
}

void grid_free(hax_grid *g) {
    free_list(g->configs, g->n_configs);
    free_list(g->lrs, g->n_lrs);
    free_list(g->seeds, g->n_seeds);
    free_list(g->overrides, g->n_overrides);
    g->configs = g->lrs = g->seeds = g->overrides = NULL;
    g->n_configs = g->n_lrs = g->n_seeds = g->n_overrides = 0;
}

int64_t grid_size(const hax_grid *g) { return (int64_t)g->n_configs * g->n_lrs * g->n_seeds; }

void grid_entry(const hax_grid *g, int64_t index, int *config, int *lr, int *seed) {
    *seed = (int)(index % g->n_seeds);
    *lr = (int)((index / g->n_seeds) % g->n_lrs);
    *config = (int)(index / ((int64_t)g->n_seeds * g->n_lrs));
}

int grid_train_args(const hax_grid *g, int64_t index, const char **argv, int max, char *buf, int buflen) {
    int ci, li, si, n = 0;
    grid_entry(g, index, &ci, &li, &si);
    if (max < g->n_overrides + 3) return -1;
    argv[n++] = g->configs[ci];
    for (int i = 0; i < g->n_overrides; i++) argv[n++] = g->overrides[i];
    int w = snprintf(buf, (size_t)buflen, "train.lr=%s", g->lrs[li]);
    if (w < 0 || w + 1 >= buflen) return -1;
    int w2 = snprintf(buf + w + 1, (size_t)(buflen - w - 1), "train.seed=%s", g->seeds[si]);
    if (w2 < 0 || w2 >= buflen - w - 1) return -1;
    argv[n++] = buf;
    argv[n++] = buf + w + 1;
    return n;
}

int grid_load_entry(const hax_grid *g, int64_t index, const char *results, hax_config *c, char *err, int errlen) {
    const char *argv[64];
    char buf[1024], root[HAX_PATH_MAX + 16];
    int n = grid_train_args(g, index, argv, 63, buf, sizeof buf);
    if (n < 0) return hax_errf(err, errlen, "%s: expected at most 60 overrides and short lr/seed values", g->path);
    if (results) {
        snprintf(root, sizeof root, "output.root=%s", results);
        argv[n++] = root;
    }
    return config_load(c, argv[0], argv + 1, n - 1, err, errlen);
}

typedef struct {
    char dir[HAX_PATH_MAX + 256];
    int64_t index;
} run_dir_entry;

static int by_dir(const void *a, const void *b) {
    return strcmp(((const run_dir_entry *)a)->dir, ((const run_dir_entry *)b)->dir);
}

// A dataset that is already there is not generated again, so every run of the
// config would fail on it if it were unreadable or made with other generator
// options: refused here, before anything is queued. A folder without
// manifest.yaml is no dataset yet (datagen makes it).
static int check_existing_dataset(const char *config, const hax_data_config *d, char *err, int errlen) {
    char manifest[HAX_PATH_MAX + 32], why[1024];
    snprintf(manifest, sizeof manifest, "%s/manifest.yaml", d->path);
    FILE *f = fopen(manifest, "r");
    if (!f) return 0;
    fclose(f);
    hax_dataset *ds = dataset_open(d->path, why, sizeof why);
    int bad = ds == NULL || train_check_dataset(ds, &d->gen, d->path, why, sizeof why) != 0;
    if (ds) dataset_close(ds);
    if (bad) return hax_errf(err, errlen, "%s: data.path: expected a usable existing dataset, found: %s", config, why);
    return 0;
}

int grid_check(const hax_grid *g, const char *results, char *err, int errlen) {
    int64_t n = grid_size(g);
    run_dir_entry *dirs = xcalloc((size_t)n, sizeof *dirs);
    // Per config: its dataset folder and generator options (lr and seed never change them).
    char (*data_path)[HAX_PATH_MAX] = xcalloc((size_t)g->n_configs, sizeof *data_path);
    char (*data_opts)[512] = xcalloc((size_t)g->n_configs, sizeof *data_opts);
    hax_config *c = xmalloc(sizeof *c);
    int rc = 0;
    for (int64_t i = 0; i < n && rc == 0; i++) {
        if (grid_load_entry(g, i, results, c, err, errlen) != 0) {
            rc = -1;
            break;
        }
        config_run_dir(c, dirs[i].dir, sizeof dirs[i].dir);
        dirs[i].index = i;
        int ci, li, si;
        grid_entry(g, i, &ci, &li, &si);
        if (li == 0 && si == 0) {
            snprintf(data_path[ci], sizeof data_path[ci], "%s", c->data.path);
            grid_datagen_options(&c->data.gen, data_opts[ci], sizeof data_opts[ci]);
            for (int j = 0; j < ci; j++)
                if (strcmp(data_path[j], data_path[ci]) == 0 && strcmp(data_opts[j], data_opts[ci]) != 0)
                    rc = hax_errf(
                        err, errlen,
                        "%s: data.path %s: expected one dataset per folder, found %s asking for '%s' and %s for '%s'",
                        g->path, data_path[ci], g->configs[j], data_opts[j], g->configs[ci], data_opts[ci]);
            if (rc == 0) rc = check_existing_dataset(g->configs[ci], &c->data, err, errlen);
        }
    }
    if (rc == 0) {
        qsort(dirs, (size_t)n, sizeof *dirs, by_dir);
        for (int64_t i = 1; i < n && rc == 0; i++)
            if (strcmp(dirs[i].dir, dirs[i - 1].dir) == 0) {
                int a, b, x;
                grid_entry(g, dirs[i - 1].index, &a, &x, &x);
                grid_entry(g, dirs[i].index, &b, &x, &x);
                rc = hax_errf(
                    err, errlen,
                    "%s: entries %lld (%s) and %lld (%s): expected a run folder each, found both writing to %s "
                    "(give them different output.arch)",
                    g->path, (long long)dirs[i - 1].index, g->configs[a], (long long)dirs[i].index, g->configs[b],
                    dirs[i].dir);
            }
    }
    free(c);
    free(data_opts);
    free(data_path);
    free(dirs);
    return rc;
}

void grid_datagen_options(const hax_data_params *p, char *buf, int buflen) {
    int w = snprintf(buf, (size_t)buflen, "%s--levels %d --level-sizes ", p->compat ? "--compat reference " : "",
                     p->levels);
    for (int l = 0; l < p->levels && w < buflen; l++)
        w += snprintf(buf + w, (size_t)(buflen - w), "%s%d:%d", l ? "," : "", p->min_size[l], p->max_size[l]);
    if (data_has_id_layout(p))
        for (int l = 0; l < p->levels && w < buflen; l++)
            w += snprintf(buf + w, (size_t)(buflen - w), "%s%d", l ? ":" : " --id-layout ", data_layout_max(p, l));
    if (w < buflen)
        snprintf(buf + w, (size_t)(buflen - w),
                 " --n-value %d --n-train-per-cell %lld --n-valid-per-cell %lld --n-test-per-cell %lld --seed %llu",
                 p->n_value, (long long)p->n_per_cell[0], (long long)p->n_per_cell[1], (long long)p->n_per_cell[2],
                 (unsigned long long)p->seed);
}
