// src/train/eval.h: evaluation passes — the model's accuracy on a split of a
// dataset, overall and per (n_c, n_k) cell, with the reference's per-sample
// accuracy (#correct / #scored in float32, quirk 18), summed over ranks.
// hax-train validates and tests through it, hax-eval scores a saved model
// with it, so both compute the same figures in the same summation order:
// each rank adds its slice of every global batch in stored order, then one
// all-reduce.
#ifndef HAX_TRAIN_EVAL_H
#define HAX_TRAIN_EVAL_H

#include <stdint.h>

#include "src/engine/engine.h"
#include "src/io/dataset.h"
#include "mpi/dist.h"

// Accuracy of one evaluation pass, overall and per (n_c, n_k) cell. Cell
// (c, k) is index c * nk + k; sums are of per-sample accuracies.
typedef struct {
    int nc, nk;
    double acc;        // mean per-sample accuracy over the split
    double n;          // samples
    double *sum, *cnt; // [nc * nk]
} train_eval;

void train_eval_alloc(train_eval *ev, int nc, int nk);
void train_eval_free(train_eval *ev);
void train_eval_copy(train_eval *dst, const train_eval *src);

// What a pass runs with. The caller owns every pointer.
typedef struct {
    hax_engine *eng;
    hax_dataset *ds;
    const hax_dist *d;
    hax_batch *batch;          // filled batch by batch (dataset_batch_alloc for batch_size)
    int batch_size;            // the global batch of each forward (config_eval_batch)
    int draw_batch;            // the reference's evaluation batch (train.batch_size; 0: batch_size): the
                               // redraw counter advances once per draw_batch sequences of a split
    int vocab, hidden;         // the model's V and d (the alternative logits)
    uint64_t seed;             // the run's seed (evaluation hash matrices)
    int fixed_hash;            // 1: draw 0 for every batch (paper App. D.2); 0: a new draw per batch (quirk 6)
    int64_t *draws;            // the reference's evaluation batches so far (the redraw counter)
    const hax_inject *inject;  // hash matrices to use instead of drawing them, or NULL
    const int32_t *id_map;     // dataset token id -> model token id [n_ids], or NULL (ids as stored)
    int n_ids;
    double tokens, seconds;    // added to by every pass: positions run, seconds spent (all of this rank)
    struct eval_set *set;      // the split's batches assembled already (eval_set.h), or NULL: assembled per pass
} eval_pass;

// One pass over a split with the engine's current weights (evaluation mode:
// no ranking loss). With alt_emb [V, d], each batch is also scored with
// logits hf · alt_embᵀ into ev_alt (quirk 1's test figure). ev and ev_alt
// are zeroed first; on return they hold the global figures on every rank.
// The engine grows first to hold the split's largest batch (engine_reserve).
// A sequence's counts do not depend on the other sequences of its forward
// (MODEL.md §5.8: every padding term is the sequence's own), so batch_size
// changes how many forwards a pass takes, not what they compute, except for
// rounding where a backend's kernels round a row differently with the number
// of rows (README "Configs", train.eval_batch).
void eval_run(eval_pass *p, int split, const float *alt_emb, train_eval *ev, train_eval *ev_alt);

#endif
