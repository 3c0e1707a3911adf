// cuda/engine/engine.h: the CUDA backend of engine.h (hax_backend "cuda") for every
// Table 1 model: Mamba, Mamba-2 (with or without the sparse branch in any
// pattern, cuda/sparse/sparse.h) and Samba (sliding-window attention and GatedMLP,
// cuda/ops/attn.h, cuda/ops/mlp.h). The model runs in the shared engine
// (src/engine/engine.c, mixer*.c) on the CUDA op table (cuda/engine/ops.cu);
// this backend adds device memory, the device-resident training ops and the
// whole step as one CUDA graph (hax_device_ops.step_begin / step_end, and
// engine_cuda_train_step for the tests and the benchmark).
// The branch's random inputs (hash matrices, ranking candidates) are drawn
// by the backend from the shared engine's keyed streams (engine.h), on the
// device into fixed buffers before each forward or graph replay, with the
// same bits as the CPU backend's host draws.
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

#include "src/engine/engine.h"

#ifdef __cplusplus
extern "C" {
#endif

// 1 when the CUDA engine implements this model (every arch and pattern; the
// limits are head sizes up to 128 and N up to 128 with key_selection), else 0
// with the reason in why (may be NULL).
int engine_cuda_supports(const hax_model_config *cfg, char *why, int why_len);

// Creates the engine on the current device (cuda_init first to choose it;
// device 0 otherwise); dies naming the reason for an unsupported model.
// Buffers for batches of up to max_tok positions, max_seq sequences and
// sequences (and model_len) of up to max_len positions are allocated now.
hax_engine *engine_cuda_create(hax_model *m, int max_tok, int max_seq, int max_len);

// One whole training step of a single rank: forward, backward and AdamW
// (opt->step++, lr) on the device-resident weights (the device ops' push must
// have run), replayed from a CUDA graph. The batch is padded to a multiple of
// 256 positions with one unscored sequence, and one graph is captured per
// padded shape (the first step at a shape runs directly and records it), so
// the step's only host work is the upload of the batch (and the sparse
// branch's hash matrices and candidates) and the download of r. With the
// sparse branch the padding is cut into sequences of at most model_len and
// gets no ranking candidates; a graph is keyed by the padded shape,
// global_n_seq and model_len (the host values it bakes in).
// The CE normaliser is applied on the device after the CE gradient (a last
// float rounding differs from engine_backward's; results agree to ~1e-7).
// Before AdamW the graph checks the gradients: once a step's are not finite
// a device flag stays set and AdamW leaves the weights as they are (that
// step's and every later one's). hax_device_ops.step_begin / step_end run
// the same step without waiting (pinned copies of the padded batch and of the
// figures per step in flight, up to HAX_STEPS_IN_FLIGHT).
void engine_cuda_train_step(hax_engine *e, const hax_batch *b, const hax_fwd_opts *o, hax_adamw *opt, double lr,
                            hax_fwd_result *r);
// Graph replays so far (tests).
int engine_cuda_graph_launches(const hax_engine *e);

struct cu_sparse_state;
// The sparse-branch state of a layer after the last forward (DEVICE buffers:
// buckets, allowed lists, key-selection state in ->ks), or NULL without a
// sparse branch (tests compare its discrete choices with the CPU's).
const struct cu_sparse_state *engine_cuda_sparse(const hax_engine *e, int layer);

#ifdef __cplusplus
}
#endif

#endif
