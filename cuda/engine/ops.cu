// cuda/engine/ops.cu: the CUDA backend's op table (src/engine/ops.h): device
// memory on the one stream and the cuda_* ops, which the table's signatures
// are (wrappers only for the sparse branch and the memory).
#include "cuda/core/common.cuh"
#include "cuda/engine/internal.h"
#include "cuda/ops/attn.h"
#include "cuda/ops/basic.h"
#include "cuda/ops/conv.h"
#include "cuda/ops/gate.h"
#include "cuda/ops/linear.h"
#include "cuda/ops/mlp.h"
#include "cuda/ops/scan.h"
#include "cuda/ops/ssd.h"
#include "cuda/sparse/sparse.h"

// ---------------------------------------------------------------- memory

static void cu_zero_rows(float *p, int ld, int width, int rows) {
    if (rows <= 0) return;
    CUDA_CHECK(cudaMemset2DAsync(p, sizeof(float) * ld, 0, sizeof(float) * width, rows, cu_stream()));
}

static size_t max_sz(size_t a, size_t b) { return a > b ? a : b; }

// Bytes of the largest op workspace for n positions in n_seq sequences.
static size_t cu_work_bytes(const hax_model *m, int n, int n_seq) {
    const hax_model_config *cfg = &m->cfg;
    int d = cfg->hidden_size, E = cfg->intermediate_size, N = cfg->state_size, V = cfg->vocab_size;
    size_t w = cuda_norm_workspace_bytes(n, d > E ? d : E);
    w = max_sz(w, cuda_conv_workspace_bytes(n, n_seq, m->conv_dim, cfg->conv_kernel));
    w = max_sz(w, cuda_ce_workspace_bytes(n, n_seq));
    w = max_sz(w, cuda_embedding_workspace_bytes(n, d, V));
    if (arch_ssm_mixer(cfg) == MIXER_MAMBA2) w = max_sz(w, cuda_ssd_workspace_bytes(n, n_seq, cfg->n_heads, cfg->head_dim, N));
    else w = max_sz(w, cuda_scan_workspace_bytes(n, n_seq, E, N));
    if (arch_info(cfg->arch)->attn_every || arch_has_mlp(cfg)) {
        w = max_sz(w, cuda_attn_workspace_bytes(cfg, n));
        w = max_sz(w, cuda_mlp_workspace_bytes(n, d, cfg->mlp_hidden));
    }
    if (cfg->sparse_mask) w = max_sz(w, cuda_gate_work_bytes(n, E));
    return w;
}

// ---------------------------------------------------------------- sparse branch

static void *cu_sparse_alloc(const hax_model_config *cfg, int max_tok, int max_seq, int max_len) {
    return cuda_sparse_state_alloc(cfg, max_tok, max_seq, max_len);
}
static void cu_sparse_free(void *st) { cuda_sparse_state_free((cu_sparse_state *)st); }
static void cu_sparse_force_buckets(void *st, const int32_t *q, const int32_t *k) {
    cuda_sparse_force_buckets((cu_sparse_state *)st, q, k);
}

static void cu_sparse_forward(void *st, const hax_model_config *cfg, const hax_batch *b, const int *seq_off,
                              const float *X, int ldX, const float *W_xx, const ks_params *ks, const float *hash,
                              const int *cand, int train, float *attn, int ld_attn) {
    ((cu_sparse_state *)st)->bf16 = cfg->precision == PREC_BF16_PURE;  // read at every forward, as the CPU's
    cuda_sparse_forward((cu_sparse_state *)st, seq_off, b->n_seq, b->n_tok, b->model_len, X, ldX, W_xx, ks, hash,
                        cand, train, attn, ld_attn);
}

static const double *cu_sparse_gate_loss(const void *st) { return ((const cu_sparse_state *)st)->gate_loss; }

static void cu_sparse_backward(void *st, const hax_model_config *cfg, const hax_batch *b, const int *seq_off,
                               const float *dattn, int ld_dattn, float gate_scale, const float *X, int ldX,
                               const float *W_xx, const ks_params *ks, float *dX, int ld_dX, float *dW_xx,
                               ks_grads *dks) {
    (void)cfg;
    cuda_sparse_backward((cu_sparse_state *)st, seq_off, b->n_seq, b->n_tok, dattn, ld_dattn, gate_scale, X, ldX,
                         W_xx, ks, dX, ld_dX, dW_xx, dks);
}

// The branch's random inputs, drawn on the device (cuda/sparse/sparse.h).
static void cu_ks_draw_candidates(void *st, int *cand, const hax_batch *b, const int *seq_off, int n_seq_pad, int k_c,
                                  uint64_t seed, uint32_t step, uint32_t layer) {
    cu_sparse_state *s = (cu_sparse_state *)st;
    if (k_c != s->k_c) hax_die("cuda ks_draw_candidates: k_c: expected the state's %d, found %d", s->k_c, k_c);
    cuda_sparse_draw_candidates(s, cand, seq_off, b->n_seq, n_seq_pad, b->sample_idx, seed, step, layer);
}

// ---------------------------------------------------------------- the table

static hax_ops make_ops(void) {
    hax_ops o = {};
    o.name = "cuda", o.host = 0, o.align = 64;  // 256-byte aligned tensors
    o.alloc = cuda_malloc, o.free = cuda_free, o.zero = cuda_zero, o.zero_rows = cu_zero_rows;
    o.upload = cuda_upload, o.download = cuda_download, o.sync = cuda_sync;
    o.work_bytes = cu_work_bytes, o.scan_ckpt_floats = cuda_scan_ckpt_floats, o.ssd_ckpt_floats = cuda_ssd_ckpt_floats;
    o.embedding_forward = cuda_embedding_forward, o.embedding_backward = cuda_embedding_backward;
    o.rmsnorm_forward = cuda_rmsnorm_forward, o.rmsnorm_backward = cuda_rmsnorm_backward;
    o.add_rmsnorm_forward = cuda_add_rmsnorm_forward, o.add_rmsnorm_backward = cuda_add_rmsnorm_backward;
    o.add = cuda_add, o.logits_forward = cuda_logits_forward, o.logits_backward = cuda_logits_backward;
    o.ce_forward = cuda_ce_forward, o.ce_backward = cuda_ce_backward, o.ce_backward_bf16 = cuda_ce_backward_bf16,
    o.scale = cuda_scale;
    o.round_bf16 = cuda_round_bf16, o.round_bf16_rows = cuda_round_bf16_rows, o.add_bf16_rows = cuda_add_bf16_rows;
    o.linear_forward = cuda_linear_forward, o.linear_backward = cuda_linear_backward;
    o.conv_silu_forward = cuda_conv_silu_forward, o.conv_silu_backward = cuda_conv_silu_backward;
    o.scan_forward = cuda_scan_forward, o.scan_backward = cuda_scan_backward;
    o.ssd_forward = cuda_ssd_forward, o.ssd_backward = cuda_ssd_backward;
    o.gated_norm_forward = cuda_gated_norm_forward, o.gated_norm_backward = cuda_gated_norm_backward;
    o.gate_forward = cuda_gate_forward, o.gate_backward = cuda_gate_backward;
    o.add_attn_forward = cuda_add_attn_forward, o.add_attn_backward = cuda_add_attn_backward;
    o.attn_forward = cuda_attn_forward, o.attn_backward = cuda_attn_backward;
    o.mlp_forward = cuda_mlp_forward, o.mlp_backward = cuda_mlp_backward;
    o.sparse_alloc = cu_sparse_alloc, o.sparse_free = cu_sparse_free, o.sparse_force_buckets = cu_sparse_force_buckets;
    o.sparse_forward = cu_sparse_forward, o.sparse_gate_loss = cu_sparse_gate_loss;
    o.sparse_backward = cu_sparse_backward;
    o.lsh_draw_hash = cuda_lsh_draw_hash, o.ks_draw_candidates = cu_ks_draw_candidates;
    return o;
}

static const hax_ops cuda_ops = make_ops();

extern "C" const hax_ops *hax_cuda_ops(void) { return &cuda_ops; }
