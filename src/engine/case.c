// src/engine/case.c: see src/engine/case.h.
#include "src/engine/case.h"
#include "src/core/yaml_util.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#include "src/core/common.h"

// ---------------------------------------------------------------- JSON via libyaml
// JSON is a subset of YAML's flow style, so libyaml's document loader reads
// the metadata string; these helpers walk its node tree.

typedef struct {
    const char *path;
    yaml_document_t doc;
} json_doc;

static yaml_node_t *jget(json_doc *j, yaml_node_t *map, const char *key) { return hax_yaml_get(&j->doc, map, key); }

static const char *jscalar(yaml_node_t *n) {
    return n && n->type == YAML_SCALAR_NODE ? (const char *)n->data.scalar.value : NULL;
}

static int jis_null(yaml_node_t *n) {
    const char *s = jscalar(n);
    return !n || (s && (strcmp(s, "null") == 0 || strcmp(s, "~") == 0));
}

// What a node is, for messages ("an object", "a list", "nothing", "'abc'").
static const char *jdesc(yaml_node_t *n, char *buf, size_t len) {
    if (!n) return "nothing";
    if (n->type == YAML_MAPPING_NODE) return "an object";
    if (n->type == YAML_SEQUENCE_NODE) return "a list";
    snprintf(buf, len, "'%.60s'", (const char *)n->data.scalar.value);
    return buf;
}

// A number node (what names it in messages: "adamw.betas[1]").
static double jnum_node(json_doc *j, yaml_node_t *n, const char *what) {
    const char *s = jscalar(n);
    char *end = NULL, b[80];
    double v = s ? strtod(s, &end) : 0;
    if (!s || end == s || *end)
        hax_die("%s: metadata hax_case: %s: expected a number, found %s", j->path, what, jdesc(n, b, sizeof b));
    return v;
}

static double jnum(json_doc *j, yaml_node_t *map, const char *key, const char *where) {
    char what[160];
    snprintf(what, sizeof what, "%s%s", where, key);
    return jnum_node(j, jget(j, map, key), what);
}

static int jint(json_doc *j, yaml_node_t *map, const char *key, const char *where) {
    double v = jnum(j, map, key, where);
    if (v != floor(v) || fabs(v) > 1e9)
        hax_die("%s: metadata hax_case: %s%s: expected an integer, found %g", j->path, where, key, v);
    return (int)v;
}

static int jbool(json_doc *j, yaml_node_t *map, const char *key, const char *where) {
    const char *s = jscalar(jget(j, map, key));
    if (s && strcmp(s, "true") == 0) return 1;
    if (s && strcmp(s, "false") == 0) return 0;
    hax_die("%s: metadata hax_case: %s%s: expected true or false, found '%s'", j->path, where, key, s ? s : "nothing");
}

// fla GatedMLP width: int(d * ratio * 2/3) rounded up to a multiple of 256 (golden README Q18).
static int gated_mlp_width(int d, double ratio) {
    int w = (int)(d * ratio * 2.0 / 3.0);
    return 256 * ((w + 255) / 256);
}

static void config_from_json(hax_case *c, json_doc *j, yaml_node_t *root) {
    hax_model_config *m = &c->cfg;
    const char *base = jscalar(jget(j, root, "base_arch"));
    char names[128];
    arch_name_list(names, sizeof names);
    if (!base) hax_die("%s: metadata hax_case: base_arch: expected %s, found nothing", j->path, names);
    int found = arch_from_name(base);
    if (found < 0) hax_die("%s: metadata hax_case: base_arch: expected %s, found '%s'", j->path, names, base);
    hax_arch arch = (hax_arch)found;
    const hax_arch_info *a = arch_info(arch);
    model_config_reference(m, arch, 0, NULL);
    yaml_node_t *cf = jget(j, root, "config");
    if (!cf || cf->type != YAML_MAPPING_NODE) hax_die("%s: metadata hax_case: config: expected an object", j->path);
    const char *w = "config.";
    m->vocab_size = jint(j, cf, "vocab_size", w);
    m->hidden_size = jint(j, cf, "hidden_size", w);
    m->state_size = jint(j, cf, "state_size", w);
    m->n_layers = jint(j, cf, "num_hidden_layers", w);
    m->conv_kernel = jint(j, cf, "conv_kernel", w);
    m->initializer_range = (float)jnum(j, cf, "initializer_range", w);
    m->rescale_prenorm_residual = jbool(j, cf, "rescale_prenorm_residual", w);
    m->time_step_min = (float)jnum(j, cf, "time_step_min", w);
    m->time_step_max = (float)jnum(j, cf, "time_step_max", w);
    m->time_step_floor = (float)jnum(j, cf, "time_step_floor", w);
    m->norm_eps = (float)jnum(j, cf, a->golden_eps, w);
    double expand = jnum(j, cf, "expand", w);
    if (a->ssm == MIXER_MAMBA2) {
        m->intermediate_size = (int)(expand * m->hidden_size);
        m->n_heads = jint(j, cf, "num_heads", w);
        m->head_dim = jint(j, cf, "head_dim", w);
        if (jint(j, cf, "n_groups", w) != 1)
            hax_die("%s: metadata hax_case: config.n_groups: expected 1 (the only supported value)", j->path);
    } else {
        // PretrainedConfig sets a JSON intermediate_size after expand * hidden
        m->intermediate_size = jget(j, cf, "intermediate_size") ? jint(j, cf, "intermediate_size", w)
                                                                 : (int)(expand * m->hidden_size);
        m->time_step_rank = jint(j, cf, "time_step_rank", w);
    }
    if (a->attn_every) {
        yaml_node_t *at = jget(j, cf, "attn");
        if (!at || at->type != YAML_MAPPING_NODE) hax_die("%s: metadata hax_case: config.attn: expected an object", j->path);
        const char *wa = "config.attn.";
        m->attn_heads = jint(j, at, "num_heads", wa);
        m->attn_kv_heads = jint(j, at, "num_kv_heads", wa);
        m->window_size = jint(j, at, "window_size", wa);
        m->rope_theta = (float)jnum(j, at, "rope_theta", wa);
        yaml_node_t *ly = jget(j, at, "layers");
        if (!ly || ly->type != YAML_SEQUENCE_NODE) hax_die("%s: metadata hax_case: config.attn.layers: expected a list", j->path);
        // the suite's Samba puts attention at the odd layers, as samba.json does
        int k = 0, n_attn = 0;
        for (yaml_node_item_t *it = ly->data.sequence.items.start; it < ly->data.sequence.items.top; it++, k++) {
            char what[64];
            snprintf(what, sizeof what, "config.attn.layers[%d]", k);
            double v = jnum_node(j, yaml_document_get_node(&j->doc, *it), what);
            if (v != 2 * k + 1)
                hax_die("%s: metadata hax_case: config.attn.layers: expected the odd layers 1, 3, ..., found %g at item %d",
                        j->path, v, k);
            n_attn++;
        }
        if (n_attn != m->n_layers / 2)
            hax_die("%s: metadata hax_case: config.attn.layers: expected %d odd layers, found %d", j->path, m->n_layers / 2, n_attn);
    }
    if (a->has_mlp) m->mlp_hidden = gated_mlp_width(m->hidden_size, jnum(j, cf, "hidden_ratio", w));
    m->sparse_keys = jint(j, cf, "sparse_keys", w);
    m->num_hash = jint(j, cf, "num_hash", w);
    m->data_max_length = jint(j, cf, "data_max_length", w);
    m->gate_loss_weight = (float)jnum(j, root, "gate_loss_weight", "");
    yaml_node_t *sa = jget(j, root, "sparse_arch");
    char err[256];
    if (model_config_set_sparse(m, jis_null(sa) ? NULL : jscalar(sa), err, sizeof err) != 0)
        hax_die("%s: metadata hax_case: sparse_arch: %s", j->path, err);
    if (model_config_validate(m, err, sizeof err) != 0) hax_die("%s: metadata hax_case: %s", j->path, err);
}

void case_load(hax_case *c, const st_file *f) {
    memset(c, 0, sizeof *c);
    const char *meta = st_meta(f, "hax_case");
    if (!meta) hax_die("%s: __metadata__: expected a \"hax_case\" entry (golden format), found none", f->path);
    json_doc j;
    memset(&j, 0, sizeof j);
    j.path = f->path;
    char err[256];
    if (hax_yaml_load(&j.doc, meta, strlen(meta), HAX_MAX_DEPTH, err, sizeof err) != 0)
        hax_die("%s: metadata hax_case: %s", f->path, err);
    yaml_node_t *root = yaml_document_get_root_node(&j.doc);
    if (!root || root->type != YAML_MAPPING_NODE) hax_die("%s: metadata hax_case: expected a JSON object", f->path);
    const char *name = jscalar(jget(&j, root, "case"));
    if (name) snprintf(c->name, sizeof c->name, "%s", name);
    else snprintf(c->name, sizeof c->name, "%s", f->path);
    config_from_json(c, &j, root);
    yaml_node_t *ad = jget(&j, root, "adamw");
    c->lr = jnum(&j, ad, "lr", "adamw.");
    c->eps = jnum(&j, ad, "eps", "adamw.");
    c->weight_decay = jnum(&j, ad, "weight_decay", "adamw.");
    yaml_node_t *betas = jget(&j, ad, "betas");
    if (!betas || betas->type != YAML_SEQUENCE_NODE || betas->data.sequence.items.top - betas->data.sequence.items.start != 2)
        hax_die("%s: metadata hax_case: adamw.betas: expected a list of 2 numbers", f->path);
    c->beta1 = jnum_node(&j, yaml_document_get_node(&j.doc, betas->data.sequence.items.start[0]), "adamw.betas[0]");
    c->beta2 = jnum_node(&j, yaml_document_get_node(&j.doc, betas->data.sequence.items.start[1]), "adamw.betas[1]");
    int model_len = jint(&j, root, "model_seq_len", "");
    yaml_document_delete(&j.doc);

    const st_tensor *ids = st_find(f, "input_ids");
    if (!ids || ids->ndim != 2) hax_die("%s: tensor input_ids: expected shape [B, L+1], found %s", f->path, ids ? "another shape" : "none");
    c->B = (int)ids->shape[0];
    c->L = (int)ids->shape[1] - 1;
    if (c->L != model_len)
        hax_die("%s: tensor input_ids: expected %d + 1 columns (model_seq_len), found %d", f->path, model_len, c->L + 1);
    size_t n = (size_t)c->B * (c->L + 1);
    c->input_ids = xmalloc(sizeof(int64_t) * n);
    c->loss_mask = xmalloc(sizeof(int64_t) * n);
    st_get_i64(f, "input_ids", c->input_ids, ST_SHAPE(c->B, c->L + 1));
    st_get_i64(f, "loss_mask", c->loss_mask, ST_SHAPE(c->B, c->L + 1));
    c->len = xmalloc(sizeof(int) * c->B);
    for (int b = 0; b < c->B; b++) {
        const int64_t *row = c->input_ids + (size_t)b * (c->L + 1);
        int len = 0;
        while (len < c->L && row[len] != 3) len++;
        for (int t = len; t < c->L; t++)
            if (row[t] != 3)
                hax_die("%s: tensor input_ids: expected padding (3) only at the end of row %d, found %lld at %d", f->path,
                        b, (long long)row[t], t);
        if (len == 0) hax_die("%s: tensor input_ids: row %d has no token", f->path, b);
        c->len[b] = len;
    }
}

void case_free(hax_case *c) {
    free(c->input_ids);
    free(c->loss_mask);
    free(c->len);
    memset(c, 0, sizeof *c);
}

// The batch of sequences s0 .. s0+ns-1.
static void make_batch(const hax_case *c, int s0, int ns, hax_batch *b) {
    int n_tok = 0;
    for (int s = s0; s < s0 + ns; s++) n_tok += c->len[s];
    hax_batch_alloc(b, ns, (size_t)n_tok);
    b->n_seq = ns;
    b->n_tok = n_tok;
    b->model_len = c->L;
    b->global_n_seq = ns;
    b->first_seq = s0;
    int k = 0;
    for (int i = 0; i < ns; i++) {
        int s = s0 + i;
        const int64_t *ids = c->input_ids + (size_t)s * (c->L + 1);
        const int64_t *mask = c->loss_mask + (size_t)s * (c->L + 1);
        b->seq_off[i] = k;
        b->sample_idx[i] = s;
        for (int t = 0; t < c->len[s]; t++, k++) {
            b->inputs[k] = (int32_t)ids[t];
            b->labels[k] = (int32_t)ids[t + 1];
            b->loss_mask[k] = mask[t] != 0;
        }
    }
    b->seq_off[ns] = k;
}

void case_batch(const hax_case *c, hax_batch *b) { make_batch(c, 0, c->B, b); }
void case_batch_one(const hax_case *c, int s, hax_batch *b) { make_batch(c, s, 1, b); }

// Tensors of the golden format that are not parameters.
static int is_special(const char *name) {
    static const char *prefix[] = {"out.", "dbg.", "grad.", "adamw.", "eval.", "rand."};
    for (size_t i = 0; i < sizeof prefix / sizeof *prefix; i++)
        if (strncmp(name, prefix[i], strlen(prefix[i])) == 0) return 1;
    return strcmp(name, "input_ids") == 0 || strcmp(name, "loss_mask") == 0;
}

void case_load_params(hax_model *m, const st_file *f) {
    for (int i = 0; i < m->n_params; i++) {
        const hax_param *p = &m->params[i];
        int64_t shape[3] = {p->shape[0], p->shape[1], p->shape[2]};
        const st_tensor *t = st_find(f, p->name);
        if (t && t->dtype != ST_F32)
            hax_die("%s: tensor %s: expected dtype F32 (a parameter), found %s", f->path, p->name, st_dtype_name(t->dtype));
        st_get_f32(f, p->name, model_w(m, i), p->ndim, shape);
    }
    for (int i = 0; i < f->n_tensors; i++) {
        const char *name = f->tensors[i].name;
        if (!is_special(name) && model_find(m, name) < 0)
            hax_die("%s: tensor %s: expected only parameters of the %s model, found this extra one", f->path, name,
                    arch_name(m->cfg.arch));
    }
}

void case_pack_rows_f32(const hax_case *c, const float *golden, int C, float *out) {
    size_t k = 0;
    for (int b = 0; b < c->B; b++)
        for (int t = 0; t < c->len[b]; t++, k++)
            memcpy(out + k * C, golden + ((size_t)b * c->L + t) * C, sizeof(float) * C);
}
