// test_model.c: the parameter table (counts of MODEL.md §7, names and
// shapes of the golden files, order), the initialisation's statistics and
// determinism, and refusal of bad model configs.
#include <dirent.h>
#include <math.h>
#include <omp.h>

#include "src/engine/engine.h"
#include "src/engine/case.h"
#include "src/engine/internal.h"
#include "src/ops/basic.h"
#include "src/ops/linear.h"
#include "src/model/model.h"
#include "src/io/safetensors.h"
#include "src/sparse/sparse.h"
#include "src/core/common.h"
#include "golden_engine.h"
#include "test.h"

#define GOLDEN "tests/golden/"

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

// Every golden file's parameters are exactly the table built from its
// metadata: same names, same shapes, nothing missing or extra.
static void test_names_vs_golden(void) {
    DIR *dir = opendir(GOLDEN);
    CHECK(dir != NULL, "cannot open %s", GOLDEN);
    if (!dir) return;
    int files = 0;
    for (struct dirent *de; (de = readdir(dir));) {
        if (!test_ends_with(de->d_name, ".safetensors")) continue;
        char path[512];
        snprintf(path, sizeof path, GOLDEN "%s", de->d_name);
        st_file *f = st_open(path);
        hax_case c;
        case_load(&c, f);
        hax_model m;
        model_build(&m, &c.cfg);
        for (int i = 0; i < m.n_params; i++) {
            const hax_param *p = &m.params[i];
            const st_tensor *t = st_find(f, p->name);
            CHECK(t != NULL, "%s: %s missing", de->d_name, p->name);
            if (!t) continue;
            int same = t->ndim == p->ndim && t->dtype == ST_F32;
            for (int k = 0; same && k < p->ndim; k++) same = t->shape[k] == p->shape[k];
            CHECK(same, "%s: %s shape differs", de->d_name, p->name);
        }
        int n_param_tensors = 0;
        for (int i = 0; i < f->n_tensors; i++) {
            const char *n = f->tensors[i].name;
            if (strchr(n, '.') && strncmp(n, "out.", 4) && strncmp(n, "dbg.", 4) && strncmp(n, "grad.", 5) &&
                strncmp(n, "adamw.", 6) && strncmp(n, "eval.", 5) && strncmp(n, "rand.", 5))
                n_param_tensors++;
        }
        CHECK(n_param_tensors == m.n_params, "%s: %d parameter tensors in the file, %d in the table", de->d_name,
              n_param_tensors, m.n_params);
        model_free(&m);
        case_free(&c);
        st_close(f);
        files++;
    }
    closedir(dir);
    CHECK(files >= 23, "only %d golden files", files);
}

// ---------------------------------------------------------------- engine runs

static void load_case(golden_engine *x, const char *file, int causal) {
    golden_engine_load(x, file, causal, 16, 1, 16);  // deliberately small: the workspace grows
}

// A packed batch gives the same logits, loss shares and (summed) gradients as
// its sequences run one at a time, with random inputs drawn from the rng
// (keyed by global sample index, so the draws agree).
static void packed_vs_single(const char *file, int causal) {
    golden_engine x;
    load_case(&x, file, causal);
    hax_model *m = &x.m;
    int V = m->cfg.vocab_size;
    hax_fwd_opts o = {1, 11, 5, 0, NULL};
    hax_fwd_result r, rs;
    model_zero_grad(m);
    engine_forward(x.e, &x.b, &o, &r);
    engine_backward(x.e);
    float *logits = xmalloc(sizeof(float) * (size_t)x.b.n_tok * V);
    memcpy(logits, engine_cpu_logits(x.e), sizeof(float) * (size_t)x.b.n_tok * V);
    float *grad = xmalloc(sizeof(float) * m->n_floats);
    memcpy(grad, m->grad, sizeof(float) * m->n_floats);

    model_zero_grad(m);
    double loss = 0, gate = 0, acc = 0, worst_logits = 0;
    o.ce_count = r.n_scored;  // the packed batch's normaliser
    for (int s = 0; s < x.c.B; s++) {
        hax_batch one;
        case_batch_one(&x.c, s, &one);
        one.global_n_seq = x.c.B;
        engine_forward(x.e, &one, &o, &rs);
        engine_backward(x.e);  // gradients add up over the sequences
        loss += rs.loss;
        gate += rs.gate_loss;
        acc += rs.acc;
        double e = rel_err(engine_cpu_logits(x.e), logits + (size_t)x.b.seq_off[s] * V, (size_t)one.n_tok * V);
        if (e > worst_logits) worst_logits = e;
        hax_batch_free(&one);
    }
    CHECK(worst_logits < 1e-6, "%s: logits differ by %g", file, worst_logits);
    CHECK(fabs(loss - r.loss) < 1e-6 * fabs(r.loss), "%s: loss %.9g vs packed %.9g", file, loss, r.loss);
    CHECK(fabs(gate - r.gate_loss) < 1e-6 * fabs(r.gate_loss) + 1e-12, "%s: gate loss %.9g vs %.9g", file, gate, r.gate_loss);
    CHECK(fabs(acc - r.acc) < 1e-9, "%s: acc %g vs %g", file, acc, r.acc);
    if (m->cfg.sparse_mask & SPARSE_KEY_SELECTION) CHECK(r.gate_loss > 0, "%s: no gate loss", file);
    for (int i = 0; i < m->n_params; i++) {
        const hax_param *p = &m->params[i];
        if (strstr(p->name, "dx_proj_3.bias")) continue;  // zero up to rounding
        double e = rel_err(model_g(m, i), grad + p->offset, p->numel);
        CHECK(e < 1e-5, "%s: grad %s differs by %g", file, p->name, e);
    }
    free(logits);
    free(grad);
    golden_engine_free(&x);
}

static void test_packed_vs_single(void) {
    packed_vs_single("mamba_base", 0);
    packed_vs_single("mamba_sign_bin_lsh__key_selection", 0);
    packed_vs_single("mamba_dilated", 0);  // empty rows: uniform over the padded length
    packed_vs_single("mamba2_sign_bin_lsh__key_selection", 0);
    packed_vs_single("mamba2_sliding_window__sink", 0);
    packed_vs_single("samba_base", 0);
    packed_vs_single("mamba_sign_bin_lsh__key_selection", 1);  // the paper's causal semantics
    packed_vs_single("mamba2_dilated", 1);
}

// Forward and backward are bit-identical with 1 and 2 threads.
static void threads_once(const char *file) {
    golden_engine x;
    load_case(&x, file, 0);
    hax_model *m = &x.m;
    size_t nl = (size_t)x.b.n_tok * m->cfg.vocab_size;
    float *logits[2], *grad[2];
    double loss[2];
    for (int k = 0; k < 2; k++) {
        // The only thread count there is: OpenMP's. hax_sgemm splits its GEMMs
        // over fixed row blocks on these threads, each block one
        // single-threaded BLAS call (linear.c).
        omp_set_num_threads(k + 1);
        hax_fwd_opts o = {1, 3, 7, 0, NULL};
        hax_fwd_result r;
        model_zero_grad(m);
        engine_forward(x.e, &x.b, &o, &r);
        engine_backward(x.e);
        loss[k] = r.total_loss;
        logits[k] = xmalloc(sizeof(float) * nl);
        memcpy(logits[k], engine_cpu_logits(x.e), sizeof(float) * nl);
        grad[k] = xmalloc(sizeof(float) * m->n_floats);
        memcpy(grad[k], m->grad, sizeof(float) * m->n_floats);
    }
    CHECK(loss[0] == loss[1], "%s: loss %.17g vs %.17g", file, loss[0], loss[1]);
    CHECK(memcmp(logits[0], logits[1], sizeof(float) * nl) == 0, "%s: logits differ between 1 and 2 threads", file);
    for (int i = 0; i < m->n_params; i++)
        CHECK(memcmp(grad[0] + m->params[i].offset, grad[1] + m->params[i].offset,
                     sizeof(float) * m->params[i].numel) == 0,
              "%s: %s differs between 1 and 2 threads", file, m->params[i].name);
    for (int k = 0; k < 2; k++) {
        free(logits[k]);
        free(grad[k]);
    }
    golden_engine_free(&x);
}

static void test_thread_independence(void) {
    threads_once("paper_mamba_hax");
    threads_once("paper_mamba2_hax");
    threads_once("samba_base");
    omp_set_num_threads(omp_get_num_procs());
}

// ---------------------------------------------------------------- bf16-pure

// Elements of x[0..n) that are not bf16 values (low 16 bits set).
static long not_bf16(const float *x, size_t n) {
    long bad = 0;
    for (size_t i = 0; i < n; i++) bad += hax_bf16_round(x[i]) != x[i] && x[i] == x[i];
    return bad;
}

// The allowed-key lists of every layer's sparse branch after a forward (CPU
// state), flattened as "count, keys..." per row; *len gets their length.
static int *snapshot_lists(const golden_engine *x, size_t *len) {
    const hax_model_config *cfg = &x->m.cfg;
    *len = 0;
    if (!cfg->sparse_mask || sparse_pattern_has(cfg->sparse_mask, SPF_DENSE)) return NULL;
    size_t cap = 0;
    for (int l = 0; l < cfg->n_layers; l++) {
        const hax_sparse_state *st = x->e->core->L[l].sp;
        cap += (size_t)st->n_tok + st->allow_off[st->n_tok];
    }
    int *out = xmalloc(sizeof(int) * (cap ? cap : 1));
    for (int l = 0; l < cfg->n_layers; l++) {
        const hax_sparse_state *st = x->e->core->L[l].sp;
        for (int g = 0; g < st->n_tok; g++) {
            out[(*len)++] = st->allow_off[g + 1] - st->allow_off[g];
            for (int e = st->allow_off[g]; e < st->allow_off[g + 1]; e++) out[(*len)++] = st->allow_key[e];
        }
    }
    return out;
}

// Rows (over all layers) whose list differs between two snapshots.
static long lists_changed(const golden_engine *x, const int *a, size_t na, const int *b, size_t nb) {
    long changed = 0;
    size_t i = 0, j = 0;
    for (int l = 0; l < x->m.cfg.n_layers && a && b; l++)
        for (int g = 0; g < x->b.n_tok && i < na && j < nb; g++) {
            int ca = a[i], cb = b[j];
            int same = ca == cb && !memcmp(a + i + 1, b + j + 1, sizeof(int) * (size_t)(ca < cb ? ca : cb));
            changed += !same;
            i += 1 + (size_t)ca, j += 1 + (size_t)cb;
        }
    return changed;
}

// A golden case in bf16-pure (weights rounded to bf16): the logits are the
// fp32 forward's (same rounded weights) within bf16 tolerance, and the
// tensors the engine rounds are bf16 values after the forward, the
// gradients after the backward. Finite differences mean nothing here. At
// most a fraction frac of the logits may differ by more than tol times the
// largest: with a sparse branch, bf16 inputs can flip an LSH sign or a key
// selection, which moves whole rows (a discrete choice, not a rounding error).
static void pure_once(const char *file, const char *const *names, double tol, double frac) {
    golden_engine x;
    load_case(&x, file, 0);
    hax_model *m = &x.m;
    round_bf16(m->data, m->data, (long)m->n_floats);
    size_t nV = (size_t)x.b.n_tok * m->cfg.vocab_size;
    hax_fwd_opts o = {1, 11, 5, 0, NULL};
    hax_fwd_result r32, r16;
    engine_forward(x.e, &x.b, &o, &r32);
    float *ref = xmalloc(sizeof(float) * nV);
    memcpy(ref, engine_cpu_logits(x.e), sizeof(float) * nV);
    size_t n32, n16;
    int *lists32 = snapshot_lists(&x, &n32);
    m->cfg.precision = PREC_BF16_PURE;  // the engine reads it at every call
    engine_forward(x.e, &x.b, &o, &r16);
    int *lists16 = snapshot_lists(&x, &n16);
    if (lists32)
        printf("  %s: sparse rows whose allowed keys changed in bf16-pure: %ld of %d\n", file,
               lists_changed(&x, lists32, n32, lists16, n16), m->cfg.n_layers * x.b.n_tok);
    free(lists32), free(lists16);
    const float *lg = engine_cpu_logits(x.e);
    double worst = 0, scale = 0;
    for (size_t i = 0; i < nV; i++) {
        double dlt = fabs((double)lg[i] - ref[i]);
        if (dlt > worst) worst = dlt;
        if (fabs(ref[i]) > scale) scale = fabs(ref[i]);
    }
    long far = 0;
    for (size_t i = 0; i < nV; i++) far += fabs((double)lg[i] - ref[i]) > tol * scale;
    printf("  %s: bf16-pure logits vs fp32: worst |diff| %.3g (largest |logit| %.3g), %ld of %zu beyond %.2g of it; "
           "loss %.6f vs %.6f\n", file, worst, scale, far, nV, tol, r16.loss, r32.loss);
    CHECK(far <= frac * nV, "%s: %ld logits differ by more than %.3g * %.3g", file, far, tol, scale);
    CHECK(fabs(r16.loss - r32.loss) <= 1e-3 * fabs(r32.loss), "%s: loss %.6f vs %.6f", file, r16.loss, r32.loss);
    CHECK(not_bf16(lg, nV) == 0, "%s: logits not bf16", file);
    CHECK(not_bf16(engine_cpu_hidden(x.e), (size_t)x.b.n_tok * m->cfg.hidden_size) == 0, "%s: hf not bf16", file);
    // named tensors of the activation table
    hax_act_table t = {0};
    eng_layer *L = &x.e->core->L[0];
    for (int l = 0; l < m->cfg.n_layers; l++) mixer_acts_list(&t, x.e->core, m, l, x.b.n_tok, x.b.n_seq);
    int checked = 0;
    for (int k = 0; names[k]; k++)
        for (int i = 0; i < t.n; i++)
            if (!strcmp(t.v[i].name, names[k])) {
                // the table's slots point into the engine: sizes for n_tok rows
                CHECK(not_bf16(*t.v[i].slot, t.v[i].n) == 0, "%s: %s not bf16", file, names[k]);
                checked++;
            }
    acts_clear(&t);
    CHECK(checked >= 2, "%s: only %d named tensors found", file, checked);
    CHECK(not_bf16(L->a, (size_t)x.b.n_tok * m->cfg.hidden_size) == 0, "%s: layer 0 norm output not bf16", file);
    CHECK(not_bf16(x.e->core->L[1].hin, (size_t)x.b.n_tok * m->cfg.hidden_size) == 0, "%s: residual not bf16", file);
    model_zero_grad(m);
    engine_backward(x.e);
    CHECK(not_bf16(m->grad, m->n_floats) == 0, "%s: gradients not bf16", file);
    long nz = 0;
    for (size_t i = 0; i < m->n_floats; i++) nz += m->grad[i] != 0;
    CHECK(nz > (long)m->n_floats / 4, "%s: only %ld nonzero gradients", file, nz);
    free(ref);
    golden_engine_free(&x);
}

static void test_bf16_pure_forward(void) {
    // mixer_acts_list names: with n_tok rows each (checkpoints excluded)
    static const char *const mamba[] = {"mamba.xz", "mamba.X", "mamba.x_dbl", "mamba.draw", "sparse.attn", NULL};
    static const char *const mamba2[] = {"mamba2.p", "mamba2.xbc", "mamba2.y", "mamba2.g", "sparse.attn", NULL};
    static const char *const samba[] = {"mamba.xz", "mamba.X", "attn.q", "attn.o", NULL};
    // The HAX cases allow 4% of the logits beyond 0.02 of the largest. Measured
    // (this build, deterministic): 361 and 2641 of 132500 (0.27%, 2.0%), with
    // 1138 and 870 of the 2650 sparse rows' allowed-key lists changed by
    // flipped LSH buckets and key-selection picks (printed above). With the
    // branch's inside in fp32 (before issue 10's sparse emulation) the same
    // cases had 94 and 770 far logits and 597 / 408 changed rows: emulating
    // the bf16 statistics, projections and key scores (coarse bf16 scores tie
    // and reorder) doubles the discrete flips; the models without a sparse
    // branch stay at 0.
    pure_once("paper_mamba_hax", mamba, 0.02, 0.04);
    pure_once("paper_mamba2_hax", mamba2, 0.02, 0.04);
    pure_once("mamba_base", mamba, 0.02, 0);
    pure_once("mamba2_base", mamba2, 0.02, 0);
    pure_once("samba_base", samba, 0.02, 0);
}

// Random inputs: the same (seed, step) draws the same hash matrices and
// candidates, another step other ones; evaluation uses its own stream. And
// injected buckets equal to the computed ones change nothing, others do.
static void test_random_inputs_and_injection(void) {
    golden_engine x;
    load_case(&x, "mamba_sign_bin_lsh__key_selection", 0);
    hax_model *m = &x.m;
    int L = m->cfg.n_layers;
    size_t nh = (size_t)m->cfg.state_size * m->cfg.num_hash, nl = (size_t)x.b.n_tok * m->cfg.vocab_size;
    hax_fwd_result r1, r2, r3, r4;
    hax_fwd_opts o = {1, 9, 4, 0, NULL};
    engine_forward(x.e, &x.b, &o, &r1);
    float *h1 = xmalloc(sizeof(float) * nh);
    memcpy(h1, engine_cpu_hash(x.e, L - 1), sizeof(float) * nh);
    engine_forward(x.e, &x.b, &o, &r2);
    CHECK(r1.total_loss == r2.total_loss, "same step, same loss");
    CHECK(memcmp(h1, engine_cpu_hash(x.e, L - 1), sizeof(float) * nh) == 0, "same step, same hash");
    o.step = 5;
    engine_forward(x.e, &x.b, &o, &r3);
    CHECK(r3.gate_loss != r1.gate_loss, "another step draws other candidates");
    CHECK(memcmp(h1, engine_cpu_hash(x.e, L - 1), sizeof(float) * nh) != 0, "another step, another hash");
    o.train = 0;
    o.step = 4;
    engine_forward(x.e, &x.b, &o, &r4);
    CHECK(r4.gate_loss == 0, "no ranking loss in evaluation");
    CHECK(memcmp(h1, engine_cpu_hash(x.e, L - 1), sizeof(float) * nh) != 0, "evaluation has its own hash stream");

    // forced buckets: the computed ones reproduce the run bit for bit
    o.train = 1;
    engine_forward(x.e, &x.b, &o, &r1);
    float *logits = xmalloc(sizeof(float) * nl);
    memcpy(logits, engine_cpu_logits(x.e), sizeof(float) * nl);
    hax_inject inj;
    memset(&inj, 0, sizeof inj);
    int32_t *qb[HAX_MAX_LAYERS], *kb[HAX_MAX_LAYERS];
    for (int l = 0; l < L; l++) {
        const hax_sparse_state *st = engine_cpu_sparse(x.e, l);
        qb[l] = xmalloc(sizeof(int32_t) * x.b.n_tok);
        kb[l] = xmalloc(sizeof(int32_t) * x.b.n_tok);
        memcpy(qb[l], st->q_bucket, sizeof(int32_t) * x.b.n_tok);
        memcpy(kb[l], st->k_bucket, sizeof(int32_t) * x.b.n_tok);
        inj.hash[l] = NULL;
        inj.q_bucket[l] = qb[l];
        inj.k_bucket[l] = kb[l];
    }
    o.inject = &inj;
    engine_forward(x.e, &x.b, &o, &r2);
    CHECK(r2.total_loss == r1.total_loss && memcmp(logits, engine_cpu_logits(x.e), sizeof(float) * nl) == 0,
          "computed buckets injected: same result");
    for (int t = 0; t < x.b.n_tok; t++) qb[0][t] = kb[0][t] = 0;  // one bucket: every earlier key is a candidate
    engine_forward(x.e, &x.b, &o, &r3);
    CHECK(memcmp(logits, engine_cpu_logits(x.e), sizeof(float) * nl) != 0, "other buckets injected: other result");
    for (int l = 0; l < L; l++) {
        free(qb[l]);
        free(kb[l]);
    }
    free(logits);
    free(h1);
    golden_engine_free(&x);
}

int main(void) {
    RUN(test_param_counts);
    RUN(test_param_order);
    RUN(test_init_stats);
    RUN(test_bad_configs);
    RUN(test_names_vs_golden);
    RUN(test_packed_vs_single);
    RUN(test_thread_independence);
    RUN(test_random_inputs_and_injection);
    RUN(test_bf16_pure_forward);
    return test_summary();
}
