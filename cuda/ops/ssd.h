// cuda/ops/ssd.h: the CUDA version of Mamba-2's SSD scan (src/ops/ssd.h), with
// the CPU op's arguments plus n_tok (seq_off[0] must be 0) and a workspace for
// the backward. It runs the chunked (state-passing) form of the scan
// (cuda/ops/ssd_chunk.cuh): chunks of 64 positions of one sequence, states
// passed between chunks; the checkpoint holds each chunk's input state.
// head_dim P and state size N: at most 64 each.
#ifndef HAX_CU_SSD_H
#define HAX_CU_SSD_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

// The chunk kernels' matrix products (cuda/ops/ssd_chunk.cuh): HAX_SSD_MMA
// (read once, at the first SSD call) "fma" (0, the default) fp32 FMAs, "tc"
// (1) tensor cores, mma.m16n8k8 with each operand split in two tf32 values
// (3xTF32: about fp32's accuracy, not its bits) in the forward's state and
// output kernels and the backward's state kernel and ssd_bwd_kernel (the
// fast backward of HAX_SCAN_KERNELS=new stays on FMAs); anything else is an
// error. cuda_ssd_set_mma overrides it (tests).
int cuda_ssd_mma(void);
void cuda_ssd_set_mma(int tc);

size_t cuda_ssd_ckpt_floats(int n_tok, int n_seq, int H, int P, int N);
void cuda_ssd_forward(float *y, int ld_y, float *delta, float *ckpt, const float *x, int ld_x,
                      const float *dt, int ld_dt, const float *B, const float *C, int ld_bc,
                      const float *dt_bias, const float *A_log, const float *D, const int *seq_off,
                      int n_seq, int n_tok, int H, int P, int N);
size_t cuda_ssd_workspace_bytes(int n_tok, int n_seq, int H, int P, int N);
void cuda_ssd_backward(float *dx, int ld_dx, float *ddt, int ld_ddt, float *dB, float *dC, int ld_dbc,
                       float *ddt_bias, float *dA_log, float *dD, const float *dy, int ld_dy,
                       const float *delta, const float *ckpt, const float *x, int ld_x,
                       const float *dt, int ld_dt, const float *B, const float *C, int ld_bc,
                       const float *dt_bias, const float *A_log, const float *D, const int *seq_off,
                       int n_seq, int n_tok, int H, int P, int N, void *work);

#ifdef __cplusplus
}
#endif

#endif
