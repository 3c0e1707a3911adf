// src/train/init.h: the weights a fresh run starts from — hax's own
// initialisation, or the tensors of a safetensors file (train.init_from) —
// and hax-train --save-init, which writes them.
//
// An init_from file holds the model's parameters under the reference's
// state_dict names (what best.safetensors, hax-train --save-init and
// tests/ref/ref_train.py --save_init write), F32 or BF16, each with this
// model's exact shape. Every parameter must be there; any other tensor is an
// error, except best.safetensors' eval.rand.layers.<i>.hash_matrix (the fixed
// evaluation hash matrices: not parameters, ignored; the run draws its own
// from train.seed). A hax-train checkpoint (format hax-checkpoint-1) is
// refused as a whole: its AdamW moments and best weights would be dropped
// silently (resume the run instead, or start from its best.safetensors).
#ifndef HAX_TRAIN_INIT_H
#define HAX_TRAIN_INIT_H

#include "src/config/config.h"
#include "src/model/model.h"

// hax's own initial weights: model_init with train.seed, then in bf16-pure
// the reference's cast of the fp32 init to bf16 (MODEL.md §1.7).
void train_init_weights(hax_model *m, const hax_config *cfg);

// Replaces every parameter of m by the tensor of the same name in path (see
// above). Values must be finite, and in train.precision bf16-pure exactly
// bf16 (the reference's weights after its cast). Returns the number of
// tensors ignored (eval.rand.*), or -1 with one line in err
// ("train.init_from: PATH: tensor NAME: expected X, found Y"); m is then
// partly overwritten.
int train_load_init(hax_model *m, const char *path, hax_precision precision, char *err, int errlen);

// hax-train --save-init: builds the model of cfg, gives it the weights a
// fresh run's first step would start from (train_init_weights, then
// train.init_from when set) and writes them to path as F32 tensors under the
// state_dict names, with metadata format "pt", step "0", the config and the
// precision (hax-eval reads it as a best.safetensors). Atomic. Returns 0, or
// -1 with one line in err.
int train_save_init(const hax_config *cfg, const char *config_text, const char *path, char *err, int errlen);

#endif
