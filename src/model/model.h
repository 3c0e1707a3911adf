// model.h: the parameter table of a model — the reference's state_dict names,
// shapes and order (MODEL.md §2.1, §3.1, §4.1, §5.1) laid out in one flat
// float buffer, with a parallel gradient buffer — and the reference's
// initialisation (MODEL.md §1.7, golden README Q22), seeded through src/core/rng.h.
//
// Every backend reads weights through the per-layer index table (hax_layer_params):
// an entry is a parameter index, or -1 where the architecture has no such tensor.
#ifndef HAX_MODEL_H
#define HAX_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "src/model/model_config.h"

// How a tensor is initialised (the final values after transformers' post_init).
typedef enum {
    INIT_NORMAL,        // N(0, a^2)
    INIT_UNIFORM,       // U(-a, a)
    INIT_ONES,
    INIT_ZEROS,
    INIT_A_LOG_STATE,   // Mamba: A_log[c, n] = ln(n + 1)
    INIT_A_LOG_HEAD,    // Mamba2: A_log[h] = ln(h + 1)
    INIT_DT_BIAS,       // softplus^-1 of a log-uniform dt in [time_step_min, time_step_max]
} hax_init_kind;

typedef struct {
    char name[64];      // state_dict name, e.g. "layers.0.mixer.in_proj.weight"
    int ndim;
    int shape[3];
    size_t numel;
    size_t offset;      // in floats, into hax_model.data / .grad
    int layer;          // -1 for embeddings / norm_f
    hax_init_kind init;
    float init_a;       // std or bound
} hax_param;

// Parameter indices of one layer (-1 where absent). Names follow the state_dict.
typedef struct {
    int is_attn;        // Samba odd layers: attention mixer instead of Mamba
    int norm;           // layers.i.norm (Mamba/Mamba2) or layers.i.mixer_norm (Samba)
    int mlp_norm;       // Samba
    // Mamba / Mamba2 mixer
    int A_log, D, conv_w, conv_b, in_proj, x_proj, dt_proj_w, dt_proj_b, out_proj;
    int dt_bias, gnorm; // Mamba2: dt_bias, mixer.norm.weight
    // the sparse branch (Enhanced mixers)
    int E, xx_proj, dx1_w, dx1_b, dx2_w, dx2_b, dx3_w, dx3_b;
    // Samba attention and MLP
    int q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj;
} hax_layer_params;

typedef struct {
    hax_model_config cfg;
    int n_params;
    hax_param *params;       // in state_dict order
    size_t n_floats;         // total parameter count
    float *data;             // [n_floats]
    float *grad;             // [n_floats]
    int embeddings, norm_f;  // parameter indices
    hax_layer_params *layers;// [cfg.n_layers]
    // Derived sizes used by the ops.
    int conv_dim;            // channels of the conv: E (Mamba) or E + 2N (Mamba2)
    int in_proj_dim;         // 2E (Mamba) or E + conv_dim + H (Mamba2)
} hax_model;

// Builds the table for a validated config (dies with a clear message on a bad
// one) and allocates data and grad (zeroed; call model_init for values).
void model_build(hax_model *m, const hax_model_config *cfg);
void model_free(hax_model *m);

// The reference initialisation; parameter i draws from the stream
// (seed, RNG_INIT, i, 0, 0), so the result depends on nothing else.
void model_init(hax_model *m, uint64_t seed);

// Index of the parameter with this state_dict name, or -1.
int model_find(const hax_model *m, const char *name);

static inline float *model_w(const hax_model *m, int idx) { return idx < 0 ? NULL : m->data + m->params[idx].offset; }
static inline float *model_g(const hax_model *m, int idx) { return idx < 0 ? NULL : m->grad + m->params[idx].offset; }

void model_zero_grad(hax_model *m);

// The parameter count a config yields without building it (MODEL.md §7).
size_t model_count_params(const hax_model_config *cfg);

#endif
