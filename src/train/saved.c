// src/train/saved.c: reading best.safetensors / checkpoint.safetensors back
// into a model (saved.h).
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "src/core/common.h"
#include "src/io/safetensors.h"
#include "src/train/saved.h"

// Indices into the checkpoint's "state" tensor (ckpt.c's enum).
enum { ST_STEP = 0, ST_HAVE_BEST = 2, ST_BEST_STEP = 4, ST_MIN = 5 };

// Reads every parameter of m under prefix + name into buf.
static int read_params(const st_file *f, const hax_model *m, const char *prefix, float *buf, char *err, int errlen) {
    for (int i = 0; i < m->n_params; i++) {
        const hax_param *p = &m->params[i];
        int64_t shape[3];
        for (int k = 0; k < p->ndim; k++) shape[k] = p->shape[k];
        char name[160];
        snprintf(name, sizeof name, "%s%s", prefix, p->name);
        if (st_read_f32(f, name, buf + p->offset, p->ndim, shape, err, errlen)) return -1;
    }
    return 0;
}

// The file's kind from __metadata__.format and its config.
static int read_config(saved_model *s, const st_file *f, const char *path, char *err, int errlen) {
    const char *fmt = st_meta(f, "format"), *text = st_meta(f, "config");
    if (fmt && !strcmp(fmt, SAVED_CKPT_FORMAT)) s->is_checkpoint = 1;
    else if (!fmt || strcmp(fmt, "pt") != 0)
        return hax_errf(err, errlen, "%s: __metadata__.format: expected 'pt' (best.safetensors) or '%s' "
                        "(checkpoint.safetensors), found '%s'", path, SAVED_CKPT_FORMAT, fmt ? fmt : "(none)");
    if (!text)
        return hax_errf(err, errlen, "%s: __metadata__.config: expected the config of the hax-train run that wrote "
                        "it, found none (not a best.safetensors or checkpoint.safetensors of hax-train)", path);
    char e2[1024];
    if (config_load_text(&s->cfg, path, text, strlen(text), NULL, 0, e2, sizeof e2))
        return hax_errf(err, errlen, "%s: __metadata__.config: expected a valid config, found: %s", path, e2);
    const char *st = st_meta(f, "step");
    char *end = NULL;
    s->step = st ? strtoll(st, &end, 10) : -1;
    if (!st || *end || s->step < 0)
        return hax_errf(err, errlen, "%s: __metadata__.step: expected a step count, found '%s'", path,
                        st ? st : "(none)");
    return 0;
}

// best.safetensors: the weights and the stored evaluation hash matrices.
static int load_best(saved_model *s, const st_file *f, const char *path, char *err, int errlen) {
    hax_model *m = &s->model;
    if (read_params(f, m, "", m->data, err, errlen)) return -1;
    s->best_step = s->step;
    s->weights_are_best = 1;
    const hax_model_config *mc = &s->cfg.model;
    for (int l = 0; l < mc->n_layers && l < HAX_MAX_LAYERS; l++) {
        char name[96];
        snprintf(name, sizeof name, "eval.rand.layers.%d.hash_matrix", l);
        if (!st_find(f, name)) continue;
        s->hash[l] = xmalloc((size_t)mc->state_size * mc->num_hash * sizeof(float));
        if (st_read_f32(f, name, s->hash[l], ST_SHAPE(mc->state_size, mc->num_hash), err, errlen)) return -1;
    }
    (void)path;
    return 0;
}

// checkpoint.safetensors: best.<name> (else the current weights) and the
// current embedding.
static int load_checkpoint(saved_model *s, const st_file *f, const char *path, char *err, int errlen) {
    hax_model *m = &s->model;
    const st_tensor *t = st_find(f, "state");
    if (!t || t->dtype != ST_F64 || st_numel(t) < ST_MIN)
        return hax_errf(err, errlen, "%s: tensor state: expected F64 with at least %d elements, found %s", path,
                        ST_MIN, t ? "another" : "none");
    double *state = xmalloc(st_numel(t) * sizeof(double));
    st_tensor_to_f64(t, state);
    int have_best = state[ST_HAVE_BEST] != 0;
    s->best_step = have_best ? (int64_t)state[ST_BEST_STEP] : (int64_t)state[ST_STEP];
    free(state);
    if (read_params(f, m, "", m->data, err, errlen)) return -1;
    const hax_param *e = &m->params[m->embeddings];
    s->final_emb = xmalloc(e->numel * sizeof(float));
    memcpy(s->final_emb, m->data + e->offset, e->numel * sizeof(float));
    s->weights_are_best = have_best;
    if (have_best && read_params(f, m, "best.", m->data, err, errlen)) return -1;
    const hax_train_config *tc = &s->cfg.train;
    int64_t steps = s->step;
    s->ref_best_replaced = have_best && tc->validate_final && steps == tc->steps && s->best_step == steps &&
                           (steps + 1) % tc->valid_every != 0;
    return 0;
}

int saved_model_load(saved_model *s, const char *path, char *err, int errlen) {
    memset(s, 0, sizeof *s);
    st_file *f = st_load(path, err, errlen);
    if (!f) return -1;
    int rc = read_config(s, f, path, err, errlen);
    if (!rc) {
        model_build(&s->model, &s->cfg.model);
        rc = s->is_checkpoint ? load_checkpoint(s, f, path, err, errlen) : load_best(s, f, path, err, errlen);
    }
    st_close(f);
    return rc;
}

void saved_model_free(saved_model *s) {
    if (s->model.data) model_free(&s->model);
    free(s->final_emb);
    for (int l = 0; l < HAX_MAX_LAYERS; l++) free(s->hash[l]);
    memset(s, 0, sizeof *s);
}

// ---------------------------------------------------------------- token ids

static const char *level_name(const hax_data_params *p, int l) {
    return l == p->levels - 1 ? "keys" : (l == p->levels - 2 ? "contexts" : "outer contexts");
}

int saved_id_map(const hax_data_params *trained, const hax_data_params *data, int vocab, const char *name,
                 int32_t **map, int *n_ids, char *err, int errlen) {
    *map = NULL;
    *n_ids = 0;
    if (data->levels != trained->levels)
        return hax_errf(err, errlen, "%s: levels: expected %d, the levels the model was trained with, found %d",
                        name, trained->levels, data->levels);
    if (data->n_value > trained->n_value)
        return hax_errf(err, errlen, "%s: n_value: expected at most %d, the values the model was trained to "
                        "answer, found %d", name, trained->n_value, data->n_value);
    for (int l = 0; l < data->levels; l++) {
        int have = data_layout_max(trained, l), want = data_layout_max(data, l);
        if (want <= have) continue;
        int base = data_level_base(trained, l);
        const char *lv = level_name(data, l);
        return hax_errf(err, errlen, "%s: %s[%d] (%s): expected at most %d, the %s the model has token ids for "
                        "(%d..%d, its training data's layout), found %d: %s %d..%d have no token ids in the model "
                        "(train with hax-datagen --id-layout covering these sizes to score them)", name,
                        data_has_id_layout(data) ? "id_layout" : "max_sizes", l, lv, have, lv, base,
                        base + have - 1, want, lv, have + 1, want);
    }
    int n = data_max_token(data) + 1, same = 1;
    int32_t *m = xmalloc((size_t)n * sizeof(int32_t));
    for (int i = 0; i < n; i++) m[i] = i;  // specials and values keep their ids
    for (int l = 0; l < data->levels; l++) {
        int from = data_level_base(data, l), to = data_level_base(trained, l);
        for (int i = 0; i < data_layout_max(data, l); i++) m[from + i] = to + i;
        same = same && from == to;
    }
    int top = 0;
    for (int i = 0; i < n; i++) top = m[i] > top ? m[i] : top;
    if (top >= vocab) {
        free(m);
        return hax_errf(err, errlen, "%s: token ids: expected below the model's vocab_size %d, found ids up to %d",
                        name, vocab, top);
    }
    if (same) {
        free(m);
        return 0;
    }
    *map = m;
    *n_ids = n;
    return 0;
}
