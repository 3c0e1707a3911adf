// model.c: see model.h.
#include "src/model/model.h"

#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "src/core/common.h"
#include "src/core/rng.h"

// Appends one tensor to the table; returns its index.
static int add_param(hax_model *m, int layer, hax_init_kind init, float a, int ndim, int s0, int s1, int s2,
                     const char *fmt, ...) __attribute__((format(printf, 9, 10)));
static int add_param(hax_model *m, int layer, hax_init_kind init, float a, int ndim, int s0, int s1, int s2,
                     const char *fmt, ...) {
    m->params = xrealloc(m->params, sizeof(hax_param) * (m->n_params + 1));
    hax_param *p = &m->params[m->n_params];
    memset(p, 0, sizeof *p);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->name, sizeof p->name, fmt, ap);
    va_end(ap);
    p->ndim = ndim;
    p->shape[0] = s0;
    p->shape[1] = s1;
    p->shape[2] = s2;
    p->numel = (size_t)s0 * (ndim > 1 ? s1 : 1) * (ndim > 2 ? s2 : 1);
    p->offset = m->n_floats;
    p->layer = layer;
    p->init = init;
    p->init_a = a;
    m->n_floats += p->numel;
    return m->n_params++;
}

#define P1(init, a, s0, ...) add_param(m, i, init, a, 1, s0, 0, 0, __VA_ARGS__)
#define P2(init, a, s0, s1, ...) add_param(m, i, init, a, 2, s0, s1, 0, __VA_ARGS__)
#define P3(init, a, s0, s1, s2, ...) add_param(m, i, init, a, 3, s0, s1, s2, __VA_ARGS__)

// Kaiming-uniform(a = sqrt 5) bound of PyTorch's Linear/Conv1d default init: 1/sqrt(fan_in).
static float kaiming_bound(int fan_in) { return 1.0f / sqrtf((float)fan_in); }

// The sparse branch's extra tensors that come right after the mixer's own
// parameters (E) are added by the callers; these are the submodules.
static void add_ks_mlp(hax_model *m, int i, hax_layer_params *l, float ir) {
    const hax_model_config *c = &m->cfg;
    int n2 = 2 * c->state_size;
    l->dx1_w = P2(INIT_NORMAL, ir, n2, n2, "layers.%d.mixer.dx_proj_1.weight", i);
    l->dx1_b = P1(INIT_ZEROS, 0, n2, "layers.%d.mixer.dx_proj_1.bias", i);
    l->dx2_w = P2(INIT_NORMAL, ir, n2, n2, "layers.%d.mixer.dx_proj_2.weight", i);
    l->dx2_b = P1(INIT_ZEROS, 0, n2, "layers.%d.mixer.dx_proj_2.bias", i);
    l->dx3_w = P2(INIT_NORMAL, ir, 1, n2, "layers.%d.mixer.dx_proj_3.weight", i);
    l->dx3_b = P1(INIT_ZEROS, 0, 1, "layers.%d.mixer.dx_proj_3.bias", i);
}

// The out_proj [d, E] of both SSM mixers, their last parameter: with
// rescale_prenorm_residual Kaiming-uniform over sqrt(n_layers), else normal.
static void add_out_proj(hax_model *m, int i, hax_layer_params *l) {
    const hax_model_config *c = &m->cfg;
    int E = c->intermediate_size, d = c->hidden_size;
    float ir = c->initializer_range;
    if (c->rescale_prenorm_residual)
        l->out_proj = P2(INIT_UNIFORM, kaiming_bound(E) / sqrtf((float)c->n_layers), d, E,
                         "layers.%d.mixer.out_proj.weight", i);
    else
        l->out_proj = P2(INIT_NORMAL, ir, d, E, "layers.%d.mixer.out_proj.weight", i);
}

// fla MambaMixer (+ EnhancedMambaMixer): own parameters (E, A_log, D) first,
// then submodules in registration order.
static void add_mamba_mixer(hax_model *m, int i, hax_layer_params *l) {
    const hax_model_config *c = &m->cfg;
    int E = c->intermediate_size, N = c->state_size, R = c->time_step_rank, d = c->hidden_size, K = c->conv_kernel;
    float ir = c->initializer_range;
    int sparse = c->sparse_mask != 0, ks = (c->sparse_mask & SPARSE_KEY_SELECTION) != 0;
    if (sparse) l->E = P1(INIT_ONES, 0, E, "layers.%d.mixer.E", i);
    l->A_log = P2(INIT_A_LOG_STATE, 0, E, N, "layers.%d.mixer.A_log", i);
    l->D = P1(INIT_ONES, 0, E, "layers.%d.mixer.D", i);
    l->conv_w = P3(INIT_UNIFORM, kaiming_bound(K), E, 1, K, "layers.%d.mixer.conv1d.weight", i);
    l->conv_b = P1(INIT_UNIFORM, kaiming_bound(K), E, "layers.%d.mixer.conv1d.bias", i);
    l->in_proj = P2(INIT_NORMAL, ir, 2 * E, d, "layers.%d.mixer.in_proj.weight", i);
    l->x_proj = P2(INIT_NORMAL, ir, R + 2 * N, E, "layers.%d.mixer.x_proj.weight", i);
    l->dt_proj_w = P2(INIT_UNIFORM, 1.0f / sqrtf((float)R), E, R, "layers.%d.mixer.dt_proj.weight", i);
    l->dt_proj_b = P1(INIT_DT_BIAS, 0, E, "layers.%d.mixer.dt_proj.bias", i);
    if (sparse) l->xx_proj = P2(INIT_NORMAL, ir, 2 * N, E, "layers.%d.mixer.xx_proj.weight", i);
    if (ks) add_ks_mlp(m, i, l, ir);
    add_out_proj(m, i, l);
}

// fla Mamba2Mixer (+ EnhancedMamba2Mixer): E, dt_bias, A_log, D, then xx_proj,
// dx_proj_*, conv1d, in_proj, norm, out_proj.
static void add_mamba2_mixer(hax_model *m, int i, hax_layer_params *l) {
    const hax_model_config *c = &m->cfg;
    int E = c->intermediate_size, N = c->state_size, H = c->n_heads, d = c->hidden_size, K = c->conv_kernel;
    float ir = c->initializer_range;
    int sparse = c->sparse_mask != 0, ks = (c->sparse_mask & SPARSE_KEY_SELECTION) != 0;
    if (sparse) l->E = P1(INIT_ONES, 0, E, "layers.%d.mixer.E", i);
    l->dt_bias = P1(INIT_DT_BIAS, 0, H, "layers.%d.mixer.dt_bias", i);
    l->A_log = P1(INIT_A_LOG_HEAD, 0, H, "layers.%d.mixer.A_log", i);
    l->D = P1(INIT_ONES, 0, H, "layers.%d.mixer.D", i);
    if (sparse) l->xx_proj = P2(INIT_NORMAL, ir, 2 * N, E, "layers.%d.mixer.xx_proj.weight", i);
    if (ks) add_ks_mlp(m, i, l, ir);
    l->conv_w = P3(INIT_NORMAL, ir, m->conv_dim, 1, K, "layers.%d.mixer.conv1d.weight", i);
    l->conv_b = P1(INIT_ZEROS, 0, m->conv_dim, "layers.%d.mixer.conv1d.bias", i);
    l->in_proj = P2(INIT_NORMAL, ir, m->in_proj_dim, d, "layers.%d.mixer.in_proj.weight", i);
    l->gnorm = P1(INIT_ONES, 0, E, "layers.%d.mixer.norm.weight", i);
    add_out_proj(m, i, l);
}

// Samba's attention layers (q, k, v, o projections).
static void add_attn_mixer(hax_model *m, int i, hax_layer_params *l) {
    const hax_model_config *c = &m->cfg;
    int d = c->hidden_size;
    float ir = c->initializer_range;
    l->q_proj = P2(INIT_NORMAL, ir, d, d, "layers.%d.mixer.q_proj.weight", i);
    l->k_proj = P2(INIT_NORMAL, ir, d, d, "layers.%d.mixer.k_proj.weight", i);
    l->v_proj = P2(INIT_NORMAL, ir, d, d, "layers.%d.mixer.v_proj.weight", i);
    l->o_proj = P2(INIT_NORMAL, ir, d, d, "layers.%d.mixer.o_proj.weight", i);
}

// The GatedMLP sublayer with its norm (Samba).
static void add_mlp(hax_model *m, int i, hax_layer_params *l) {
    const hax_model_config *c = &m->cfg;
    int d = c->hidden_size, F = c->mlp_hidden;
    float ir = c->initializer_range;
    l->mlp_norm = P1(INIT_ONES, 0, d, "layers.%d.mlp_norm.weight", i);
    l->gate_proj = P2(INIT_NORMAL, ir, F, d, "layers.%d.mlp.gate_proj.weight", i);
    l->up_proj = P2(INIT_NORMAL, ir, F, d, "layers.%d.mlp.up_proj.weight", i);
    l->down_proj = P2(INIT_NORMAL, ir, d, F, "layers.%d.mlp.down_proj.weight", i);
}

// The parameter builder of each mixer kind (src/model/arch.h).
static void (*const add_mixer[])(hax_model *m, int i, hax_layer_params *l) = {
    [MIXER_MAMBA] = add_mamba_mixer,
    [MIXER_MAMBA2] = add_mamba2_mixer,
    [MIXER_ATTN] = add_attn_mixer,
};

static void build_table(hax_model *m, const hax_model_config *cfg) {
    char err[256];
    if (model_config_validate(cfg, err, sizeof err) != 0) hax_die("model config: %s", err);
    memset(m, 0, sizeof *m);
    m->cfg = *cfg;
    const hax_model_config *c = &m->cfg;
    const hax_arch_info *a = arch_info(c->arch);
    if (a->ssm == MIXER_MAMBA2) {
        m->conv_dim = c->intermediate_size + 2 * c->state_size;
        m->in_proj_dim = c->intermediate_size + m->conv_dim + c->n_heads;
    } else {
        m->conv_dim = c->intermediate_size;
        m->in_proj_dim = 2 * c->intermediate_size;
    }
    int d = c->hidden_size;
    int i = -1;
    m->embeddings = P2(INIT_NORMAL, c->initializer_range, c->vocab_size, d, "embeddings.weight");
    m->layers = xmalloc(sizeof(hax_layer_params) * c->n_layers);
    for (i = 0; i < c->n_layers; i++) {
        hax_layer_params *l = &m->layers[i];
        memset(l, 0xff, sizeof *l);  // every index -1
        hax_mixer_kind kind = arch_layer_mixer(c, i);
        l->is_attn = kind == MIXER_ATTN;
        l->norm = P1(INIT_ONES, 0, d, "layers.%d.%s.weight", i, a->norm_name);
        add_mixer[kind](m, i, l);
        if (a->has_mlp) add_mlp(m, i, l);
    }
    i = -1;
    m->norm_f = P1(INIT_ONES, 0, d, "norm_f.weight");
}

void model_build(hax_model *m, const hax_model_config *cfg) {
    build_table(m, cfg);
    m->data = xcalloc(m->n_floats, sizeof(float));
    m->grad = xcalloc(m->n_floats, sizeof(float));
}

size_t model_count_params(const hax_model_config *cfg) {
    hax_model m;
    build_table(&m, cfg);
    size_t n = m.n_floats;
    free(m.params);
    free(m.layers);
    return n;
}

void model_free(hax_model *m) {
    free(m->params);
    free(m->layers);
    free(m->data);
    free(m->grad);
    memset(m, 0, sizeof *m);
}

int model_find(const hax_model *m, const char *name) {
    for (int i = 0; i < m->n_params; i++)
        if (strcmp(m->params[i].name, name) == 0) return i;
    return -1;
}

void model_zero_grad(hax_model *m) { memset(m->grad, 0, sizeof(float) * m->n_floats); }

// softplus^-1 of dt = exp(u (ln max - ln min) + ln min), floored (golden README Q22).
static float dt_bias_value(const hax_model_config *c, double u) {
    double lo = log((double)c->time_step_min), hi = log((double)c->time_step_max);
    double dt = exp(u * (hi - lo) + lo);
    if (dt < c->time_step_floor) dt = c->time_step_floor;
    return (float)(dt + log(-expm1(-dt)));
}

void model_init(hax_model *m, uint64_t seed) {
    const hax_model_config *c = &m->cfg;
    for (int i = 0; i < m->n_params; i++) {
        const hax_param *p = &m->params[i];
        float *w = m->data + p->offset;
        hax_rng r;
        rng_init(&r, seed, RNG_INIT, (uint32_t)i, 0, 0);
        for (size_t j = 0; j < p->numel; j++) {
            switch (p->init) {
            case INIT_NORMAL: w[j] = (float)(p->init_a * rng_normal(&r)); break;
            case INIT_UNIFORM: w[j] = (float)(p->init_a * (2.0 * rng_uniform(&r) - 1.0)); break;
            case INIT_ONES: w[j] = 1.0f; break;
            case INIT_ZEROS: w[j] = 0.0f; break;
            case INIT_A_LOG_STATE: w[j] = logf((float)(j % (size_t)p->shape[1] + 1)); break;
            case INIT_A_LOG_HEAD: w[j] = logf((float)(j + 1)); break;
            case INIT_DT_BIAS: w[j] = dt_bias_value(c, rng_uniform(&r)); break;
            }
        }
    }
}
