// gate.h: the small elementwise kernels that merge the sparse branch into the
// Mamba mixers (MODEL.md §2.2, §5.7), on the CPU; the CUDA twins are in
// cuda/ops/gate.cu. attn may be NULL (plain mixer: no merge).
//
//   mamba_gate:  o  = y·silu(z) (+ (attn·Ev)·silu(z)), z = xz[:, E:2E] (the
//                reference's order of operations)
//   add_attn:    y += attn·Ev   (Enhanced Mamba-2, before the gated norm)
//
// bf16 != 0 (train.precision bf16-pure, README "Precision"): every tensor the
// reference materialises is rounded to bf16 where its op stores it. The
// Enhanced Mamba merge (EM1:559-561) is the bf16 ops
//   ys = bf16(y·silu(z))      the selective scan's output (fp32 inside)
//   t1 = bf16(attn·Ev);  sz = bf16(silu(z));  t2 = bf16(t1·sz);  o = bf16(ys + t2)
// and their autograd backward: dt1 = bf16(do·sz), dsz = bf16(do·t1),
// dattn = bf16(dt1·Ev), dEv = Σ_t bf16(dt1·attn), the gate's two shares
// dz = bf16(bf16(do·bf16(y)·silu'(z)) + bf16(dsz·silu'(z))) (the scan's,
// which reads its saved bf16 output, and the merge's), while dy = do·silu(z) stays fp32 (inside the scan's backward).
// Enhanced Mamba-2 (EM2:541-548): y' = bf16(y + bf16(attn·Ev)); dattn =
// bf16(dy·Ev), dEv = Σ_t bf16(dy·attn). With bf16 = 0 every result is the
// fp32 expression, bit for bit what it was.
#ifndef HAX_OPS_GATE_H
#define HAX_OPS_GATE_H

void mamba_gate_forward(float *o, const float *y, const float *xz, const float *attn, const float *Ev, int n_tok,
                        int E, int bf16);
// dy = do·silu(z) (=); dz = do·(y + attn·Ev)·silu'(z) into the z half of dxz
// (=); dattn += do·Ev·silu(z) (when dattn); dEv += Σ_t do·attn·silu(z) (when
// dEv; per-chunk double partials, summed in chunk order). bf16: as above
// (dattn = bf16(dattn + contribution)).
void mamba_gate_backward(float *dy, float *dxz, float *dattn, float *dEv, const float *do_, const float *y,
                         const float *xz, const float *attn, const float *Ev, int n_tok, int E, int bf16);

void add_attn_forward(float *y, const float *attn, const float *Ev, int n_tok, int E, int bf16);
// dattn += dy·Ev (when dattn); dEv += Σ_t dy·attn (when dEv; serial double sum).
void add_attn_backward(float *dattn, float *dEv, const float *dy, const float *attn, const float *Ev, int n_tok,
                       int E, int bf16);

#endif
