// model_config.c: see model_config.h.
#include "src/model/model_config.h"

#include <stdio.h>
#include <string.h>

int model_config_set_sparse(hax_model_config *cfg, const char *pattern, char *err, int errlen) {
    cfg->sparse_mask = 0;
    cfg->sparse_parts = 0;
    cfg->sparse_arch[0] = 0;
    if (!pattern || !*pattern || strcmp(pattern, "none") == 0) return 0;
    if (strlen(pattern) >= sizeof cfg->sparse_arch) {
        snprintf(err, errlen, "expected a sparse pattern name, found a string of %zu characters", strlen(pattern));
        return -1;
    }
    unsigned mask;
    int parts;
    if (sparse_pattern_parse(pattern, &mask, &parts, err, errlen) != 0) return -1;
    cfg->sparse_mask = mask;
    cfg->sparse_parts = parts;
    strcpy(cfg->sparse_arch, pattern);
    cfg->k_c = cfg->sparse_parts ? cfg->sparse_keys / cfg->sparse_parts : 0;
    return 0;
}

int model_config_validate(const hax_model_config *c, char *err, int errlen) {
#define NEED(cond, ...)                          \
    do {                                         \
        if (!(cond)) {                           \
            snprintf(err, errlen, __VA_ARGS__);  \
            return -1;                           \
        }                                        \
    } while (0)
    const hax_arch_info *a = arch_info(c->arch);
    char names[128];
    arch_name_list(names, sizeof names);
    NEED(a != NULL, "model.arch: expected %s, found value %d", names, (int)c->arch);
    NEED(c->vocab_size >= 2 && c->vocab_size <= 1 << 20, "model.vocab_size: expected 2..1048576, found %d", c->vocab_size);
    NEED(c->hidden_size >= 1 && c->hidden_size <= 8192, "model.hidden_size: expected 1..8192, found %d", c->hidden_size);
    NEED(c->n_layers >= 1 && c->n_layers <= 64, "model.n_layers: expected 1..64, found %d", c->n_layers);
    NEED(c->state_size >= 1 && c->state_size <= 1024, "model.state_size: expected 1..1024, found %d", c->state_size);
    NEED(c->intermediate_size >= 1, "model.intermediate_size: expected >= 1, found %d", c->intermediate_size);
    NEED(c->conv_kernel >= 1 && c->conv_kernel <= 16, "model.conv_kernel: expected 1..16, found %d", c->conv_kernel);
    if (a->ssm == MIXER_MAMBA)
        NEED(c->time_step_rank >= 1, "model.time_step_rank: expected >= 1, found %d", c->time_step_rank);
    if (a->ssm == MIXER_MAMBA2)
        NEED(c->n_heads >= 1 && c->head_dim >= 1 && c->n_heads * c->head_dim == c->intermediate_size,
             "model.n_heads x model.head_dim: expected to equal intermediate_size %d, found %d x %d",
             c->intermediate_size, c->n_heads, c->head_dim);
    if (a->attn_every) {
        NEED(c->attn_heads >= 1 && c->hidden_size % c->attn_heads == 0,
             "model.attn_heads: expected a divisor of hidden_size %d, found %d", c->hidden_size, c->attn_heads);
        NEED(c->attn_kv_heads == c->attn_heads, "model.attn_kv_heads: expected %d (= attn_heads), found %d",
             c->attn_heads, c->attn_kv_heads);
        NEED((c->hidden_size / c->attn_heads) % 2 == 0, "model.attn_heads: expected an even head size for RoPE, found %d",
             c->hidden_size / c->attn_heads);
        NEED(c->window_size >= 1, "model.window_size: expected >= 1, found %d", c->window_size);
    }
    if (a->has_mlp) NEED(c->mlp_hidden >= 1, "model.mlp_hidden: expected >= 1, found %d", c->mlp_hidden);
    if (!a->sparse_ok)
        NEED(c->sparse_mask == 0, "sparse.pattern: expected none for %s (the reference has no sparse %s), found '%s'",
             hax_arch_names[c->arch], a->title, c->sparse_arch);
    if (c->sparse_mask) {
        NEED(c->sparse_keys >= c->sparse_parts && c->sparse_keys % c->sparse_parts == 0,
             "sparse.keys: expected a multiple of the %d parts of '%s', found %d", c->sparse_parts, c->sparse_arch,
             c->sparse_keys);
        if (sparse_pattern_has(c->sparse_mask, SPF_LSH))
            NEED(c->num_hash >= 1 && c->num_hash <= 30, "sparse.hash_bits: expected 1..30, found %d", c->num_hash);
        if (sparse_pattern_has(c->sparse_mask, SPF_DILATION))
            NEED(c->data_max_length >= c->k_c, "sparse.data_max_length: expected >= keys per part %d, found %d", c->k_c,
                 c->data_max_length);
    }
#undef NEED
    return 0;
}

void model_config_reference(hax_model_config *c, hax_arch arch, int double_size, const char *pattern) {
    memset(c, 0, sizeof *c);
    c->arch = arch;
    c->vocab_size = 100;
    c->n_layers = 2;
    c->conv_kernel = 4;
    c->time_step_rank = 8;
    c->norm_eps = 1e-5f;
    c->initializer_range = 0.1f;
    c->time_step_min = 0.001f;
    c->time_step_max = 0.1f;
    c->time_step_floor = 1e-4f;
    c->sparse_keys = 64;
    c->num_hash = 8;
    c->data_max_length = 2048;
    c->gate_loss_weight = 0.1f;
    c->semantics = SEMANTICS_REFERENCE;
    if (arch_info(arch)) arch_info(arch)->reference(c, double_size);
    char err[256];
    if (pattern) model_config_set_sparse(c, pattern, err, sizeof err);
}
