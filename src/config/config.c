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
    NUM("data", "n_value", F_INT, data.gen.n_value, 1, 65535),
    NUM("data", "train_per_cell", F_I64, data.gen.n_per_cell[SPLIT_TRAIN], 1, 1e12),
    NUM("data", "valid_per_cell", F_I64, data.gen.n_per_cell[SPLIT_VALID], 1, 1e12),
    NUM("data", "test_per_cell", F_I64, data.gen.n_per_cell[SPLIT_TEST], 1, 1e12),
    BOOL("data", "compat", data.gen.compat),

    NUM("train", "seed", F_U64, train.seed, 0, 0),
    POS("train", "lr", F_DOUBLE, train.lr, 1),
    NUM("train", "batch_size", F_INT, train.batch_size, 1, 1 << 20),
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
    t->precision = PREC_FP32;  // the Table 1 configs say so explicitly (README "Precision")
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
static int set_value(hax_config *c, const cfg_field *f, const char *s, char *err, int errlen) {
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

static const cfg_field *find_field(const char *section, const char *name) {
    for (int i = 0; i < cfg_n_fields; i++)
        if (strcmp(cfg_fields[i].section, section) == 0 && strcmp(cfg_fields[i].name, name) == 0) return &cfg_fields[i];
    return NULL;
}

static void field_names(const char *section, char *buf, size_t n) {
    buf[0] = 0;
    for (int i = 0; i < cfg_n_fields; i++)
        if (strcmp(cfg_fields[i].section, section) == 0)
            snprintf(buf + strlen(buf), n - strlen(buf), "%s%s", buf[0] ? ", " : "", cfg_fields[i].name);
}

static int known_section(const char *s) {
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
    if (!known_section(section))
        return hax_errf(err, errlen, "override '%s': expected a section among model, sparse, data, train, output; found '%s'",
                   arg, section);
    const cfg_field *f = find_field(section, name);
    if (!f) {
        char names[1024];
        field_names(section, names, sizeof names);
        return hax_errf(err, errlen, "override '%s': expected a field of %s (%s), found '%s'", arg, section, names, name);
    }
    char why[400];
    if (set_value(c, f, eq + 1, why, sizeof why) != 0) return hax_errf(err, errlen, "override '%s': %s", arg, why);
    return 0;
}

// ---------------------------------------------------------------- YAML

typedef struct {
    yaml_document_t *doc;
    const char *name;
    char *err;
    int errlen;
} ydoc;

static const char *node_kind(const yaml_node_t *n) {
    if (!n) return "nothing";
    switch (n->type) {
    case YAML_MAPPING_NODE: return "a mapping";
    case YAML_SEQUENCE_NODE: return "a list";
    case YAML_SCALAR_NODE: return "a scalar";
    default: return "an empty node";
    }
}

static int line_of(const yaml_node_t *n) { return n ? (int)n->start_mark.line + 1 : 0; }

static const char *scalar(const yaml_node_t *n) { return (const char *)n->data.scalar.value; }

// Applies one "key: value" of a section.
static int apply_node(ydoc *y, hax_config *c, const char *section, yaml_node_t *key, yaml_node_t *val) {
    const char *name = scalar(key);
    const cfg_field *f = find_field(section, name);
    if (!f) {
        char names[1024];
        field_names(section, names, sizeof names);
        return hax_errf(y->err, y->errlen, "%s:%d: %s.%s: expected a field of %s (%s), found unknown key '%s'", y->name,
                   line_of(key), section, name, section, names, name);
    }
    char text[512], why[400];
    if (f->type == F_INTLIST && val->type == YAML_SEQUENCE_NODE) {
        text[0] = 0;
        for (yaml_node_item_t *it = val->data.sequence.items.start; it < val->data.sequence.items.top; it++) {
            yaml_node_t *e = yaml_document_get_node(y->doc, *it);
            if (!e || e->type != YAML_SCALAR_NODE)
                return hax_errf(y->err, y->errlen, "%s:%d: %s.%s: expected a list of integers, found %s in it", y->name,
                           line_of(e ? e : val), section, name, node_kind(e));
            snprintf(text + strlen(text), sizeof text - strlen(text), "%s%s", text[0] ? "," : "", scalar(e));
        }
    } else if (val->type != YAML_SCALAR_NODE) {
        return hax_errf(y->err, y->errlen, "%s:%d: %s.%s: expected %s, found %s", y->name, line_of(val), section, name,
                   f->type == F_INTLIST ? "a list of integers" : "a single value", node_kind(val));
    } else {
        if (strlen(scalar(val)) >= sizeof text)
            return hax_errf(y->err, y->errlen, "%s:%d: %s.%s: expected a value of at most %zu characters, found %zu", y->name,
                       line_of(val), section, name, sizeof text - 1, strlen(scalar(val)));
        strcpy(text, scalar(val));
    }
    if (set_value(c, f, text, why, sizeof why) != 0)
        return hax_errf(y->err, y->errlen, "%s:%d: %s.%s: %s", y->name, line_of(val), section, name, why);
    return 0;
}

// The pair before p in root whose key is the same scalar as p's, or NULL.
static yaml_node_t *earlier_key(ydoc *y, yaml_node_t *root, yaml_node_pair_t *p) {
    const char *key = scalar(yaml_document_get_node(y->doc, p->key));
    for (yaml_node_pair_t *q = root->data.mapping.pairs.start; q < p; q++) {
        yaml_node_t *k = yaml_document_get_node(y->doc, q->key);
        if (k->type == YAML_SCALAR_NODE && strcmp(scalar(k), key) == 0) return k;
    }
    return NULL;
}

// "base: FILE": a non-empty scalar, given once.
static int check_base(ydoc *y, yaml_node_t *root, yaml_node_pair_t *p) {
    yaml_node_t *k = yaml_document_get_node(y->doc, p->key), *v = yaml_document_get_node(y->doc, p->value);
    yaml_node_t *first = earlier_key(y, root, p);
    if (first)
        return hax_errf(y->err, y->errlen, "%s:%d: base: expected once, found it again (first at line %d)", y->name,
                        line_of(k), line_of(first));
    if (v->type != YAML_SCALAR_NODE || !*scalar(v))
        return hax_errf(y->err, y->errlen, "%s:%d: base: expected a file name, found %s", y->name, line_of(v),
                        v->type == YAML_SCALAR_NODE ? "nothing" : node_kind(v));
    return 0;
}

// Checks one section's fields (scalar keys, each once) and, with c != NULL, applies them.
static int walk_section(ydoc *y, hax_config *c, const char *section, yaml_node_t *v) {
    for (yaml_node_pair_t *q = v->data.mapping.pairs.start; q < v->data.mapping.pairs.top; q++) {
        yaml_node_t *fk = yaml_document_get_node(y->doc, q->key), *fv = yaml_document_get_node(y->doc, q->value);
        if (fk->type != YAML_SCALAR_NODE)
            return hax_errf(y->err, y->errlen, "%s:%d: %s: expected a field name, found %s", y->name, line_of(fk), section,
                            node_kind(fk));
        yaml_node_t *first = earlier_key(y, v, q);
        if (first)
            return hax_errf(y->err, y->errlen, "%s:%d: %s.%s: expected each field once, found it again (first at line %d)",
                            y->name, line_of(fk), section, scalar(fk), line_of(first));
        if (c && apply_node(y, c, section, fk, fv) != 0) return -1;
    }
    return 0;
}

// Checks the document's shape (a mapping of known sections and base, each
// section a mapping with scalar keys, no key twice) and, with c != NULL,
// applies its fields (base is the caller's).
static int walk(ydoc *y, hax_config *c) {
    yaml_node_t *root = yaml_document_get_root_node(y->doc);
    if (!root || root->type != YAML_MAPPING_NODE)
        return hax_errf(y->err, y->errlen, "%s:%d: expected a mapping of the sections model, sparse, data, train, output; found %s",
                   y->name, line_of(root) ? line_of(root) : 1, node_kind(root));
    for (yaml_node_pair_t *p = root->data.mapping.pairs.start; p < root->data.mapping.pairs.top; p++) {
        yaml_node_t *k = yaml_document_get_node(y->doc, p->key), *v = yaml_document_get_node(y->doc, p->value);
        if (k->type == YAML_SCALAR_NODE && strcmp(scalar(k), "base") == 0) {
            if (check_base(y, root, p) != 0) return -1;
            continue;
        }
        if (k->type != YAML_SCALAR_NODE || !known_section(scalar(k)))
            return hax_errf(y->err, y->errlen,
                            "%s:%d: expected a section among model, sparse, data, train, output or the key base; found %s%s%s",
                            y->name, line_of(k), k->type == YAML_SCALAR_NODE ? "unknown key '" : node_kind(k),
                            k->type == YAML_SCALAR_NODE ? scalar(k) : "", k->type == YAML_SCALAR_NODE ? "'" : "");
        if (earlier_key(y, root, p))
            return hax_errf(y->err, y->errlen, "%s:%d: %s: expected each section once, found it again", y->name,
                       line_of(k), scalar(k));
        if (v->type != YAML_MAPPING_NODE) {
            if (v->type == YAML_SCALAR_NODE && !*scalar(v)) continue;  // "section:" with nothing under it
            return hax_errf(y->err, y->errlen, "%s:%d: %s: expected a mapping of fields, found %s", y->name, line_of(v),
                       scalar(k), node_kind(v));
        }
        if (walk_section(y, c, scalar(k), v) != 0) return -1;
    }
    return 0;
}

// The value node of the document's base key (checked by walk), or NULL.
static yaml_node_t *doc_base(ydoc *y) {
    yaml_node_t *root = yaml_document_get_root_node(y->doc);
    for (yaml_node_pair_t *p = root->data.mapping.pairs.start; p < root->data.mapping.pairs.top; p++)
        if (strcmp(scalar(yaml_document_get_node(y->doc, p->key)), "base") == 0)
            return yaml_document_get_node(y->doc, p->value);
    return NULL;
}

// model.arch as the document gives it (-1 when absent or not a known name).
static int doc_arch(ydoc *y) {
    yaml_node_t *root = yaml_document_get_root_node(y->doc);
    for (yaml_node_pair_t *p = root->data.mapping.pairs.start; p < root->data.mapping.pairs.top; p++) {
        yaml_node_t *k = yaml_document_get_node(y->doc, p->key), *v = yaml_document_get_node(y->doc, p->value);
        if (strcmp(scalar(k), "model") != 0 || v->type != YAML_MAPPING_NODE) continue;
        for (yaml_node_pair_t *q = v->data.mapping.pairs.start; q < v->data.mapping.pairs.top; q++) {
            yaml_node_t *fk = yaml_document_get_node(y->doc, q->key), *fv = yaml_document_get_node(y->doc, q->value);
            if (strcmp(scalar(fk), "arch") == 0 && fv->type == YAML_SCALAR_NODE)
                for (int i = 0; arch_names[i]; i++)
                    if (strcmp(scalar(fv), arch_names[i]) == 0) return i;
        }
    }
    return -1;
}

// ---------------------------------------------------------------- base files

// A config and its bases: f[0] the file loaded, f[1] its base, f[2] the
// base's base, ... (CONFIG_MAX_BASES at most).
#define CONFIG_MAX_BASES 8

typedef struct {
    char *name;            // its path, for messages and as the folder of its own base
    char *real;            // realpath (NULL for text with no file behind it), to find cycles
    yaml_document_t doc;
} chain_file;

typedef struct {
    chain_file f[CONFIG_MAX_BASES + 1];
    int n;
} config_chain;

static void chain_free(config_chain *ch) {
    for (int i = 0; i < ch->n; i++) {
        yaml_document_delete(&ch->f[i].doc);
        free(ch->f[i].name);
        free(ch->f[i].real);
    }
    ch->n = 0;
}

static ydoc chain_ydoc(config_chain *ch, int i, char *err, int errlen) {
    return (ydoc){&ch->f[i].doc, ch->f[i].name, err, errlen};
}

// Parses text as the chain's next file and checks its shape. 0 or -1.
static int chain_push(config_chain *ch, const char *name, const char *text, size_t len, char *err, int errlen) {
    chain_file *f = &ch->f[ch->n];
    char e[512];
    // bounded: nesting deeper than HAX_MAX_DEPTH is refused while parsing (linear time)
    int rc = hax_yaml_load(&f->doc, text, len, HAX_MAX_DEPTH, e, sizeof e);
    if (rc != 0) {
        int line = 1;
        const char *why = e;
        if (sscanf(e, "line %d: ", &line) == 1) why = strchr(e, ':') + 2;
        if (rc == -1) return hax_errf(err, errlen, "%s:%d: expected valid YAML, found a syntax error: %s", name, line, why);
        return hax_errf(err, errlen, "%s:%d: %s", name, line, why);
    }
    f->name = xstrdup(name);
    f->real = realpath(name, NULL);
    ch->n++;
    ydoc y = chain_ydoc(ch, ch->n - 1, err, errlen);
    return walk(&y, NULL);
}

// 1 when the file at path is already in the chain.
static int chain_has(const config_chain *ch, const char *path) {
    char *real = realpath(path, NULL);
    int found = 0;
    for (int i = 0; real && i < ch->n; i++) found |= ch->f[i].real && strcmp(ch->f[i].real, real) == 0;
    free(real);
    return found;
}

// The reason part of hax_read_file_max's "PATH: reason" message.
static const char *base_why(const char *msg, const char *path) {
    size_t n = strlen(path);
    const char *why = strncmp(msg, path, n) == 0 && msg[n] == ':' ? msg + n + 2 : msg;
    return strncmp(why, "cannot read: ", 13) == 0 ? why + 13 : why;
}

// Loads the base that v (the base key's value in the chain's last file) names. 0 or -1.
static int chain_load_base(config_chain *ch, yaml_node_t *v, char *err, int errlen) {
    const char *including = ch->f[ch->n - 1].name, *base = scalar(v);
    char *path = hax_path_beside(including, base);
    size_t len;
    char why[600];
    char *text = hax_read_file_max(path, HAX_MAX_TEXT_BYTES, &len, why, sizeof why);
    int rc = 0;
    if (!text)
        rc = hax_errf(err, errlen, "%s:%d: base: cannot read '%s': %s", including, line_of(v), base, base_why(why, path));
    else if (chain_has(ch, path))
        rc = hax_errf(err, errlen, "%s:%d: base: include cycle through '%s'", including, line_of(v), base);
    else if (ch->n > CONFIG_MAX_BASES)
        rc = hax_errf(err, errlen, "%s:%d: base: expected at most %d nested base files, found more at '%s'", including,
                      line_of(v), CONFIG_MAX_BASES, base);
    else
        rc = chain_push(ch, path, text, len, err, errlen);
    free(text);
    free(path);
    return rc;
}

// Loads the base of the chain's last file, then that one's base, and so on. 0 or -1.
static int chain_load_bases(config_chain *ch, char *err, int errlen) {
    for (;;) {
        ydoc y = chain_ydoc(ch, ch->n - 1, err, errlen);
        yaml_node_t *v = doc_base(&y);
        if (!v) return 0;
        if (chain_load_base(ch, v, err, errlen) != 0) return -1;
    }
}

// The architecture whose reference config gives the model defaults: the
// last model.arch override, else the nearest file of the chain that names one.
static int chain_arch(config_chain *ch, const char *const *overrides, int n_over) {
    int arch = -1;
    for (int i = 0; i < ch->n && arch < 0; i++) {
        ydoc y = chain_ydoc(ch, i, NULL, 0);
        arch = doc_arch(&y);
    }
    for (int i = 0; i < n_over; i++)
        for (int a = 0; arch_names[a]; a++) {
            char want[32];
            snprintf(want, sizeof want, "model.arch=%s", arch_names[a]);
            if (strcmp(overrides[i], want) == 0) arch = a;
        }
    return arch;
}

// Defaults, then the files from the deepest base to the one loaded.
static int chain_apply(config_chain *ch, hax_config *c, const char *const *overrides, int n_over, char *err, int errlen) {
    int arch = chain_arch(ch, overrides, n_over);
    config_defaults(c);
    if (arch > 0) model_config_reference(&c->model, (hax_arch)arch, 0, NULL);
    for (int i = ch->n - 1; i >= 0; i--) {
        ydoc y = chain_ydoc(ch, i, err, errlen);
        if (walk(&y, c) != 0) return -1;
    }
    return 0;
}

int config_load_text(hax_config *c, const char *name, const char *text, size_t len, const char *const *overrides,
                     int n_over, char *err, int errlen) {
    config_chain ch = {.n = 0};
    int rc = chain_push(&ch, name, text, len, err, errlen);
    if (rc == 0) rc = chain_load_bases(&ch, err, errlen);
    if (rc == 0) rc = chain_apply(&ch, c, overrides, n_over, err, errlen);
    chain_free(&ch);
    for (int i = 0; rc == 0 && i < n_over; i++) rc = config_override(c, overrides[i], err, errlen);
    if (rc == 0) {
        char why[400];
        if (config_finalize(c, why, sizeof why) != 0) rc = hax_errf(err, errlen, "%s: %s", name, why);
    }
    return rc;
}

int config_load(hax_config *c, const char *path, const char *const *overrides, int n_over, char *err, int errlen) {
    size_t len;
    // bounded: a regular file of at most HAX_MAX_TEXT_BYTES (no FIFO, no /dev/zero)
    char *text = hax_read_file_max(path, HAX_MAX_TEXT_BYTES, &len, err, errlen);
    if (!text) return -1;
    int rc = config_load_text(c, path, text, len, overrides, n_over, err, errlen);
    free(text);
    return rc;
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
    if (data_params_check(g, why, sizeof why) != 0) return hax_errf(err, errlen, "data: %s", why);
    if (c->model.vocab_size <= data_max_token(g))
        return hax_errf(err, errlen, "model.vocab_size: expected more than the dataset's largest token id %d, found %d",
                   data_max_token(g), c->model.vocab_size);
    if (c->train.warmup > c->train.steps)
        return hax_errf(err, errlen, "train.warmup: expected at most train.steps (%lld), found %lld", (long long)c->train.steps,
                   (long long)c->train.warmup);
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

void config_run_dir(const hax_config *c, char *buf, size_t n) {
    snprintf(buf, n, "%s/%s/lr_%g/seed_%llu", c->output.root, c->output.arch, c->train.lr,
             (unsigned long long)c->train.seed);
}
