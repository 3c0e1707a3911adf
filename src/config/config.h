// config.h: the typed training config, read from YAML (libyaml) with every
// field checked. Sections: model, sparse, data, train, output, and the
// top-level key `base: FILE`, a config this one starts from (relative to
// this file's folder; up to 8 nested). Unknown keys, wrong types and
// out-of-range values are errors "FILE:LINE: section.field: expected ...,
// found ...". Command-line overrides `section.field=value` go through the
// same checks. The README's "Configs" section lists every field.
#ifndef HAX_CONFIG_H
#define HAX_CONFIG_H

#include <stdint.h>
#include <stdio.h>

#include "src/io/dataset.h"
#include "src/model/model_config.h"

typedef enum { DEVICE_AUTO = 0, DEVICE_CPU = 1, DEVICE_CUDA = 2 } hax_device;

// Which output matrix the test pass uses (MODEL.md quirk 1).
typedef enum {
    TEST_OUTPUT_BEST = 0,   // the best checkpoint's own embedding (what the paper means; default)
    TEST_OUTPUT_FINAL = 1,  // the reference: the final step's embedding with the best model's hidden states
} hax_test_output;

#define HAX_PATH_MAX 512

typedef struct {
    char path[HAX_PATH_MAX]; // dataset folder (manifest.yaml + shards)
    int generate;            // generate the dataset when path holds none
    int shuffle;             // 0: the reference's stored order; 1: seeded shuffle per epoch
    // Generator parameters: used to generate, and checked against the
    // manifest of an existing dataset. Defaults: the reference's dataset
    // (2 levels, contexts and keys 5..16, 16 values, 10000/100/100 per cell, seed 1).
    hax_data_params gen;
} hax_data_config;

typedef struct {
    uint64_t seed;           // init, hashing, candidate sampling (and shuffling)
    double lr;               // peak learning rate (0.002 in the reference CLI)
    int batch_size;          // global batch, over all ranks (64)
    int eval_batch;          // global batch of each validation / test forward; 0: batch_size (256)
    int64_t steps;           // optimizer steps (400000)
    int64_t warmup;          // linear warm-up steps (5000)
    int64_t valid_every;     // validate after steps k*valid_every - 1 (reference) (500)
    int64_t log_every;       // progress line every N steps (100)
    int64_t checkpoint_every;// resume checkpoint every N steps (1000)
    double beta1, beta2, eps, weight_decay;  // 0.9, 0.999, 1e-8, 0.01
    hax_device device;       // auto
    hax_test_output test_output_layer;  // best (fixed) | final (reference, quirk 1)
    int validate_final;      // 1: also validate the final weights (fixes quirk 15); 0: reference
    int eval_fixed_hash;     // 1: fixed seeded hash matrices in evaluation (paper); 0: redrawn (quirk 6)
    hax_precision precision; // fp32 | bf16 | bf16-pure (README "Precision")
    // safetensors file of initial weights under the state_dict names ("":
    // hax's own init); a fresh start only, resume takes the checkpoint's (src/train/init.h)
    char init_from[HAX_PATH_MAX];
} hax_train_config;

typedef struct {
    char root[HAX_PATH_MAX]; // results root ("results")
    char arch[128];          // architecture label: results/<arch>/lr_<lr>/seed_<seed>/
} hax_output_config;

typedef struct {
    hax_model_config model;  // model: and sparse: sections
    hax_data_config data;
    hax_train_config train;
    hax_output_config output;
} hax_config;

// The defaults: a Mamba+HAX (d=64) model with the paper's training settings.
void config_defaults(hax_config *c);

// Loads a YAML file, applies the overrides ("section.field=value", n_over of
// them; may be 0) and validates the result. A file that names a base is
// applied over its base (loaded first, itself over its own base, and so on).
// Fields not given take the defaults of config_defaults, with the model
// section taken from the d=64 reference config of the architecture in force:
// the last model.arch override, else the nearest file of the chain that names
// one. Returns 0, or -1 with one line in err ("FILE:LINE: section.field:
// expected ..., found ..." or "override '...': expected ..., found ...").
// The caller dies.
int config_load(hax_config *c, const char *path, const char *const *overrides, int n_over, char *err, int errlen);
// The same from YAML text in memory (name is its path: used in messages, and
// its folder is where a base is looked for).
int config_load_text(hax_config *c, const char *name, const char *text, size_t len, const char *const *overrides,
                     int n_over, char *err, int errlen);

// Applies one override "section.field=value" to c (no validation). 0 or -1.
int config_override(hax_config *c, const char *arg, char *err, int errlen);

// Cross-field checks (the model's, the data generator's, the training
// loop's), after deriving the sparse fields (mask, parts, k_c) and the
// default output label. 0 or -1 with a message.
int config_finalize(hax_config *c, char *err, int errlen);

// Prints the fully resolved config (every field, no base) as YAML that
// config_load reads back to an equal config (floats printed with enough
// digits to round-trip).
void config_print(FILE *out, const hax_config *c);
// The same into a new NUL-terminated string (free it).
char *config_to_string(const hax_config *c);

// 1 when two configs are equal field by field.
int config_equal(const hax_config *a, const hax_config *b);
// The first field where a and b differ, as "section.field: LABEL_A has X,
// LABEL_B has Y" (values as config_print writes them); "" when every field is
// equal.
void config_first_difference(const hax_config *a, const hax_config *b, const char *label_a, const char *label_b,
                             char *out, size_t n);

// The global batch of each forward of hax-train's validation and test
// passes (and hax-eval's default): train.eval_batch, or train.batch_size
// when that is 0 or when an LSH pattern redraws its evaluation hash matrices
// per batch (eval_fixed_hash false: each of the reference's batches of
// batch_size has its own draw, quirk 6, so those batches are kept).
int config_eval_batch(const hax_config *c);

// The run's folder: <root>/<arch>/lr_<lr>/seed_<seed> (lr printed with %g).
void config_run_dir(const hax_config *c, char *buf, size_t n);

// Names of enum values, for messages and printing.
const char *config_arch_name(hax_arch a);
const char *config_device_name(hax_device d);
const char *config_semantics_name(hax_semantics s);
const char *config_precision_name(hax_precision p);

#endif
