// src/train/init.c: a fresh run's initial weights — hax's own, or a file's
// (train.init_from) — and hax-train --save-init (init.h).
#include "src/train/init.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "src/core/common.h"
#include "src/io/safetensors.h"
#include "src/ops/basic.h"
#include "src/train/internal.h"
#include "src/train/saved.h"

void train_init_weights(hax_model *m, const hax_config *cfg) {
    model_init(m, cfg->train.seed);
    // bf16-pure: the reference casts the fp32 init to bf16 (MODEL.md §1.7)
    if (cfg->train.precision == PREC_BF16_PURE) round_bf16(m->data, m->data, (long)m->n_floats);
}

// 1 for best.safetensors' fixed evaluation hash matrix of a layer
// ("eval.rand.layers.<i>.hash_matrix"): stored beside the weights, not a parameter.
static int is_eval_hash(const char *name) {
    int layer, end = -1;
    return sscanf(name, "eval.rand.layers.%d.hash_matrix%n", &layer, &end) == 1 && end > 0 &&
           name[end] == 0 && layer >= 0;
}

// Checks the values of one parameter read from the file: finite and, in
// bf16-pure, bf16 numbers (the low 16 bits of the float zero).
static int check_values(const char *path, const hax_param *p, const float *w, hax_precision precision, char *err,
                        int errlen) {
    for (size_t i = 0; i < p->numel; i++) {
        uint32_t bits;
        memcpy(&bits, &w[i], 4);
        if (!isfinite(w[i]))
            return hax_errf(err, errlen, "train.init_from: %s: tensor %s: expected finite values, found %g at index %zu",
                            path, p->name, (double)w[i], i);
        if (precision == PREC_BF16_PURE && (bits & 0xffffu) != 0)
            return hax_errf(err, errlen, "train.init_from: %s: tensor %s: expected bf16 values (train.precision "
                            "bf16-pure: the reference's weights after its bf16 cast), found %.9g (bits 0x%08x) at "
                            "index %zu", path, p->name, (double)w[i], bits, i);
    }
    return 0;
}

// Reads parameter p from the file into its place in m->data.
static int read_param(const st_file *f, const char *path, hax_model *m, const hax_param *p, hax_precision precision,
                      char *err, int errlen) {
    const st_tensor *x = st_find(f, p->name);
    int64_t want[3];
    for (int k = 0; k < p->ndim; k++) want[k] = p->shape[k];
    char ws[96], fs[160];
    st_format_shape(ws, sizeof ws, p->ndim, want);
    if (!x)
        return hax_errf(err, errlen, "train.init_from: %s: tensor %s: expected it (a parameter of this model, shape "
                        "%s), found none", path, p->name, ws);
    if (x->dtype != ST_F32 && x->dtype != ST_BF16)
        return hax_errf(err, errlen, "train.init_from: %s: tensor %s: expected dtype F32 or BF16, found %s", path,
                        p->name, st_dtype_name(x->dtype));
    int same = x->ndim == p->ndim;
    for (int k = 0; same && k < p->ndim; k++) same = x->shape[k] == want[k];
    if (!same) {
        st_format_shape(fs, sizeof fs, x->ndim, x->shape);
        return hax_errf(err, errlen, "train.init_from: %s: tensor %s: expected shape %s (this model's), found %s",
                        path, p->name, ws, fs);
    }
    float *w = m->data + p->offset;
    st_tensor_to_f32(x, w);  // BF16 widens exactly
    return check_values(path, p, w, precision, err, errlen);
}

int train_load_init(hax_model *m, const char *path, hax_precision precision, char *err, int errlen) {
    char e2[1024];
    st_file *f = st_load(path, e2, sizeof e2);
    if (!f) return hax_errf(err, errlen, "train.init_from: %s", e2);
    int rc = 0, ignored = 0;
    const char *fmt = st_meta(f, "format");
    if (fmt && strcmp(fmt, SAVED_CKPT_FORMAT) == 0)
        rc = hax_errf(err, errlen, "train.init_from: %s: expected a file of model weights (best.safetensors, "
                      "hax-train --save-init, ref_train.py --save_init), found a hax-train checkpoint (format %s), "
                      "whose AdamW moments and best weights would be dropped: resume its run, or start from its "
                      "best.safetensors", path, fmt);
    // every tensor of the file is a parameter of the model (or an ignored evaluation hash matrix)
    for (int i = 0; !rc && i < f->n_tensors; i++) {
        const char *name = f->tensors[i].name;
        if (model_find(m, name) >= 0) continue;
        if (is_eval_hash(name)) {
            ignored++;
            continue;
        }
        rc = hax_errf(err, errlen, "train.init_from: %s: tensor %s: expected only parameters of this model (%s %s, "
                      "n_layers %d), found a tensor that is none of them", path, name,
                      arch_name(m->cfg.arch), m->cfg.sparse_arch[0] ? m->cfg.sparse_arch : "without sparse branch",
                      m->cfg.n_layers);
    }
    for (int i = 0; !rc && i < m->n_params; i++) rc = read_param(f, path, m, &m->params[i], precision, err, errlen);
    st_close(f);
    return rc ? -1 : ignored;
}

int train_save_init(const hax_config *cfg, const char *config_text, const char *path, char *err, int errlen) {
    hax_model m;
    model_build(&m, &cfg->model);
    train_init_weights(&m, cfg);
    int rc = 0;
    if (cfg->train.init_from[0]) rc = train_load_init(&m, cfg->train.init_from, cfg->train.precision, err, errlen) < 0;
    st_writer *w = st_writer_new();
    if (!rc) rc = train_add_params(w, &m, "", m.data, err, errlen) != 0;
    // best.safetensors' metadata, step 0: hax-eval scores the untrained model from it
    st_writer_meta(w, "format", "pt");
    st_writer_meta(w, "step", "0");
    st_writer_meta(w, "config", config_text);
    st_writer_meta(w, "precision", config_precision_name(cfg->train.precision));
    if (!rc) rc = st_writer_write(w, path, err, errlen) != 0;
    st_writer_free(w);
    model_free(&m);
    return rc ? -1 : 0;
}
