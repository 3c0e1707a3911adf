// engine.h: the engine interface — whole-model forward and backward for a
// packed batch (hax_batch), for every architecture (Mamba, Mamba2, Samba, with
// or without the sparse branch). The training loop and hax-check only call
// these functions. One backend-neutral engine (engine.c, mixer*.c) runs the
// model on a backend's op table (ops.h): the CPU's (src/engine/cpu.c, the
// src/ops kernels) or CUDA's (cuda/engine/). Backends are created by name
// through the registry (backends.c).
//
// Loss conventions (joint_recall.py Trainer.forward, MODEL.md §8.3):
//   loss       = sum of CE over the scored positions / ce_count (the GLOBAL number
//                of scored positions of the batch, over all ranks)
//   acc        = sum over this rank's sequences of (correct / scored), each in
//                float32, divided by batch->global_n_seq
//   gate_loss  = sum over layers of the ranking losses (each a mean over the
//                GLOBAL batch of per-sequence pair means)
//   total_loss = loss + gate_loss_weight * gate_loss (what backward differentiates)
// Every field is this rank's share: summed over ranks it gives the global value.
//
// Random inputs: the LSH hash matrix of layer l is drawn from
// (seed, RNG_LSH, step, l, 0) in training and (seed, RNG_LSH_EVAL, step, l, 0)
// in evaluation (pass step = 0 there for a fixed matrix, quirk 6 fixed, or a
// counter to redraw it); key-selection candidates from
// (seed, RNG_KS, step, l, global sample index). Tests and hax-check inject
// them instead (hax_inject).
#ifndef HAX_ENGINE_H
#define HAX_ENGINE_H

#include <stddef.h>
#include <stdint.h>

#include "src/ops/adamw.h"
#include "src/io/batch.h"
#include "src/model/model.h"

#define HAX_MAX_LAYERS 64

// Injected random tensors and debug overrides; any pointer may be NULL (then
// the engine draws / computes it). Arrays are indexed by layer.
typedef struct {
    const float *hash[HAX_MAX_LAYERS];       // [N, num_hash] hash matrix H
    const int *ks_cand[HAX_MAX_LAYERS];      // [n_seq, k_c] candidate keys (local positions, ascending, -1 padded)
    const int32_t *q_bucket[HAX_MAX_LAYERS]; // [n_tok] forced LSH buckets (both q and k must be given)
    const int32_t *k_bucket[HAX_MAX_LAYERS];
} hax_inject;

typedef struct {
    int train;          // 1: training forward (ranking loss, RNG_LSH); 0: evaluation
    uint64_t seed;      // the run's seed
    uint32_t step;      // optimizer step (training) or the evaluation draw index
    double ce_count;    // global number of scored positions (the CE normaliser); <= 0: this batch's own count
    const hax_inject *inject;  // may be NULL
} hax_fwd_opts;

typedef struct {
    double loss, acc, gate_loss, total_loss;  // this rank's shares (see above)
    double gate_layer[HAX_MAX_LAYERS];        // per-layer ranking loss shares
    double ce_sum;                            // un-normalised CE sum of this rank
    int n_scored;                             // scored positions of this rank
    int correct;                              // correctly predicted scored positions of this rank
} hax_fwd_result;

typedef struct hax_engine hax_engine;

// Device-resident training (optional: NULL in the CPU backend's table). Once
// push has run, the weights, gradients and AdamW moments live on the device:
// forward reads the device weights, backward leaves the gradients there
// (model->grad is not touched), and the host copies (model->data, opt->m/v)
// are brought up to date only by pull (checkpoints, the best model).
typedef struct {
    // model->data (and opt->m, opt->v when opt != NULL) -> device.
    void (*push)(hax_engine *e, const hax_adamw *opt);
    // device -> model->data (and opt->m, opt->v when opt != NULL).
    void (*pull)(hax_engine *e, hax_adamw *opt);
    // The device gradient buffer [model->n_floats] (for the all-reduce).
    float *(*grad_buffer)(hax_engine *e);
    // Zeroes the device gradient buffer (a rank without a batch adds nothing).
    void (*zero_grad)(hax_engine *e);
    // 1 when every gradient is finite; poison != 0 first sets gradient 0 to
    // NaN (a test hook).
    int (*grad_finite)(hax_engine *e, int poison);
    // opt->step++, then AdamW (src/ops/adamw.h, same float32 op order) with lr
    // on the device weights and moments.
    void (*adamw_step)(hax_engine *e, hax_adamw *opt, double lr);
    // The backend's stream (a cudaStream_t for CUDA; NULL: the default one),
    // for collectives enqueued beside the engine's work (mpi/dist_nccl.c).
    void *(*stream)(hax_engine *e);
    // Asynchronous whole steps of one rank (forward, backward, AdamW with
    // opt->step++ and lr, e.g. replayed from a CUDA graph; NULL where the
    // backend has none: then forward, backward, adamw_step): step_begin
    // enqueues the step of batch b and the download of its figures and
    // returns at once with a ticket, so the host prepares the next step while
    // the device runs this one (b may be reused on return). Up to
    // HAX_STEPS_IN_FLIGHT steps may be begun and not ended. A step whose
    // gradients are not all finite (poison != 0: taken as such, a test hook)
    // sets a device flag that stays set: this step's and every later step's
    // AdamW then leave the weights as they are. step_end (tickets in order)
    // waits for the step, fills r as engine_forward would and returns 1 when its
    // gradients were finite (the flag still clear); *device_ms: the step's
    // time on the device.
    int (*step_begin)(hax_engine *e, const hax_batch *b, const hax_fwd_opts *o, hax_adamw *opt, double lr,
                      int poison);
    int (*step_end)(hax_engine *e, int ticket, hax_fwd_result *r, double *device_ms);
    // Host memory the device copies to and from asynchronously (CUDA: pinned);
    // never NULL. host_free(NULL) is a no-op.
    void *(*host_alloc)(size_t bytes);
    void (*host_free)(void *p);
} hax_device_ops;

#define HAX_STEPS_IN_FLIGHT 3  // hax_device_ops.step_begin's limit

struct hax_ops;

// A backend: its op table (ops.h) and the hooks around the shared engine.
typedef struct {
    const char *name;
    const struct hax_ops *ops;
    const hax_device_ops *dev;  // NULL: host-resident training (CPU)
    // 1: backward overwrites the backend's gradient buffer (zeroing it first,
    // on the stream); 0: it adds into it (the CPU's model->grad).
    int backward_sets_grads;
    // Hooks, each may be NULL: before the batch upload of a forward (CUDA:
    // the weights unless resident); after backward (CUDA: the gradients into
    // model->grad unless resident); before the batch-sized buffers are
    // reallocated (CUDA: wait, drop the captured graphs); destroy frees impl.
    void (*before_forward)(hax_engine *e);
    void (*after_backward)(hax_engine *e);
    void (*before_realloc)(hax_engine *e);
    void (*destroy)(hax_engine *e);
} hax_backend;

struct eng_core;

struct hax_engine {
    const hax_backend *be;
    hax_model *model;        // weights and gradients (host buffers)
    void *impl;              // the backend's own state
    struct eng_core *core;   // the shared engine's state (src/engine/internal.h)
};

// The CPU backend. Buffers are sized for batches of up to max_tok positions,
// max_seq sequences of up to max_len positions (and model_len); they grow
// when a larger batch arrives.
hax_engine *engine_cpu_create(hax_model *m, int max_tok, int max_seq, int max_len);

// The backend registry (backends.c): "cpu", and "cuda" where built with it.
// 1 when backend name is built in, sees a device and runs model cfg, else 0
// with the reason in why (may be NULL).
int engine_backend_available(const char *name, const hax_model_config *cfg, char *why, int why_len);
// Selects the device of this process for a backend (CUDA: local_rank modulo
// the visible devices; no-op on the CPU), then creates the engine.
hax_engine *engine_create(const char *name, hax_model *m, int local_rank, int max_tok, int max_seq, int max_len);

// Grows the batch-sized buffers to hold batches of up to max_tok positions,
// max_seq sequences and max_len positions per sequence (a no-op where they
// do; buffers never shrink). Called before a series of forwards (an
// evaluation pass), it keeps them from being reallocated midway, which on a
// device backend waits for the device and drops its captured graphs.
void engine_reserve(hax_engine *e, int max_tok, int max_seq, int max_len);
// Forward of one batch; keeps what backward needs until the next forward.
void engine_forward(hax_engine *e, const hax_batch *b, const hax_fwd_opts *o, hax_fwd_result *r);
// An evaluation forward that does not wait: enqueues the forward of b and the
// copy of its per-sequence correct / scored counts into correct, count
// (host [b->n_seq]; device backends: hax_device_ops.host_alloc memory, else
// the copy waits), valid after engine_sync. b must stay unchanged until then.
void engine_forward_counts(hax_engine *e, const hax_batch *b, const hax_fwd_opts *o, int *correct, int *count);
// Waits for the engine's work (no-op on the CPU).
void engine_sync(hax_engine *e);
// Host memory for engine_forward_counts and other asynchronous copies:
// hax_device_ops.host_alloc on a device backend, plain memory on the CPU.
// engine_host_free(e, NULL) is a no-op.
void *engine_host_alloc(hax_engine *e, size_t bytes);
void engine_host_free(hax_engine *e, void *p);
// Gradient of the last forward's total_loss share, ADDED to model->grad (the
// caller zeroes it with model_zero_grad before a step).
void engine_backward(hax_engine *e);
void engine_free(hax_engine *e);
// The last forward's outputs, from any backend (see hax_backend).
const float *engine_hidden(hax_engine *e);
const float *engine_logits(hax_engine *e);
const float *engine_hash(hax_engine *e, int layer);
// The residual stream entering block `layer` in the last forward (layer ==
// n_layers: the input of norm_f), packed rows [n_tok, d]: its first n_tok
// rows copied to host out (probe.c; any backend). Backward leaves it
// unchanged; the next forward overwrites it.
void engine_block_input(hax_engine *e, int layer, float *out, int n_tok);

// CPU backend outputs of the last forward (packed rows, host memory; the
// same pointers as engine_hidden / engine_logits / engine_hash there):
const float *engine_cpu_hidden(const hax_engine *e);  // [n_tok, d] last_hidden_state (after norm_f)
const float *engine_cpu_logits(const hax_engine *e);  // [n_tok, V]
struct hax_sparse_state;
// The sparse-branch state of a layer (buckets, allowed keys, key scores,
// ranking targets) or NULL without a sparse branch.
const struct hax_sparse_state *engine_cpu_sparse(const hax_engine *e, int layer);
// The hash matrix [N, num_hash] layer l used in the last forward (NULL if none).
const float *engine_cpu_hash(const hax_engine *e, int layer);

#endif
