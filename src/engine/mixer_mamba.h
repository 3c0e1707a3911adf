// mixer_mamba.h: the Mamba mixer (fla MambaMixer, MODEL.md §2.2) and the
// Enhanced Mamba mixer's merge of the sparse branch (MODEL.md §5.7), for any
// backend (the ops of the table ops.h, on its memory), split in two halves so the sparse branch can run between them:
//
//   pre:  xz = a·W_inᵀ                 [n_tok, 2E]  (x = cols [0,E), z = cols [E,2E))
//         X  = silu(causalconv(x))     [n_tok, E]: the SSM input, and the sparse
//                                      branch's input and V
//   post: x_dbl = X·W_xᵀ               [n_tok, R+2N] (δ = [0,R), B = [R,R+N), C = [R+N,R+2N))
//         Δraw  = δ·W_dtᵀ              [n_tok, E]
//         y     = scan(X, Δraw, B, C)  incl. the D term (src/ops/scan.h)
//         o     = y·silu(z) (+ (attn·E_param)·silu(z) for the Enhanced mixer)
//         out   = o·W_outᵀ             [n_tok, d]
//
// Packed batches have no pad rows, so the reference's masks (§2.2 steps 2, 4,
// golden README Q15) vanish. Dimensions come from hax_model_config: d = hidden_size,
// E = intermediate_size, N = state_size, R = time_step_rank, K = conv_kernel.
//
// Backward order for one layer:
//   mamba_post_backward  (SETS s->dX and the z half of s->dxz, adds dattn)
//   [sparse branch backward: adds its share of dX into s->dX]
//   mamba_pre_backward   (conv + in_proj: da +=, conv/in_proj grads +=)
#ifndef HAX_MIXER_MAMBA_H
#define HAX_MIXER_MAMBA_H

#include <stddef.h>

#include "src/engine/acts.h"
#include "src/engine/ops.h"
#include "src/model/model_config.h"

// Pointers into the flat parameter buffer (reference state_dict names, §2.1).
typedef struct {
    const float *A_log;     // mixer.A_log            [E, N]
    const float *D;         // mixer.D                [E]
    const float *conv_w;    // mixer.conv1d.weight    [E, 1, K]
    const float *conv_b;    // mixer.conv1d.bias      [E] (may be NULL: no conv bias)
    const float *in_proj;   // mixer.in_proj.weight   [2E, d]
    const float *x_proj;    // mixer.x_proj.weight    [R + 2N, E]
    const float *dt_proj_w; // mixer.dt_proj.weight   [E, R]
    const float *dt_proj_b; // mixer.dt_proj.bias     [E]
    const float *out_proj;  // mixer.out_proj.weight  [d, E]
    const float *E;         // mixer.E                [E] (Enhanced only; NULL for plain Mamba)
} mamba_params;

// The same layout in the flat gradient buffer (accumulated with +=).
typedef struct {
    float *A_log, *D, *conv_w, *conv_b, *in_proj, *x_proj, *dt_proj_w, *dt_proj_b, *out_proj;
    float *E;  // NULL for plain Mamba
} mamba_grads;

// What one layer keeps from forward for backward (one flat buffer, see
// mamba_acts_floats / mamba_acts_assign).
typedef struct {
    float *xz;        // [n_tok, 2E] in_proj output (x | z)
    float *conv_pre;  // [n_tok, E] conv pre-activation
    float *X;         // [n_tok, E] silu(conv(x)): SSM input, sparse-branch input and V
    float *x_dbl;     // [n_tok, R + 2N] x_proj output (δ | B | C)
    float *draw;      // [n_tok, E] Δraw = δ·W_dtᵀ (without the dt bias)
    float *y;         // [n_tok, E] scan output incl. D·X, ungated
    float *ckpt;      // [scan_ckpt_floats] scan state checkpoints
} mamba_acts;

// Scratch of the forward's output projection and of the backward pass (shared
// by all layers; see mamba_bwd_floats).
typedef struct {
    float *o;       // [n_tok, E] gated output o (the out_proj input; recomputed in backward)
    float *do_;     // [n_tok, E] gradient of o
    float *dy;      // [n_tok, E] gradient of the ungated scan output y
    float *ddraw;   // [n_tok, E] gradient of Δraw
    float *dx_dbl;  // [n_tok, R + 2N] gradient of x_dbl
    float *dxz;     // [n_tok, 2E] gradient of xz
    float *dX;      // [n_tok, E] gradient of X (post backward sets it; the sparse branch adds)
} mamba_bwd;

// The layer's activations as named tensors (for n_tok positions in n_seq
// sequences, checkpoint sizes from ops), and the backward scratch's; the
// engine lays them out in its arena. _floats / _assign: the same for one
// buffer of that many floats (tests).
void mamba_acts_list(hax_act_table *t, const hax_ops *ops, mamba_acts *acts, const hax_model_config *cfg, int n_tok,
                     int n_seq);
void mamba_bwd_list(hax_act_table *t, mamba_bwd *s, const hax_model_config *cfg, int n_tok);
size_t mamba_acts_floats(const hax_ops *ops, const hax_model_config *cfg, int n_tok, int n_seq);
void mamba_acts_assign(const hax_ops *ops, mamba_acts *acts, float *buf, const hax_model_config *cfg, int n_tok,
                       int n_seq);
size_t mamba_bwd_floats(const hax_ops *ops, const hax_model_config *cfg, int n_tok);
void mamba_bwd_assign(const hax_ops *ops, mamba_bwd *s, float *buf, const hax_model_config *cfg, int n_tok);

// Every function below runs ops' kernels on its memory: seq_off is the
// backend's copy, work its workspace (ops->work_bytes; NULL on the CPU).

// Pre half forward: a [n_tok, d] (ld_a) → acts->xz, acts->conv_pre, acts->X.
// Afterwards acts->X (dense [n_tok, E]) is ready for the sparse branch.
void mamba_pre_forward(const hax_ops *ops, mamba_acts *acts, const float *a, int ld_a, const mamba_params *w,
                       const hax_model_config *cfg, const int *seq_off, int n_seq, int n_tok);

// Post half forward: x_proj, dt_proj, scan, gate, optional attention merge
// (attn [n_tok, E] dense and w->E both non-NULL, or attn NULL), out_proj.
// Writes (=) out [n_tok, d] (ld_out), fills the rest of acts, uses s->o.
void mamba_post_forward(const hax_ops *ops, float *out, int ld_out, mamba_acts *acts, mamba_bwd *s,
                        const float *attn, const mamba_params *w, const hax_model_config *cfg, const int *seq_off,
                        int n_seq, int n_tok);

// Post half backward from dout [n_tok, d] (ld_dout). SETS s->dX (from the scan,
// the D skip and x_proj) and the z half of s->dxz, adds (+=) dattn [n_tok, E]
// (when attn and dattn are non-NULL) and the gradients of out_proj, x_proj,
// dt_proj (weight, bias), A_log, D and E.
void mamba_post_backward(const hax_ops *ops, mamba_bwd *s, float *dattn, const float *dout, int ld_dout,
                         const mamba_acts *acts, const float *attn, const mamba_params *w, mamba_grads *gr,
                         const hax_model_config *cfg, const int *seq_off, int n_seq, int n_tok, void *work);

// Pre half backward: from the total s->dX (including the sparse branch's share)
// through conv+SiLU into the x half of s->dxz, then through in_proj:
// da [n_tok, d] (ld_da, may be NULL) +=, conv1d weight/bias and in_proj grads +=.
// a is the pre half's input.
void mamba_pre_backward(const hax_ops *ops, float *da, int ld_da, mamba_bwd *s, const float *a, int ld_a,
                        const mamba_acts *acts, const mamba_params *w, mamba_grads *gr, const hax_model_config *cfg,
                        const int *seq_off, int n_seq, int n_tok, void *work);

#endif
