// sparse_case.h: the small ragged test case of the sparse branch shared by
// test_sparse.c (against the dense mirror) and test_sparse_rules.c (list
// rules, packing, threads, refusals): sizes, make_case / run_impl and a
// normwise error.
#ifndef HAX_TESTS_SPARSE_CASE_H
#define HAX_TESTS_SPARSE_CASE_H

#include <float.h>
#include <omp.h>
#include <stdint.h>
#include <sys/wait.h>
#include <unistd.h>

#include "src/core/common.h"
#include "src/model/model_config.h"
#include "src/sparse/sparse.h"
#include "ks_flat.h"
#include "test.h"

#define NN 4          // state size N
#define EE 6          // values E
#define LDX (EE + 2)  // X's leading dimension (Mamba-2 style slice)
#define HB 3          // hash bits h
#define L_PAD 24      // model_len
#define KEYS 8        // sparse_keys
#define DML 40        // data_max_length: dilation 5 (k_c 8) or 10 (k_c 4)
#define NPARAM KS_FLAT_FLOATS(NN)  // the key-selection MLP

// A ragged batch: lengths 1, 7, 20, 3 (1 and 3 shorter than k_c).
static const int LENS[] = {1, 7, 20, 3};
#define NSEQ 4

typedef struct {
    hax_model_config cfg;
    hax_batch b;
    int seq_off[NSEQ + 1];
    int n_tok;
    float *X, *W, *Hm, *ksp, *R;  // R: weights of the test loss sum(R . attn)
    int *cand;
} tcase;

static inline void make_case(tcase *c, const char *pattern, hax_semantics sem, unsigned seed,
                      const int *lens, int n_seq) {
    memset(c, 0, sizeof(*c));
    c->cfg.state_size = NN, c->cfg.intermediate_size = EE;
    c->cfg.sparse_keys = KEYS, c->cfg.num_hash = HB, c->cfg.data_max_length = DML;
    c->cfg.semantics = sem;
    char err[200];
    if (model_config_set_sparse(&c->cfg, pattern, err, sizeof err)) hax_die("%s", err);
    c->seq_off[0] = 0;
    for (int s = 0; s < n_seq; s++) c->seq_off[s + 1] = c->seq_off[s] + lens[s];
    c->n_tok = c->seq_off[n_seq];
    c->b.n_seq = n_seq, c->b.n_tok = c->n_tok, c->b.seq_off = c->seq_off;
    c->b.model_len = L_PAD, c->b.global_n_seq = n_seq;
    c->X = xmalloc(sizeof(float) * c->n_tok * LDX);
    c->W = xmalloc(sizeof(float) * 2 * NN * EE);
    c->Hm = xmalloc(sizeof(float) * NN * HB);
    c->ksp = xmalloc(sizeof(float) * NPARAM);
    c->R = xmalloc(sizeof(float) * c->n_tok * EE);
    test_fill(c->X, (size_t)c->n_tok * LDX, seed, 1.0f);
    test_fill(c->W, 2 * NN * EE, seed + 1, 0.8f);
    test_fill(c->Hm, NN * HB, seed + 2, 1.5f);
    test_fill(c->ksp, NPARAM, seed + 3, 0.6f);
    test_fill(c->R, (size_t)c->n_tok * EE, seed + 4, 1.0f);
    int k = c->cfg.k_c > 0 ? c->cfg.k_c : 1;
    c->cand = xmalloc(sizeof(int) * n_seq * k);
    for (int s = 0; s < n_seq; s++) {  // a deterministic distinct subset, ascending
        int n = lens[s], m = 0;
        for (int j = 0; j < n && m < k; j++)
            if (n - j <= k - m || (j * 7 + s) % 3 != 0) c->cand[s * k + m++] = j;
        for (; m < k; m++) c->cand[s * k + m] = -1;
    }
}

static inline void free_case(tcase *c) {
    free(c->X), free(c->W), free(c->Hm), free(c->ksp), free(c->R), free(c->cand);
}

// The implementation: forward (training), then backward with dattn = R.
typedef struct {
    float *attn, *dX, *dW, *dks;
    double gate;
} tresult;

static inline hax_sparse_state *run_impl(tcase *c, tresult *r, float gate_scale, int backward) {
    hax_sparse_state *st = sparse_state_alloc(&c->cfg, c->n_tok, c->b.n_seq, L_PAD);
    ks_params kp = ks_flat_params(c->ksp, NN);
    r->attn = xcalloc((size_t)c->n_tok * EE, sizeof(float));
    r->dX = xcalloc((size_t)c->n_tok * LDX, sizeof(float));
    r->dW = xcalloc(2 * NN * EE, sizeof(float));
    r->dks = xcalloc(NPARAM, sizeof(float));
    r->gate = sparse_forward(st, &c->cfg, &c->b, c->X, LDX, c->W, &kp, c->Hm, c->cand, 1, r->attn, EE);
    if (backward) {
        ks_grads g = ks_flat_grads(r->dks, NN);
        sparse_backward(st, &c->cfg, &c->b, c->R, EE, gate_scale, c->X, LDX, c->W, &kp, r->dX, LDX,
                        r->dW, &g);
    }
    return st;
}

static inline void free_result(tresult *r) { free(r->attn), free(r->dX), free(r->dW), free(r->dks); }

static inline double rel_err_d(const float *a, const double *b, size_t n, size_t lda, size_t ldb,
                        size_t w) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < w; j++) {
            double d = a[i * lda + j] - b[i * ldb + j];
            num += d * d, den += b[i * ldb + j] * b[i * ldb + j];
        }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}


#endif
