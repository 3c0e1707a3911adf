// src/engine/case.h: a case in the golden-vector format (tests/golden/README.md):
// the model config from __metadata__["hax_case"] (a JSON string, parsed with
// libyaml), the packed batch from input_ids / loss_mask, and the parameters.
// Used by bin/hax-check and the tests.
#ifndef HAX_ENGINE_CASE_H
#define HAX_ENGINE_CASE_H

#include <stdint.h>

#include "src/io/batch.h"
#include "src/model/model.h"
#include "src/io/safetensors.h"

typedef struct {
    char name[128];        // the case name (metadata "case", else the file name)
    hax_model_config cfg;
    int B, L;              // padded batch [B, L+1] of input_ids; L = model length
    int64_t *input_ids;    // [B, L+1]
    int64_t *loss_mask;    // [B, L+1]
    int *len;              // [B] non-pad positions of inputs = input_ids[:, :-1]
    double lr, beta1, beta2, eps, weight_decay;  // the AdamW step of the file
} hax_case;

// Reads the metadata and the batch of an opened golden file; dies with
// "PATH: field: expected ..., found ..." on anything missing or malformed.
void case_load(hax_case *c, const st_file *f);
void case_free(hax_case *c);

// The packed batch of all B sequences (inputs = ids[:, :-1] without pads,
// labels = ids[:, 1:], mask = loss_mask[:, :-1], model_len = L). Free with
// hax_batch_free.
void case_batch(const hax_case *c, hax_batch *b);
// The packed batch of sequence s alone (global_n_seq = 1).
void case_batch_one(const hax_case *c, int s, hax_batch *b);

// Copies every parameter of m from the file (names and shapes must match the
// table); dies naming the tensor otherwise. Also refuses a file holding a
// tensor that looks like a parameter but is not in the table.
void case_load_params(hax_model *m, const st_file *f);

// Gathers the non-pad rows of a golden [B, L, C] float tensor into packed
// [n_tok, C] order (the batch of case_batch). out holds n_tok * C floats.
void case_pack_rows_f32(const hax_case *c, const float *golden, int C, float *out);

#endif
