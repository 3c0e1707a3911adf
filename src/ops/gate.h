// gate.h: the small elementwise kernels that merge the sparse branch into the
// Mamba mixers (MODEL.md §2.2, §5.7), on the CPU; the CUDA twins are in
// cuda/ops/gate.cu. attn may be NULL (plain mixer: no merge).
//
//   mamba_gate:  o  = y·silu(z) (+ (attn·Ev)·silu(z)), z = xz[:, E:2E] (the
//                reference's order of operations)
//   add_attn:    y += attn·Ev   (Enhanced Mamba-2, before the gated norm)
#ifndef HAX_OPS_GATE_H
#define HAX_OPS_GATE_H

void mamba_gate_forward(float *o, const float *y, const float *xz, const float *attn, const float *Ev, int n_tok,
                        int E);
// dy = do·silu(z) (=); dz = do·(y + attn·Ev)·silu'(z) into the z half of dxz
// (=); dattn += do·Ev·silu(z) (when dattn); dEv += Σ_t do·attn·silu(z) (when
// dEv; per-chunk double partials, summed in chunk order).
void mamba_gate_backward(float *dy, float *dxz, float *dattn, float *dEv, const float *do_, const float *y,
                         const float *xz, const float *attn, const float *Ev, int n_tok, int E);

void add_attn_forward(float *y, const float *attn, const float *Ev, int n_tok, int E);
// dattn += dy·Ev (when dattn); dEv += Σ_t dy·attn (when dEv; serial double sum).
void add_attn_backward(float *dattn, float *dEv, const float *dy, const float *attn, const float *Ev, int n_tok,
                       int E);

#endif
