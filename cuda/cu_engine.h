// cu_engine.h: the CUDA backend of engine.h (hax_backend "cuda") for the
// plain Mamba and Mamba-2 models (no sparse branch yet, no Samba). It runs
// the same block structure as engine_cpu.c with the cuda_* ops:
//   h <- h + mixer(rmsnorm(h)); hf = rmsnorm_f(h); logits = hf·W_embᵀ; CE.
//
// Interface as the CPU backend (engine.h): weights are read from
// model->data at every forward (uploaded: the optimizer still runs on the
// host) and the gradients of backward are ADDED to model->grad (downloaded).
// Those two copies and the result download are the only host transfers of a
// step; between them the ops run on one stream without allocating (buffers
// grow only when a larger batch than any before arrives).
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

#ifdef __cplusplus
}
#endif

#endif
