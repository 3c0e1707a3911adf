// internal.h: the shared engine's state and the pieces a backend builds on
// (engine.c, mixer.c; the CPU backend cpu.c and the CUDA backend
// cuda/engine/). Callers use engine.h.
//
// Every buffer below is backend memory (ops->alloc) unless marked host. The
// activations are one table of named tensors (acts.h) laid out in one arena,
// sized for the capacity (cap_tok positions, cap_seq sequences); a batch uses
// the first rows of each.
#ifndef HAX_ENGINE_INTERNAL_H
#define HAX_ENGINE_INTERNAL_H

#include "src/engine/acts.h"
#include "src/engine/engine.h"
#include "src/engine/mixer_mamba.h"
#include "src/engine/mixer_mamba2.h"
#include "src/engine/ops.h"

typedef struct {
    float *hin, *a, *rstd;   // block input (the residual stream), normed mixer input, its 1/rms
    mamba_acts mam;          // Mamba mixer (Mamba, Samba even layers)
    mamba2_acts mam2;        // Mamba-2 mixer
    attn_acts att;           // Samba attention layers
    float *s, *rstd2, *a2;   // Samba: residual after the mixer, MLP norm
    mlp_acts mlp;            // Samba GatedMLP
    // the sparse branch (Enhanced mixers)
    float *attn;             // [n, E] branch output
    void *sp;                // the backend's branch state
    float *hash, *hash_dev;  // [N, num_hash] the hash matrix of the last forward (host, backend)
    int have_hash;
    int *cand, *cand_dev;    // [cap_seq, k_c] key-selection candidates (host, backend)
    int32_t *qb, *kb;        // [cap_tok] injected buckets
} eng_layer;

typedef struct eng_core {
    const hax_ops *ops;
    float *w, *g;            // the backend's weights and gradients [n_floats]
    float *wq;               // mixed bf16 only: bf16(w), what the GEMMs read (else NULL)
    float *gemb;             // [V, d] bf16-pure: the embedding lookup's share of dW_emb
    int cap_tok, cap_seq, cap_len;
    float *arena;            // the activation table's tensors
    size_t arena_floats;
    void *work;              // op workspace (one op at a time)
    int32_t *ids, *labels;
    uint8_t *mask;
    int *seq_off;
    double *loss;            // [1] CE sum
    int *correct, *count;    // [cap_seq]
    int *h_correct, *h_count;  // host [cap_seq]
    double *h_gate;            // host [n_layers] ranking-loss sums
    float *h_hidden, *h_logits;  // host copies (device backends), made on request
    int hidden_ok, logits_ok;
    eng_layer *L;
    float *hlast, *hf, *rstd_f, *logits, *dlogits, *dh, *dh2, *da, *dmix, *tmp, *dattn;
    mamba_bwd mbwd;          // Mamba scratch (o also in forward)
    mamba2_bwd m2bwd;        // Mamba-2 backward scratch
    // the last forward
    const hax_batch *run;    // the batch as run (host arrays; a backend may pad it)
    int train;
    double ce_count;
} eng_core;

// Backend weights / gradients of parameter idx (NULL for idx < 0).
static inline float *eng_w(const eng_core *c, const hax_model *m, int idx) {
    return idx < 0 ? NULL : c->w + m->params[idx].offset;
}
// The weights a GEMM reads: the bf16 copy in mixed bf16, else eng_w.
static inline float *eng_wg(const eng_core *c, const hax_model *m, int idx) {
    return idx < 0 ? NULL : (c->wq ? c->wq : c->w) + m->params[idx].offset;
}
static inline float *eng_g(const eng_core *c, const hax_model *m, int idx) {
    return idx < 0 ? NULL : c->g + m->params[idx].offset;
}
static inline int eng_has_ks(const hax_model_config *c) { return (c->sparse_mask & SPARSE_KEY_SELECTION) != 0; }
static inline int eng_has_lsh(const hax_model_config *c) {
    return (c->sparse_mask & (SPARSE_SIGN_BIN_LSH | SPARSE_ARGMAX_LSH)) != 0;
}

// A backend of the registry (backends.c): whether it runs model cfg here
// (else 0 with the reason), and its creation for a rank of the node.
typedef struct {
    const char *name;
    int (*available)(const hax_model_config *cfg, char *why, int why_len);
    hax_engine *(*create)(hax_model *m, int local_rank, int max_tok, int max_seq, int max_len);
} hax_backend_factory;

// engine.c
// A new engine on backend be: w, g its weight and gradient buffers, impl its
// state; buffers for the capacities are allocated now.
hax_engine *engine_new(const hax_backend *be, hax_model *m, float *w, float *g, void *impl, int max_tok,
                       int max_seq, int max_len);
// The steps of engine_forward / engine_backward, for a backend's whole-step
// path (cuda/engine: one CUDA graph). prepare: checks and sizes for bd (the
// batch as run, e.g. b padded), uploads it and the random inputs of b's
// sequences (mixer_inputs); forward / backward only enqueue ops (no host
// reads: capturable); ce_scale: NULL for 1/ce_count, else a backend float
// that scales the CE gradient; collect waits and fills r.
void engine_run_prepare(hax_engine *e, const hax_batch *bd, const hax_batch *b, const hax_fwd_opts *o);
void engine_run_forward(hax_engine *e);
void engine_run_backward(hax_engine *e, const float *ce_scale);
void engine_run_collect(hax_engine *e, const hax_fwd_opts *o, hax_fwd_result *r);
// collect's figures from the downloaded sums of a forward of n_seq sequences
// (of global_n_seq; gate: per layer, read with a sparse branch only) and the
// CE normaliser (<= 0: the scored positions), for a backend that downloads
// them itself. Returns the normaliser used.
double engine_result(const hax_model_config *cfg, int n_seq, int global_n_seq, double ce_sum, const int *correct,
                     const int *count, const double *gate, double ce_count, hax_fwd_result *r);

// mixer.c: one layer's mixer with the sparse branch between its halves.
// The layer's tensors, for the activation table (n positions, n_seq sequences).
void mixer_acts_list(hax_act_table *t, eng_core *c, const hax_model *m, int l, int n, int n_seq);
// The branch's random inputs of this forward (engine.h: drawn from the
// run's keyed streams or injected) into the layers' backend buffers, for b's
// sequences run as bd (rows of bd beyond b's: no candidates).
void mixer_inputs(eng_core *c, const hax_model *m, const hax_batch *b, const hax_batch *bd, const hax_fwd_opts *o);
// Mixer of layer l: L->a -> out [n, d].
void mixer_forward(eng_core *c, const hax_model *m, int l, float *out);
// Mixer backward of layer l: dout [n, d] -> da (+=) and the layer's gradients.
void mixer_backward(eng_core *c, const hax_model *m, int l, const float *dout, float *da);

#endif
