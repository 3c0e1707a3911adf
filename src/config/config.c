// config.c: the config's fields, defaults, YAML loading (libyaml document
// API, so every node carries its line) with chains of base files, overrides
// and cross-field checks. Printing and comparison are in config_print.c.
#include "src/config/config.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#include "src/core/common.h"
#include "src/config/config_fields.h"
#include "src/core/yaml_util.h"

#define arch_names hax_arch_names  // src/model/arch.h
static const char *const device_names[] = {"auto", "cpu", "cuda", NULL};
static const char *const semantics_names[] = {"reference", "causal", NULL};
static const char *const test_output_names[] = {"best", "final", NULL};
static const char *const precision_names[] = {"fp32", "bf16", "bf16-pure", NULL};

const char *config_arch_name(hax_arch a) { return arch_name(a); }
const char *config_device_name(hax_device d) { return d <= DEVICE_CUDA ? device_names[d] : "?"; }
const char *config_semantics_name(hax_semantics s) { return s <= SEMANTICS_CAUSAL ? semantics_names[s] : "?"; }
const char *config_precision_name(hax_precision p) { return p <= PREC_BF16_PURE ? precision_names[p] : "?"; }

#define OFF(field) offsetof(hax_config, field)
#define SZ(field) sizeof(((hax_config *)0)->field)
#define NUM(sec, name, type, field, lo, hi) {sec, name, type, OFF(field), 0, lo, hi, 0, NULL}
#define POS(sec, name, type, field, hi) {sec, name, type, OFF(field), 0, 0, hi, 1, NULL}
#define ENUM(sec, name, field, names) {sec, name, F_ENUM, OFF(field), 0, 0, 0, 0, names}
#define BOOL(sec, name, field) {sec, name, F_BOOL, OFF(field), 0, 0, 1, 0, NULL}
#define STR(sec, name, field, minlen) {sec, name, F_STR, OFF(field), SZ(field), minlen, SZ(field) - 1, 0, NULL}

// Every field, in the order config_print writes them. The README's "Configs"
// section documents each one.
const cfg_field cfg_fields[] = {
    ENUM("model", "arch", model.arch, arch_names),
    NUM("model", "vocab_size", F_INT, model.vocab_size, 2, 1 << 20),
    NUM("model", "hidden_size", F_INT, model.hidden_size, 1, 8192),
    NUM("model", "n_layers", F_INT, model.n_layers, 1, 64),
    NUM("model", "state_size", F_INT, model.state_size, 1, 1024),
    NUM("model", "intermediate_size", F_INT, model.intermediate_size, 1, 65536),
    NUM("model", "conv_kernel", F_INT, model.conv_kernel, 1, 16),
    NUM("model", "time_step_rank", F_INT, model.time_step_rank, 0, 4096),
    NUM("model", "n_heads", F_INT, model.n_heads, 0, 4096),
    NUM("model", "head_dim", F_INT, model.head_dim, 0, 65536),
    POS("model", "norm_eps", F_FLOAT, model.norm_eps, 1),
    POS("model", "initializer_range", F_FLOAT, model.initializer_range, 10),
    BOOL("model", "rescale_prenorm_residual", model.rescale_prenorm_residual),
    POS("model", "time_step_min", F_FLOAT, model.time_step_min, 10),
    POS("model", "time_step_max", F_FLOAT, model.time_step_max, 10),
    POS("model", "time_step_floor", F_FLOAT, model.time_step_floor, 10),
    NUM("model", "attn_heads", F_INT, model.attn_heads, 0, 1024),
    NUM("model", "attn_kv_heads", F_INT, model.attn_kv_heads, 0, 1024),
    NUM("model", "window_size", F_INT, model.window_size, 0, 1 << 24),
    NUM("model", "rope_theta", F_FLOAT, model.rope_theta, 0, 1e12),
    NUM("model", "mlp_hidden", F_INT, model.mlp_hidden, 0, 1 << 20),

    {"sparse", "pattern", F_PATTERN, OFF(model.sparse_arch), SZ(model.sparse_arch), 0, 0, 0, NULL},
    NUM("sparse", "keys", F_INT, model.sparse_keys, 1, 1 << 20),
    NUM("sparse", "hash_bits", F_INT, model.num_hash, 1, 30),
    NUM("sparse", "data_max_length", F_INT, model.data_max_length, 1, 1 << 30),
    NUM("sparse", "gate_loss_weight", F_FLOAT, model.gate_loss_weight, 0, 1e6),
    ENUM("sparse", "semantics", model.semantics, semantics_names),

    STR("data", "path", data.path, 1),
    BOOL("data", "generate", data.generate),
    BOOL("data", "shuffle", data.shuffle),
    NUM("data", "seed", F_U64, data.gen.seed, 0, 0),
    NUM("data", "levels", F_INT, data.gen.levels, 1, HAX_MAX_LEVELS),
    {"data", "min_sizes", F_INTLIST, OFF(data.gen.min_size), HAX_MAX_LEVELS, 1, 65535, 0, NULL},
    {"data", "max_sizes", F_INTLIST, OFF(data.gen.max_size), HAX_MAX_LEVELS, 1, 65535, 0, NULL},
    {"data", "id_layout", F_INTLIST, OFF(data.gen.id_max), HAX_MAX_LEVELS, 1, 65535, 0, NULL},
    NUM("data", "n_value", F_INT, data.gen.n_value, 1, 65535),
    NUM("data", "train_per_cell", F_I64, data.gen.n_per_cell[SPLIT_TRAIN], 1, 1e12),
    NUM("data", "valid_per_cell", F_I64, data.gen.n_per_cell[SPLIT_VALID], 1, 1e12),
    NUM("data", "test_per_cell", F_I64, data.gen.n_per_cell[SPLIT_TEST], 1, 1e12),
    BOOL("data", "compat", data.gen.compat),

    NUM("train", "seed", F_U64, train.seed, 0, 0),
    POS("train", "lr", F_DOUBLE, train.lr, 1),
    NUM("train", "batch_size", F_INT, train.batch_size, 1, 1 << 20),
    NUM("train", "eval_batch", F_INT, train.eval_batch, 0, 1 << 20),
    NUM("train", "steps", F_I64, train.steps, 1, 1e12),
    NUM("train", "warmup", F_I64, train.warmup, 0, 1e12),
    NUM("train", "valid_every", F_I64, train.valid_every, 1, 1e12),
    NUM("train", "log_every", F_I64, train.log_every, 1, 1e12),
    NUM("train", "checkpoint_every", F_I64, train.checkpoint_every, 0, 1e12),
    NUM("train", "beta1", F_DOUBLE, train.beta1, 0, 0.999999),
    NUM("train", "beta2", F_DOUBLE, train.beta2, 0, 0.999999999),
    POS("train", "eps", F_DOUBLE, train.eps, 1),
    NUM("train", "weight_decay", F_DOUBLE, train.weight_decay, 0, 1),
    ENUM("train", "device", train.device, device_names),
    ENUM("train", "test_output_layer", train.test_output_layer, test_output_names),
    BOOL("train", "validate_final", train.validate_final),
    BOOL("train", "eval_fixed_hash", train.eval_fixed_hash),
    ENUM("train", "precision", train.precision, precision_names),
    STR("train", "init_from", train.init_from, 0),

    STR("output", "root", output.root, 1),
    STR("output", "arch", output.arch, 0),
};
const int cfg_n_fields = (int)(sizeof cfg_fields / sizeof cfg_fields[0]);

static const char *const sections[] = {"model", "sparse", "data", "train", "output"};
#define N_SECTIONS 5

void config_defaults(hax_config *c) {
    memset(c, 0, sizeof *c);
    model_config_reference(&c->model, ARCH_MAMBA, 0, NULL);
    strcpy(c->data.path, "data/joint_recall");
    c->data.generate = 0;
    c->data.shuffle = 0;
    hax_data_params *g = &c->data.gen;
    g->levels = 2;
    g->min_size[0] = g->min_size[1] = 5;
    g->max_size[0] = g->max_size[1] = 16;
    g->n_value = 16;
    g->n_per_cell[SPLIT_TRAIN] = 10000;
    g->n_per_cell[SPLIT_VALID] = 100;
    g->n_per_cell[SPLIT_TEST] = 100;
    g->seed = 1;
    hax_train_config *t = &c->train;
    t->seed = 1;
    t->lr = 0.002;
    t->batch_size = 64;
    t->eval_batch = 256;  // README "Configs": 4 of the paper's batches per evaluation forward
    t->steps = 400000;
    t->warmup = 5000;
    t->valid_every = 500;
    t->log_every = 100;
    t->checkpoint_every = 1000;
    t->beta1 = 0.9;
    t->beta2 = 0.999;
    t->eps = 1e-8;
    t->weight_decay = 0.01;
    t->device = DEVICE_AUTO;
    t->test_output_layer = TEST_OUTPUT_BEST;
    t->validate_final = 1;
    t->eval_fixed_hash = 1;
    t->precision = PREC_FP32;  // the Table 1 base configs set bf16-pure (README "Precision")
    strcpy(c->output.root, "results");
}

// ---------------------------------------------------------------- values

static void fmt_range(char *buf, size_t n, const cfg_field *f) {
    if (f->type == F_U64) snprintf(buf, n, "a non-negative integer");
    else if (f->lo_open) snprintf(buf, n, "a number in (0, %g]", f->hi);
    else if (f->type == F_FLOAT || f->type == F_DOUBLE) snprintf(buf, n, "a number in [%g, %g]", f->lo, f->hi);
    else snprintf(buf, n, "an integer in %.0f..%.0f", f->lo, f->hi);
}

static int parse_integer(const cfg_field *f, const char *s, int64_t *out, char *err, int errlen) {
    char rng[96];
    fmt_range(rng, sizeof rng, f);
    errno = 0;
    char *end;
    long long v = strtoll(s, &end, 10);
    if (!*s || *end || errno) return hax_errf(err, errlen, "expected %s, found '%s'", rng, s);
    if (v < f->lo || v > f->hi) return hax_errf(err, errlen, "expected %s, found %lld", rng, v);
    *out = v;
    return 0;
}

// Sets one field from a scalar's text. On error, err holds "expected ..., found ...".
int cfg_set_value(hax_config *c, const cfg_field *f, const char *s, char *err, int errlen) {
    char *p = (char *)c + f->off;
    char rng[96];
    fmt_range(rng, sizeof rng, f);
    switch (f->type) {
    case F_INT: {
        int64_t v;
        if (parse_integer(f, s, &v, err, errlen)) return -1;
        *(int *)p = (int)v;
        return 0;
    }
    case F_I64: {
        int64_t v;
        if (parse_integer(f, s, &v, err, errlen)) return -1;
        *(int64_t *)p = v;
        return 0;
    }
    case F_U64: {
        errno = 0;
        char *end;
        unsigned long long v = strtoull(s, &end, 10);
        if (!*s || *end || errno || *s == '-' || *s == '+') return hax_errf(err, errlen, "expected %s, found '%s'", rng, s);
        *(uint64_t *)p = v;
        return 0;
    }
    case F_FLOAT:
    case F_DOUBLE: {
        errno = 0;
        char *end;
        double v = strtod(s, &end);
        if (!*s || *end || errno == ERANGE || !isfinite(v)) return hax_errf(err, errlen, "expected a number, found '%s'", s);
        if (v > f->hi || (f->lo_open ? v <= 0 : v < f->lo)) return hax_errf(err, errlen, "expected %s, found %s", rng, s);
        if (f->type == F_FLOAT) *(float *)p = (float)v;
        else *(double *)p = v;
        return 0;
    }
    case F_BOOL:
        if (strcmp(s, "true") == 0) *(int *)p = 1;
        else if (strcmp(s, "false") == 0) *(int *)p = 0;
        else return hax_errf(err, errlen, "expected true or false, found '%s'", s);
        return 0;
    case F_ENUM:
        for (int i = 0; f->names[i]; i++)
            if (strcmp(s, f->names[i]) == 0) {
                *(int *)p = i;
                return 0;
            }
        {
            char list[160] = "";
            for (int i = 0; f->names[i]; i++)
                snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s", i ? (f->names[i + 1] ? ", " : " or ") : "",
                         f->names[i]);
            return hax_errf(err, errlen, "expected %s, found '%s'", list, s);
        }
    case F_STR:
        if (strlen(s) < (size_t)f->lo || strlen(s) > (size_t)f->hi)
            return hax_errf(err, errlen, "expected a string of %.0f..%.0f characters, found %zu", f->lo, f->hi, strlen(s));
        if (strcmp(f->name, "arch") == 0)  // the output label becomes a folder name
            for (const char *q = s; *q; q++)
                if (!(isalnum((unsigned char)*q) || strchr("_-.+@", *q)))
                    return hax_errf(err, errlen, "expected a label of letters, digits and _ - . + @, found '%s'", s);
        memset(p, 0, f->size);
        strcpy(p, s);
        return 0;
    case F_PATTERN: {
        hax_model_config tmp = c->model;
        char why[300];
        if (model_config_set_sparse(&tmp, s, why, sizeof why) != 0) return hax_errf(err, errlen, "%s", why);
        memset(p, 0, f->size);
        strcpy(p, strcmp(s, "none") == 0 ? "" : s);
        return 0;
    }
    case F_INTLIST: {
        // "a, b, c" (a YAML sequence arrives joined like this; an override may add brackets)
        char buf[256];
        snprintf(buf, sizeof buf, "%s", s);
        char *q = buf;
        size_t len = strlen(q);
        if (len >= 2 && q[0] == '[' && q[len - 1] == ']') q[len - 1] = 0, q++;
        int n = 0, vals[HAX_MAX_LEVELS];
        for (char *tok = strtok(q, ","); tok; tok = strtok(NULL, ",")) {
            while (*tok == ' ') tok++;
            char *e = tok + strlen(tok);
            while (e > tok && e[-1] == ' ') *--e = 0;
            int64_t v;
            if (n == HAX_MAX_LEVELS) return hax_errf(err, errlen, "expected at most %d entries, found more in '%s'", HAX_MAX_LEVELS, s);
            if (parse_integer(f, tok, &v, err, errlen)) return -1;
            vals[n++] = (int)v;
        }
        if (n == 0) return hax_errf(err, errlen, "expected a list of integers such as [5, 5], found '%s'", s);
        int *dst = (int *)p;
        memset(dst, 0, sizeof(int) * f->size);
        memcpy(dst, vals, sizeof(int) * n);  // zeros after the entries mark the count
        return 0;
    }
    }
    return hax_errf(err, errlen, "internal: unknown field type");
}

const cfg_field *cfg_find_field(const char *section, const char *name) {
    for (int i = 0; i < cfg_n_fields; i++)
        if (strcmp(cfg_fields[i].section, section) == 0 && strcmp(cfg_fields[i].name, name) == 0) return &cfg_fields[i];
    return NULL;
}

void cfg_field_names(const char *section, char *buf, size_t n) {
    buf[0] = 0;
    for (int i = 0; i < cfg_n_fields; i++)
        if (strcmp(cfg_fields[i].section, section) == 0)
            snprintf(buf + strlen(buf), n - strlen(buf), "%s%s", buf[0] ? ", " : "", cfg_fields[i].name);
}

int cfg_known_section(const char *s) {
    for (int i = 0; i < N_SECTIONS; i++)
        if (strcmp(s, sections[i]) == 0) return 1;
    return 0;
}

// ---------------------------------------------------------------- overrides

int config_override(hax_config *c, const char *arg, char *err, int errlen) {
    // one line: a value with a line break would make a multi-line message
    // and could smuggle YAML into a config stored with the run
    size_t brk = strcspn(arg, "\r\n");
    if (arg[brk])
        return hax_errf(err, errlen, "override '%.*s...': expected one line, found a line break after %zu characters",
                        (int)(brk < 60 ? brk : 60), arg, brk);
    const char *eq = strchr(arg, '=');
    const char *dot = strchr(arg, '.');
    if (!eq || !dot || dot > eq)
        return hax_errf(err, errlen, "override '%s': expected section.field=value (e.g. train.lr=3e-4), found no %s", arg,
                   !eq ? "'='" : "'.' before the '='");
    char section[64], name[64];
    snprintf(section, sizeof section, "%.*s", (int)(dot - arg), arg);
    snprintf(name, sizeof name, "%.*s", (int)(eq - dot - 1), dot + 1);
    if (!cfg_known_section(section))
        return hax_errf(err, errlen, "override '%s': expected a section among model, sparse, data, train, output; found '%s'",
                   arg, section);
    const cfg_field *f = cfg_find_field(section, name);
    if (!f) {
        char names[1024];
        cfg_field_names(section, names, sizeof names);
        return hax_errf(err, errlen, "override '%s': expected a field of %s (%s), found '%s'", arg, section, names, name);
    }
    char why[400];
    if (cfg_set_value(c, f, eq + 1, why, sizeof why) != 0) return hax_errf(err, errlen, "override '%s': %s", arg, why);
    return 0;
}

// ---------------------------------------------------------------- checks

static int list_len(const int *v) {
    int n = 0;
    while (n < HAX_MAX_LEVELS && v[n]) n++;
    return n;
}

int config_finalize(hax_config *c, char *err, int errlen) {
    char why[400], pattern[64];
    snprintf(pattern, sizeof pattern, "%s", c->model.sparse_arch);
    if (model_config_set_sparse(&c->model, pattern, why, sizeof why) != 0)
        return hax_errf(err, errlen, "sparse.pattern: %s", why);
    if (model_config_validate(&c->model, why, sizeof why) != 0) return hax_errf(err, errlen, "%s", why);
    hax_data_params *g = &c->data.gen;
    if (list_len(g->min_size) != g->levels || list_len(g->max_size) != g->levels)
        return hax_errf(err, errlen, "data.min_sizes, data.max_sizes: expected %d entries each (data.levels), found %d and %d",
                   g->levels, list_len(g->min_size), list_len(g->max_size));
    if (list_len(g->id_max) != 0 && list_len(g->id_max) != g->levels)
        return hax_errf(err, errlen, "data.id_layout: expected none or %d entries (data.levels), found %d", g->levels,
                        list_len(g->id_max));
    if (data_params_check(g, why, sizeof why) != 0) return hax_errf(err, errlen, "data: %s", why);
    if (c->model.vocab_size <= data_max_token(g))
        return hax_errf(err, errlen, "model.vocab_size: expected more than the dataset's largest token id %d%s, found %d",
                   data_max_token(g), data_has_id_layout(g) ? " (of data.id_layout)" : "", c->model.vocab_size);
    // train.warmup may exceed train.steps: a run shorter than its warm-up, as
    // the reference allows (--step below --warmup_step; lr never reaches its peak)
    if (!c->output.arch[0]) {  // default label: the base architecture and the pattern
        if (c->model.sparse_arch[0])
            snprintf(c->output.arch, sizeof c->output.arch, "%s+%s", config_arch_name(c->model.arch), c->model.sparse_arch);
        else
            snprintf(c->output.arch, sizeof c->output.arch, "%s", config_arch_name(c->model.arch));
    }
    c->model.precision = c->train.precision;
    // Two regimes never share a results folder: a label of a non-fp32 run
    // ends in "@<precision>" (added once, so a printed config reloads equal).
    if (c->train.precision != PREC_FP32) {
        char suf[32];
        snprintf(suf, sizeof suf, "@%s", config_precision_name(c->train.precision));
        size_t la = strlen(c->output.arch), ls = strlen(suf);
        if (la < ls || strcmp(c->output.arch + la - ls, suf) != 0) {
            if (la + ls >= sizeof c->output.arch)
                return hax_errf(err, errlen, "output.arch: expected at most %zu characters with the suffix %s, found %zu",
                                sizeof c->output.arch - 1 - ls, suf, la);
            strcat(c->output.arch, suf);
        }
    }
    return 0;
}

int config_eval_batch(const hax_config *c) {
    const hax_train_config *t = &c->train;
    int lsh = (c->model.sparse_mask & (SPARSE_SIGN_BIN_LSH | SPARSE_ARGMAX_LSH)) != 0;
    if (t->eval_batch <= 0 || (lsh && !t->eval_fixed_hash)) return t->batch_size;
    return t->eval_batch;
}

void config_run_dir(const hax_config *c, char *buf, size_t n) {
    snprintf(buf, n, "%s/%s/lr_%g/seed_%llu", c->output.root, c->output.arch, c->train.lr,
             (unsigned long long)c->train.seed);
}
