// src/train/ckpt.c: the resume checkpoint and best.safetensors of a run.
//
// checkpoint.safetensors holds, besides the __metadata__ (format, config,
// step, seconds spent):
//   <name>            the current weights, under the reference's state_dict names
//   adamw.m.<name>, adamw.v.<name>   the AdamW moments
//   best.<name>       the best model's weights (when there is one)
//   best_valid.sum / best_valid.cnt  its per-cell validation sums [nc, nk] (F64)
//   metrics           the metrics rows so far [n_rows, 6] (F64)
//   state             the loop's counters (F64, see enum below)
// Random draws are keyed by (seed, step, layer, sample), so no generator
// state is needed; the data position is the step.
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "src/core/common.h"
#include "src/io/safetensors.h"
#include "src/train/internal.h"

#define CKPT_FORMAT "hax-checkpoint-1"

enum {
    S_STEP, S_EVAL_DRAWS, S_HAVE_BEST, S_BEST_ACC, S_BEST_STEP, S_LAST_VALID,
    S_RUN0, S_RUN1, S_RUN2, S_RUN3, S_TOKENS, S_OPT_STEP, S_BEST_N, S_BEST_MEAN,
    S_COUNT
};

static void path_of(const train_ctx *t, const char *file, char *buf, size_t n) {
    snprintf(buf, n, "%s/%s", t->o->run_dir, file);
}

static void shape_of(const hax_param *p, int64_t *shape) {
    for (int i = 0; i < p->ndim; i++) shape[i] = p->shape[i];
}

int train_add_params(st_writer *w, const hax_model *m, const char *prefix, const float *buf, char *err,
                      int errlen) {
    for (int i = 0; i < m->n_params; i++) {
        const hax_param *p = &m->params[i];
        int64_t shape[3];
        shape_of(p, shape);
        char name[160];
        snprintf(name, sizeof name, "%s%s", prefix, p->name);
        if (st_writer_add(w, name, ST_F32, p->ndim, shape, buf + p->offset, err, errlen)) return -1;
    }
    return 0;
}

int train_ckpt_write(train_ctx *t, char *err, int errlen) {
    const hax_model *m = &t->model;
    double state[S_COUNT] = {0};
    state[S_STEP] = (double)t->step;
    state[S_EVAL_DRAWS] = (double)t->eval_draws;
    state[S_HAVE_BEST] = t->have_best;
    state[S_BEST_ACC] = t->best_acc;
    state[S_BEST_STEP] = (double)t->best_step;
    state[S_LAST_VALID] = t->last_valid;
    for (int i = 0; i < 4; i++) state[S_RUN0 + i] = t->run_sum[i];
    state[S_TOKENS] = t->tokens;
    state[S_OPT_STEP] = (double)t->opt.step;
    state[S_BEST_N] = t->best_valid.n;
    state[S_BEST_MEAN] = t->best_valid.acc;

    st_writer *w = st_writer_new();
    int rc = train_add_params(w, m, "", m->data, err, errlen);
    if (!rc) rc = train_add_params(w, m, "adamw.m.", t->opt.m, err, errlen);
    if (!rc) rc = train_add_params(w, m, "adamw.v.", t->opt.v, err, errlen);
    if (!rc && t->have_best) rc = train_add_params(w, m, "best.", t->best, err, errlen);
    int64_t cells[2] = {t->nc, t->nk}, st_shape[1] = {S_COUNT}, rows[2] = {t->n_rows, M_COLS};
    if (!rc) rc = st_writer_add(w, "best_valid.sum", ST_F64, 2, cells, t->best_valid.sum, err, errlen);
    if (!rc) rc = st_writer_add(w, "best_valid.cnt", ST_F64, 2, cells, t->best_valid.cnt, err, errlen);
    if (!rc && t->n_rows > 0) rc = st_writer_add(w, "metrics", ST_F64, 2, rows, t->rows, err, errlen);
    if (!rc) rc = st_writer_add(w, "state", ST_F64, 1, st_shape, state, err, errlen);
    char buf[64];
    st_writer_meta(w, "format", CKPT_FORMAT);
    st_writer_meta(w, "config", t->o->config_text);
    st_writer_meta(w, "precision", config_precision_name(t->cfg->train.precision));
    snprintf(buf, sizeof buf, "%lld", (long long)t->step);
    st_writer_meta(w, "step", buf);
    // Timing lives in the metadata, not in tensors: the tensors of a stopped
    // and resumed run equal those of an uninterrupted one bit for bit.
    snprintf(buf, sizeof buf, "%.17g", train_wall(t));
    st_writer_meta(w, "wall_s", buf);
    snprintf(buf, sizeof buf, "%.17g", t->train_before + t->train_s);
    st_writer_meta(w, "train_s", buf);
    char path[HAX_PATH_MAX + 320];
    path_of(t, "checkpoint.safetensors", path, sizeof path);
    if (!rc) rc = st_writer_write(w, path, err, errlen);
    st_writer_free(w);
    return rc;
}

// ---------------------------------------------------------------- loading

// The checkpoint's config must equal this run's, apart from fields that may
// change between sessions (length of the run, logging, where files live).
static int check_config(const train_ctx *t, const st_file *f, const char *path, char *err, int errlen) {
    const char *text = st_meta(f, "config");
    const char *fmt = st_meta(f, "format");
    if (!fmt || strcmp(fmt, CKPT_FORMAT) != 0) {
        snprintf(err, errlen, "%s: __metadata__.format: expected '%s', found '%s'", path, CKPT_FORMAT,
                 fmt ? fmt : "(none)");
        return -1;
    }
    if (!text) {
        snprintf(err, errlen, "%s: __metadata__.config: expected the run's config, found none", path);
        return -1;
    }
    hax_config old;
    char e2[1024];
    if (config_load_text(&old, path, text, strlen(text), NULL, 0, e2, sizeof e2)) {
        snprintf(err, errlen, "%s: __metadata__.config: expected a valid config, found: %s", path, e2);
        return -1;
    }
    const hax_config *c = t->cfg;
    old.train.steps = c->train.steps;
    old.train.log_every = c->train.log_every;
    old.train.checkpoint_every = c->train.checkpoint_every;
    old.train.device = c->train.device;
    old.train.eval_batch = c->train.eval_batch;  // how evaluation is batched, like the device: not the run
    snprintf(old.output.root, sizeof old.output.root, "%s", c->output.root);
    snprintf(old.data.path, sizeof old.data.path, "%s", c->data.path);
    old.data.generate = c->data.generate;
    if (config_equal(&old, c)) return 0;
    char diff[1200];
    config_first_difference(&old, c, "checkpoint", "config", diff, sizeof diff);
    snprintf(err, errlen, "%s: expected a checkpoint of this config, found one of another config (%s); use --force "
             "to start over", path, diff);
    return -1;
}

static int read_params(const st_file *f, const hax_model *m, const char *prefix, float *buf, char *err, int errlen) {
    for (int i = 0; i < m->n_params; i++) {
        const hax_param *p = &m->params[i];
        int64_t shape[3];
        shape_of(p, shape);
        char name[160];
        snprintf(name, sizeof name, "%s%s", prefix, p->name);
        // what train_ckpt_write wrote: F32, never another dtype's bits read as floats
        const st_tensor *x = st_find(f, name);
        if (x && x->dtype != ST_F32) {
            snprintf(err, errlen, "%s: tensor %s: expected dtype F32, found %s", f->path, name, st_dtype_name(x->dtype));
            return -1;
        }
        if (st_read_f32(f, name, buf + p->offset, p->ndim, shape, err, errlen)) return -1;
    }
    return 0;
}

// Reads an F64 tensor of exactly numel elements.
static int read_f64(const st_file *f, const char *path, const char *name, double *out, size_t numel, char *err,
                    int errlen) {
    const st_tensor *x = st_find(f, name);
    if (!x) {
        snprintf(err, errlen, "%s: tensor %s: expected it, found none", path, name);
        return -1;
    }
    if (x->dtype != ST_F64 || st_numel(x) != numel) {
        snprintf(err, errlen, "%s: tensor %s: expected F64 with %zu elements, found %s with %zu", path, name, numel,
                 st_dtype_name(x->dtype), st_numel(x));
        return -1;
    }
    st_tensor_to_f64(x, out);
    return 0;
}

int train_ckpt_load(train_ctx *t, char *err, int errlen) {
    char path[HAX_PATH_MAX + 320];
    path_of(t, "checkpoint.safetensors", path, sizeof path);
    if (access(path, F_OK) != 0) {
        if (errno == ENOENT || errno == ENOTDIR) return 0;  // no checkpoint (yet)
        snprintf(err, errlen, "%s: cannot read the checkpoint: %s", path, strerror(errno));
        return -1;
    }
    st_file *f = st_load(path, err, errlen);
    if (!f) return -1;
    hax_model *m = &t->model;
    double state[S_COUNT];
    int rc = check_config(t, f, path, err, errlen);
    if (!rc) rc = read_f64(f, path, "state", state, S_COUNT, err, errlen);
    if (!rc && !(state[S_STEP] >= 0 && state[S_STEP] <= (double)t->cfg->train.steps && state[S_STEP] == floor(state[S_STEP]))) {
        snprintf(err, errlen, "%s: state.step: expected a step in [0, train.steps = %lld], found %g", path,
                 (long long)t->cfg->train.steps, state[S_STEP]);
        rc = -1;
    }
    if (!rc) rc = read_params(f, m, "", m->data, err, errlen);
    if (!rc) rc = read_params(f, m, "adamw.m.", t->opt.m, err, errlen);
    if (!rc) rc = read_params(f, m, "adamw.v.", t->opt.v, err, errlen);
    if (!rc && state[S_HAVE_BEST] != 0) rc = read_params(f, m, "best.", t->best, err, errlen);
    size_t cells = (size_t)t->nc * t->nk;
    if (!rc) rc = read_f64(f, path, "best_valid.sum", t->best_valid.sum, cells, err, errlen);
    if (!rc) rc = read_f64(f, path, "best_valid.cnt", t->best_valid.cnt, cells, err, errlen);
    if (!rc) {
        const st_tensor *x = st_find(f, "metrics");
        int64_t n = x && x->ndim == 2 && x->shape[1] == M_COLS ? x->shape[0] : 0;
        if (x && n == 0) {
            snprintf(err, errlen, "%s: tensor metrics: expected shape [n,%d], found another", path, M_COLS);
            rc = -1;
        }
        if (!rc && n > 0) {
            t->rows = xrealloc(t->rows, (size_t)n * M_COLS * sizeof(double));
            t->cap_rows = t->n_rows = n;
            rc = read_f64(f, path, "metrics", t->rows, (size_t)n * M_COLS, err, errlen);
        }
    }
    if (!rc) {
        t->step = (int64_t)state[S_STEP];
        t->eval_draws = (int64_t)state[S_EVAL_DRAWS];
        t->have_best = state[S_HAVE_BEST] != 0;
        t->best_acc = state[S_BEST_ACC];
        t->best_step = (int64_t)state[S_BEST_STEP];
        t->last_valid = state[S_LAST_VALID];
        for (int i = 0; i < 4; i++) t->run_sum[i] = state[S_RUN0 + i];
        t->tokens = state[S_TOKENS];
        t->opt.step = (int64_t)state[S_OPT_STEP];
        t->best_valid.n = state[S_BEST_N];
        t->best_valid.acc = state[S_BEST_MEAN];
        const char *w = st_meta(f, "wall_s"), *tr = st_meta(f, "train_s");
        t->wall_before = w ? strtod(w, NULL) : 0;
        t->train_before = tr ? strtod(tr, NULL) : 0;
        t->last_ckpt = t->step;
    }
    st_close(f);
    return rc ? -1 : 1;
}

// ---------------------------------------------------------------- best.safetensors

int train_best_write(train_ctx *t, char *err, int errlen) {
    const hax_model *m = &t->model;
    const hax_model_config *mc = &m->cfg;
    st_writer *w = st_writer_new();
    int rc = train_add_params(w, m, "", t->best, err, errlen);
    // The fixed evaluation hash matrices (the last forward was an evaluation
    // with draw 0), so anyone can recompute the validation and test figures.
    int lsh = (mc->sparse_mask & (SPARSE_SIGN_BIN_LSH | SPARSE_ARGMAX_LSH)) != 0;
    if (lsh && t->cfg->train.eval_fixed_hash) {
        for (int l = 0; !rc && l < mc->n_layers; l++) {
            const float *h = engine_hash(t->eng, l);
            if (!h) continue;
            char name[96];
            snprintf(name, sizeof name, "eval.rand.layers.%d.hash_matrix", l);
            int64_t shape[2] = {mc->state_size, mc->num_hash};
            rc = st_writer_add(w, name, ST_F32, 2, shape, h, err, errlen);
        }
    }
    char buf[64];
    st_writer_meta(w, "format", "pt");
    snprintf(buf, sizeof buf, "%lld", (long long)t->best_step);
    st_writer_meta(w, "step", buf);
    snprintf(buf, sizeof buf, "%.17g", t->best_acc);
    st_writer_meta(w, "valid_acc", buf);
    st_writer_meta(w, "config", t->o->config_text);
    // the regime (also in the config); bf16 values are exact in the F32 tensors
    st_writer_meta(w, "precision", config_precision_name(t->cfg->train.precision));
    char path[HAX_PATH_MAX + 320];
    path_of(t, "best.safetensors", path, sizeof path);
    if (!rc) rc = st_writer_write(w, path, err, errlen);
    st_writer_free(w);
    return rc;
}
