// src/train/eval_set.h: the batches of an evaluation split, assembled once:
// this rank's slice of every global batch in stored order (dataset_iter), ids
// mapped (eval_pass.id_map), in memory the engine copies from without waiting
// (hax_device_ops.host_alloc; plain memory on the CPU), with room for every
// sequence's correct / scored counts. A pass over a set enqueues its forwards
// back to back; the validation split, which never changes, is assembled at
// hax-train's first validation and kept.
#ifndef HAX_TRAIN_EVAL_SET_H
#define HAX_TRAIN_EVAL_SET_H

#include "src/train/eval.h"

typedef struct eval_set eval_set;

// Reads the split with p's dataset, ranks, global batch (p->batch_size: the
// evaluation batch) and id map (p->batch is the scratch, allocated for that
// batch); the memory is p->eng's.
eval_set *eval_set_build(const eval_pass *p, int split);
void eval_set_free(eval_set *s);  // NULL is a no-op
int eval_set_split(const eval_set *s);
int eval_set_batches(const eval_set *s);
// Batch i (may hold no sequence on a rank), and its sequences' counts.
const hax_batch *eval_set_batch(const eval_set *s, int i);
void eval_set_counts(eval_set *s, int i, int **correct, int **count);
// Its largest batch on this rank: positions, sequences, and the longest
// sequence or the model length, whichever is more (engine_reserve's sizes).
void eval_set_max(const eval_set *s, int *max_tok, int *max_seq, int *max_len);

#endif
