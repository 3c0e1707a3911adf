// src/train/saved.h: a model saved by hax-train, read back for scoring
// (hax-eval): best.safetensors or checkpoint.safetensors of a run folder.
//
// Both hold the resolved config in __metadata__.config (so the model is
// rebuilt exactly as trained). best.safetensors holds the best weights and
// the fixed evaluation hash matrices (eval.rand.layers.{i}.hash_matrix);
// checkpoint.safetensors (format hax-checkpoint-1) the last step's weights
// and, once a validation improved, the best ones under best.<name>. The
// weights scored are the best ones (those hax-train tests with); the final
// embedding, where the file has it, gives the reference's test figure
// (quirk 1: the best model's hidden states times the final embedding).
#ifndef HAX_TRAIN_SAVED_H
#define HAX_TRAIN_SAVED_H

#include <stdint.h>

#include "src/config/config.h"
#include "src/engine/engine.h"
#include "src/model/model.h"

#define SAVED_CKPT_FORMAT "hax-checkpoint-1"  // ckpt.c's CKPT_FORMAT

typedef struct {
    hax_config cfg;          // the run's resolved config (from the metadata)
    int is_checkpoint;       // 1: checkpoint.safetensors, 0: best.safetensors
    int64_t step;            // metadata "step": the best's step (best) or the steps done (checkpoint)
    int64_t best_step;       // step of the weights scored
    int weights_are_best;    // 0: a checkpoint before any improving validation (its current weights)
    hax_model model;         // model.data: the weights scored
    float *final_emb;        // [V, d] the last step's embedding (checkpoint only), else NULL
    float *hash[HAX_MAX_LAYERS];  // stored evaluation hash matrices [N, num_hash] (best only), else NULL
    // 1 when this checkpoint's best came from the final validation (validate_final)
    // after a strictly better score than the reference's last validation: the
    // reference's best, which test_acc_reference scores, is then not in the file.
    int ref_best_replaced;
} saved_model;

// Reads path. Returns 0, or -1 with one line in err (PATH: field: expected
// X, found Y): not a safetensors file, not one of hax-train's (no config,
// unknown format), a config that no longer validates, a tensor missing or
// of another shape.
int saved_model_load(saved_model *s, const char *path, char *err, int errlen);
void saved_model_free(saved_model *s);

// How a model trained on data laid out as `trained` reads a dataset laid out
// as `data` (README "Dataset generation": values at 10.., each level's ids
// after the maxima of the levels inside it, or of the id layout: hax-datagen
// --id-layout). The ids the model knows are those of its training layout:
// every level's layout maximum of the dataset must fit within the trained one
// (its tables may be larger than the training tables) and the values within
// its n_value; the dataset's ids
// are then mapped onto the model's (*map [*n_ids], NULL when the layouts are
// the same). Returns 0, or -1 with one line in err saying why not (name is
// the dataset folder).
int saved_id_map(const hax_data_params *trained, const hax_data_params *data, int vocab, const char *name,
                 int32_t **map, int *n_ids, char *err, int errlen);

#endif
