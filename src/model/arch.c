// arch.c: see arch.h.
#include "src/model/arch.h"

#include <stdio.h>
#include <string.h>

#include "src/model/model_config.h"

// mamba.json / mamba_double_size.json
static void reference_mamba(hax_model_config *c, int double_size) {
    int d = double_size ? 128 : 64;
    c->hidden_size = d;
    c->intermediate_size = 2 * d;
    c->state_size = 16;
}

// mamba2.json / mamba2_double_size.json (head_dim 16 / 32)
static void reference_mamba2(hax_model_config *c, int double_size) {
    int d = double_size ? 128 : 64;
    c->hidden_size = d;
    c->intermediate_size = 2 * d;
    c->state_size = 32;
    c->n_heads = 8;
    c->head_dim = 2 * d / 8;
    c->rescale_prenorm_residual = 1;
}

// samba.json (d=32 in the reference config; no double size)
static void reference_samba(hax_model_config *c, int double_size) {
    (void)double_size;
    c->hidden_size = 32;
    c->intermediate_size = 64;
    c->state_size = 16;
    c->n_layers = 4;
    c->initializer_range = 0.02f;
    c->attn_heads = 4;
    c->attn_kv_heads = 4;
    c->window_size = 64;
    c->rope_theta = 10000.0f;
    c->mlp_hidden = 256;
}

const char *const hax_arch_names[HAX_N_ARCHS + 1] = {
    [ARCH_MAMBA] = "mamba", [ARCH_MAMBA2] = "mamba2", [ARCH_SAMBA] = "samba", [HAX_N_ARCHS] = NULL,
};

const hax_arch_info hax_archs[HAX_N_ARCHS] = {
    [ARCH_MAMBA] = {"Mamba", MIXER_MAMBA, 0, 0, 1, "norm", "layer_norm_epsilon", reference_mamba},
    [ARCH_MAMBA2] = {"Mamba2", MIXER_MAMBA2, 0, 0, 1, "norm", "layer_norm_epsilon", reference_mamba2},
    [ARCH_SAMBA] = {"Samba", MIXER_MAMBA, 2, 1, 0, "mixer_norm", "norm_eps", reference_samba},
};

const hax_arch_info *arch_info(hax_arch a) {
    return (int)a >= 0 && a < HAX_N_ARCHS ? &hax_archs[a] : NULL;
}

const char *arch_name(hax_arch a) { return arch_info(a) ? hax_arch_names[a] : "?"; }

int arch_from_name(const char *name) {
    for (int a = 0; a < HAX_N_ARCHS; a++)
        if (name && strcmp(name, hax_arch_names[a]) == 0) return a;
    return -1;
}

void arch_name_list(char *buf, int len) {
    int n = snprintf(buf, len, "%s", "");
    for (int a = 0; a < HAX_N_ARCHS; a++)
        n += snprintf(buf + n, n < len ? len - n : 0, "%s%s", a == 0 ? "" : a + 1 < HAX_N_ARCHS ? ", " : " or ",
                      hax_arch_names[a]);
}

hax_mixer_kind arch_layer_mixer(const hax_model_config *cfg, int l) {
    const hax_arch_info *a = &hax_archs[cfg->arch];
    return a->attn_every && l % a->attn_every == a->attn_every - 1 ? MIXER_ATTN : a->ssm;
}

int arch_has_mlp(const hax_model_config *cfg) { return hax_archs[cfg->arch].has_mlp; }

hax_mixer_kind arch_ssm_mixer(const hax_model_config *cfg) { return hax_archs[cfg->arch].ssm; }
