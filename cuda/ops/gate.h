// cuda/ops/gate.h: the engine's small elementwise kernels on the device: the
// Mamba gate and the Enhanced Mamba-2 add-attn (the sparse branch's merge,
// src/ops/gate.h on the CPU), the residual add and the scale by a device
// scalar. The dEv sums go through a fixed-order column sum (chunks of 64
// rows in double, then the chunks in order) in work (cuda_gate_work_bytes).
#ifndef HAX_CU_GATE_H
#define HAX_CU_GATE_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

size_t cuda_gate_work_bytes(int n_tok, int E);
// o = y·silu(z) (+ attn·Ev·silu(z)), z = xz[:, E:2E]; attn may be NULL.
// bf16 != 0: the bf16-pure forms of src/ops/gate.h (the same roundings).
void cuda_gate_forward(float *o, const float *y, const float *xz, const float *attn, const float *Ev, int n, int E,
                       int bf16);
// dy = do·silu(z), dz = do·(y + attn·Ev)·silu'(z) into xz's z half (=); with
// attn: dattn += do·Ev·silu(z), prod = do·attn·silu(z) (=) and, when dEv,
// dEv += its column sums.
void cuda_gate_backward(float *dy, float *dxz, float *dattn, float *dEv, float *prod, const float *do_,
                        const float *y, const float *xz, const float *attn, const float *Ev, int n, int E,
                        void *work, int bf16);
// y += attn·Ev.
void cuda_add_attn_forward(float *y, const float *attn, const float *Ev, int n, int E, int bf16);
// dattn += dy·Ev, prod = dy·attn (=), dEv += its column sums (when dEv).
void cuda_add_attn_backward(float *dattn, float *dEv, float *prod, const float *dy, const float *attn,
                            const float *Ev, int n, int E, void *work, int bf16);
// out = a + b (n floats).
void cuda_add(float *out, const float *a, const float *b, long n);
// bf16 emulation: out = bf16(x) (n floats; out may be x), and in place on
// rows x[t*ld + 0..width), t < rows (src/ops/basic.h's round_bf16*).
void cuda_round_bf16(float *out, const float *x, long n);
void cuda_round_bf16_rows(float *x, int ld, int width, int rows);
// dst = bf16(dst + bf16(src)) on rows (src/ops/basic.h's add_bf16_rows).
void cuda_add_bf16_rows(float *dst, int ld_dst, const float *src, int ld_src, int width, int rows);
// x *= *s (s a device float).
void cuda_scale(float *x, long n, const float *s);

#ifdef __cplusplus
}
#endif

#endif
