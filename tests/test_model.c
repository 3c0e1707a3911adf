// test_model.c: the parameter table (counts of MODEL.md §7, names and
// shapes of the golden files, order), the initialisation's statistics and
// determinism, and refusal of bad model configs.
#include <math.h>

#include "model.h"
#include "test.h"

static void test_param_counts(void) {
    struct {
        hax_arch arch;
        int dbl;
        const char *pattern;
        size_t expect;
    } t[] = {
        {ARCH_MAMBA, 1, NULL, 246144},
        {ARCH_MAMBA2, 1, NULL, 231984},
        {ARCH_SAMBA, 0, NULL, 131360},
        {ARCH_MAMBA, 0, "dilated", 82368},
        {ARCH_MAMBA, 0, "sliding_window", 82368},
        {ARCH_MAMBA, 0, "sliding_window+dilated", 82368},
        {ARCH_MAMBA, 0, "sliding_window+sink", 82368},
        {ARCH_MAMBA, 0, "sign_bin_lsh", 82368},
        {ARCH_MAMBA, 0, "full", 82368},
        {ARCH_MAMBA, 0, "key_selection", 86658},
        {ARCH_MAMBA, 0, "sign_bin_lsh+key_selection", 86658},
        {ARCH_MAMBA2, 0, "dilated", 83824},
        {ARCH_MAMBA2, 0, "sliding_window+sink", 83824},
        {ARCH_MAMBA2, 0, "sign_bin_lsh", 83824},
        {ARCH_MAMBA2, 0, "full", 83824},
        {ARCH_MAMBA2, 0, "key_selection", 100594},
        {ARCH_MAMBA2, 0, "sign_bin_lsh+key_selection", 100594},
        {ARCH_MAMBA, 0, NULL, 73920},
        {ARCH_MAMBA2, 0, NULL, 67184},
    };
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
        hax_model_config c;
        model_config_reference(&c, t[i].arch, t[i].dbl, t[i].pattern);
        size_t n = model_count_params(&c);
        CHECK(n == t[i].expect, "arch %d double %d pattern %s: %zu parameters, expected %zu", t[i].arch, t[i].dbl,
              t[i].pattern ? t[i].pattern : "none", n, t[i].expect);
    }
}

// The state_dict order of MODEL.md §5.1 for the Enhanced mixers, and the
// shapes of a few tensors.
static void test_param_order(void) {
    hax_model_config c;
    hax_model m;
    model_config_reference(&c, ARCH_MAMBA, 0, "sign_bin_lsh+key_selection");
    model_build(&m, &c);
    const char *mamba_order[] = {"embeddings.weight",
                                 "layers.0.norm.weight",
                                 "layers.0.mixer.E",
                                 "layers.0.mixer.A_log",
                                 "layers.0.mixer.D",
                                 "layers.0.mixer.conv1d.weight",
                                 "layers.0.mixer.conv1d.bias",
                                 "layers.0.mixer.in_proj.weight",
                                 "layers.0.mixer.x_proj.weight",
                                 "layers.0.mixer.dt_proj.weight",
                                 "layers.0.mixer.dt_proj.bias",
                                 "layers.0.mixer.xx_proj.weight",
                                 "layers.0.mixer.dx_proj_1.weight",
                                 "layers.0.mixer.dx_proj_1.bias",
                                 "layers.0.mixer.dx_proj_2.weight",
                                 "layers.0.mixer.dx_proj_2.bias",
                                 "layers.0.mixer.dx_proj_3.weight",
                                 "layers.0.mixer.dx_proj_3.bias",
                                 "layers.0.mixer.out_proj.weight",
                                 "layers.1.norm.weight"};
    for (int i = 0; i < (int)(sizeof mamba_order / sizeof *mamba_order); i++)
        CHECK(strcmp(m.params[i].name, mamba_order[i]) == 0, "mamba param %d: %s, expected %s", i, m.params[i].name,
              mamba_order[i]);
    CHECK(strcmp(m.params[m.n_params - 1].name, "norm_f.weight") == 0, "last: %s", m.params[m.n_params - 1].name);
    int x = model_find(&m, "layers.1.mixer.x_proj.weight");
    CHECK(x >= 0 && m.params[x].shape[0] == 40 && m.params[x].shape[1] == 128, "x_proj shape");
    int cw = model_find(&m, "layers.1.mixer.conv1d.weight");
    CHECK(cw >= 0 && m.params[cw].ndim == 3 && m.params[cw].shape[0] == 128 && m.params[cw].shape[1] == 1 &&
              m.params[cw].shape[2] == 4, "conv1d.weight shape");
    CHECK(m.layers[1].xx_proj == model_find(&m, "layers.1.mixer.xx_proj.weight"), "layer index table");
    // offsets are contiguous in table order
    size_t off = 0;
    for (int i = 0; i < m.n_params; i++) {
        CHECK(m.params[i].offset == off, "%s offset %zu, expected %zu", m.params[i].name, m.params[i].offset, off);
        off += m.params[i].numel;
    }
    CHECK(off == m.n_floats, "n_floats");
    model_free(&m);

    model_config_reference(&c, ARCH_MAMBA2, 0, "key_selection");
    model_build(&m, &c);
    const char *mamba2_order[] = {"embeddings.weight", "layers.0.norm.weight", "layers.0.mixer.E",
                                  "layers.0.mixer.dt_bias", "layers.0.mixer.A_log", "layers.0.mixer.D",
                                  "layers.0.mixer.xx_proj.weight", "layers.0.mixer.dx_proj_1.weight",
                                  "layers.0.mixer.dx_proj_1.bias", "layers.0.mixer.dx_proj_2.weight",
                                  "layers.0.mixer.dx_proj_2.bias", "layers.0.mixer.dx_proj_3.weight",
                                  "layers.0.mixer.dx_proj_3.bias", "layers.0.mixer.conv1d.weight",
                                  "layers.0.mixer.conv1d.bias", "layers.0.mixer.in_proj.weight",
                                  "layers.0.mixer.norm.weight", "layers.0.mixer.out_proj.weight"};
    for (int i = 0; i < (int)(sizeof mamba2_order / sizeof *mamba2_order); i++)
        CHECK(strcmp(m.params[i].name, mamba2_order[i]) == 0, "mamba2 param %d: %s, expected %s", i, m.params[i].name,
              mamba2_order[i]);
    int ip = model_find(&m, "layers.0.mixer.in_proj.weight");
    CHECK(ip >= 0 && m.params[ip].shape[0] == 328 && m.params[ip].shape[1] == 64, "mamba2 in_proj shape");
    model_free(&m);

    model_config_reference(&c, ARCH_SAMBA, 0, NULL);
    model_build(&m, &c);
    CHECK(m.layers[0].is_attn == 0 && m.layers[1].is_attn == 1 && m.layers[3].is_attn == 1, "samba attention layers");
    CHECK(model_find(&m, "layers.1.mixer.q_proj.weight") >= 0 && model_find(&m, "layers.1.mixer.A_log") < 0 &&
              model_find(&m, "layers.2.mixer.A_log") >= 0 && model_find(&m, "layers.3.mlp.down_proj.weight") >= 0 &&
              model_find(&m, "layers.0.mixer_norm.weight") >= 0 && model_find(&m, "layers.0.norm.weight") < 0,
          "samba names");
    int g = model_find(&m, "layers.2.mlp.gate_proj.weight");
    CHECK(g >= 0 && m.params[g].shape[0] == 256 && m.params[g].shape[1] == 32, "samba gate_proj shape");
    model_free(&m);
}

typedef struct {
    double mean, std, min, max;
} stats;

static stats tensor_stats(const hax_model *m, const char *name) {
    int i = model_find(m, name);
    stats s = {0, 0, INFINITY, -INFINITY};
    if (i < 0) return s;
    const float *w = model_w(m, i);
    size_t n = m->params[i].numel;
    double sum = 0, sq = 0;
    for (size_t j = 0; j < n; j++) {
        sum += w[j];
        sq += (double)w[j] * w[j];
        if (w[j] < s.min) s.min = w[j];
        if (w[j] > s.max) s.max = w[j];
    }
    s.mean = sum / n;
    s.std = sqrt(sq / n - s.mean * s.mean);
    return s;
}

static void test_init_stats(void) {
    hax_model_config c;
    hax_model m;
    model_config_reference(&c, ARCH_MAMBA, 1, NULL);  // d = 128: large tensors give tight statistics
    model_build(&m, &c);
    model_init(&m, 7);
    stats s = tensor_stats(&m, "layers.0.mixer.in_proj.weight");  // 65536 values, N(0, 0.01)
    CHECK(fabs(s.mean) < 3e-3 && fabs(s.std - 0.1) < 2e-3, "in_proj mean %g std %g", s.mean, s.std);
    s = tensor_stats(&m, "embeddings.weight");
    CHECK(fabs(s.std - 0.1) < 5e-3, "embeddings std %g", s.std);
    s = tensor_stats(&m, "layers.1.mixer.conv1d.weight");  // U(-1/2, 1/2): std 1/sqrt(12)
    CHECK(s.min >= -0.5 && s.max <= 0.5 && fabs(s.std - 0.288675) < 0.02, "conv1d min %g max %g std %g", s.min,
          s.max, s.std);
    s = tensor_stats(&m, "layers.1.mixer.conv1d.bias");
    CHECK(s.min >= -0.5 && s.max <= 0.5 && s.max - s.min > 0.8, "conv1d.bias range %g..%g", s.min, s.max);
    s = tensor_stats(&m, "layers.0.mixer.dt_proj.weight");  // U(-8^-1/2, 8^-1/2)
    CHECK(s.min >= -0.353554 && s.max <= 0.353554 && s.max - s.min > 0.6, "dt_proj range %g..%g", s.min, s.max);
    s = tensor_stats(&m, "layers.0.mixer.dt_proj.bias");  // softplus^-1 of log-uniform [1e-3, 1e-1]
    CHECK(s.min >= -6.9083 && s.max <= -2.2521 && s.max - s.min > 3.5, "dt bias range %g..%g", s.min, s.max);
    int al = model_find(&m, "layers.1.mixer.A_log");
    const float *a = model_w(&m, al);
    CHECK(a[0] == 0.0f && fabsf(a[1] - logf(2)) < 1e-7f && fabsf(a[16 + 15] - logf(16)) < 1e-6f, "A_log values");
    s = tensor_stats(&m, "layers.1.mixer.D");
    CHECK(s.min == 1 && s.max == 1, "D = 1");
    s = tensor_stats(&m, "norm_f.weight");
    CHECK(s.min == 1 && s.max == 1, "norm_f = 1");
    // determinism: the same seed gives the same values, another seed others
    hax_model m2;
    model_build(&m2, &c);
    model_init(&m2, 7);
    CHECK(memcmp(m.data, m2.data, sizeof(float) * m.n_floats) == 0, "same seed, same init");
    model_init(&m2, 8);
    int ip = model_find(&m, "layers.0.mixer.in_proj.weight");
    CHECK(memcmp(model_w(&m, ip), model_w(&m2, ip), 64 * sizeof(float)) != 0, "another seed, other values");
    model_free(&m2);
    model_free(&m);

    model_config_reference(&c, ARCH_MAMBA2, 0, "sign_bin_lsh+key_selection");
    model_build(&m, &c);
    model_init(&m, 1);
    s = tensor_stats(&m, "layers.0.mixer.out_proj.weight");  // U(+-0.0625), rescaled
    CHECK(s.min >= -0.0625 && s.max <= 0.0625 && s.max > 0.06 && s.min < -0.06, "mamba2 out_proj range %g..%g",
          s.min, s.max);
    s = tensor_stats(&m, "layers.0.mixer.conv1d.bias");
    CHECK(s.min == 0 && s.max == 0, "mamba2 conv bias = 0");
    s = tensor_stats(&m, "layers.0.mixer.conv1d.weight");
    CHECK(fabs(s.std - 0.1) < 0.01, "mamba2 conv std %g", s.std);
    s = tensor_stats(&m, "layers.1.mixer.E");
    CHECK(s.min == 1 && s.max == 1, "E = 1");
    s = tensor_stats(&m, "layers.1.mixer.dx_proj_2.bias");
    CHECK(s.min == 0 && s.max == 0, "dx bias = 0");
    a = model_w(&m, model_find(&m, "layers.0.mixer.A_log"));
    CHECK(fabsf(a[7] - logf(8)) < 1e-6f, "mamba2 A_log[7] %g", a[7]);
    s = tensor_stats(&m, "layers.0.mixer.dt_bias");
    CHECK(s.min >= -6.9083 && s.max <= -2.2521, "mamba2 dt_bias range %g..%g", s.min, s.max);
    model_free(&m);
}

static void test_bad_configs(void) {
    hax_model_config c;
    char err[256];
    model_config_reference(&c, ARCH_MAMBA, 0, NULL);
    CHECK(model_config_set_sparse(&c, "sliding_windows", err, sizeof err) != 0 && strstr(err, "sliding_windows"),
          "unknown pattern refused: %s", err);
    model_config_reference(&c, ARCH_MAMBA, 0, NULL);
    c.sparse_keys = 63;
    CHECK(model_config_set_sparse(&c, "sliding_window+sink", err, sizeof err) == 0, "pattern parses");
    CHECK(model_config_validate(&c, err, sizeof err) != 0 && strstr(err, "sparse.keys"), "k=63 over 2 parts: %s", err);
    model_config_reference(&c, ARCH_MAMBA2, 0, NULL);
    c.n_heads = 7;
    CHECK(model_config_validate(&c, err, sizeof err) != 0 && strstr(err, "n_heads"), "H*P != E refused: %s", err);
    model_config_reference(&c, ARCH_SAMBA, 0, "sliding_window");
    CHECK(model_config_validate(&c, err, sizeof err) != 0, "sparse samba refused");
    model_config_reference(&c, ARCH_MAMBA, 0, NULL);
    c.hidden_size = 0;
    CHECK(model_config_validate(&c, err, sizeof err) != 0 && strstr(err, "hidden_size"), "hidden 0 refused: %s", err);
}

int main(void) {
    RUN(test_param_counts);
    RUN(test_param_order);
    RUN(test_init_stats);
    RUN(test_bad_configs);
    return test_summary();
}
