// mixer_mamba2.h: the Mamba-2 mixer (fla Mamba2Mixer, MODEL.md §3.2) and the
// Enhanced Mamba-2 mixer's merge of the sparse branch (MODEL.md §5.7), for
// any backend (the ops of the table ops.h, on its memory), split in two halves so the sparse branch can run between them:
//
//   pre:  p = a·W_inᵀ  [n_tok, E + conv_dim + H]  (z = [0,E), xBC = [E, E+conv_dim), dt = last H)
//         xBC' = silu(causalconv(xBC))            [n_tok, conv_dim], conv_dim = E + 2N
//         X = xBC'[:, 0:E] (ld conv_dim): the SSD input, and the sparse branch's input and V
//         B = xBC'[:, E:E+N], C = xBC'[:, E+N:E+2N]
//   post: y  = SSD(X, dt, B, C) incl. the D term  [n_tok, E]
//         y' = y + attn ⊙ E_param                (Enhanced only; attn [n_tok, E] from the branch)
//         g  = GatedRMSNorm(y', z)               (norm.weight)
//         out = g·W_outᵀ                          [n_tok, d]
//
// MODEL.md §3.2 step 1 (a ← a ⊙ m) vanishes in a packed batch (no pad rows).
// Dimensions come from hax_model_config: d = hidden_size, E = intermediate_size,
// H = n_heads, P = head_dim (E = H·P), N = state_size, K = conv_kernel, eps = norm_eps.
//
// Backward order for one layer:
//   mamba2_post_backward (sets s->dp's z and dt parts and s->dxbc, adds dattn)
//   [sparse branch backward: adds its share of dX into s->dxbc[:, 0:E] (ld conv_dim)]
//   mamba2_pre_backward  (conv + in_proj: da +=, conv/in_proj grads)
#ifndef HAX_MIXER_MAMBA2_H
#define HAX_MIXER_MAMBA2_H

#include <stddef.h>

#include "src/engine/acts.h"
#include "src/engine/ops.h"
#include "src/model/model_config.h"

// Pointers into the flat parameter buffer (reference state_dict names, §3.1).
typedef struct {
    const float *dt_bias;   // mixer.dt_bias          [H]
    const float *A_log;     // mixer.A_log            [H]
    const float *D;         // mixer.D                [H]
    const float *conv_w;    // mixer.conv1d.weight    [conv_dim, 1, K]
    const float *conv_b;    // mixer.conv1d.bias      [conv_dim]
    const float *in_proj;   // mixer.in_proj.weight   [E + conv_dim + H, d]
    const float *norm_w;    // mixer.norm.weight      [E]
    const float *out_proj;  // mixer.out_proj.weight  [d, E]
    const float *E;         // mixer.E                [E] (Enhanced only; NULL for plain Mamba2)
} mamba2_params;

// The same layout in the flat gradient buffer (accumulated with +=).
typedef struct {
    float *dt_bias, *A_log, *D, *conv_w, *conv_b, *in_proj, *norm_w, *out_proj;
    float *E;  // NULL for plain Mamba2
} mamba2_grads;

// What one layer keeps from forward for backward (one flat buffer, see
// mamba2_acts_floats / mamba2_acts_assign).
typedef struct {
    float *p;         // [n_tok, E + conv_dim + H] in_proj output (z | xBC | dt)
    float *xbc_pre;   // [n_tok, conv_dim] conv pre-activation
    float *xbc;       // [n_tok, conv_dim] xBC' = silu(conv): X | B | C
    float *delta;     // [n_tok, H] softplus(dt + dt_bias)
    float *ckpt;      // [ssd_ckpt_floats] SSD state checkpoints
    float *y;         // [n_tok, E] y' (SSD output plus attn ⊙ E)
    float *rstd;      // [n_tok] gated-norm 1/rms
    float *g;         // [n_tok, E] gated-norm output (the out_proj input)
} mamba2_acts;

// Scratch of the backward pass (shared by all layers; see mamba2_bwd_floats).
typedef struct {
    float *dp;    // [n_tok, E + conv_dim + H] gradient of p
    float *dxbc;  // [n_tok, conv_dim] gradient of xBC'; dX = dxbc[:, 0:E] (ld conv_dim)
    float *dy;    // [n_tok, E] gradient of y'
    float *dg;    // [n_tok, E] gradient of g
} mamba2_bwd;

int mamba2_conv_dim(const hax_model_config *cfg);   // E + 2N
int mamba2_proj_dim(const hax_model_config *cfg);   // E + conv_dim + H

// The layer's activations as named tensors (for n_tok positions in n_seq
// sequences, checkpoint sizes from ops), and the backward scratch's; the
// engine lays them out in its arena. _floats / _assign: the same for one
// buffer of that many floats (tests).
void mamba2_acts_list(hax_act_table *t, const hax_ops *ops, mamba2_acts *acts, const hax_model_config *cfg,
                      int n_tok, int n_seq);
void mamba2_bwd_list(hax_act_table *t, mamba2_bwd *s, const hax_model_config *cfg, int n_tok);
size_t mamba2_acts_floats(const hax_ops *ops, const hax_model_config *cfg, int n_tok, int n_seq);
void mamba2_acts_assign(const hax_ops *ops, mamba2_acts *acts, float *buf, const hax_model_config *cfg, int n_tok,
                        int n_seq);
size_t mamba2_bwd_floats(const hax_ops *ops, const hax_model_config *cfg, int n_tok);
void mamba2_bwd_assign(const hax_ops *ops, mamba2_bwd *s, float *buf, const hax_model_config *cfg, int n_tok);

// Every function below runs ops' kernels on its memory: seq_off is the
// backend's copy, work its workspace (ops->work_bytes; NULL on the CPU).

// Pre half forward: a [n_tok, d] (ld_a) → acts->p, acts->xbc_pre, acts->xbc.
// Afterwards X = acts->xbc (ld mamba2_conv_dim) is ready for the sparse branch.
void mamba2_pre_forward(const hax_ops *ops, mamba2_acts *acts, const float *a, int ld_a, const mamba2_params *w,
                        const hax_model_config *cfg, const int *seq_off, int n_seq, int n_tok);

// Post half forward: SSD, optional attention merge (attn [n_tok, E] dense and
// w->E both non-NULL, or attn NULL), gated norm, out_proj. Writes (=) out
// [n_tok, d] (ld_out) and fills the rest of acts.
void mamba2_post_forward(const hax_ops *ops, float *out, int ld_out, mamba2_acts *acts, const float *attn,
                         const mamba2_params *w, const hax_model_config *cfg, const int *seq_off, int n_seq,
                         int n_tok);

// Post half backward from dout [n_tok, d] (ld_dout). SETS s->dy, s->dg, s->dxbc
// (dX, dB, dC) and s->dp (dz and ddt parts; the xBC part is zeroed), adds (+=)
// dattn [n_tok, E] (when attn and dattn are non-NULL) and the gradients of
// out_proj, norm.weight, dt_bias, A_log, D and E.
void mamba2_post_backward(const hax_ops *ops, mamba2_bwd *s, float *dattn, const float *dout, int ld_dout,
                          const mamba2_acts *acts, const float *attn, const mamba2_params *w, mamba2_grads *gr,
                          const hax_model_config *cfg, const int *seq_off, int n_seq, int n_tok, void *work);

// Pre half backward: from the total s->dxbc (including the sparse branch's
// share of dX) through conv+SiLU into s->dp's xBC part, then through in_proj:
// da [n_tok, d] (ld_da, may be NULL) +=, conv1d.weight/bias and in_proj grads +=.
// a is the pre half's input.
void mamba2_pre_backward(const hax_ops *ops, float *da, int ld_da, mamba2_bwd *s, const float *a, int ld_a,
                         const mamba2_acts *acts, const mamba2_params *w, mamba2_grads *gr,
                         const hax_model_config *cfg, const int *seq_off, int n_seq, int n_tok, void *work);

#endif
