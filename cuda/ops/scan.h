// cuda/ops/scan.h: the CUDA version of Mamba's selective scan (src/ops/scan.h);
// Mamba-2's SSD scan (src/ops/ssd.h) is in cuda/ops/ssd.h. Both take the CPU ops' arguments plus
// n_tok (seq_off[0] must be 0) and a workspace for the backward.
//
// Both are the same recurrence per channel c and state index n:
//   s[c,n] <- exp(Δ·A)·s[c,n] + Δ·x_t[c]·B_t[n],  y_t[c] = Σ_n C_t[n]·s[c,n] + D·x_t[c]
// (Mamba: Δ and D per channel, A per (c, n); SSD: Δ, A and D per head of P
// channels).
//
// Mamba (cuda/ops/scan.cu): a two-level scan over time. Sequences are cut
// into chunks of CU_SCAN_Q positions, every chunk is scanned in parallel from a
// zero state, the carries pass between chunks in a short sequential pass per
// (sequence, channel, n), then every chunk is redone from its true input
// state; the backward the same in reverse (adjoints pass backward), its states
// recomputed CU_SCAN_T positions at a time from checkpoints. The checkpoint
// buffer (cuda_scan_ckpt_floats) holds the states every CU_SCAN_T positions
// and the chunks' carries; a forward with ckpt = NULL (no backward follows)
// runs the sequential kernel instead.
// SSD (cuda/ops/ssd.cu, on cuda/ops/scan_kernels.cuh): one group of lanes per
// (sequence, channel) stepping through the sequence, the backward
// recomputing chunks of CU_SCAN_T positions from checkpoints and sweeping
// them in reverse.
// Sums over channels (dB, dC) and the parameter gradients go through partials
// added in a fixed order, so results are deterministic.
// N must be a power of two up to 256; SSD needs P·min(N,32) <= 1024.
#ifndef HAX_CU_SCAN_H
#define HAX_CU_SCAN_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

#define CU_SCAN_T 16  // positions between two checkpoints
#define CU_SCAN_Q 64  // positions of a chunk of the Mamba scan (a multiple of CU_SCAN_T)

// Per-kernel timing for the tests (tests/gpu_scans.c): when set, the Mamba
// scan and SSD ops call it right after each kernel launch with the kernel's
// name (the caller records an event on the stream there). NULL: no calls.
extern void (*cuda_scan_mark)(const char *kernel);
#define CUDA_SCAN_MARK(kernel)                   \
    do {                                         \
        if (cuda_scan_mark) cuda_scan_mark(kernel); \
    } while (0)

// The backward chunk kernels of both scans come in two versions that give the
// same results: the fast ones and the previous ones, kept for A/B timing in
// one binary. HAX_SCAN_KERNELS (read once, at the first scan call): "old" (1)
// the previous ones in both scans, "new" (0) the fast ones in both, unset (2)
// the faster of each as measured on an H200 (2026-12-07): the fast Mamba scan
// backward, the previous SSD backward (its fast version measured slower);
// anything else is an error. cuda_scan_set_old_kernels overrides it (tests).
int cuda_scan_old_kernels(void);
void cuda_scan_set_old_kernels(int old);

// ---- Mamba selective scan (src/ops/scan.h)
size_t cuda_scan_ckpt_floats(int n_tok, int n_seq, int E, int N);
void cuda_scan_forward(float *y, float *ckpt, const float *x, int ld_x, const float *draw,
                       const float *dt_bias, const float *A_log, const float *Bm, const float *Cm,
                       int ld_bc, const float *D, const int *seq_off, int n_seq, int n_tok, int E, int N);
size_t cuda_scan_workspace_bytes(int n_tok, int n_seq, int E, int N);
void cuda_scan_backward(float *dx, int ld_dx, float *ddraw, float *dBm, float *dCm, int ld_dbc,
                        float *ddt_bias, float *dA_log, float *dD, const float *dy, const float *ckpt,
                        const float *x, int ld_x, const float *draw, const float *dt_bias,
                        const float *A_log, const float *Bm, const float *Cm, int ld_bc,
                        const float *D, const int *seq_off, int n_seq, int n_tok, int E, int N, void *work);

#ifdef __cplusplus
}
#endif

#endif
