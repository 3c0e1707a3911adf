// cuda/engine/internal.cuh: what cuda/engine/engine.cu (buffers, forward and backward
// of the block stack, graph steps, device-resident training) and
// cuda/engine/mixer.cu (one layer's mixer with the sparse branch, forward and
// backward) share: the engine's state and small helpers. Not for callers
// (they use cuda/engine/engine.h).
#ifndef HAX_CU_ENGINE_INTERNAL_CUH
#define HAX_CU_ENGINE_INTERNAL_CUH

#include "cuda/ops/adamw.h"
#include "cuda/ops/attn.h"
#include "cuda/core/common.cuh"
#include "cuda/engine/engine.h"
#include "cuda/ops/mlp.h"
#include "cuda/sparse/sparse.h"

#define CU_MAX_GRAPHS 64  // graphs kept (one per padded batch shape)
#define CU_BUCKET 256     // graph steps pad the packed positions to a multiple of this

typedef struct {
    float *hin, *a, *rstd;                                  // block input, normed input, its 1/rms
    float *xz, *conv_pre, *X, *x_dbl, *draw, *y, *ckpt;     // Mamba (mixer_mamba.h names)
    float *p, *xbc_pre, *xbc, *delta, *grstd, *g;           // Mamba-2 (mixer_mamba2.h names; y, ckpt shared)
    attn_acts att;                                          // Samba attention layers (odd)
    float *s, *rstd2, *a2;                                  // Samba: residual after the mixer, MLP norm
    mlp_acts mlp;                                           // Samba GatedMLP
    // the sparse branch (Enhanced Mamba / Mamba-2)
    float *attn;              // [n, E] branch output (arena)
    cu_sparse_state *sp;
    float *hash_dev, *hash;   // [N, h] the hash matrix of the last forward (device, host)
    int have_hash;
    int *cand_dev, *cand;     // [cap_seq, k_c] key-selection candidates (device, host)
    int32_t *qb_dev, *kb_dev; // [cap_tok] injected buckets (device)
} cu_layer;

typedef struct {
    const hax_model_config *cfg;
    float *w, *gr;            // device parameters and gradients [n_floats]
    int resident;             // 1 after push: the device weights are the master copy
    float *am, *av;           // device AdamW moments [n_floats] (resident mode)
    cuda_adamw_hp *hp;        // device AdamW scalars of the current step
    int *flag;                // device finiteness flag
    // graph steps (engine_cuda_train_step): the batch padded to a bucket, the
    // CE scale on the device, and the graphs captured per padded shape
    hax_batch pad;
    int pad_cap_tok, pad_cap_seq;
    float *ce_scale;
    cuda_adamw_hp hp_host;
    float ce_scale_host;
    struct { int n, n_seq, global_n_seq, model_len; void *exec; } graphs[CU_MAX_GRAPHS];
    int n_graphs, graph_launches;
    float *host_g;            // host staging of the gradients
    int cap_tok, cap_seq;     // the batch capacity of the buffers below
    int cap_len;              // the longest sequence / model_len the sparse states take
    float *arena;             // activations
    void *work;               // op workspaces (used one op at a time)
    int32_t *ids, *labels;
    uint8_t *mask;
    int *seq_off;
    double *loss;
    int *correct, *count;     // device [cap_seq]
    int *h_correct, *h_count; // host [cap_seq]
    cu_layer *L;
    float *hlast, *hf, *rstd_f, *logits, *dlogits, *dh, *dh2, *da, *tmp;
    float *o, *do_, *dy, *ddraw, *dx_dbl, *dxz, *dX;  // Mamba backward scratch (o also in forward)
    float *dp, *dxbc, *dg;                            // Mamba-2 backward scratch (dy shared)
    float *dmix, *dattn;                              // Samba d mixer output; sparse d branch output
    double *h_gate;                                   // host [n_layers] the layers' ranking-loss sums
    float *h_hidden, *h_logits;                       // host copies, made on request
    int hidden_ok, logits_ok;
    const hax_batch *batch;
    int n_tok;
    double ce_count;
    // the current forward's scalars the sparse branch needs (set by sparse_prepare)
    int train, model_len, global_n_seq;
} cu_impl;

static inline float *dev_w(const cu_impl *c, const hax_model *m, int idx) {
    return idx < 0 ? NULL : c->w + m->params[idx].offset;
}
static inline float *dev_g(const cu_impl *c, const hax_model *m, int idx) {
    return idx < 0 ? NULL : c->gr + m->params[idx].offset;
}

static inline int has_ks(const hax_model_config *cfg) { return (cfg->sparse_mask & SPARSE_KEY_SELECTION) != 0; }
static inline int has_lsh(const hax_model_config *cfg) {
    return (cfg->sparse_mask & (SPARSE_SIGN_BIN_LSH | SPARSE_ARGMAX_LSH)) != 0;
}

// cuda/engine/mixer.cu
// Bytes of the workspace cu_eng_mixer_backward's column sums (dEv) take.
size_t cu_eng_colsum_work_bytes(int n, int E);
// Sets the forward's scalars (c->train, model_len, global_n_seq) and uploads
// the sparse branch's random inputs for b, run as the (padded) batch bd.
void cu_eng_sparse_prepare(cu_impl *c, const hax_model *m, const hax_batch *b, const hax_batch *bd,
                           const hax_fwd_opts *o);
// Mixer of layer l on L->a (n positions, n_seq sequences) into out [n, d].
void cu_eng_mixer_forward(cu_impl *c, const hax_model *m, int l, int n, int n_seq, float *out);
// Mixer backward of layer l: dout [n, d] -> da (+=) and the layer's gradients.
void cu_eng_mixer_backward(cu_impl *c, const hax_model *m, int l, int n, int n_seq, const float *dout, float *da);

#endif
