// hax_check_main.c: bin/hax-check — runs cases in the golden format
// (tests/golden/README.md) on the CPU engine and compares every tensor the
// file holds: outputs, the block inputs (dbg.layers.*.hidden_in,
// dbg.norm_f.hidden_in), discrete intermediates, gradients, one AdamW step,
// and the evaluation pass. One line per tensor (error, tolerance, verdict), one
// summary line per case; exits 1 if anything is past its tolerance.
//
//   bin/hax-check [--tol X] [--grad-tol Y] [-q] [--precision fp32|bf16-pure]
//                 [--noise FILE]... [--noise-factor F] [--emit FILE] [--backend cpu|cuda] CASE...
//
// Tolerances (golden README): forward tensors and losses normwise 1e-5
// (--tol), gradients normwise 1e-4 per tensor (--grad-tol, default 10 x tol),
// accuracies to 1e-6 absolute, discrete tensors exactly, AdamW parameters
// |a - b| <= 0.05 lr + 1e-6 |b| elementwise.
//
// --precision bf16-pure: the reference's regime on a tests/ref/ref_golden_bf16.py
// case, tensors counted in bf16 ulps (bounds: check_util.h; --noise widens them
// to the reference's own spread: the largest over the --noise files, each the same case from
// another run of the reference). --emit writes the engine's results; --backend
// cuda runs the CUDA engine (the branch's intermediates are not compared there).
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "src/ops/adamw.h"
#include "src/core/common.h"
#include "src/engine/engine.h"
#include "src/engine/case.h"
#include "src/io/safetensors.h"
#include "src/prog/check_util.h"
#include "src/sparse/sparse.h"

enum { CHECK_MAX_NOISE = 4 };

typedef struct {
    double tol, grad_tol;
    int quiet;
    int n_checked, n_fail;
    double worst_fwd, worst_grad, worst_adamw;
    // The file being checked, and which of its tensors were compared or used
    // as inputs: any other one is reported, so nothing a file holds goes
    // unchecked unnoticed (a misspelt name, a layer the model does not have).
    const st_file *f;
    unsigned char *used;  // [f->n_tensors]
    int bf16;             // --precision bf16-pure
    // --noise (bf16-pure, repeatable): the same case from other runs of the reference (its other
    // kernel path, another device); the bounds follow the largest spread of any of them
    const st_file *noise[CHECK_MAX_NOISE];
    int n_noise;
    double noise_factor;
    const char *emit;     // --emit FILE, or NULL
    const char *backend;  // --backend: "cpu" (default) or "cuda"
    int cpu;              // backend is the CPU's: the sparse branch's intermediates are compared
} checker;

static void mark_used(checker *k, const char *name) {
    const st_tensor *t = st_find(k->f, name);
    if (t) k->used[t - k->f->tensors] = 1;
}

// One result line; ok < 0 means "err <= tol".
static void verdict_ok(checker *k, const char *name, const char *metric, double err, double tol, int ok,
                       const char *note) {
    if (ok < 0) ok = err <= tol && !isnan(err);
    mark_used(k, name);
    k->n_checked++;
    if (!ok) k->n_fail++;
    if (!ok || !k->quiet)
        printf("  %-46s %-8s %9.2e  tol %7.1e  %s%s%s\n", name, metric, err, tol, ok ? "ok" : "FAIL",
               note ? "  " : "", note ? note : "");
}

static void verdict(checker *k, const char *name, const char *metric, double err, double tol, const char *note) {
    verdict_ok(k, name, metric, err, tol, -1, note);
}

static double norm_rel(const float *a, const float *b, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - b[i];
        num += d * d;
        den += (double)b[i] * b[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

static double scalar_rel(double a, double b) { return b != 0 ? fabs(a - b) / fabs(b) : fabs(a - b); }

// bf16-pure: ours against gold[0..n) in bf16 ulps; noise[0..n_noise) (packed alike, NULL where a
// --noise file lacks the tensor) set the bounds: the largest spread of any of them against gold.
static void cmp_bf16(checker *k, const char *name, const float *ours, const float *gold, float *const *noise, size_t n,
                     double *worst) {
    bf16_stats s, sn, one;
    int sq = strncmp(name, "adamw.exp_avg_sq.", 17) == 0;  // (1 - beta2) g^2: two-ulp units (check_util.h)
    bf16_stats_of(&s, ours, gold, n, sq ? 2 : 1);
    memset(&sn, 0, sizeof sn);
    int have = 0;
    for (int i = 0; i < k->n_noise; i++) {
        if (!noise[i]) continue;
        bf16_stats_of(&one, noise[i], gold, n, s.unit);  // counts and norms are >= 0: the zeroed sn is below them
        sn.rel = fmax(sn.rel, one.rel);
        if (one.beyond > sn.beyond) sn.beyond = one.beyond;
        if (one.max_ulps > sn.max_ulps) sn.max_ulps = one.max_ulps;
        have = 1;
    }
    double rb;
    char note[384];
    // the branch's inside is fp32 in hax (README "Precision"); the residual stream is bf16 there
    if (strncmp(name, "dbg.", 4) == 0 && !strstr(name, ".hidden_in")) s.not_bf16 = 0;
    int ok = bf16_verdict(&s, have ? &sn : NULL, k->noise_factor, &rb, note, sizeof note);
    size_t used = strlen(note);
    if (k->n_noise && !have && used < sizeof note)  // say so: the bounds are the floors alone
        snprintf(note + used, sizeof note - used, "%sthe --noise file lacks it: floors only", used ? "; " : "");
    if (worst && s.rel > *worst) *worst = s.rel;
    verdict_ok(k, name, "rel", s.rel, rb, ok, note);
}

static void free_noise(checker *k, float **noise) {
    for (int i = 0; i < k->n_noise; i++) free(noise[i]), noise[i] = NULL;
}

// Non-pad rows of golden [B, L, C] ([B, L] where C is 0: one value per row)
// against ours [n_tok, C] (normwise).
static void cmp_rows(checker *k, const st_file *f, const hax_case *c, const char *name, const float *ours, int n_tok,
                     int C) {
    float *g = golden_f32(f, name, C ? 3 : 2, c->B, c->L, C);
    if (!g) return;
    int C0 = C;
    if (C == 0) C = 1;
    float *p = xmalloc(sizeof(float) * (size_t)n_tok * C);
    case_pack_rows_f32(c, g, C, p);
    if (k->bf16) {
        float *pn[CHECK_MAX_NOISE] = {0};
        for (int i = 0; i < k->n_noise; i++) {
            float *gn = golden_f32(k->noise[i], name, C0 ? 3 : 2, c->B, c->L, C0);
            if (gn) case_pack_rows_f32(c, gn, C, pn[i] = xmalloc(sizeof(float) * (size_t)n_tok * C));
            free(gn);
        }
        cmp_bf16(k, name, ours, p, pn, (size_t)n_tok * C, &k->worst_fwd);
        free_noise(k, pn), free(p), free(g);
        return;
    }
    double e = norm_rel(ours, p, (size_t)n_tok * C);
    if (e > k->worst_fwd) k->worst_fwd = e;
    verdict(k, name, "rel", e, k->tol, "(non-pad rows)");
    free(p);
    free(g);
}

static void cmp_scalar(checker *k, const st_file *f, const char *name, double ours, int absolute, double tol) {
    const st_tensor *t = golden_tensor(f, name, 0, 0, 0, 0, 0);
    if (!t) return;
    double g;
    st_tensor_to_f64(t, &g);
    double e = absolute ? fabs(ours - g) : scalar_rel(ours, g);
    if (k->bf16) {  // a bf16 scalar: one or two ulps, or the reference's own spread
        double en = 0, gn;
        for (int i = 0; i < k->n_noise; i++) {
            const st_tensor *tn = golden_tensor(k->noise[i], name, 0, 0, 0, 0, 0);
            if (tn) st_tensor_to_f64(tn, &gn), en = fmax(en, absolute ? fabs(gn - g) : scalar_rel(gn, g));
        }
        tol = fmax(absolute ? BF16_ACC_FLOOR : BF16_SCALAR_REL_FLOOR, k->noise_factor * en);
    }
    if (!absolute && e > k->worst_fwd) k->worst_fwd = e;
    verdict(k, name, absolute ? "abs" : "rel", e, tol, NULL);
}

// Non-pad rows of an integer golden [B, L, C] against ours [n_tok, C]: exact.
static void cmp_int_rows(checker *k, const st_file *f, const hax_case *c, const char *name, const int64_t *ours, int C,
                         const char *note) {
    int64_t *g = golden_i64(f, name, 3, c->B, c->L, C);
    if (!g) return;
    size_t bad = 0, row = 0;
    for (int b = 0; b < c->B; b++)
        for (int t = 0; t < c->len[b]; t++, row++)
            for (int j = 0; j < C; j++)
                if (ours[row * C + j] != g[((size_t)b * c->L + t) * C + j]) bad++;
    verdict(k, name, "differ", (double)bad, 0, note ? note : "(exact, non-pad rows)");
    free(g);
}

// ---------------------------------------------------------------- LSH bucket flips

// ---------------------------------------------------------------- one case

typedef struct {
    int32_t *gq[HAX_MAX_LAYERS], *gk[HAX_MAX_LAYERS];  // golden buckets (LSH layers)
    int q_bad[HAX_MAX_LAYERS], k_bad[HAX_MAX_LAYERS], injected[HAX_MAX_LAYERS];
    char note[HAX_MAX_LAYERS][384];  // room for both 127-character bucket notes
    double flip_eps;                 // a tolerated flip: |golden projection| within this of the row norm
    int cpu;                         // 0: another backend, whose buckets are not read (bf16: all injected)
} bucket_info;

// Train-mode forward; where a layer's buckets differ from the golden ones only
// by tolerated flips, injects the golden buckets of that layer and runs again.
static void forward_with_flips(hax_engine *e, const hax_batch *b, hax_fwd_opts *o, hax_inject *inj, const st_file *f,
                               const hax_case *c, bucket_info *bi, hax_fwd_result *r) {
    const hax_model_config *cfg = &e->model->cfg;
    int lsh = sparse_pattern_has(cfg->sparse_mask, SPF_LSH);
    int argmax = (cfg->sparse_mask & SPARSE_ARGMAX_LSH) != 0;
    char name[128];
    for (int l = 0; lsh && l < cfg->n_layers; l++) {
        snprintf(name, sizeof name, "dbg.layers.%d.q_bucket", l);
        bi->gq[l] = golden_buckets(f, c, name, b->n_tok);
        snprintf(name, sizeof name, "dbg.layers.%d.k_bucket", l);
        bi->gk[l] = golden_buckets(f, c, name, b->n_tok);
        if (!bi->cpu && isinf(bi->flip_eps) && bi->gq[l] && bi->gk[l])
            inj->q_bucket[l] = bi->gq[l], inj->k_bucket[l] = bi->gk[l], bi->injected[l] = 1;
    }
    if (!bi->cpu) lsh = 0;  // one forward
    for (int iter = 0; iter <= cfg->n_layers; iter++) {
        engine_forward(e, b, o, r);
        if (!lsh) return;
        int first = -1;
        for (int l = 0; l < cfg->n_layers && first < 0; l++) {
            if (!bi->gq[l] || !bi->gk[l] || bi->injected[l]) continue;
            const hax_sparse_state *st = engine_cpu_sparse(e, l);
            int qt, kt;
            char wq[128] = "", wk[128] = "";
            snprintf(name, sizeof name, "dbg.layers.%d.hq_proj", l);
            bi->q_bad[l] = bucket_mismatch(f, c, st->q_bucket, bi->gq[l], name, cfg->num_hash, argmax, b->n_tok, bi->flip_eps, &qt, wq, sizeof wq);
            snprintf(name, sizeof name, "dbg.layers.%d.hk_proj", l);
            bi->k_bad[l] = bucket_mismatch(f, c, st->k_bucket, bi->gk[l], name, cfg->num_hash, argmax, b->n_tok, bi->flip_eps, &kt, wk, sizeof wk);
            if (bi->q_bad[l] + bi->k_bad[l] == 0) continue;
            first = l;
            if (qt == bi->q_bad[l] && kt == bi->k_bad[l]) {
                snprintf(bi->note[l], sizeof bi->note[l], "%d+%d tolerated %s flips (%s%s); golden buckets injected",
                         qt, kt, bi->flip_eps > 1e-5 ? "bf16" : "float32", wq, wk);
                inj->q_bucket[l] = bi->gq[l];
                inj->k_bucket[l] = bi->gk[l];
                bi->injected[l] = 1;
            } else {
                return;  // a real mismatch: reported by the caller
            }
        }
        if (first < 0) return;
    }
}

// bf16-pure: rows whose bucket differs (then injected), bounded like the ulp counts.
static void cmp_buckets_bf16(checker *k, const char *name, int bad, int inj, const int32_t *gold, const hax_case *c,
                             int n_tok) {
    long nb = 0, bound = (long)ceil(BF16_BEYOND_FRAC * n_tok);
    for (int i = 0; i < k->n_noise; i++) {
        int32_t *gn = golden_buckets(k->noise[i], c, name, n_tok);
        long ni = 0;
        for (int t = 0; gn && t < n_tok; t++) ni += gn[t] != gold[t];
        if (ni > nb) nb = ni;
        free(gn);
    }
    if (k->noise_factor * nb > bound) bound = (long)ceil(k->noise_factor * nb);
    char note[160];
    snprintf(note, sizeof note, "(rows%s; reference paths: %ld)", inj ? ", golden buckets injected" : "", nb);
    verdict(k, name, "differ", bad, (double)bound, note);
}

static void cmp_buckets(checker *k, const bucket_info *bi, int n_layers, const hax_case *c, int n_tok) {
    char name[128];
    for (int l = 0; l < n_layers; l++) {
        if (!bi->gq[l]) continue;
        for (int qk = 0; k->bf16 && qk < 2; qk++) {
            snprintf(name, sizeof name, "dbg.layers.%d.%c_bucket", l, "qk"[qk]);
            cmp_buckets_bf16(k, name, qk ? bi->k_bad[l] : bi->q_bad[l], bi->injected[l], qk ? bi->gk[l] : bi->gq[l], c, n_tok);
        }
        if (k->bf16) continue;
        int tol_q = bi->injected[l] ? bi->q_bad[l] : 0, tol_k = bi->injected[l] ? bi->k_bad[l] : 0;
        snprintf(name, sizeof name, "dbg.layers.%d.q_bucket", l);
        verdict(k, name, "differ", bi->q_bad[l] - tol_q, 0, bi->injected[l] ? bi->note[l] : "(exact, non-pad rows)");
        snprintf(name, sizeof name, "dbg.layers.%d.k_bucket", l);
        verdict(k, name, "differ", bi->k_bad[l] - tol_k, 0, bi->injected[l] ? bi->note[l] : "(exact, non-pad rows)");
    }
}

// The sparse branch's intermediates of the train forward.
static void cmp_sparse_dbg(checker *k, const hax_engine *e, const st_file *f, const hax_case *c, const hax_batch *b,
                           int *const *cand) {
    const hax_model_config *cfg = &e->model->cfg;
    char name[128];
    for (int l = 0; l < cfg->n_layers; l++) {
        const hax_sparse_state *st = engine_cpu_sparse(e, l);
        if (!st) continue;
        snprintf(name, sizeof name, "dbg.layers.%d.hq_proj", l);
        cmp_rows(k, f, c, name, st->hq_proj, b->n_tok, cfg->num_hash);
        snprintf(name, sizeof name, "dbg.layers.%d.hk_proj", l);
        cmp_rows(k, f, c, name, st->hk_proj, b->n_tok, cfg->num_hash);
        snprintf(name, sizeof name, "dbg.layers.%d.allowed_keys", l);
        if (st_find(f, name)) {
            int64_t *tab = xmalloc(sizeof(int64_t) * (size_t)b->n_tok * cfg->sparse_keys);
            sparse_allowed_table(st, b, sparse_pattern_has(cfg->sparse_mask, SPF_DENSE), cfg->sparse_keys, tab);
            cmp_int_rows(k, f, c, name, tab, cfg->sparse_keys, NULL);
            free(tab);
        }
        if (!st->key_score) continue;
        snprintf(name, sizeof name, "dbg.layers.%d.key_score", l);
        cmp_rows(k, f, c, name, st->key_score, b->n_tok, 0);
        // ranking targets: ours follow the (sorted) candidate order, the
        // golden ones the order of ks_selected_idx
        snprintf(name, sizeof name, "dbg.layers.%d.ks_selected_attn", l);
        char iname[128];
        snprintf(iname, sizeof iname, "rand.layers.%d.ks_selected_idx", l);
        int kc = cfg->k_c;
        size_t n = (size_t)c->B * kc;
        float *g = golden_f32(f, name, 2, c->B, kc, 0);
        int64_t *gi = golden_i64(f, iname, 2, c->B, kc, 0);
        if (g && gi && cand[l] && st->ks && st->ks->y) {
            float *ours = xcalloc(n, sizeof(float));
            for (int s = 0; s < c->B; s++)
                for (int m = 0; m < kc; m++)
                    for (int j = 0; j < kc; j++)
                        if (cand[l][s * kc + j] == gi[s * kc + m]) ours[s * kc + m] = (float)st->ks->y[s * kc + j];
            double err = norm_rel(ours, g, n);
            if (err > k->worst_fwd) k->worst_fwd = err;
            verdict(k, name, "rel", err, k->tol, NULL);
            free(ours);
        }
        free(g);
        free(gi);
    }
}

// The residual stream entering each block and norm_f (engine_block_input,
// taken right after the forward), where the file has it: the layer where a
// forward difference starts.
static void cmp_block_inputs(checker *k, const st_file *f, const hax_case *c, float *const *hin, int n_layers,
                             int n_tok, int d) {
    char name[64];
    for (int l = 0; l <= n_layers; l++) {
        block_input_name(name, sizeof name, l, n_layers);
        cmp_rows(k, f, c, name, hin[l], n_tok, d);
    }
}

static int is_degenerate(const char *name) {
    return strstr(name, "dx_proj_3.bias") != NULL;
}

// A gradient or a moment: normwise in fp32, in ulps in bf16-pure. The
// degenerate bias (mathematically 0) only reported in bf16-pure.
static void cmp_param_like(checker *k, const hax_param *p, const char *name, const float *ours, double *worst,
                           int degenerate) {
    float *gold = golden_f32(k->f, name, p->ndim, p->shape[0], p->shape[1], p->shape[2]);
    if (!gold) return;
    size_t n = p->numel;
    if (degenerate) {  // mathematically 0 (the ranking loss is shift invariant)
        double mx = 0;
        for (size_t j = 0; j < n; j++) mx = fmax(mx, fabs(ours[j]));
        verdict_ok(k, name, "abs", mx, 1e-8, k->bf16 ? 1 : -1,
                   k->bf16 ? "(zero in exact arithmetic: bf16 rounding noise, not bounded)" : "(zero in exact arithmetic)");
    } else if (k->bf16) {
        float *gn[CHECK_MAX_NOISE] = {0};
        for (int i = 0; i < k->n_noise; i++)
            gn[i] = golden_f32(k->noise[i], name, p->ndim, p->shape[0], p->shape[1], p->shape[2]);
        cmp_bf16(k, name, ours, gold, gn, n, worst);
        free_noise(k, gn);
    } else {
        double e = norm_rel(ours, gold, n);
        if (e > *worst) *worst = e;
        verdict(k, name, "rel", e, k->grad_tol, NULL);
    }
    free(gold);
}

// fp32 AdamW parameters: |a - b| <= 0.05 lr + 1e-6 |b| per element; the
// degenerate bias only within lr of the decayed parameter (golden README).
static void cmp_adamw_fp32(checker *k, const hax_model *m, int i, const char *name, const float *w, const hax_case *c) {
    const hax_param *p = &m->params[i];
    float *gold = golden_f32(k->f, name, p->ndim, p->shape[0], p->shape[1], p->shape[2]);
    if (!gold) return;
    int degenerate = is_degenerate(p->name);
    double worst = 0;
    int ok = 1;
    for (size_t j = 0; j < p->numel; j++) {
        double ref = degenerate ? model_w(m, i)[j] * (1 - c->lr * c->weight_decay) : gold[j];
        double diff = fabs((double)w[j] - ref);
        double lim = degenerate ? c->lr : 0.05 * c->lr + 1e-6 * fabs(gold[j]);
        if (!(diff <= lim)) ok = 0;
        if (diff / c->lr > worst) worst = diff / c->lr;
    }
    if (!degenerate && worst > k->worst_adamw) k->worst_adamw = worst;
    verdict_ok(k, name, "abs/lr", worst, degenerate ? 1.0 : 0.05, ok, degenerate ? "(vs the decayed parameter)" : NULL);
    free(gold);
}

// Gradients, then one AdamW step from zero moments (torch's float32 update,
// or the bf16-pure one): the parameters and, where the file has them, both
// moments.
static void cmp_grads_adamw(checker *k, const hax_model *m, const hax_case *c) {
    char name[160];
    for (int i = 0; i < m->n_params; i++) {
        const hax_param *p = &m->params[i];
        const float *g = model_g(m, i);
        int degenerate = is_degenerate(p->name);
        snprintf(name, sizeof name, "grad.%s", p->name);
        cmp_param_like(k, p, name, g, &k->worst_grad, degenerate);
        float *w = xmalloc(sizeof(float) * p->numel);
        float *mom = xcalloc(p->numel, sizeof(float));
        float *var = xcalloc(p->numel, sizeof(float));
        memcpy(w, model_w(m, i), sizeof(float) * p->numel);
        (k->bf16 ? adamw_bf16_update : adamw_update)(w, g, mom, var, p->numel, c->lr, c->beta1, c->beta2, c->eps,
                                                     c->weight_decay, 1);
        snprintf(name, sizeof name, "adamw.%s", p->name);
        if (k->bf16) cmp_param_like(k, p, name, w, &k->worst_adamw, degenerate);
        else cmp_adamw_fp32(k, m, i, name, w, c);
        snprintf(name, sizeof name, "adamw.exp_avg.%s", p->name);
        cmp_param_like(k, p, name, mom, &k->worst_adamw, degenerate);
        snprintf(name, sizeof name, "adamw.exp_avg_sq.%s", p->name);
        cmp_param_like(k, p, name, var, &k->worst_adamw, degenerate);
        free(w), free(mom), free(var);
    }
}

// Injected random tensors of the train pass: hash matrices and the sorted
// key-selection candidates.
static void load_injection(checker *k, hax_inject *inj, float **hash, int **cand, const st_file *f, const hax_case *c,
                           const char *prefix) {
    const hax_model_config *cfg = &c->cfg;
    char name[128];
    for (int l = 0; l < cfg->n_layers; l++) {
        snprintf(name, sizeof name, "%slayers.%d.hash_matrix", prefix, l);
        hash[l] = golden_f32(f, name, 2, cfg->state_size, cfg->num_hash, 0);
        if (hash[l]) mark_used(k, name);
        inj->hash[l] = hash[l];
        if (!cand) continue;
        snprintf(name, sizeof name, "%slayers.%d.ks_selected_idx", prefix, l);
        int kc = cfg->k_c;
        int64_t *idx = golden_i64(f, name, 2, c->B, kc, 0);
        cand[l] = NULL;
        if (!idx) continue;
        mark_used(k, name);
        // ks_noise is the draw that ks_selected_idx was taken from (its top-k
        // over real tokens); the index list is what is injected.
        snprintf(name, sizeof name, "%slayers.%d.ks_noise", prefix, l);
        mark_used(k, name);
        cand[l] = xmalloc(sizeof(int) * (size_t)c->B * kc);
        for (int s = 0; s < c->B; s++) {  // insertion sort: ascending local positions
            int *row = cand[l] + s * kc;
            for (int j = 0; j < kc; j++) {
                int v = (int)idx[s * kc + j], q = j;
                if (v < 0 || v >= c->len[s])
                    hax_die("%s: tensor %s: expected positions of real tokens (< %d) in row %d, found %d", f->path, name,
                            c->len[s], s, v);
                while (q > 0 && row[q - 1] > v) {
                    row[q] = row[q - 1];
                    q--;
                }
                row[q] = v;
            }
        }
        inj->ks_cand[l] = cand[l];
        free(idx);
    }
}

// Every tensor of the file that is neither a parameter (case_load_params
// refuses other names) nor compared nor used as an input fails: a name
// hax-check does not know (misspelt, or a layer or family this case lacks)
// would otherwise pass unchecked.
static void report_unused(checker *k, const hax_model *m) {
    for (int i = 0; i < k->f->n_tensors; i++) {
        const char *name = k->f->tensors[i].name;
        if (k->used[i] || model_find(m, name) >= 0) continue;
        if (!k->cpu && strncmp(name, "dbg.", 4) == 0) {  // the branch's inside: CPU engine only
            verdict_ok(k, name, "skipped", 0, 0, 1, "(intermediates are compared on the cpu backend only)");
            continue;
        }
        verdict_ok(k, name, "unknown", 0, 0, 0, "(not a tensor of the golden format for this case: not checked)");
    }
}

static int check_case(checker *k, const char *path) {
    st_file *f = st_open(path);
    hax_case c;
    case_load(&c, f);
    hax_model m;
    model_build(&m, &c.cfg);
    case_load_params(&m, f);
    hax_batch b;
    case_batch(&c, &b);
    const hax_model_config *cfg = &m.cfg;
    int n = b.n_tok, d = cfg->hidden_size, V = cfg->vocab_size;
    printf("%s (%s, %s, %d layers, batch %d x %d, %d tokens)\n", c.name,
           arch_name(cfg->arch),
           cfg->sparse_mask ? cfg->sparse_arch : "no sparse branch", cfg->n_layers, c.B, c.L, n);
    fflush(stdout);  // before any error line on stderr
    const char *meta = st_meta(f, "hax_case");
    if (!k->bf16 && meta && strstr(meta, "\"precision\": \"bf16-pure\""))
        hax_die("%s: metadata hax_case: precision bf16-pure: expected hax-check --precision bf16-pure", path);
    if (k->bf16) {  // the reference's cast of the model to bf16
        m.cfg.precision = PREC_BF16_PURE;
        long changed = bf16_round_count(m.data, m.n_floats);
        if (changed) printf("  (%ld parameter values rounded to bf16)\n", changed);
    }
    int fail0 = k->n_fail;
    k->worst_fwd = k->worst_grad = k->worst_adamw = 0;
    k->f = f;
    k->used = xcalloc(f->n_tensors ? f->n_tensors : 1, 1);
    mark_used(k, "input_ids");
    mark_used(k, "loss_mask");

    char why[256];
    if (!engine_backend_available(k->backend, &m.cfg, why, sizeof why))
        hax_die("hax-check --backend %s: %s", k->backend, why);
    hax_engine *e = engine_create(k->backend, &m, 0, n, b.n_seq, c.L);
    hax_inject inj;
    memset(&inj, 0, sizeof inj);
    float *hash[HAX_MAX_LAYERS] = {0}, *ehash[HAX_MAX_LAYERS] = {0};
    int *cand[HAX_MAX_LAYERS] = {0};
    load_injection(k, &inj, hash, cand, f, &c, "rand.");
    for (int l = 0; k->bf16 && l < cfg->n_layers; l++)  // torch.randn in bf16 (§5.4)
        if (hash[l]) bf16_round_count(hash[l], (size_t)cfg->state_size * cfg->num_hash);
    hax_fwd_opts o = {1, 0, 0, 0, &inj};
    hax_fwd_result r;
    bucket_info bi;
    memset(&bi, 0, sizeof bi);
    // bf16: every flip injected, counted by cmp_buckets; --emit: the engine's own buckets
    bi.flip_eps = k->emit ? 0 : k->bf16 ? INFINITY : 1e-5;
    model_zero_grad(&m);
    bi.cpu = k->cpu;
    forward_with_flips(e, &b, &o, &inj, f, &c, &bi, &r);
    float *hin[HAX_MAX_LAYERS + 1];  // the forward's block inputs, before anything else runs
    for (int l = 0; l <= cfg->n_layers; l++) {
        hin[l] = xmalloc(sizeof(float) * (size_t)(n > 0 ? n : 1) * d);
        engine_block_input(e, l, hin[l], n);
    }
    engine_backward(e);

    cmp_block_inputs(k, f, &c, hin, cfg->n_layers, n, d);
    cmp_rows(k, f, &c, "out.last_hidden_state", engine_hidden(e), n, d);
    cmp_rows(k, f, &c, "out.logits", engine_logits(e), n, V);
    cmp_scalar(k, f, "out.loss", r.loss, 0, k->tol);
    cmp_scalar(k, f, "out.gate_loss", r.gate_loss, 0, k->tol);
    char name[128];
    for (int l = 0; l < cfg->n_layers; l++) {
        snprintf(name, sizeof name, "out.gate_loss.layers.%d", l);
        cmp_scalar(k, f, name, r.gate_layer[l], 0, k->tol);
    }
    cmp_scalar(k, f, "out.total_loss", r.total_loss, 0, k->tol);
    cmp_scalar(k, f, "out.acc", r.acc, 1, 1e-6);
    if (k->cpu) cmp_buckets(k, &bi, cfg->n_layers, &c, n);
    if (k->cpu) cmp_sparse_dbg(k, e, f, &c, &b, cand);
    cmp_grads_adamw(k, &m, &c);
    if (k->emit) {
        check_emit_in ei = {&c, &m, &b, engine_hidden(e), engine_logits(e), hin, &r, k->bf16, k->cpu ? e : NULL};
        check_emit(k->emit, f, &ei);
        printf("  wrote %s\n", k->emit);
    }

    // evaluation pass (where the file has one): its own hash matrices, no
    // ranking loss, computed buckets
    if (st_find(f, "eval.logits") || st_find(f, "eval.loss") || st_find(f, "eval.acc")) {
        hax_inject einj;
        memset(&einj, 0, sizeof einj);
        load_injection(k, &einj, ehash, NULL, f, &c, "eval.rand.");
        for (int l = 0; k->bf16 && l < cfg->n_layers; l++)
            if (ehash[l]) bf16_round_count(ehash[l], (size_t)cfg->state_size * cfg->num_hash);
        hax_fwd_opts eo = {0, 0, 0, 0, &einj};
        engine_forward(e, &b, &eo, &r);
        cmp_rows(k, f, &c, "eval.logits", engine_logits(e), n, V);
        cmp_scalar(k, f, "eval.loss", r.loss, 0, k->tol);
        cmp_scalar(k, f, "eval.acc", r.acc, 1, 1e-6);
    }
    report_unused(k, &m);

    int fails = k->n_fail - fail0;
    printf("%s: %s: forward worst %.1e, gradients worst %.1e, adamw worst %.1e %s\n", c.name,
           fails ? "FAIL" : "ok", k->worst_fwd, k->worst_grad, k->worst_adamw, k->bf16 ? "(normwise)" : "lr");
    if (fails) printf("%s: %d tensors past tolerance\n", c.name, fails);
    for (int l = 0; l < cfg->n_layers; l++) {
        free(hash[l]);
        free(ehash[l]);
        free(cand[l]);
        free(bi.gq[l]);
        free(bi.gk[l]);
    }
    for (int l = 0; l <= cfg->n_layers; l++) free(hin[l]);
    free(k->used);
    engine_free(e);
    hax_batch_free(&b);
    model_free(&m);
    case_free(&c);
    st_close(f);
    fflush(stdout);
    return fails;
}

static void usage(void) {
    fprintf(stderr,
            "usage: hax-check [--tol X] [--grad-tol Y] [-q] [--precision fp32|bf16-pure] [--noise FILE]...\n"
            "                 [--noise-factor F] [--emit FILE] CASE.safetensors...\n"
            "  runs golden-format cases on the CPU engine and compares every tensor they hold\n"
            "  --tol X          forward tensors and losses, normwise (default 1e-5)\n"
            "  --grad-tol Y     gradients, normwise per tensor (default 10 x tol)\n"
            "  -q               print only failures and one line per case\n"
            "  --precision P    fp32 (default) or bf16-pure: the reference's regime, tensors compared in bf16 ulps\n"
            "  --noise FILE     bf16-pure: the same case from another run of the reference (its other kernel\n"
            "                   path, another device); bounds become F x its differences where larger than\n"
            "                   the floors (one CASE); up to 4 files: the largest difference of any of them\n"
            "  --noise-factor F (default 4)\n"
            "  --emit FILE      write the engine's results for CASE in the golden format (one CASE)\n"
            "  --backend B      cpu (default) or cuda (where built; the branch's intermediates not compared)\n");
    exit(HAX_EXIT_USAGE);
}

int main(int argc, char **argv) {
    checker k;
    memset(&k, 0, sizeof k);
    k.tol = 1e-5;
    k.grad_tol = -1;
    k.noise_factor = 4;
    k.backend = "cpu";
    const char *noise[CHECK_MAX_NOISE];
    int n_noise = 0, n_files = 0;
    const char **files = xmalloc(sizeof(char *) * (argc > 1 ? argc : 1));
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--tol") == 0) k.tol = parse_number("--tol", i + 1 < argc ? argv[++i] : NULL, 0, 1, "in (0, 1)");
        else if (strcmp(argv[i], "--grad-tol") == 0) k.grad_tol = parse_number("--grad-tol", i + 1 < argc ? argv[++i] : NULL, 0, 1, "in (0, 1)");
        else if (strcmp(argv[i], "-q") == 0) k.quiet = 1;
        else if (strcmp(argv[i], "--precision") == 0) {
            const char *v = i + 1 < argc ? argv[++i] : "";
            if (strcmp(v, "bf16-pure") != 0 && strcmp(v, "fp32") != 0) {
                fprintf(stderr, "hax: hax-check: --precision: expected fp32 or bf16-pure, found '%s'\n", v);
                exit(HAX_EXIT_USAGE);
            }
            k.bf16 = strcmp(v, "bf16-pure") == 0;
        } else if (strcmp(argv[i], "--noise") == 0 && i + 1 < argc) {
            if (n_noise == CHECK_MAX_NOISE) {
                fprintf(stderr, "hax: hax-check: --noise: expected at most %d files, found more\n", CHECK_MAX_NOISE);
                exit(HAX_EXIT_USAGE);
            }
            noise[n_noise++] = argv[++i];
        }
        else if (strcmp(argv[i], "--noise-factor") == 0) k.noise_factor = parse_number("--noise-factor", i + 1 < argc ? argv[++i] : NULL, 0.999, 1e6, "from 1 to 1e6");
        else if (strcmp(argv[i], "--emit") == 0 && i + 1 < argc) k.emit = argv[++i];
        else if (strcmp(argv[i], "--backend") == 0 && i + 1 < argc) k.backend = argv[++i];
        else if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) usage();
        else if (argv[i][0] == '-' && argv[i][1]) {
            fprintf(stderr, "hax: hax-check: unknown option '%s'\n", argv[i]);
            usage();
        } else files[n_files++] = argv[i];
    }
    if (n_files == 0) usage();
    if ((n_noise || k.emit) && n_files != 1) {
        fprintf(stderr, "hax: hax-check: --noise and --emit: expected one CASE, found %d\n", n_files);
        exit(HAX_EXIT_USAGE);
    }
    if (n_noise && !k.bf16) {
        fprintf(stderr, "hax: hax-check: --noise: expected --precision bf16-pure with it\n");
        exit(HAX_EXIT_USAGE);
    }
    k.cpu = strcmp(k.backend, "cpu") == 0;
    st_file *nf[CHECK_MAX_NOISE];
    for (int i = 0; i < n_noise; i++) k.noise[i] = nf[i] = st_open(noise[i]);
    k.n_noise = n_noise;
    if (k.grad_tol < 0) k.grad_tol = fmin(10 * k.tol, 0.5);
    int bad_cases = 0;
    for (int i = 0; i < n_files; i++) bad_cases += check_case(&k, files[i]) > 0;
    printf("%d of %d cases ok, %d tensors checked, %d past tolerance\n", n_files - bad_cases, n_files, k.n_checked,
           k.n_fail);
    free(files);
    for (int i = 0; i < n_noise; i++) st_close(nf[i]);
    return bad_cases ? HAX_EXIT_ERROR : HAX_EXIT_OK;
}
