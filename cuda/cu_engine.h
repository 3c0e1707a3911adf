// cu_engine.h: the CUDA backend of engine.h (hax_backend "cuda") for the
// plain Mamba and Mamba-2 models (no sparse branch yet, no Samba). It runs
// the same block structure as engine_cpu.c with the cuda_* ops:
//   h <- h + mixer(rmsnorm(h)); hf = rmsnorm_f(h); logits = hf·W_embᵀ; CE.
//
// Interface as the CPU backend (engine.h): weights are read from
// model->data at every forward (uploaded) and the gradients of backward are
// ADDED to model->grad (downloaded), until the device ops (engine.h
// hax_device_ops, in the table's dev) push the weights: from then on the
// weights, gradients and AdamW moments stay on the device (hax-train's CUDA
// path), and only the batch and the step's figures cross to and from the
// host. The ops run on one stream without allocating (buffers grow only when
// a larger batch than any before arrives).
#ifndef HAX_CU_ENGINE_H
#define HAX_CU_ENGINE_H

#include "engine.h"

#ifdef __cplusplus
extern "C" {
#endif

// 1 when the CUDA engine implements this model (Mamba or Mamba-2 without a
// sparse branch), else 0 with the reason in why (may be NULL).
int engine_cuda_supports(const hax_model_config *cfg, char *why, int why_len);

// Creates the engine on the current device (cuda_init first to choose it;
// device 0 otherwise); dies naming the reason for an unsupported model.
// Buffers for batches of up to max_tok positions and max_seq sequences are
// allocated now (max_len is unused: no sparse branch).
hax_engine *engine_cuda_create(hax_model *m, int max_tok, int max_seq, int max_len);

// One whole training step of a single rank: forward, backward and AdamW
// (opt->step++, lr) on the device-resident weights (the device ops' push must
// have run), replayed from a CUDA graph. The batch is padded to a multiple of
// 256 positions with one unscored sequence, and one graph is captured per
// padded shape (the first step at a shape runs directly and records it), so
// the step's only host work is the upload of the batch and the download of r.
// The CE normaliser is applied on the device after the CE gradient (a last
// float rounding differs from engine_backward's; results agree to ~1e-7).
void engine_cuda_train_step(hax_engine *e, const hax_batch *b, const hax_fwd_opts *o, hax_adamw *opt, double lr,
                            hax_fwd_result *r);
// Graph replays so far (tests).
int engine_cuda_graph_launches(const hax_engine *e);

#ifdef __cplusplus
}
#endif

#endif
