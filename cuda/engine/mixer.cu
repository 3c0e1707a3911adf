// cuda/engine/mixer.cu: the mixer of one layer of the CUDA engine (Mamba,
// Mamba-2 or Samba attention, with the sparse branch on X), forward and
// backward, and the host-side preparation of the branch's random inputs.
// The structure follows src/mixer_mamba*.c and src/engine/cpu.c step by step.
#include <string.h>

#include "cuda/ops/basic.h"
#include "cuda/ops/conv.h"
#include "cuda/engine/internal.cuh"
#include "cuda/ops/linear.h"
#include "cuda/ops/scan.h"
#include "cuda/ops/ssd.h"

extern "C" {
#include "src/core/rng.h"
}

// ---------------------------------------------------------------- small kernels

// Mamba gate: o = y·silu(z) (+ (attn·Ev)·silu(z), the Enhanced mixer, in
// the reference's order of operations as mixer_mamba.c), z = xz[:, E:2E].
__global__ static void gate_fwd_kernel(float *o, const float *y, const float *xz, const float *attn,
                                       const float *Ev, int n, int E) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long)n * E) return;
    int t = (int)(i / E), c = (int)(i % E);
    float g = cu_silu(xz[(size_t)t * 2 * E + E + c]);
    o[i] = y[i] * g;
    if (attn) o[i] += attn[i] * Ev[c] * g;
}

// Its backward: dy = do·silu(z) (=), dz = do·(y + attn·Ev)·silu'(z) into xz's
// z half (=); with attn also dattn += do·Ev·silu(z) and prod = do·attn·silu(z)
// (=, summed over positions into dEv afterwards).
__global__ static void gate_bwd_kernel(float *dy, float *dxz, float *dattn, float *prod, const float *do_,
                                       const float *y, const float *xz, const float *attn, const float *Ev, int n,
                                       int E) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long)n * E) return;
    int t = (int)(i / E), c = (int)(i % E);
    float z = xz[(size_t)t * 2 * E + E + c];
    float g = cu_silu(z), v = y[i];
    if (attn) {
        v += attn[i] * Ev[c];
        dattn[i] += do_[i] * Ev[c] * g;
        prod[i] = do_[i] * attn[i] * g;
    }
    dy[i] = do_[i] * g;
    dxz[(size_t)t * 2 * E + E + c] = do_[i] * v * cu_dsilu(z);
}

// Enhanced Mamba-2: y += attn·Ev before the gated norm (mixer_mamba2.c).
__global__ static void add_attn_kernel(float *y, const float *attn, const float *Ev, int n, int E) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < (long)n * E) y[i] += attn[i] * Ev[(int)(i % E)];
}

// Its backward: dattn += dy·Ev, prod = dy·attn (=).
__global__ static void add_attn_bwd_kernel(float *dattn, float *prod, const float *dy, const float *attn,
                                           const float *Ev, int n, int E) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long)n * E) return;
    dattn[i] += dy[i] * Ev[(int)(i % E)];
    prod[i] = dy[i] * attn[i];
}

// Column sums of x [n, E] in a fixed order: partials over chunks of
// COLSUM_CHUNK rows in double, then the chunks in order, added (+=) to out.
#define COLSUM_CHUNK 64
__global__ static void colsum_part_kernel(double *part, const float *x, int n, int E) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    int n_chunk = (n + COLSUM_CHUNK - 1) / COLSUM_CHUNK;
    if (i >= (long)n_chunk * E) return;
    int ch = (int)(i / E), c = (int)(i % E);
    int t1 = (ch + 1) * COLSUM_CHUNK < n ? (ch + 1) * COLSUM_CHUNK : n;
    double acc = 0;
    for (int t = ch * COLSUM_CHUNK; t < t1; t++) acc += (double)x[(size_t)t * E + c];
    part[i] = acc;
}

__global__ static void colsum_final_kernel(float *out, const double *part, int n_chunk, int E) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= E) return;
    double acc = 0;
    for (int ch = 0; ch < n_chunk; ch++) acc += part[(size_t)ch * E + c];
    out[c] += (float)acc;
}

// out[c] += Σ_t x[t, c]; work holds colsum_work_bytes(n, E).
size_t cu_eng_colsum_work_bytes(int n, int E) {
    return sizeof(double) * (size_t)((n + COLSUM_CHUNK - 1) / COLSUM_CHUNK) * E;
}
static void colsum_add(float *out, const float *x, int n, int E, void *work) {
    int n_chunk = (n + COLSUM_CHUNK - 1) / COLSUM_CHUNK;
    if (n_chunk == 0) return;
    colsum_part_kernel<<<cu_blocks((long)n_chunk * E, 256), 256, 0, cu_stream()>>>((double *)work, x, n, E);
    CUDA_LAUNCHED();
    colsum_final_kernel<<<cu_blocks(E, 128), 128, 0, cu_stream()>>>(out, (const double *)work, n_chunk, E);
    CUDA_LAUNCHED();
}

// ---------------------------------------------------------------- sparse branch

static ks_params ks_w(const cu_impl *c, const hax_model *m, const hax_layer_params *lp) {
    ks_params p = {dev_w(c, m, lp->dx1_w), dev_w(c, m, lp->dx1_b), dev_w(c, m, lp->dx2_w),
                   dev_w(c, m, lp->dx2_b), dev_w(c, m, lp->dx3_w), dev_w(c, m, lp->dx3_b)};
    return p;
}

static ks_grads ks_g(const cu_impl *c, const hax_model *m, const hax_layer_params *lp) {
    ks_grads g = {dev_g(c, m, lp->dx1_w), dev_g(c, m, lp->dx1_b), dev_g(c, m, lp->dx2_w),
                  dev_g(c, m, lp->dx2_b), dev_g(c, m, lp->dx3_w), dev_g(c, m, lp->dx3_b)};
    return g;
}

// The sparse branch of layer l on X (ld ldX) into L->attn; the hash matrix
// and candidates were uploaded by cu_eng_sparse_prepare.
static void sparse_layer_forward(cu_impl *c, const hax_model *m, int l, int n, int n_seq, const float *X, int ldX) {
    const hax_model_config *cfg = &m->cfg;
    const hax_layer_params *lp = &m->layers[l];
    cu_layer *L = &c->L[l];
    ks_params kp = ks_w(c, m, lp);
    cuda_sparse_forward(L->sp, c->seq_off, n_seq, n, c->model_len, X, ldX, dev_w(c, m, lp->xx_proj),
                        has_ks(cfg) ? &kp : NULL, has_lsh(cfg) ? L->hash_dev : NULL,
                        has_ks(cfg) && c->train ? L->cand_dev : NULL, c->train, L->attn, cfg->intermediate_size);
}

// The sparse branch's random inputs of this forward, drawn on the host from
// the CPU engine's keyed streams (engine.h) or injected, and uploaded into
// the layers' fixed device buffers (so a captured graph reads the new ones):
// the hash matrices and, in training with key selection, the candidates of
// b's sequences (rows of the padded batch bd beyond them: -1, none).
void cu_eng_sparse_prepare(cu_impl *c, const hax_model *m, const hax_batch *b, const hax_batch *bd,
                           const hax_fwd_opts *o) {
    const hax_model_config *cfg = &m->cfg;
    c->train = o->train, c->model_len = bd->model_len, c->global_n_seq = bd->global_n_seq;
    if (!cfg->sparse_mask) return;
    const hax_inject *inj = o->inject;
    size_t nh = (size_t)cfg->state_size * cfg->num_hash;
    int kc = cfg->k_c;
    for (int l = 0; l < cfg->n_layers; l++) {
        cu_layer *L = &c->L[l];
        if (has_lsh(cfg)) {
            if (inj && inj->hash[l]) {
                memcpy(L->hash, inj->hash[l], sizeof(float) * nh);
            } else {
                hax_rng r;
                rng_init(&r, o->seed, o->train ? RNG_LSH : RNG_LSH_EVAL, o->step, (uint32_t)l, 0);
                for (size_t i = 0; i < nh; i++) L->hash[i] = (float)rng_normal(&r);
            }
            L->have_hash = 1;
            cuda_upload(L->hash_dev, L->hash, sizeof(float) * nh);
            if (inj && inj->q_bucket[l] && inj->k_bucket[l]) {
                if (bd->n_tok != b->n_tok)
                    hax_die("engine cuda: injected buckets: expected an unpadded batch (no graph step), found %d "
                            "padded positions", bd->n_tok - b->n_tok);
                cuda_upload(L->qb_dev, inj->q_bucket[l], sizeof(int32_t) * b->n_tok);
                cuda_upload(L->kb_dev, inj->k_bucket[l], sizeof(int32_t) * b->n_tok);
                cuda_sparse_force_buckets(L->sp, L->qb_dev, L->kb_dev);
            } else {
                cuda_sparse_force_buckets(L->sp, NULL, NULL);
            }
        }
        if (has_ks(cfg) && o->train) {
            if (inj && inj->ks_cand[l])
                memcpy(L->cand, inj->ks_cand[l], sizeof(int) * (size_t)b->n_seq * kc);
            else
                ks_sample_candidates(L->cand, b->seq_off, b->n_seq, b->sample_idx, kc, o->seed, o->step,
                                     (uint32_t)l);
            for (size_t i = (size_t)b->n_seq * kc; i < (size_t)bd->n_seq * kc; i++) L->cand[i] = -1;
            cuda_upload(L->cand_dev, L->cand, sizeof(int) * (size_t)bd->n_seq * kc);
        }
    }
}

// ---------------------------------------------------------------- mixer

void cu_eng_mixer_forward(cu_impl *c, const hax_model *m, int l, int n, int n_seq, float *out) {
    const hax_model_config *cfg = &m->cfg;
    const hax_layer_params *lp = &m->layers[l];
    cu_layer *L = &c->L[l];
    int d = cfg->hidden_size, E = cfg->intermediate_size, N = cfg->state_size, K = cfg->conv_kernel;
    if (lp->is_attn) {
        attn_params p = {dev_w(c, m, lp->q_proj), dev_w(c, m, lp->k_proj), dev_w(c, m, lp->v_proj),
                         dev_w(c, m, lp->o_proj)};
        cuda_attn_forward(out, d, &L->att, L->a, d, &p, cfg, c->seq_off, n_seq, n);
        return;
    }
    if (cfg->arch == ARCH_MAMBA2) {
        int cd = m->conv_dim, W = m->in_proj_dim;
        cuda_linear_forward(L->p, W, L->a, d, dev_w(c, m, lp->in_proj), NULL, n, d, W);
        cuda_conv_silu_forward(L->xbc, L->xbc_pre, L->p + E, W, dev_w(c, m, lp->conv_w), dev_w(c, m, lp->conv_b),
                               c->seq_off, n_seq, n, cd, K);
        if (cfg->sparse_mask) sparse_layer_forward(c, m, l, n, n_seq, L->xbc, cd);
        cuda_ssd_forward(L->y, E, L->delta, L->ckpt, L->xbc, cd, L->p + E + cd, W, L->xbc + E, L->xbc + E + N, cd,
                         dev_w(c, m, lp->dt_bias), dev_w(c, m, lp->A_log), dev_w(c, m, lp->D), c->seq_off, n_seq, n,
                         cfg->n_heads, cfg->head_dim, N);
        if (cfg->sparse_mask) {
            add_attn_kernel<<<cu_blocks((long)n * E, 256), 256, 0, cu_stream()>>>(L->y, L->attn, dev_w(c, m, lp->E),
                                                                                   n, E);
            CUDA_LAUNCHED();
        }
        cuda_gated_norm_forward(L->g, E, L->grstd, L->y, E, L->p, W, dev_w(c, m, lp->gnorm), n, E, cfg->norm_eps);
        cuda_linear_forward(out, d, L->g, E, dev_w(c, m, lp->out_proj), NULL, n, E, d);
        return;
    }
    int R = cfg->time_step_rank, RN = R + 2 * N;
    cuda_linear_forward(L->xz, 2 * E, L->a, d, dev_w(c, m, lp->in_proj), NULL, n, d, 2 * E);
    cuda_conv_silu_forward(L->X, L->conv_pre, L->xz, 2 * E, dev_w(c, m, lp->conv_w), dev_w(c, m, lp->conv_b),
                           c->seq_off, n_seq, n, E, K);
    if (cfg->sparse_mask) sparse_layer_forward(c, m, l, n, n_seq, L->X, E);
    cuda_linear_forward(L->x_dbl, RN, L->X, E, dev_w(c, m, lp->x_proj), NULL, n, E, RN);
    cuda_linear_forward(L->draw, E, L->x_dbl, RN, dev_w(c, m, lp->dt_proj_w), NULL, n, R, E);
    cuda_scan_forward(L->y, L->ckpt, L->X, E, L->draw, dev_w(c, m, lp->dt_proj_b), dev_w(c, m, lp->A_log),
                      L->x_dbl + R, L->x_dbl + R + N, RN, dev_w(c, m, lp->D), c->seq_off, n_seq, n, E, N);
    gate_fwd_kernel<<<cu_blocks((long)n * E, 256), 256, 0, cu_stream()>>>(c->o, L->y, L->xz, L->attn,
                                                                           dev_w(c, m, lp->E), n, E);
    CUDA_LAUNCHED();
    cuda_linear_forward(out, d, c->o, E, dev_w(c, m, lp->out_proj), NULL, n, E, d);
}

// Mixer backward of layer l: dout [n, d] -> da (+=) and the layer's gradients.
void cu_eng_mixer_backward(cu_impl *c, const hax_model *m, int l, int n, int n_seq, const float *dout, float *da) {
    const hax_model_config *cfg = &m->cfg;
    const hax_layer_params *lp = &m->layers[l];
    cu_layer *L = &c->L[l];
    int d = cfg->hidden_size, E = cfg->intermediate_size, N = cfg->state_size, K = cfg->conv_kernel;
    size_t nE = (size_t)n * E;
    if (lp->is_attn) {
        attn_params p = {dev_w(c, m, lp->q_proj), dev_w(c, m, lp->k_proj), dev_w(c, m, lp->v_proj),
                         dev_w(c, m, lp->o_proj)};
        attn_grads g = {dev_g(c, m, lp->q_proj), dev_g(c, m, lp->k_proj), dev_g(c, m, lp->v_proj),
                        dev_g(c, m, lp->o_proj)};
        cuda_attn_backward(da, d, &g, dout, d, L->a, d, &L->att, &p, cfg, c->seq_off, n_seq, n, c->work);
        return;
    }
    int sparse = cfg->sparse_mask != 0;
    ks_params kp = ks_w(c, m, lp);
    ks_grads kg = ks_g(c, m, lp);
    float gate_scale = (float)(cfg->gate_loss_weight / c->global_n_seq);
    if (sparse) cuda_zero(c->dattn, sizeof(float) * nE);
    if (cfg->arch == ARCH_MAMBA2) {
        int cd = m->conv_dim, W = m->in_proj_dim;
        cuda_zero(c->dg, sizeof(float) * nE);
        cuda_zero(c->dy, sizeof(float) * nE);
        cuda_zero(c->dp, sizeof(float) * (size_t)n * W);
        cuda_zero(c->dxbc, sizeof(float) * (size_t)n * cd);
        cuda_linear_backward(c->dg, E, dev_g(c, m, lp->out_proj), NULL, dout, d, L->g, E, dev_w(c, m, lp->out_proj),
                             n, E, d);
        cuda_gated_norm_backward(c->dy, E, c->dp, W, dev_g(c, m, lp->gnorm), c->dg, E, L->grstd, L->y, E, L->p, W,
                                 dev_w(c, m, lp->gnorm), n, E, c->work);
        if (sparse) {  // y' = y + attn·Ev: dattn += dy·Ev, dEv += Σ_t dy·attn (dg is free again)
            add_attn_bwd_kernel<<<cu_blocks((long)nE, 256), 256, 0, cu_stream()>>>(c->dattn, c->dg, c->dy, L->attn,
                                                                                    dev_w(c, m, lp->E), n, E);
            CUDA_LAUNCHED();
            colsum_add(dev_g(c, m, lp->E), c->dg, n, E, c->work);
        }
        cuda_ssd_backward(c->dxbc, cd, c->dp + E + cd, W, c->dxbc + E, c->dxbc + E + N, cd, dev_g(c, m, lp->dt_bias),
                          dev_g(c, m, lp->A_log), dev_g(c, m, lp->D), c->dy, E, L->delta, L->ckpt, L->xbc, cd,
                          L->p + E + cd, W, L->xbc + E, L->xbc + E + N, cd, dev_w(c, m, lp->dt_bias),
                          dev_w(c, m, lp->A_log), dev_w(c, m, lp->D), c->seq_off, n_seq, n, cfg->n_heads,
                          cfg->head_dim, N, c->work);
        if (sparse)
            cuda_sparse_backward(L->sp, c->seq_off, n_seq, n, c->dattn, E, gate_scale, L->xbc, cd,
                                 dev_w(c, m, lp->xx_proj), has_ks(cfg) ? &kp : NULL, c->dxbc, cd,
                                 dev_g(c, m, lp->xx_proj), has_ks(cfg) ? &kg : NULL);
        cuda_conv_silu_backward(c->dp + E, W, dev_g(c, m, lp->conv_w), dev_g(c, m, lp->conv_b), c->dxbc, L->xbc_pre,
                                L->p + E, W, dev_w(c, m, lp->conv_w), c->seq_off, n_seq, n, cd, K, c->work);
        cuda_linear_backward(da, d, dev_g(c, m, lp->in_proj), NULL, c->dp, W, L->a, d, dev_w(c, m, lp->in_proj), n,
                             d, W);
        return;
    }
    int R = cfg->time_step_rank, RN = R + 2 * N;
    // out_proj (its input o is recomputed, as on the CPU)
    gate_fwd_kernel<<<cu_blocks((long)nE, 256), 256, 0, cu_stream()>>>(c->o, L->y, L->xz, L->attn,
                                                                        dev_w(c, m, lp->E), n, E);
    CUDA_LAUNCHED();
    cuda_zero(c->do_, sizeof(float) * nE);
    cuda_linear_backward(c->do_, E, dev_g(c, m, lp->out_proj), NULL, dout, d, c->o, E, dev_w(c, m, lp->out_proj), n,
                         E, d);
    // with the branch, do·attn·silu(z) goes to ddraw (zeroed below) for dEv
    gate_bwd_kernel<<<cu_blocks((long)nE, 256), 256, 0, cu_stream()>>>(c->dy, c->dxz, c->dattn, c->ddraw, c->do_,
                                                                        L->y, L->xz, L->attn, dev_w(c, m, lp->E), n,
                                                                        E);
    CUDA_LAUNCHED();
    if (sparse) colsum_add(dev_g(c, m, lp->E), c->ddraw, n, E, c->work);
    cuda_zero(c->dX, sizeof(float) * nE);
    cuda_zero(c->ddraw, sizeof(float) * nE);
    cuda_zero(c->dx_dbl, sizeof(float) * (size_t)n * RN);
    cuda_scan_backward(c->dX, E, c->ddraw, c->dx_dbl + R, c->dx_dbl + R + N, RN, dev_g(c, m, lp->dt_proj_b),
                       dev_g(c, m, lp->A_log), dev_g(c, m, lp->D), c->dy, L->ckpt, L->X, E, L->draw,
                       dev_w(c, m, lp->dt_proj_b), dev_w(c, m, lp->A_log), L->x_dbl + R, L->x_dbl + R + N, RN,
                       dev_w(c, m, lp->D), c->seq_off, n_seq, n, E, N, c->work);
    cuda_linear_backward(c->dx_dbl, RN, dev_g(c, m, lp->dt_proj_w), NULL, c->ddraw, E, L->x_dbl, RN,
                         dev_w(c, m, lp->dt_proj_w), n, R, E);
    cuda_linear_backward(c->dX, E, dev_g(c, m, lp->x_proj), NULL, c->dx_dbl, RN, L->X, E, dev_w(c, m, lp->x_proj), n,
                         E, RN);
    if (sparse)
        cuda_sparse_backward(L->sp, c->seq_off, n_seq, n, c->dattn, E, gate_scale, L->X, E, dev_w(c, m, lp->xx_proj),
                             has_ks(cfg) ? &kp : NULL, c->dX, E, dev_g(c, m, lp->xx_proj), has_ks(cfg) ? &kg : NULL);
    // the x half of dxz from zero (the z half was set by the gate)
    CUDA_CHECK(cudaMemset2DAsync(c->dxz, sizeof(float) * 2 * E, 0, sizeof(float) * E, n, cu_stream()));
    cuda_conv_silu_backward(c->dxz, 2 * E, dev_g(c, m, lp->conv_w), dev_g(c, m, lp->conv_b), c->dX, L->conv_pre,
                            L->xz, 2 * E, dev_w(c, m, lp->conv_w), c->seq_off, n_seq, n, E, K, c->work);
    cuda_linear_backward(da, d, dev_g(c, m, lp->in_proj), NULL, c->dxz, 2 * E, L->a, d, dev_w(c, m, lp->in_proj), n,
                         d, 2 * E);
}
